"""``aligner-chains eval``: judge corrections, write report.json, report.md and win_rate.png (resumable)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from aligner_chains.cli.options import open_aligner
from aligner_chains.core.errors import ConfigError

LOG_NAME = "judgments.jsonl"


def add_cli(subparsers: Any) -> None:
    """Add the ``eval`` subcommand."""
    parser = subparsers.add_parser(
        "eval",
        help="judge corrected vs original answers: win rates with intervals, edit statistics, a report",
        description=(
            "Judge corrected answers against their originals. Re-running the same command resumes: judged "
            f"items are read back from OUT/{LOG_NAME} and skipped. Exit status 1 when some judgments failed "
            "after retries (re-run to retry them)."
        ),
    )
    parser.add_argument(
        "--input",
        required=True,
        help="JSONL or JSON list of items: question, original (or answer), corrected (or correction); "
        "also AlpacaEval outputs (instruction, original_output, output, generator)",
    )
    parser.add_argument(
        "--judge",
        action="append",
        required=True,
        metavar="SPEC",
        help="'module:factory' or 'path/file.py:factory' (returns a chat model, a judge or a list of them; "
        "a function (question, original, corrected) is a judge itself), or 'provider:model' through "
        "langchain's init_chat_model; repeatable",
    )
    parser.add_argument(
        "--dimension",
        action="append",
        help="dimension for chat-model judges: helpfulness, harmlessness, honesty, or a name given with "
        "--rubric; repeatable (default: helpfulness)",
    )
    parser.add_argument(
        "--rubric",
        action="append",
        default=[],
        metavar="NAME=TEXT",
        help="a dimension of your own and its rubric (TEXT or @file); repeatable",
    )
    parser.add_argument("--single-order", action="store_true", help="ask chat-model judges in one order only")
    parser.add_argument("--out", required=True, help="report directory")
    parser.add_argument("--aligner", help="correct the answers with this Aligner first (path, hub id or 'demo')")
    parser.add_argument("--template", help="the Aligner's template (default: from the checkpoint)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--max-new-tokens", type=int)
    parser.add_argument("--batch-size", type=int, default=16, help="Aligner batch size")
    parser.add_argument("--group-by", default="upstream_model", help="item field for the breakdown")
    parser.add_argument("--max-concurrency", type=int, default=8)
    parser.add_argument("--retries", type=int, default=3)
    parser.add_argument("--backoff", type=float, default=1.0, help="first retry delay in seconds (doubles)")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples")
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-plot", action="store_true", help="skip win_rate.png")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=cmd_eval)


def _rubrics(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name.strip() or not text.strip():
            raise ConfigError(f"--rubric {pair!r}: use NAME=TEXT or NAME=@file.txt.")
        if text.startswith("@"):
            path = Path(text[1:])
            if not path.is_file():
                raise ConfigError(f"--rubric {pair!r}: no file {str(path)!r}.")
            text = path.read_text(encoding="utf-8")
        out[name.strip()] = text.strip()
    return out


def build_judges(
    specs: list[str], dimensions: list[str] | None, rubrics: dict[str, str], *, both_orders: bool = True
) -> list[Any]:
    """Judges from command-line specs: a chat model gives one `LLMJudge` per dimension."""
    from aligner_chains.evaluate.judges import Judge, LLMJudge, as_judge
    from aligner_chains.evaluate.specs import load_object

    dims = list(dimensions or [])
    dims += [name for name in rubrics if name not in dims]
    judges: list[Any] = []
    used_dims = False
    for spec in specs:
        found = load_object(spec, what="judge")
        for obj in found if isinstance(found, (list, tuple)) else [found]:
            if hasattr(obj, "ainvoke") and not isinstance(obj, Judge):
                used_dims = True
                judges += [
                    LLMJudge(obj, d, rubric=rubrics.get(d), both_orders=both_orders) for d in dims or ["helpfulness"]
                ]
            else:
                judges.append(as_judge(obj))
    if dims and not used_dims:
        raise ConfigError(
            f"--dimension/--rubric ({dims}) apply to chat-model judges, and {specs} gave none; "
            "a judge object or function carries its own dimension."
        )
    return judges


def cmd_eval(args: argparse.Namespace) -> int:
    from aligner_chains.evaluate.runner import evaluate

    judges = build_judges(args.judge, args.dimension, _rubrics(args.rubric), both_orders=not args.single_order)
    aligner = None
    if args.aligner:
        aligner = open_aligner(
            args.aligner,
            template=args.template,
            device=args.device,
            dtype=args.dtype,
            max_new_tokens=args.max_new_tokens,
        )
    out = Path(args.out)
    report = evaluate(
        args.input,
        judges,
        aligner=aligner,
        group_by=args.group_by,
        log=out / LOG_NAME,
        max_concurrency=args.max_concurrency,
        retries=args.retries,
        backoff=args.backoff,
        batch_size=args.batch_size,
        n_resamples=args.bootstrap,
        confidence=args.confidence,
        seed=args.seed,
        progress=not args.quiet,
    )
    paths = report.save(out, plot=False if args.no_plot else None)
    print(report.to_markdown())
    print("Wrote " + ", ".join(str(p) for p in paths.values()) + f" (per-item log: {out / LOG_NAME})", file=sys.stderr)
    if report.errors:
        print(
            f"{report.errors} judgment(s) failed after retries; re-run the same command to retry them "
            f"(errors are in {out / LOG_NAME}).",
            file=sys.stderr,
        )
        return 1
    return 0
