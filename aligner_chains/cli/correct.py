"""``aligner-chains correct`` (one pair, or a JSONL file, resumable) and ``aligner-chains templates``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from aligner_chains.cli.options import add_model_options, completed_lines, load_aligner, read_pairs_jsonl


def add_cli(subparsers: Any) -> None:
    """Add the ``correct`` and ``templates`` subcommands."""
    correct = subparsers.add_parser("correct", help="correct one answer, or a JSONL file of question/answer pairs")
    add_model_options(correct)
    correct.add_argument("-q", "--question")
    correct.add_argument("-a", "--answer")
    correct.add_argument("--input", help="JSONL with 'question' and 'answer' on every line")
    correct.add_argument("--output", help="JSONL of corrections, one line per input line (resumable)")
    correct.add_argument("--batch-size", type=int, default=16)
    correct.add_argument("--json", action="store_true", help="print the whole Correction as JSON")
    correct.add_argument("--quiet", action="store_true", help="no progress bar")
    correct.set_defaults(func=cmd_correct)

    templates = subparsers.add_parser("templates", help="list the registered prompt templates")
    templates.set_defaults(func=cmd_templates)


def cmd_correct(args: argparse.Namespace) -> int:
    if args.input is None:
        if args.question is None or args.answer is None:
            raise SystemExit("correct: give -q/--question and -a/--answer, or --input pairs.jsonl --output out.jsonl")
        aligner = load_aligner(args)
        result = aligner.correct(args.question, args.answer)
        print(result.model_dump_json(indent=2) if args.json else result.corrected)
        return 0
    if args.output is None:
        raise SystemExit("correct: --input needs --output out.jsonl")
    from tqdm import tqdm

    rows = read_pairs_jsonl(Path(args.input))
    pairs = [(row["question"], row["answer"]) for row in rows]
    output = Path(args.output)
    done = completed_lines(output)
    if done > len(pairs):
        raise SystemExit(f"{output} has {done} lines but {args.input} only {len(pairs)}: wrong output file?")
    if done == len(pairs):
        print(f"{output}: all {done} lines already corrected.", file=sys.stderr)
        return 0
    aligner = load_aligner(args)
    with (
        output.open("a", encoding="utf-8") as sink,
        tqdm(total=len(pairs), initial=done, unit="pair", disable=args.quiet) as bar,
    ):
        for start in range(done, len(pairs), args.batch_size):
            chunk = pairs[start : start + args.batch_size]
            results = aligner.correct_batch(chunk, batch_size=args.batch_size)
            for row, result in zip(rows[start : start + args.batch_size], results, strict=True):
                extras = {k: v for k, v in row.items() if k not in ("question", "answer")}
                sink.write(json.dumps({**extras, **result.model_dump()}, ensure_ascii=False) + "\n")
            sink.flush()
            bar.update(len(chunk))
    return 0


def cmd_templates(args: argparse.Namespace) -> int:
    from aligner_chains.core.templates import get_template, list_templates

    for name in list_templates():
        template = get_template(name)
        print(f"{name}\n  {template.prompt!r}")
    return 0
