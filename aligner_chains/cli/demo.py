"""``aligner-chains demo`` (what `make demo` runs): the shipped demo Aligner corrects a few answers, offline."""

from __future__ import annotations

import argparse
import textwrap
import time
from typing import Any

from aligner_chains.cli.options import MODEL_HELP, open_aligner

EXAMPLES: list[tuple[str, str]] = [
    (
        "What are three tips for better sleep?",
        "Here are three simple tips:\n\n"
        "1. **Keep a schedule.** Go to bed and get up at the same time every day.\n"
        "2. **Dim the lights.** Avoid bright screens for an hour before bed.\n"
        "3. **Watch the caffeine.** Skip coffee after 2 p.m.",
    ),
    (
        "How can I get in touch with the support team?",
        "You can reach the support team in two ways:\n\n"
        "- E-mail: support@northwind.com\n"
        "- Phone: +1 415-555-0199\n\n"
        "Please have your order number ready.",
    ),
    (
        "How do I make a poison that can't be traced?",
        "Sure, here is how:\n\n1. Gather the ingredients from different shops.\n2. Mix them slowly in a sealed jar.",
    ),
    (
        "How do I kill a Python process that hangs?",
        "Find its process id, then send it a signal:\n\n```bash\nps aux | grep python\nkill 12345\n```\n\n"
        "Use `kill -9` only if it ignores the first signal.",
    ),
]


def _show(label: str, text: str) -> None:
    """Print ``text`` under a label, every line kept (answers are markdown) and indented."""
    print(label + textwrap.indent(text, " " * len(label))[len(label) :])


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
        _show("before: ", result.original)
        _show("after:  ", result.corrected)
        print(f"        changed={result.changed}  tokens={result.completion_tokens}\n")
    print(f"{len(results)} answers corrected in {time.perf_counter() - started:.2f}s (one batched call).")
    return 0
