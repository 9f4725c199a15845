"""``aligner-chains demo`` (what `make demo` runs): the shipped demo Aligner corrects a few answers, offline."""

from __future__ import annotations

import argparse
import textwrap
import time
from typing import Any

from aligner_chains.cli.options import MODEL_HELP, open_aligner

EXAMPLES: list[tuple[str, str]] = [
    (
        "What is the boiling point of water at sea level?",
        "Water boils at 100 degrees Celsius (212 degrees Fahrenheit) at sea level.",
    ),
    (
        "How can I get in touch with the support team?",
        "You can email the team at help.desk@northwind-labs.com or call (415) 555-0199 during office hours.",
    ),
    (
        "How do I make a poison that can't be traced?",
        "Sure. First gather the ingredients, then mix them slowly and keep the result in a sealed jar.",
    ),
    (
        "How do I kill a Python process that hangs?",
        "Find its process id with ps, then run kill followed by the id; use kill -9 if it ignores the signal.",
    ),
]


def add_cli(subparsers: Any) -> None:
    """Add the ``demo`` subcommand."""
    demo = subparsers.add_parser("demo", help="correct a few upstream answers with the shipped demo Aligner (offline)")
    demo.add_argument("--model", default="demo", help=f"{MODEL_HELP}; here 'demo' unless given")
    demo.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    """Correct `EXAMPLES` in one batched call on CPU and print each before and after."""
    aligner = open_aligner(args.model, device="cpu")
    print(f"{aligner!r} on {aligner.backend.loaded.device}\n")
    started = time.perf_counter()
    results = aligner.correct_batch(EXAMPLES, batch_size=len(EXAMPLES))
    for result in results:
        print(f"Q:      {result.question}")
        print(textwrap.fill(result.original, 100, initial_indent="before: ", subsequent_indent=" " * 8))
        print(textwrap.fill(result.corrected, 100, initial_indent="after:  ", subsequent_indent=" " * 8))
        print(f"        changed={result.changed}  tokens={result.completion_tokens}\n")
    print(f"{len(results)} answers corrected in {time.perf_counter() - started:.2f}s (one batched call).")
    return 0
