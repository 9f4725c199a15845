"""``aligner-chains correct`` (one pair, or a JSONL file, resumable) and ``aligner-chains templates``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from aligner_chains.cli.engine import add_engine_options, open_engine
from aligner_chains.cli.options import (
    add_model_options,
    add_server_options,
    job_chunk_size,
    load_aligner,
    positive_int,
    print_summary,
)
from aligner_chains.cli.pair_files import completed_rows, finish_output, lines_file, read_pair_rows
from aligner_chains.core.errors import DataError

ON_ERROR_HELP = (
    "what a row that cannot be corrected (too long, malformed, a lone surrogate, a failed generation) does: "
    "'stop' (default) stops at it, naming its line, with the lines before it written, so a rerun resumes there; "
    "'passthrough' writes the original answer as its correction, with finish_reason 'error' and the error; "
    '\'skip\' writes a marker {"line": N, "skipped": true, "error": ...} instead. Every row keeps its '
    "line, so the output has one line per input line and resuming stays right. A line that cannot be read "
    "as a pair (not JSON, a field missing, a lone surrogate) has no answer to pass through: it gets the "
    "marker under 'passthrough' too"
)


def add_cli(subparsers: Any) -> None:
    """Add the ``correct`` and ``templates`` subcommands."""
    correct = subparsers.add_parser("correct", help="correct one answer, or a JSONL file of question/answer pairs")
    add_model_options(correct)
    add_server_options(correct)
    add_engine_options(correct)
    correct.add_argument("-q", "--question")
    correct.add_argument("-a", "--answer")
    correct.add_argument(
        "--input", help="JSONL with 'question' and 'answer' on every line, or a .parquet file with those columns"
    )
    correct.add_argument(
        "--output",
        help="JSONL of corrections, one line per input row (resumable); a .parquet name writes Parquet, built in "
        "OUTPUT.lines.jsonl and written when every row is done",
    )
    correct.add_argument("--batch-size", type=positive_int, default=16)
    correct.add_argument("--on-error", choices=["stop", "passthrough", "skip"], default="stop", help=ON_ERROR_HELP)
    correct.add_argument("--json", action="store_true", help="print the whole Correction as JSON")
    correct.add_argument(
        "--diff",
        action="store_true",
        help="print the correction as an inline diff of the answer: [-removed-]{+added+}, in colour on a terminal "
        "(unless NO_COLOR is set)",
    )
    correct.add_argument("--quiet", action="store_true", help="no progress bar")
    correct.set_defaults(func=cmd_correct)

    templates = subparsers.add_parser("templates", help="list the registered prompt templates")
    templates.set_defaults(func=cmd_templates)


def cmd_correct(args: argparse.Namespace) -> int:
    if args.input is None:
        if args.engine != "local":
            raise SystemExit("correct: --engine ray corrects files: give --input pairs.jsonl --output out.jsonl")
        if args.question is None or args.answer is None:
            raise SystemExit("correct: give -q/--question and -a/--answer, or --input pairs.jsonl --output out.jsonl")
        aligner = load_aligner(args)
        result = aligner.correct(args.question, args.answer)
        if args.json:
            print(result.model_dump_json(indent=2))
        elif args.diff:
            print(result.diff().render(color=use_color(sys.stdout)))
        else:
            print(result.corrected)
        return 0
    if args.output is None:
        raise SystemExit("correct: --input needs --output out.jsonl")
    from tqdm import tqdm

    started = time.perf_counter()
    rows = read_pair_rows(Path(args.input))
    output = Path(args.output)
    done = completed_rows(output)
    if done > len(rows):
        raise SystemExit(f"{output} has {done} lines but {args.input} only {len(rows)}: wrong output file?")
    if done == len(rows):
        finish_output(output)  # a Parquet output killed before it was written
        print(f"{output}: all {done} lines already corrected.", file=sys.stderr)
        print_summary("correct", time.perf_counter() - started, done=0, note=f"{done} rows done before")
        return 0
    if args.on_error == "stop":  # fail fast, before loading the model, on a line that cannot be read
        bad = next((row for row in rows[done:] if isinstance(row, DataError)), None)
        if bad is not None:
            raise DataError(f"{bad} Fix the line, or pass --on-error passthrough|skip.")
    engine = open_engine(args)
    counts = {"done": 0, "skipped": 0, "failed": 0}
    note = f"{done} rows done before" if done else ""
    with (
        lines_file(output).open("a", encoding="utf-8") as sink,
        tqdm(total=len(rows), initial=done, unit="pair", disable=args.quiet) as bar,
    ):
        chunk_size = job_chunk_size(args, args.batch_size)
        starts = range(done, len(rows), chunk_size)
        corrected = engine([rows[start : start + chunk_size] for start in starts], chunk_size)
        for start, corrections in zip(starts, corrected, strict=True):
            chunk = rows[start : start + chunk_size]
            results = iter(corrections)
            for number, row in enumerate(chunk, start=start + 1):
                line, error = _output_line(row, None if isinstance(row, DataError) else next(results), args, number)
                if error is not None and args.on_error == "stop":
                    bar.close()
                    print(
                        f"error: {error}\nStopped there: the {number - 1} lines before it are in "
                        f"{lines_file(output)}. Fix "
                        "the line (or the settings) and rerun to resume at it, or pass --on-error passthrough|skip.",
                        file=sys.stderr,
                    )
                    counts["failed"] += 1
                    print_summary("correct", time.perf_counter() - started, **counts, note=note)
                    return 2
                if error is not None:
                    print(f"warning: {error} ({args.on_error})", file=sys.stderr)
                # A passed-through answer failed; a marker line (skip, or an unreadable line) is skipped.
                failed = error is not None and args.on_error == "passthrough" and not isinstance(row, DataError)
                counts["done" if error is None else "failed" if failed else "skipped"] += 1
                sink.write(line)
                bar.update(1)
            sink.flush()
    finish_output(output)
    print_summary("correct", time.perf_counter() - started, **counts, note=note)
    return 0


def use_color(stream: Any) -> bool:
    """Colour only on a terminal, and never when ``NO_COLOR`` is set (https://no-color.org)."""
    return not os.environ.get("NO_COLOR") and bool(getattr(stream, "isatty", lambda: False)())


def _output_line(row: Any, result: Any, args: argparse.Namespace, number: int) -> tuple[str, str | None]:
    """The output line for input line ``number`` and the error that line carries (None: corrected)."""
    if isinstance(row, DataError):
        error = str(row)
        return _json_line({"line": number, "skipped": True, "error": error}), error
    extras = {k: v for k, v in row.items() if k not in ("question", "answer")}
    if result.finish_reason != "error":
        return _json_line({**extras, **result.model_dump()}), None
    error = f"{args.input}:{number}: {result.error}"
    if args.on_error == "skip":
        return _json_line({**extras, "line": number, "skipped": True, "error": error}), error
    return _json_line({**extras, **result.model_copy(update={"error": error}).model_dump()}), error


def _json_line(record: dict[str, Any]) -> str:
    """One JSONL line (rows with a lone surrogate never get here: `read_pair_lines` refuses them)."""
    return json.dumps(record, ensure_ascii=False) + "\n"


def cmd_templates(args: argparse.Namespace) -> int:
    from aligner_chains.core.templates import get_template, list_templates

    for name in list_templates():
        template = get_template(name)
        print(f"{name}\n  {template.prompt!r}")
    return 0
