"""`aligner-chains` command line: a thin face over the library (parse, call, print)."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aligner_chains.core.errors import AlignerError, DataError


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="demo", help="path, hub id or 'demo' (default: demo)")
    parser.add_argument("--template", default=None, help="template name (default: from the checkpoint)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:0, mps")
    parser.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16")
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--overflow", choices=["raise", "truncate_question"], default="raise")


def _load_aligner(args: argparse.Namespace) -> Any:
    from transformers.utils import logging as hf_logging

    from aligner_chains.core.aligner import Aligner

    hf_logging.disable_progress_bar()
    return Aligner.from_pretrained(
        args.model,
        template=args.template,
        device=args.device,
        dtype=args.dtype,
        overflow=args.overflow,
        max_new_tokens=args.max_new_tokens,
    )


def read_pairs_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read ``{"question", "answer", ...}`` lines; a malformed line raises `DataError` naming it."""
    rows: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                raise DataError(f"{path}:{number}: empty line; every line must be a JSON object.")
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{number}: not valid JSON ({exc.msg}).") from exc
            if not isinstance(row, dict):
                raise DataError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}.")
            for field in ("question", "answer"):
                if not isinstance(row.get(field), str):
                    raise DataError(f"{path}:{number}: field {field!r} is missing or not a string.")
            rows.append(row)
    return rows


def _completed_lines(path: Path) -> int:
    """Lines already written by an earlier run; a torn last line (interrupted write) is removed."""
    if not path.exists():
        return 0
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]
        path.write_bytes(data)
    return data.count(b"\n")


def cmd_correct(args: argparse.Namespace) -> int:
    if args.input is None:
        if args.question is None or args.answer is None:
            raise SystemExit("correct: give -q/--question and -a/--answer, or --input pairs.jsonl --output out.jsonl")
        aligner = _load_aligner(args)
        result = aligner.correct(args.question, args.answer)
        print(result.model_dump_json(indent=2) if args.json else result.corrected)
        return 0
    if args.output is None:
        raise SystemExit("correct: --input needs --output out.jsonl")
    from tqdm import tqdm

    rows = read_pairs_jsonl(Path(args.input))
    pairs = [(row["question"], row["answer"]) for row in rows]
    output = Path(args.output)
    done = _completed_lines(output)
    if done > len(pairs):
        raise SystemExit(f"{output} has {done} lines but {args.input} only {len(pairs)}: wrong output file?")
    if done == len(pairs):
        print(f"{output}: all {done} lines already corrected.", file=sys.stderr)
        return 0
    aligner = _load_aligner(args)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aligner-chains", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    correct = sub.add_parser("correct", help="correct one answer, or a JSONL file of question/answer pairs")
    _add_model_options(correct)
    correct.add_argument("-q", "--question")
    correct.add_argument("-a", "--answer")
    correct.add_argument("--input", help="JSONL with 'question' and 'answer' on every line")
    correct.add_argument("--output", help="JSONL of corrections, one line per input line (resumable)")
    correct.add_argument("--batch-size", type=int, default=16)
    correct.add_argument("--json", action="store_true", help="print the whole Correction as JSON")
    correct.add_argument("--quiet", action="store_true", help="no progress bar")
    correct.set_defaults(func=cmd_correct)

    templates = sub.add_parser("templates", help="list the registered prompt templates")
    templates.set_defaults(func=cmd_templates)

    train = sub.add_parser("train", help="train a model (any further --key value overrides the config)")
    kinds = train.add_subparsers(dest="kind", required=True)
    for name, (module, help_text) in TRAINERS.items():
        trainer = kinds.add_parser(name, help=help_text)
        trainer.add_argument("--config", help="YAML or JSON file of the trainer's config fields")
        trainer.set_defaults(func=_run_trainer(module), accepts_overrides=True)

    for module in FEATURE_COMMANDS:
        importlib.import_module(module).add_cli(sub)
    return parser


# `aligner-chains train NAME --config cfg.yaml [--key value ...]` calls ``run_from_args`` of the module.
TRAINERS: dict[str, tuple[str, str]] = {
    "sft": ("aligner_chains.finetune.sft", "correction SFT (runs under `accelerate launch` too)"),
    "dpo": ("aligner_chains.finetune.dpo", "offline DPO/IPO/SLiC on preference pairs, correction triples or HH-RLHF"),
    "oaif": ("aligner_chains.finetune.oaif", "online AI feedback: sample two responses, annotate, DPO/IPO/SLiC update"),
}
# Modules that add their own subcommand with ``add_cli(subparsers)``; they import heavy packages lazily.
FEATURE_COMMANDS: list[str] = [
    "aligner_chains.evaluate.cli",
    "aligner_chains.synthesize.cli",
    "aligner_chains.server.cli",
]


def _run_trainer(module: str) -> Any:
    def run(args: argparse.Namespace) -> int:
        path = importlib.import_module(module).run_from_args(args.config, args.overrides)
        print(f"Exported to {path}")
        return 0

    return run


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``aligner-chains`` console script."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and not getattr(args, "accepts_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.overrides = rest
    try:
        return int(args.func(args))
    except AlignerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
