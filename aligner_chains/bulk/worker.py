"""`CorrectionWorker`: the Ray actor of bulk corrections, and the Arrow columns it writes.

The worker itself needs no Ray (an actor is a plain class Ray instantiates in another process), so it
imports and tests without it; it needs pyarrow, which Ray Data brings.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from aligner_chains.bulk.spec import AlignerSpec
from aligner_chains.core.aligner import OnError
from aligner_chains.core.errors import ConfigError, DataError
from aligner_chains.core.result import Correction

#: The columns a correction adds, in `Correction`'s field order (the CLI's output order), and their Arrow
#: types. ``stats`` is JSON text: its keys differ between decoders and backends, and an empty one has none.
CORRECTION_COLUMNS: dict[str, str] = {
    "question": "string",
    "original": "string",
    "corrected": "string",
    "changed": "bool",
    "template": "string",
    "model": "string",
    "finish_reason": "string",
    "prompt_tokens": "int64",
    "completion_tokens": "int64",
    "latency_s": "float64",
    "error": "string",
    "stats": "string",
}

#: The input columns a batch must have.
PAIR_COLUMNS = ("question", "answer")


class CorrectionWorker:
    """Corrects batches with one Aligner, built once per worker (per Ray actor) from an `AlignerSpec`.

    As a Ray Data callable class it maps an Arrow batch of ``question``/``answer`` rows to the same rows
    with the correction columns (`CORRECTION_COLUMNS`); `correct` serves `RayAligner`. Every batch goes
    to ``Aligner.correct_batch`` with ``batch_size`` rows per generation, so a batch corrects exactly as
    in one process. With ``on_error="passthrough"`` (the default) a row that fails keeps its answer, with
    ``finish_reason="error"`` and the reason in ``error``, and the job goes on.
    """

    def __init__(self, spec: AlignerSpec, *, batch_size: int = 16, on_error: OnError = "passthrough") -> None:
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ConfigError(f"batch_size={batch_size!r}: use a positive whole number.")
        if on_error not in ("passthrough", "raise"):
            raise ConfigError(f"on_error={on_error!r}: use 'passthrough' (a failing row is marked) or 'raise'.")
        self.on_error: OnError = on_error
        self.batch_size = batch_size
        self.aligner = spec.build()

    def model_name(self) -> str:
        """The Aligner's model name (what `Correction.model` and eval's journal keys say)."""
        return self.aligner.model_name

    def correct(
        self, pairs: Sequence[tuple[str, str]], batch_size: int | None = None, on_error: OnError | None = None
    ) -> list[Correction]:
        """``Aligner.correct_batch`` on this worker's Aligner."""
        return self.aligner.correct_batch(
            pairs, batch_size=batch_size or self.batch_size, on_error=on_error or self.on_error
        )

    def __call__(self, batch: Any) -> Any:
        """An Arrow table of rows with ``question`` and ``answer`` -> the rows with the correction columns.

        Other columns are kept, first; a column named like a correction field is replaced, as in the
        output of ``aligner-chains correct``, and ``answer`` becomes ``original``.
        """
        check_columns(batch.column_names)
        questions = batch.column("question").to_pylist()
        answers = batch.column("answer").to_pylist()
        results: list[Correction | None] = [None] * len(questions)
        valid: list[int] = []
        for i, (question, answer) in enumerate(zip(questions, answers, strict=True)):
            wrong = next(
                (n for n, v in zip(PAIR_COLUMNS, (question, answer), strict=True) if not isinstance(v, str)), None
            )
            if wrong is None:
                valid.append(i)
                continue
            value = (question, answer)[PAIR_COLUMNS.index(wrong)]
            error = f"DataError: field {wrong!r} is {'null' if value is None else type(value).__name__}, not a string"
            if self.on_error == "raise":
                raise DataError(f"Row {i} of the batch: {error}.")
            results[i] = Correction.failed(
                question if isinstance(question, str) else "",
                answer if isinstance(answer, str) else "",
                error,
                template=self.aligner.template.name,
                model=self.aligner.model_name,
            )
        corrected = self.correct([(questions[i], answers[i]) for i in valid])
        for i, correction in zip(valid, corrected, strict=True):
            results[i] = correction
        kept = [n for n in batch.column_names if n not in CORRECTION_COLUMNS and n != "answer"]
        return append_corrections(batch.select(kept), results)  # type: ignore[arg-type]


def check_columns(columns: Sequence[str]) -> None:
    """`ConfigError` unless ``columns`` include ``question`` and ``answer``, saying how to rename."""
    missing = [name for name in PAIR_COLUMNS if name not in columns]
    if missing:
        raise ConfigError(
            f"The dataset has no {' and no '.join(map(repr, missing))} column (it has {list(columns)}); "
            "rename its columns, e.g. dataset.rename_columns({'prompt': 'question', 'response': 'answer'})."
        )


def append_corrections(table: Any, corrections: Sequence[Correction]) -> Any:
    """``table`` (Arrow) with one column per `CORRECTION_COLUMNS` entry, filled from ``corrections``."""
    import pyarrow as pa

    dumped = [c.model_dump() for c in corrections]
    for name, kind in CORRECTION_COLUMNS.items():
        values = [row[name] for row in dumped]
        if name == "stats":
            values = [json.dumps(v, ensure_ascii=False, sort_keys=False) for v in values]
        table = table.append_column(name, pa.array(values, type=pa.type_for_alias(kind)))
    return table


def corrections_of(table: Any) -> list[Correction]:
    """The `Correction` of every row of an Arrow table `append_corrections` filled (the inverse)."""
    columns = {name: table.column(name).to_pylist() for name in CORRECTION_COLUMNS}
    return [
        Correction(
            **{name: columns[name][i] for name in CORRECTION_COLUMNS if name != "stats"},
            stats=json.loads(columns["stats"][i]),
        )
        for i in range(table.num_rows)
    ]
