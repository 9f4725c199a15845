"""The files of ``aligner-chains correct``: JSONL or Parquet pairs in, JSONL or Parquet corrections out (resumable).

JSONL output is appended line by line (one per input row), so its line count says where a rerun resumes.
A Parquet file cannot be appended to, so a Parquet output is built the same way in a JSONL file beside
it (``OUT.parquet.lines.jsonl``) and written in one piece, atomically, once every row is there.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from pathlib import Path
from typing import Any

from aligner_chains.cli.options import completed_lines, read_pair_lines
from aligner_chains.core.errors import DataError, MissingDependencyError

#: Where a Parquet output grows before it is written: ``OUT`` plus this suffix.
LINES_SUFFIX = ".lines.jsonl"


def is_parquet(path: Path) -> bool:
    """A ``.parquet`` file (any other name is JSONL: ``.jsonl``, ``.json``, ...)."""
    return path.suffix.lower() == ".parquet"


def read_pair_rows(path: Path) -> list[dict[str, Any] | DataError]:
    """One entry per input row: the row, or a `DataError` naming the row and what is wrong with it.

    JSONL as `read_pair_lines` reads it; a ``.parquet`` file row by row (``where`` numbers rows from 1,
    as lines are), each needing string ``question`` and ``answer`` fields and values JSON can hold.
    """
    if not is_parquet(path):
        return read_pair_lines(path)
    from aligner_chains.evaluate.datasets import read_table

    return [_pair_row(row, f"{path}:{number}") for number, row in enumerate(read_table(path), start=1)]


def _pair_row(row: dict[str, Any], where: str) -> dict[str, Any] | DataError:
    for field in ("question", "answer"):
        if not isinstance(row.get(field), str):
            return DataError(f"{where}: field {field!r} is missing or not a string.")
    try:
        json.dumps(row, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        return DataError(f"{where}: a value JSON cannot hold ({exc}); convert that column to text or numbers.")
    return row


def _parquet(path: Path) -> Any:
    """``pyarrow.parquet``, or `MissingDependencyError` saying how to get it."""
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise MissingDependencyError(
            f"{path} is a Parquet file, which needs pyarrow: pip install pyarrow (or -e '.[eval]'), or use JSONL."
        ) from exc
    return pq


def lines_file(output: Path) -> Path:
    """The JSONL file the output rows are appended to: ``output`` itself, or the one beside a Parquet output."""
    return output.with_name(output.name + LINES_SUFFIX) if is_parquet(output) else output


def completed_rows(output: Path) -> int:
    """Rows an earlier run finished: the lines of `lines_file` (a torn last line cut off), or the rows of a
    finished Parquet output."""
    lines = lines_file(output)
    if lines != output and not lines.exists() and output.exists():
        return int(_parquet(output).ParquetFile(output).metadata.num_rows)
    return completed_lines(lines)


def finish_output(output: Path) -> None:
    """Write a Parquet output from its lines file, atomically, then remove the lines file (JSONL: nothing to do).

    A kill before the rename leaves the lines file (a rerun writes the Parquet file again); after it,
    the Parquet file is whole and a rerun finds every row done.
    """
    lines = lines_file(output)
    if lines == output or not lines.exists():
        return
    pq = _parquet(output)
    table = rows_table([json.loads(line) for line in lines.read_text(encoding="utf-8").split("\n") if line])
    temporary = output.with_name(f".{output.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        pq.write_table(table, temporary)
        os.replace(temporary, output)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    lines.unlink()


def rows_table(rows: list[dict[str, Any]]) -> Any:
    """An Arrow table of output rows: one column per key (first-seen order), null where a row lacks it.

    ``stats`` is JSON text, as in `aligner_chains.bulk.CORRECTION_COLUMNS` (its keys vary by decoder); a
    column whose values Arrow cannot put in one type raises `DataError` naming it.
    """
    import pyarrow as pa

    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))
    columns = {}
    for name in names:
        values = [row.get(name) for row in rows]
        if name == "stats":
            values = [None if v is None else json.dumps(v, ensure_ascii=False) for v in values]
        try:
            column = pa.array(values)
            if pa.types.is_struct(column.type) and column.type.num_fields == 0:  # only {}: Parquet has no such type
                column = pa.array([None if v is None else json.dumps(v) for v in values])
            columns[name] = column
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise DataError(
                f"Column {name!r} mixes values Parquet cannot hold in one column ({exc}); write JSONL output "
                "(--output out.jsonl), or give that column one type in the input."
            ) from exc
    return pa.table(columns)
