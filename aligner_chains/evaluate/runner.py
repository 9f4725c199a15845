"""`evaluate`: judge corrections against their originals, with bounded concurrency, retries and resume."""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from aligner_chains.core.errors import ConfigError, DataError
from aligner_chains.evaluate.judges import Judge, Judgment, as_judge
from aligner_chains.evaluate.report import EvalReport, ItemResult, build_report
from aligner_chains.jobs import (
    JobFailed,
    JobLog,
    Record,
    RetryPolicy,
    call_with_retries,
    run_jobs,
    run_sync,
    stable_key,
)

__all__ = ["FIELD_ALIASES", "EvalItem", "aevaluate", "evaluate", "load_items"]

#: Input field names, first match wins. So the output of ``aligner-chains correct`` (question, original,
#: corrected), correction datasets (question, answer, correction) and AlpacaEval model outputs
#: (instruction, original_output, output, generator) all read as they are.
FIELD_ALIASES: dict[str, tuple[str, ...]] = {
    "question": ("question", "instruction", "prompt"),
    "original": ("original", "answer", "original_output"),
    "corrected": ("corrected", "correction", "output"),
    "upstream_model": ("upstream_model", "upstream", "generator"),
}


class EvalItem(BaseModel):
    """One item to judge: a question, the upstream answer, and its correction (None: an Aligner corrects it).

    ``meta`` keeps the other fields of an input row; ``group_by`` may name one of them.
    """

    question: str
    original: str
    corrected: str | None = None
    upstream_model: str | None = None
    id: str | None = None
    meta: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def from_row(cls, row: Any, where: str) -> EvalItem:
        """An item from a dict (field aliases apply), a (question, original[, corrected]) tuple or an item."""
        if isinstance(row, EvalItem):
            return row
        if isinstance(row, (tuple, list)) and len(row) in (2, 3):
            row = dict(zip(("question", "original", "corrected"), row, strict=False))
        if not isinstance(row, dict):
            raise DataError(
                f"{where}: expected an object with question/original (or answer) fields or a "
                f"(question, original[, corrected]) tuple, got {type(row).__name__}: {row!r:.80}."
            )
        values: dict[str, Any] = {}
        used: set[str] = set()
        for field, names in FIELD_ALIASES.items():
            name = next((n for n in names if n in row), None)
            if name is None:
                continue
            used.add(name)
            value = row[name]
            if field == "upstream_model" and value is not None:
                value = str(value)
            if value is not None and not isinstance(value, str):
                raise DataError(f"{where}: field {name!r} must be a string, got {type(value).__name__}.")
            values[field] = value
        for field in ("question", "original"):
            if values.get(field) is None:
                raise DataError(
                    f"{where}: no {field} field; use one of {list(FIELD_ALIASES[field])} (found fields: {sorted(row)})."
                )
        if row.get("id") is not None:
            values["id"] = str(row["id"])
            used.add("id")
        meta = {k: v for k, v in row.items() if k not in used}
        return cls(**values, meta=meta)

    def group(self, field: str) -> str | None:
        value = self.upstream_model if field == "upstream_model" else self.meta.get(field)
        return None if value is None else str(value)


def load_items(source: str | Path | Iterable[Any]) -> list[EvalItem]:
    """Items from a JSONL file or JSON list (path), or from an iterable of dicts, tuples or `EvalItem`s."""
    if isinstance(source, (str, Path)):
        from aligner_chains.finetune.data import read_records

        where = str(source)
        items = [EvalItem.from_row(row, f"{where}:{number}") for number, row in read_records(source)]
        if not items:
            raise DataError(f"{where} holds no items.")
        return items
    return [EvalItem.from_row(row, f"item {i}") for i, row in enumerate(source)]


def _judges(judge: Any) -> list[Judge]:
    judges = [as_judge(j) for j in judge] if isinstance(judge, (list, tuple)) else [as_judge(judge)]
    if not judges:
        raise ConfigError("No judge given: pass a judge, a callable, or a list of them.")
    dims = [j.dimension for j in judges]
    if len(set(dims)) != len(dims):
        raise ConfigError(
            f"Two judges share a dimension ({dims}); give each judge its own dimension=, "
            "e.g. CallableJudge(fn, dimension='privacy')."
        )
    return judges


def evaluate(
    items: str | Path | Iterable[Any],
    judge: Any,
    *,
    aligner: Any = None,
    group_by: str = "upstream_model",
    log: str | Path | None = None,
    max_concurrency: int = 8,
    retries: int = 3,
    backoff: float = 1.0,
    batch_size: int = 16,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    progress: bool = True,
) -> EvalReport:
    """Judge corrected answers against their originals and report win rates and edit statistics.

    ``items``: (question, original, corrected) items — a JSONL/JSON path or an iterable of dicts,
    tuples or `EvalItem`s (see `FIELD_ALIASES`). With ``aligner=`` (an `Aligner` or a model name) every
    item is first corrected by that Aligner (``(question, answer)`` items suffice; a corrected field in
    the input is ignored).

    ``judge``: a `Judge`, a callable ``(question, original, corrected) -> verdict``, or a list of them,
    one per dimension. At most ``max_concurrency`` judgments run at once; a failing judgment is retried
    ``retries`` times with exponential backoff from ``backoff`` seconds, then counted as an error.

    ``log``: a JSONL file of every correction and judgment, appended as they finish. Re-running with the
    same log skips what is already judged (errors are retried), so an interrupted run resumes.

    Works from sync code and from inside a running event loop (Jupyter); in async code use `aevaluate`.
    """
    return run_sync(
        lambda: aevaluate(
            items,
            judge,
            aligner=aligner,
            group_by=group_by,
            log=log,
            max_concurrency=max_concurrency,
            retries=retries,
            backoff=backoff,
            batch_size=batch_size,
            n_resamples=n_resamples,
            confidence=confidence,
            seed=seed,
            progress=progress,
        )
    )


async def aevaluate(
    items: str | Path | Iterable[Any],
    judge: Any,
    *,
    aligner: Any = None,
    group_by: str = "upstream_model",
    log: str | Path | None = None,
    max_concurrency: int = 8,
    retries: int = 3,
    backoff: float = 1.0,
    batch_size: int = 16,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    progress: bool = True,
) -> EvalReport:
    """Async `evaluate` (same arguments)."""
    judges = _judges(judge)
    policy = RetryPolicy(retries=retries, backoff=backoff)
    for name, value in (("max_concurrency", max_concurrency), ("batch_size", batch_size)):
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name}={value!r}: use a positive whole number.")
    items = load_items(items)
    if aligner is not None and not hasattr(aligner, "acorrect_batch"):
        from aligner_chains.core import resolve_aligner

        aligner = resolve_aligner(aligner)
    aligner_name = aligner.model_name if aligner is not None else None
    if aligner is None:
        missing = next((i for i, item in enumerate(items) if item.corrected is None), None)
        if missing is not None:
            raise DataError(
                f"Item {missing} has no corrected answer (fields {list(FIELD_ALIASES['corrected'])}); "
                "pass aligner= (CLI: --aligner MODEL) to have an Aligner correct the answers first."
            )

    keys = [
        stable_key(item.id, item.question, item.original, None if aligner else item.corrected, aligner_name)
        for item in items
    ]
    first_of: dict[str, int] = {}  # identical items are corrected and judged once
    for i, key in enumerate(keys):
        first_of.setdefault(key, i)
    with JobLog(log, _log_id) as journal:
        if aligner is not None:
            await _correct_items(aligner, items, keys, first_of, journal, batch_size=batch_size, progress=progress)
        corrected = [
            item.corrected if aligner is None else _corrected_text(journal.get(("correction", key)))
            for item, key in zip(items, keys, strict=True)
        ]
        # every (item, judge) once, skipping those with a verdict or an unparseable reply in the log
        wanted = [(k, i, j) for k, i in first_of.items() if corrected[i] is not None for j in judges]
        jobs = [
            partial(_judge_item, j, policy, k, items[i], corrected[i])
            for k, i, j in wanted
            if (journal.get(_judgment_id(k, j)) or {}).get("status") not in ("ok", "unparseable")
        ]
        await run_jobs(
            jobs,
            journal,
            max_concurrency=max_concurrency,
            total=len(wanted),
            done=len(wanted) - len(jobs),
            unit="judgment",
            desc="judge",
            progress=progress,
        )

    results: list[ItemResult] = []
    edit_pairs: list[tuple[str | None, str, str]] = []
    for i, item in enumerate(items):
        group = item.group(group_by)
        if corrected[i] is not None:
            edit_pairs.append((group, item.original, corrected[i]))
        results += [_item_result(i, keys[i], item, corrected[i], group, j, journal) for j in judges]
    return build_report(
        results,
        n_items=len(items),
        dimensions=[j.dimension for j in judges],
        judges={j.dimension: j.name for j in judges},
        group_by=group_by,
        aligner=aligner_name,
        edit_pairs=edit_pairs,
        n_resamples=n_resamples,
        confidence=confidence,
        seed=seed,
        higher_is_better={j.dimension: getattr(j, "higher_is_better", True) for j in judges},
    )


def _log_id(record: Record) -> tuple[str, ...] | None:
    """The job of a log record: ``("correction", key)`` or `_judgment_id`; None for anything else."""
    if "key" not in record:
        return None
    if record.get("type") == "correction":
        return ("correction", record["key"])
    if record.get("type") == "judgment":
        return ("judgment", record["key"], record["dimension"], record["judge"])
    return None


def _judgment_id(key: str, judge: Judge) -> tuple[str, ...]:
    return ("judgment", key, judge.dimension, judge.name)


def _corrected_ok(record: Record | None) -> bool:
    return record is not None and record.get("error") is None


def _corrected_text(record: Record | None) -> str | None:
    """The corrected answer of a correction record, None when there is none or it failed."""
    return record["corrected"] if _corrected_ok(record) else None


async def _correct_items(
    aligner: Any,
    items: list[EvalItem],
    keys: list[str],
    first_of: dict[str, int],
    journal: JobLog,
    *,
    batch_size: int,
    progress: bool,
) -> None:
    """Correct each distinct item the log has no correction for, one ``batch_size`` batch after another.

    Local generation batches on one device, so the batches run in order, not concurrently, unless the
    aligner says how many may run at once (``concurrent_batches``: a `aligner_chains.bulk.RayAligner`'s actors).
    """
    todo = [i for k, i in first_of.items() if not _corrected_ok(journal.get(("correction", k)))]

    async def correct(chunk: list[int]) -> list[Record]:
        pairs = [(items[i].question, items[i].original) for i in chunk]
        results = await aligner.acorrect_batch(pairs, batch_size=batch_size, on_error="passthrough")
        return [
            {
                "type": "correction",
                "key": keys[i],
                "corrected": c.corrected,
                "changed": c.changed,
                "finish_reason": c.finish_reason,
                "completion_tokens": c.completion_tokens,
                "error": c.error,
            }
            for i, c in zip(chunk, results, strict=True)
        ]

    await run_jobs(
        [partial(correct, todo[start : start + batch_size]) for start in range(0, len(todo), batch_size)],
        journal,
        max_concurrency=getattr(aligner, "concurrent_batches", 1),
        total=len(first_of),
        done=len(first_of) - len(todo),
        unit="item",
        desc="correct",
        progress=progress,
    )


async def _judge_item(judge: Judge, policy: RetryPolicy, key: str, item: EvalItem, corrected: str) -> Record:
    """One judgment record: the judge's verdict (retried per ``policy``), or the error it ended with."""
    try:
        judgment, attempts = await call_with_retries(
            lambda: judge.ajudge(item.question, item.original, corrected), policy
        )
    except JobFailed as failed:
        judgment, attempts = Judgment(status="error", error=str(failed)), failed.attempts
    if not isinstance(judgment, Judgment):
        judgment = Judgment(
            status="error", error=f"{judge.name}.ajudge returned {type(judgment).__name__}, not a Judgment"
        )
    return {
        "type": "judgment",
        "key": key,
        "dimension": judge.dimension,
        "judge": judge.name,
        **judgment.model_dump(mode="json"),
        "attempts": attempts,
    }


def _item_result(
    index: int, key: str, item: EvalItem, corrected: str | None, group: str | None, judge: Judge, journal: JobLog
) -> ItemResult:
    """An item's row of the report for one judge, from the log (an error row when it was not judged)."""
    base = {
        "index": index,
        "key": key,
        "id": item.id,
        "dimension": judge.dimension,
        "group": group,
        "question": item.question,
        "original": item.original,
        "corrected": corrected,
    }
    if corrected is None:
        error = (journal.get(("correction", key)) or {}).get("error") or "not corrected"
        return ItemResult(**base, status="error", error=f"correction failed: {error}")
    record = journal.get(_judgment_id(key, judge))
    if record is None:
        return ItemResult(**base, status="error", error="not judged")
    return ItemResult(
        **base,
        **{
            k: record.get(k)
            for k in ("verdict", "status", "consistent", "scores", "error")
            if record.get(k) is not None
        },
        replies=record.get("replies") or [],
        attempts=record.get("attempts", 0),
    )
