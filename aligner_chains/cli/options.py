"""What the subcommands share: the Aligner options and loading, JSONL pair input, resumable JSONL output.

Light on purpose: torch and transformers are imported only when an Aligner is loaded.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from aligner_chains.core.errors import DataError
from aligner_chains.core.model_files import default_model

__all__ = [
    "MODEL_HELP",
    "add_model_options",
    "completed_lines",
    "load_aligner",
    "model_name",
    "open_aligner",
    "read_pairs_jsonl",
]

#: Help of every ``--model`` option: unset, the one default-model rule applies (`default_model`).
MODEL_HELP = "path or hub id (default: $ALIGNER_MODEL, else the shipped demo)"


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--model``, ``--template``, ``--device``, ``--dtype``, ``--max-new-tokens`` and ``--overflow``."""
    parser.add_argument("--model", default=None, help=MODEL_HELP)
    parser.add_argument("--template", default=None, help="template name (default: from the checkpoint)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:0, mps")
    parser.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16")
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--overflow", choices=["raise", "truncate_question"], default="raise")


def model_name(args: argparse.Namespace) -> str:
    """The model ``--model`` names, or the default model (``$ALIGNER_MODEL``, else the shipped demo)."""
    return args.model if args.model is not None else default_model()


def open_aligner(model: str, **options: Any) -> Any:
    """``Aligner.from_pretrained(model, **options)`` without download progress bars (imports transformers)."""
    from transformers.utils import logging as hf_logging

    from aligner_chains.core.aligner import Aligner

    hf_logging.disable_progress_bar()
    return Aligner.from_pretrained(model, **options)


def load_aligner(args: argparse.Namespace) -> Any:
    """The Aligner the options of `add_model_options` describe."""
    return open_aligner(
        model_name(args),
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


def completed_lines(path: Path) -> int:
    """Lines already written to ``path`` by an earlier run; a torn last line (interrupted write) is removed."""
    if not path.exists():
        return 0
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]
        path.write_bytes(data)
    return data.count(b"\n")
