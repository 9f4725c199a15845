"""`aligner-chains` command line: a thin face over the library (parse, call, print).

Every subcommand is registered here, from `COMMANDS`: each module adds its own with ``add_cli(subparsers)``
and imports heavy packages (torch, transformers, FastAPI, the trainers) only when its command runs, so
``aligner-chains --help`` stays fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from aligner_chains import __version__
from aligner_chains.cli import correct, demo, evaluate, serve, synthesize, train
from aligner_chains.core.errors import AlignerError
from aligner_chains.core.model_files import VERBOSE_ENV
from aligner_chains.core.options import unknown_option_error

__all__ = ["COMMANDS", "build_parser", "main"]

DESCRIPTION = "`aligner-chains` command line: a thin face over the library (parse, call, print)."

#: The subcommand modules, in the order of ``aligner-chains --help``.
COMMANDS = (demo, correct, train, evaluate, synthesize, serve)


def build_parser() -> argparse.ArgumentParser:
    """The ``aligner-chains`` parser with every subcommand of `COMMANDS`."""
    parser = argparse.ArgumentParser(prog="aligner-chains", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--verbose",
        action="store_true",
        help=f"keep the progress bars and warnings of transformers while loading (also: {VERBOSE_ENV}=1)",
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module in COMMANDS:
        module.add_cli(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``aligner-chains`` console script."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    args.overrides = rest
    if args.verbose:
        os.environ[VERBOSE_ENV] = "1"
    try:
        if rest and not getattr(args, "accepts_overrides", False):
            raise _unknown_argument(parser, args.command, rest)
        return int(args.func(args))
    except AlignerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to resume.", file=sys.stderr)
        return 130


def _unknown_argument(parser: argparse.ArgumentParser, command: str, rest: list[str]) -> AlignerError:
    """A `ConfigError` naming the first argument ``command`` does not take and its closest option."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    flags = [flag for action in sub._actions for flag in action.option_strings]
    first = next((r for r in rest if r.startswith("-")), rest[0]).split("=", 1)[0]
    hint = "" if first.startswith("-") else "It is not an option: extra positional arguments are not taken."
    return unknown_option_error(first, flags, f"aligner-chains {command}", hint)
