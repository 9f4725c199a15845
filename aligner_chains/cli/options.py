"""What the subcommands share: the Aligner options and loading, JSONL pair input, resumable JSONL output.

Light on purpose: torch and transformers are imported only when an Aligner is loaded.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from aligner_chains.core.errors import DataError
from aligner_chains.core.model_files import default_model
from aligner_chains.jobs import repair_torn_tail

__all__ = [
    "MODEL_HELP",
    "add_model_options",
    "add_server_options",
    "completed_lines",
    "job_chunk_size",
    "load_aligner",
    "lone_surrogate",
    "model_name",
    "open_aligner",
    "positive_int",
    "print_summary",
    "read_pair_lines",
    "read_pairs_jsonl",
    "server_aligner",
    "summary_line",
]

#: Help of every ``--model`` option: unset, the one default-model rule applies (`default_model`).
MODEL_HELP = "path or hub id (default: $ALIGNER_MODEL, else the shipped demo)"


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--model``, ``--template``, ``--device``, ``--dtype``, ``--max-new-tokens`` and ``--overflow``."""
    parser.add_argument("--model", default=None, help=MODEL_HELP)
    parser.add_argument("--template", default=None, help="template name (default: from the checkpoint)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:0, mps")
    parser.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16")
    parser.add_argument("--max-new-tokens", type=positive_int, default=None)
    parser.add_argument("--overflow", choices=["raise", "truncate_question"], default="raise")


def add_server_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--server URL`` (repeatable) and ``--concurrency``: the Aligner runs on servers, not in this process."""
    group = parser.add_argument_group("servers: the Aligner on OpenAI-compatible servers instead of in this process")
    group.add_argument(
        "--server",
        action="append",
        metavar="URL",
        help="a server running the Aligner (vLLM, TGI, SGLang, aligner-chains serve; /v1 optional). Repeat it for "
        "replicas: each request goes to the least busy one, and one that fails is set aside while the others "
        "go on. The model name is the served one (default: the server's only model); the API key comes from "
        "$ALIGNER_API_KEY",
    )
    group.add_argument(
        "--concurrency",
        type=positive_int,
        default=16,
        help="requests in flight at once, over all --server URLs (default: 16)",
    )


def job_chunk_size(args: argparse.Namespace, batch_size: int) -> int:
    """Rows per call of a bulk job: ``batch_size``, and with servers enough to keep ``--concurrency`` busy
    (each call waits for its slowest row, so a chunk of 4x the requests in flight wastes little)."""
    return max(batch_size, 4 * args.concurrency) if getattr(args, "server", None) else batch_size


def model_name(args: argparse.Namespace) -> str:
    """The model ``--model`` names, or the default model (``$ALIGNER_MODEL``, else the shipped demo)."""
    return args.model if args.model is not None else default_model()


def open_aligner(model: str, **options: Any) -> Any:
    """``Aligner.from_pretrained(model, **options)`` without download progress bars (imports transformers),
    unless ``--verbose`` (``ALIGNER_VERBOSE=1``) asked for them."""
    from transformers.utils import logging as hf_logging

    from aligner_chains.backends.local.loading import verbose
    from aligner_chains.core.aligner import Aligner

    if not verbose():
        hf_logging.disable_progress_bar()
    return Aligner.from_pretrained(model, **options)


def load_aligner(args: argparse.Namespace) -> Any:
    """The Aligner the options of `add_model_options` (and `add_server_options`) describe."""
    if getattr(args, "server", None):
        return server_aligner(args, args.model)
    return open_aligner(
        model_name(args),
        template=args.template,
        device=args.device,
        dtype=args.dtype,
        overflow=args.overflow,
        max_new_tokens=args.max_new_tokens,
    )


def server_aligner(args: argparse.Namespace, model: str | None) -> Any:
    """The Aligner on the ``--server`` URLs, serving ``model`` (None: the servers' only model)."""
    from aligner_chains.core.aligner import Aligner

    local = [f"--{name}" for name in ("device", "dtype") if getattr(args, name, "auto") not in (None, "auto")]
    if local:
        raise SystemExit(f"{' and '.join(local)} set how a local model loads; with --server the server decides.")
    return Aligner.from_server(
        args.server if len(args.server) > 1 else args.server[0],
        model=model,
        template=args.template,
        max_concurrency=args.concurrency,
        overflow=getattr(args, "overflow", "raise"),
        **({"max_new_tokens": args.max_new_tokens} if args.max_new_tokens is not None else {}),
    )


def read_pairs_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read ``{"question", "answer", ...}`` lines; the first malformed line raises `DataError` naming it."""
    rows = read_pair_lines(path)
    for row in rows:
        if isinstance(row, DataError):
            raise row
    return rows  # type: ignore[return-value]


def read_pair_lines(path: Path) -> list[dict[str, Any] | DataError]:
    """One entry per line of a ``{"question", "answer", ...}`` JSONL file: the row, or a `DataError` naming
    the line and what is wrong (not UTF-8, not JSON, not an object, a field missing, a lone surrogate).

    Lines end at LF only, never at U+2028, U+2029 or U+0085 (JSON strings may hold them raw).
    """
    rows: list[dict[str, Any] | DataError] = []
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            rows.append(_pair_row(raw, f"{path}:{number}"))
    return rows


def _pair_row(raw: bytes, where: str) -> dict[str, Any] | DataError:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return DataError(f"{where}: not UTF-8 (byte {exc.start}: {raw[exc.start : exc.start + 1]!r}).")
    if not line.strip():
        return DataError(f"{where}: empty line; every line must be a JSON object.")
    try:
        row = json.loads(line)
    except (json.JSONDecodeError, RecursionError) as exc:
        why = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
        return DataError(f"{where}: not valid JSON ({why}).")
    if not isinstance(row, dict):
        return DataError(f"{where}: expected a JSON object, got {type(row).__name__}.")
    for field in ("question", "answer"):
        if not isinstance(row.get(field), str):
            return DataError(f"{where}: field {field!r} is missing or not a string.")
    surrogate = lone_surrogate(row)
    if surrogate is not None:
        return DataError(
            f"{where}: {surrogate} holds a lone surrogate (an escaped \\ud800-\\udfff without its pair), which is "
            "not text (often an emoji cut in half)."
        )
    return row


def lone_surrogate(value: Any, name: str = "the line") -> str | None:
    """Where a JSON value holds a string with a lone surrogate (``"field 'answer' at character 3"``), or None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            return f"{name} at character {exc.start}"
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            label = f"field {key!r}" if name == "the line" else f"{name}[{key!r}]"
            found = lone_surrogate(key, f"a key of {name}") or lone_surrogate(item, label)
            if found:
                return found
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = lone_surrogate(item, f"{name}[{index}]")
            if found:
                return found
    return None


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1 (``--batch-size 0`` is a usage error, not a crash later)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive whole number (use 1 or more)")
    return value


def completed_lines(path: Path) -> int:
    """Lines already written to ``path`` by an earlier run; a torn last line (interrupted write) is cut off
    in place (`repair_torn_tail`: a kill during the repair loses nothing else)."""
    if not path.exists():
        return 0
    size = repair_torn_tail(path)
    lines = 0
    with path.open("rb") as handle:
        while size > 0 and (block := handle.read(1 << 20)):
            lines += block.count(b"\n")
    return lines


def summary_line(
    command: str,
    seconds: float,
    *,
    done: int,
    unit: str = "rows",
    skipped: int = 0,
    skipped_why: str = "",
    failed: int = 0,
    note: str = "",
) -> str:
    """The last line of a batch command: ``correct: 98 rows done, 1 skipped, 1 failed in 4.2 s``.

    ``skipped_why`` follows the skipped count in brackets; ``note`` ends the line after a semicolon.
    """
    why = f" ({skipped_why})" if skipped_why and skipped else ""
    time_text = f"{seconds:.1f} s" if seconds < 90 else f"{int(seconds // 60)} min {round(seconds % 60):d} s"
    unit = unit[:-1] if done == 1 and unit.endswith("s") else unit
    line = f"{command}: {done} {unit} done, {skipped} skipped{why}, {failed} failed in {time_text}"
    return f"{line}; {note}" if note else line


def print_summary(command: str, seconds: float, **counts: Any) -> None:
    """Print `summary_line` on stderr (stdout stays the command's output, for pipes)."""
    print(summary_line(command, seconds, **counts), file=sys.stderr)
