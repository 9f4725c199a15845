"""`make demo`: the shipped demo Aligner correcting a few upstream answers, offline, on CPU."""

from __future__ import annotations

import argparse
import tempfile
import textwrap
import time

from aligner_chains.core.aligner import Aligner
from aligner_chains.core.errors import ModelNotFoundError

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


def _load(model: str) -> Aligner:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        return Aligner.from_pretrained(model, device="cpu")
    except ModelNotFoundError:
        if model != "demo":
            raise
        from aligner_chains.testing import build_tiny_llama

        path = build_tiny_llama(tempfile.mkdtemp(prefix="aligner-demo-"))
        print("The demo Aligner is not installed; running on a tiny random model instead (output is noise).\n")
        return Aligner.from_pretrained(str(path), device="cpu", max_new_tokens=24)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="demo", help="Aligner to run (default: the shipped demo)")
    args = parser.parse_args(argv)
    aligner = _load(args.model)
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


if __name__ == "__main__":
    raise SystemExit(main())
