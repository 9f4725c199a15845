"""`synthesize`: questions -> upstream answers -> teacher corrections -> a Q-A-C training file.

Every finished question is appended to a raw log beside the output (``data.raw.jsonl`` for
``data.jsonl``) as soon as it is done; a re-run skips what is in it, so an interrupted run resumes, and
filters apply when the output is written, so changing a filter option costs no model call. The output
(``{"question", "answer", "correction"}`` per line, the format ``aligner-chains train sft`` reads) is
written at the end, in input order, with the stats beside it (``data.stats.json``).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from aligner_chains.core.aligner import Aligner
from aligner_chains.core.errors import ConfigError, DataError
from aligner_chains.evaluate.edits import EditSummary, summarize_edits
from aligner_chains.jobs import (
    JobFailed,
    JobLog,
    Record,
    RetryPolicy,
    ainvoke,
    call_with_retries,
    output_text,
    run_jobs,
    run_sync,
    stable_key,
    write_atomic,
)
from aligner_chains.synthesize.filters import SynthesisFilters, classify, clean_correction
from aligner_chains.synthesize.prompts import CorrectionPrompt

__all__ = ["QUESTION_FIELDS", "Question", "SynthesisStats", "asynthesize", "load_questions", "sidecar", "synthesize"]

#: Input field names, first match wins: a question, and optionally an answer already given (then no
#: upstream call is made for that row). Other fields are copied to the output rows.
QUESTION_FIELDS: dict[str, tuple[str, ...]] = {
    "question": ("question", "instruction", "prompt"),
    "answer": ("answer", "original", "original_output"),
}
_RESERVED = {"question", "answer", "correction", "identity"}


class Question(BaseModel):
    """One input row: the question, an answer if given, and the row's other fields."""

    question: str
    answer: str | None = None
    extra: dict[str, Any] = Field(default_factory=dict)


def load_questions(source: str | Path | Iterable[Any]) -> list[Question]:
    """Questions from a JSONL file or JSON list (path) or an iterable: strings, or objects with a
    question (``question``/``instruction``/``prompt``) and optionally an answer (``answer``/``original``/
    ``original_output``)."""
    if isinstance(source, (str, Path)):
        from aligner_chains.finetune.data import read_records

        records = [(f"{source}:{number}", row) for number, row in read_records(source)]
        if not records:
            raise DataError(f"{source} holds no questions.")
    else:
        records = [(f"item {i}", row) for i, row in enumerate(source)]
    out = []
    for where, row in records:
        if isinstance(row, Question):
            out.append(row)
            continue
        if isinstance(row, str):
            row = {"question": row}
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a string or an object with a 'question', got {type(row).__name__}.")
        values: dict[str, Any] = {}
        used = set()
        for field, names in QUESTION_FIELDS.items():
            name = next((n for n in names if n in row), None)
            if name is None:
                continue
            used.add(name)
            if not isinstance(row[name], str):
                raise DataError(f"{where}: field {name!r} must be a string, got {type(row[name]).__name__}.")
            values[field] = row[name]
        if not values.get("question", "").strip():
            raise DataError(
                f"{where}: no question; give a non-empty {' / '.join(QUESTION_FIELDS['question'])} field "
                f"(found fields: {sorted(row)})."
            )
        extra = {k: v for k, v in row.items() if k not in used and k not in _RESERVED}
        out.append(Question(**values, extra=extra))
    return out


class SynthesisStats(BaseModel):
    """What a synthesis run produced, and what it dropped and why."""

    output: str
    n_input: int
    duplicates: int
    n_unique: int
    upstream_errors: int = 0
    teacher_errors: int = 0
    dropped: dict[str, int] = Field(default_factory=dict)
    identical_kept: int = 0
    written: int = 0
    identity_rows: int = 0
    edits: EditSummary = Field(default_factory=EditSummary)

    @property
    def errors(self) -> int:
        return self.upstream_errors + self.teacher_errors

    def summary(self) -> str:
        """A few lines for the terminal."""
        dropped = ", ".join(f"{k} {v}" for k, v in sorted(self.dropped.items()) if v) or "none"
        e = self.edits
        lines = [
            f"{self.output}: {self.written} correction rows"
            + (f" + {self.identity_rows} identity row(s)" if self.identity_rows else ""),
            f"  input {self.n_input} rows, {self.duplicates} duplicates, {self.n_unique} unique",
            f"  errors: upstream {self.upstream_errors}, teacher {self.teacher_errors}",
            f"  dropped: {dropped}; identical corrections kept: {self.identical_kept}",
        ]
        if e.n:
            lines.append(
                f"  edits: changed {e.changed_share:.1%}, copied fraction {e.copied_fraction_mean or 0:.1%} (mean), "
                f"length ratio {e.length_ratio_mean or 0:.2f} (mean)"
            )
        return "\n".join(lines)


def sidecar(output: str | Path, kind: str) -> Path:
    """``data.jsonl`` -> ``data.raw.jsonl`` (``kind="raw"``) or ``data.stats.json`` (``kind="stats"``)."""
    output = Path(output)
    stem = output.name[: -len(output.suffix)] if output.suffix else output.name
    return output.with_name(f"{stem}.{kind}.{'json' if kind == 'stats' else 'jsonl'}")


def _norm(text: str | None) -> str:
    return "" if text is None else re.sub(r"\s+", " ", text).strip()


def _picked(key: str, seed: int, fraction: float) -> bool:
    return fraction > 0 and int(stable_key(key, seed), 16) / 16**20 < fraction


def synthesize(
    questions: str | Path | Iterable[Any],
    *,
    teacher: Any,
    output: str | Path,
    upstream: Any = None,
    prompt: CorrectionPrompt | None = None,
    filters: SynthesisFilters | None = None,
    identity: float = 0.0,
    input_key: str | None = None,
    max_concurrency: int = 8,
    retries: int = 3,
    backoff: float = 1.0,
    seed: int = 0,
    progress: bool = True,
) -> SynthesisStats:
    """Build a correction dataset and write it to ``output`` (JSONL of question/answer/correction).

    - ``questions``: see `load_questions`; rows that carry an answer skip the upstream call.
    - ``upstream``: any LangChain runnable (chat model, chain) or function answering a question; it gets the
      question string, or ``{input_key: question}`` when ``input_key`` is set. Its output may be a string, a
      message or a dict with an ``answer``/``output``/``text``.
    - ``teacher``: a LangChain chat model (or runnable/function over a message list) that writes the
      correction from ``prompt`` (default: `CorrectionPrompt`, 3H instructions); or an `Aligner`, local or on
      servers, whose corrections are the data (the paper's multi-round pipeline: an Aligner corrects a new
      upstream model's answers; ``prompt`` does not apply).
    - ``filters``: `SynthesisFilters` (empty/refused/identical/runaway, dedupe).
    - ``identity``: fraction of kept rows that also get a Q-A-A identity row (``correction == answer``,
      marked ``"identity": true``), chosen deterministically from ``seed``.
    - At most ``max_concurrency`` questions in flight; each model call is retried ``retries`` times with
      exponential backoff from ``backoff`` seconds; questions that still fail are counted and retried by
      the next run.

    Works from sync code and inside a running event loop (Jupyter); in async code use `asynthesize`.
    """
    return run_sync(
        lambda: asynthesize(
            questions,
            teacher=teacher,
            output=output,
            upstream=upstream,
            prompt=prompt,
            filters=filters,
            identity=identity,
            input_key=input_key,
            max_concurrency=max_concurrency,
            retries=retries,
            backoff=backoff,
            seed=seed,
            progress=progress,
        )
    )


async def asynthesize(
    questions: str | Path | Iterable[Any],
    *,
    teacher: Any,
    output: str | Path,
    upstream: Any = None,
    prompt: CorrectionPrompt | None = None,
    filters: SynthesisFilters | None = None,
    identity: float = 0.0,
    input_key: str | None = None,
    max_concurrency: int = 8,
    retries: int = 3,
    backoff: float = 1.0,
    seed: int = 0,
    progress: bool = True,
) -> SynthesisStats:
    """Async `synthesize` (same arguments)."""
    prompt = prompt or CorrectionPrompt()
    filters = filters or SynthesisFilters()
    policy = RetryPolicy(retries=retries, backoff=backoff)
    if not 0 <= identity <= 1:
        raise ConfigError(f"identity={identity!r}: use a fraction of rows between 0 and 1.")
    if not _corrects(teacher) and (teacher is None or not (hasattr(teacher, "ainvoke") or callable(teacher))):
        raise ConfigError(
            f"teacher must be a LangChain chat model, a callable or an Aligner, got {type(teacher).__name__}."
        )
    rows = load_questions(questions)
    if upstream is None:
        missing = next((i for i, row in enumerate(rows) if row.answer is None), None)
        if missing is not None:
            raise DataError(
                f"Row {missing} ({rows[missing].question[:60]!r}) has no answer and no upstream model was given: "
                "pass upstream= (CLI: --upstream), or give every row an 'answer'."
            )

    # dedupe: the first of each (question, given answer), whitespace ignored
    seen: Counter[tuple[str, str]] = Counter()
    keys: list[str | None] = []
    for row in rows:
        ident = (_norm(row.question), _norm(row.answer))
        seen[ident] += 1
        if filters.dedupe and seen[ident] > 1:
            keys.append(None)
        else:
            keys.append(stable_key(ident[0], ident[1] if row.answer is not None else None, seen[ident] - 1))
    duplicates = sum(k is None for k in keys)

    output = Path(output)
    n_unique = len(keys) - duplicates
    with JobLog(sidecar(output, "raw"), lambda record: record.get("key")) as journal:
        todo = [i for i, k in enumerate(keys) if k is not None and (journal.get(k) or {}).get("status") != "ok"]
        pipeline = _Pipeline(upstream, teacher, prompt, input_key, policy)
        await run_jobs(
            [partial(pipeline.run, rows[i], keys[i], journal.get(keys[i]) or {}) for i in todo],
            journal,
            max_concurrency=max_concurrency,
            total=n_unique,
            done=n_unique - len(todo),
            unit="question",
            desc="synthesize",
            progress=progress,
        )

    # the output, in input order, filters applied now
    dropped: Counter[str] = Counter()
    stats = SynthesisStats(output=str(output), n_input=len(rows), duplicates=duplicates, n_unique=n_unique)
    lines: list[str] = []
    pairs: list[tuple[str, str]] = []
    for row, key in zip(rows, keys, strict=True):
        if key is None:
            continue
        record = journal.get(key)
        if record is None or record.get("status") != "ok":
            stage = (record or {}).get("stage", "teacher")
            if stage == "upstream":
                stats.upstream_errors += 1
            else:
                stats.teacher_errors += 1
            continue
        answer, correction = record["answer"], record.get("correction")
        outcome = classify(answer, correction, filters)
        if outcome != "kept":
            dropped[outcome] += 1
            continue
        stats.identical_kept += correction.strip() == answer.strip()
        lines.append(
            json.dumps(
                {"question": row.question, "answer": answer, "correction": correction, **row.extra}, ensure_ascii=False
            )
        )
        pairs.append((answer, correction))
        if _picked(key, seed, identity):
            lines.append(
                json.dumps(
                    {"question": row.question, "answer": answer, "correction": answer, **row.extra, "identity": True},
                    ensure_ascii=False,
                )
            )
            stats.identity_rows += 1
    stats.written = len(pairs)
    stats.dropped = {
        k: dropped.get(k, 0) for k in ("empty_answer", "empty_correction", "refused", "runaway", "identical")
    }
    stats.edits = summarize_edits(pairs)
    write_atomic(output, "".join(line + "\n" for line in lines))
    write_atomic(sidecar(output, "stats"), stats.model_dump_json(indent=2) + "\n")
    return stats


@dataclass(frozen=True)
class _Pipeline:
    """One question's job: the upstream model answers (unless an answer is given), the teacher corrects."""

    upstream: Any
    teacher: Any
    prompt: CorrectionPrompt
    input_key: str | None
    policy: RetryPolicy

    async def run(self, row: Question, key: str, previous: Record) -> Record:
        """One question's record: its answer (given, from an earlier run, or upstream's) and the teacher's
        correction, or the stage that failed and its error."""
        record: Record = {"key": key, "question": row.question, "status": "ok", "attempts": 0}
        answer = row.answer if row.answer is not None else previous.get("answer")
        record["answer_source"] = "input" if row.answer is not None else "upstream"
        if answer is None:
            value = {self.input_key: row.question} if self.input_key else row.question
            config = {"run_name": "synthesize.upstream"}
            try:
                out, attempts = await call_with_retries(
                    lambda: ainvoke(self.upstream, value, config=config), self.policy
                )
                answer = output_text(out, what="the upstream model").strip()
            except (JobFailed, TypeError) as exc:
                return {**record, "status": "error", "stage": "upstream", "error": str(exc)}
            record["attempts"] += attempts
        record["answer"] = answer
        if not answer.strip():
            return {**record, "correction": None}
        messages = self.prompt.messages(row.question, answer)
        config = {"run_name": "synthesize.teacher"}
        try:
            if isinstance(self.teacher, Aligner):  # joins the micro-batch of concurrent questions
                result, attempts = await call_with_retries(
                    lambda: self.teacher.acorrect(row.question, answer), self.policy
                )
                correction = result.corrected
            elif _corrects(self.teacher):  # an Aligner elsewhere (e.g. `RayAligner`): a batch of one
                results, attempts = await call_with_retries(
                    lambda: self.teacher.acorrect_batch([(row.question, answer)], 1), self.policy
                )
                correction = results[0].corrected
            else:
                out, attempts = await call_with_retries(
                    lambda: ainvoke(self.teacher, messages, config=config), self.policy
                )
                correction = clean_correction(output_text(out, what="the teacher model"))
        except (JobFailed, TypeError) as exc:
            return {**record, "status": "error", "stage": "teacher", "error": str(exc)}
        record["attempts"] += attempts
        return {**record, "correction": correction}


def _corrects(teacher: Any) -> bool:
    """Whether ``teacher`` is an Aligner (or an object that corrects as one, such as `RayAligner`)."""
    return isinstance(teacher, Aligner) or hasattr(teacher, "acorrect_batch")
