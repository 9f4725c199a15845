"""The Aligner paper's evaluation in one call: load its evaluation sets, get the upstream answers, correct
them with an Aligner, judge each set on the paper's dimensions, score with reward and cost models, and
report per dataset and per dimension.

```python
from aligner_chains.evaluate.protocol import evaluate_paper

report = evaluate_paper(
    ["beavertails", "harmfulqa", "truthfulqa"],
    aligner="aligner/aligner-7b-v1.0",
    upstream=upstream_chat_model,          # answers the questions (or answers="answers.jsonl")
    judge=gpt4,                            # a chat model: the "aligner-paper" judge presets
    reward_model="PKU-Alignment/beaver-7b-v1.0-reward",
    cost_model="PKU-Alignment/beaver-7b-v1.0-cost",
    log_dir="paper_eval/",                 # answers.jsonl, judgments.jsonl: re-running resumes
)
report.save("paper_eval/")
```

Which set is judged on which dimension is the paper's pairing (`EvalSet.dimensions`): BeaverTails and
HarmfulQA on helpfulness and harmlessness, Empathetic Dialogues and DialogSum on helpfulness, TruthfulQA on
honesty. Reward and cost models score every set. The report's groups are the datasets (``group_by``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from aligner_chains.core.errors import ConfigError, DataError
from aligner_chains.evaluate.datasets import EvalSet, eval_set, load_eval_questions, read_table
from aligner_chains.evaluate.judges import CallableJudge, Judge, LLMJudge, as_judge
from aligner_chains.evaluate.report import EvalReport, ItemResult, build_report
from aligner_chains.evaluate.runner import EvalItem, aevaluate
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
)

__all__ = ["ANSWERS_LOG", "JUDGMENTS_LOG", "PAPER_PRESET", "aevaluate_paper", "evaluate_paper", "paper_judges"]

PAPER_PRESET = "aligner-paper"
ANSWERS_LOG = "answers.jsonl"
JUDGMENTS_LOG = "judgments.jsonl"


def paper_judges(judge: Any, dimensions: Sequence[str], *, preset: str = PAPER_PRESET) -> list[Judge]:
    """One judge per dimension: a chat model gets the preset's prompts (`LLMJudge.preset`); a function
    ``fn(question, original, corrected, dimension=...)`` becomes a `CallableJudge` per dimension; a mapping
    gives each dimension its own judge or function; a `Judge` serves the dimension it names."""
    if isinstance(judge, Mapping):
        missing = [d for d in dimensions if d not in judge]
        if missing:
            raise ConfigError(f"The judges given by dimension ({sorted(judge)}) lack {missing}.")
        return [
            j if isinstance(j, Judge) else CallableJudge(j, dimension=d) for d, j in ((d, judge[d]) for d in dimensions)
        ]
    if isinstance(judge, Judge):
        if judge.dimension not in dimensions:
            raise ConfigError(f"Judge {judge.name!r} judges {judge.dimension!r}; the set needs {list(dimensions)}")
        return [judge]
    if hasattr(judge, "ainvoke"):
        return [LLMJudge.preset(judge, d, preset) for d in dimensions]
    if callable(judge):
        return [CallableJudge(judge, dimension=d) for d in dimensions]
    return [as_judge(judge)]  # raises with the accepted kinds


def _score_judge(model: Any, kind: str, options: dict[str, Any]) -> Judge:
    if isinstance(model, Judge):
        return model
    from aligner_chains.evaluate.scores import ScoreModelJudge

    return ScoreModelJudge(str(model), kind, **options)  # type: ignore[arg-type]


def _answers_by_question(answers: str | Path | Sequence[Any]) -> dict[str, list[EvalItem]]:
    """Answer rows (question, answer, optional upstream_model; any format `read_table` reads) by question text."""
    rows = read_table(answers) if isinstance(answers, (str, Path)) else list(answers)
    found: dict[str, list[EvalItem]] = {}
    for i, row in enumerate(rows):
        item = EvalItem.from_row(row, f"{answers if isinstance(answers, (str, Path)) else 'answers'}: row {i}")
        found.setdefault(item.question.strip(), []).append(item)
    return found


def _item(row: dict[str, Any], answer: str, upstream: str | None) -> EvalItem:
    meta = {k: v for k, v in row.items() if k not in ("id", "question", "answer", "upstream_model")}
    return EvalItem(question=row["question"], original=answer, upstream_model=upstream, id=str(row["id"]), meta=meta)


async def _answer(upstream: Any, policy: RetryPolicy, key: str, question: str) -> Record:
    try:
        out, attempts = await call_with_retries(
            lambda: ainvoke(upstream, question, config={"run_name": "evaluate.upstream"}), policy
        )
        answer = output_text(out, what="the upstream model")
        return {"type": "answer", "key": key, "answer": answer, "attempts": attempts}
    except (JobFailed, TypeError) as exc:
        return {"type": "answer", "key": key, "answer": None, "error": str(exc)}


def _upstream_name(upstream: Any, given: str | None) -> str:
    if given:
        return given
    for attr in ("model_name", "model", "model_id", "name", "__name__"):
        value = getattr(upstream, attr, None)
        if isinstance(value, str) and value:
            return value
    return type(upstream).__name__


async def aevaluate_paper(
    datasets: Sequence[str | EvalSet],
    *,
    aligner: Any,
    judge: Any = None,
    reward_model: Any = None,
    cost_model: Any = None,
    upstream: Any = None,
    upstream_name: str | None = None,
    answers: str | Path | Sequence[Any] | None = None,
    paths: Mapping[str, str | Path] | None = None,
    n: int | None = None,
    seed: int = 0,
    log_dir: str | Path | None = None,
    group_by: str = "dataset",
    preset: str = PAPER_PRESET,
    score_options: Mapping[str, Any] | None = None,
    max_concurrency: int = 8,
    retries: int = 3,
    backoff: float = 1.0,
    batch_size: int = 16,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    progress: bool = True,
    cache_dir: str | Path | None = None,
) -> EvalReport:
    """Async `evaluate_paper` (same arguments)."""
    specs = [d if isinstance(d, EvalSet) else eval_set(d) for d in datasets]
    if not specs:
        raise ConfigError("No evaluation set given: name at least one, e.g. 'beavertails' (see EVAL_SETS).")
    scorers = [
        _score_judge(model, kind, dict(score_options or {}))
        for model, kind in ((reward_model, "reward"), (cost_model, "cost"))
        if model is not None
    ]
    if judge is None and not scorers:
        raise ConfigError("Nothing judges: pass judge= (a chat model or a function), reward_model= or cost_model=.")
    if aligner is None:
        raise ConfigError("The protocol corrects the upstream answers: pass aligner= (an Aligner or a model name).")
    if not hasattr(aligner, "acorrect_batch"):
        from aligner_chains.core import resolve_aligner

        aligner = resolve_aligner(aligner)
    given = _answers_by_question(answers) if answers is not None else None
    name = _upstream_name(upstream, upstream_name) if upstream is not None else None
    policy = RetryPolicy(retries=retries, backoff=backoff)
    log_path = None if log_dir is None else Path(log_dir)
    results: list[ItemResult] = []
    edit_pairs: list[tuple[str | None, str, str]] = []
    judge_names: dict[str, str] = {}
    higher: dict[str, bool] = {}
    dimensions: list[str] = []
    n_items = 0
    for spec in specs:
        path = (paths or {}).get(spec.name)
        questions = load_eval_questions(spec, path=path, n=n, seed=seed, cache_dir=cache_dir)
        items, failed = await _items(
            spec, questions, given, upstream, name, policy, log_path, max_concurrency, progress
        )
        judges = (paper_judges(judge, spec.dimensions, preset=preset) if judge is not None else []) + scorers
        for j in judges:
            judge_names.setdefault(j.dimension, j.name)
            higher.setdefault(j.dimension, getattr(j, "higher_is_better", True))
            if j.dimension not in dimensions:
                dimensions.append(j.dimension)
        offset = n_items
        if items:
            report = await aevaluate(
                items,
                judges,
                aligner=aligner,
                group_by=group_by,
                log=None if log_path is None else log_path / JUDGMENTS_LOG,
                max_concurrency=max_concurrency,
                retries=retries,
                backoff=backoff,
                batch_size=batch_size,
                n_resamples=n_resamples,
                confidence=confidence,
                seed=seed,
                progress=progress,
            )
            seen: set[int] = set()
            for r in report.results:
                results.append(r.model_copy(update={"index": r.index + offset}))
                if r.corrected is not None and r.index not in seen:
                    seen.add(r.index)
                    edit_pairs.append((r.group, r.original, r.corrected))
        n_items += len(items)
        for i, (row, error) in enumerate(failed):  # questions whose upstream answer failed: errors, retried next run
            group = {"dataset": spec.name, "upstream_model": name}.get(group_by, row.get(group_by))
            group = None if group is None else str(group)
            results += [
                ItemResult(
                    index=n_items + i,
                    key=stable_key(row["id"], row["question"], name),
                    id=str(row["id"]),
                    dimension=j.dimension,
                    group=group,
                    question=row["question"],
                    original="",
                    status="error",
                    error=f"upstream answer failed: {error}",
                )
                for j in judges
            ]
        n_items += len(failed)
    return build_report(
        results,
        n_items=n_items,
        dimensions=dimensions,
        judges=judge_names,
        group_by=group_by,
        aligner=aligner.model_name,
        edit_pairs=edit_pairs,
        n_resamples=n_resamples,
        confidence=confidence,
        seed=seed,
        higher_is_better=higher,
    )


async def _items(
    spec: EvalSet,
    questions: list[dict[str, Any]],
    given: dict[str, list[EvalItem]] | None,
    upstream: Any,
    name: str | None,
    policy: RetryPolicy,
    log_dir: Path | None,
    max_concurrency: int,
    progress: bool,
) -> tuple[list[EvalItem], list[tuple[dict[str, Any], str]]]:
    """Evaluation items of one set with their upstream answers: from ``given`` answers, else the upstream model
    (resumable through ``answers.jsonl``), else the set's own answers; and the questions whose answer failed."""
    if given is not None:
        missing = [q for q in questions if q["question"].strip() not in given]
        if missing:
            raise DataError(
                f"The answers given hold no answer to {len(missing)} of the {len(questions)} {spec.name} questions, "
                f"e.g. {missing[0]['question'][:80]!r}; answer the questions exactly as load_eval_questions "
                f"({spec.name!r}) words them."
            )
        return [_item(q, a.original, a.upstream_model) for q in questions for a in given[q["question"].strip()]], []
    if upstream is None:
        if spec.answer_field is None:
            raise ConfigError(
                f"Evaluation set {spec.name!r} holds questions only: pass upstream= (a chat model that answers "
                "them; CLI --upstream) or answers= (a file of question/answer rows; CLI --answers)."
            )
        return [_item(q, q["answer"], q.get("upstream_model")) for q in questions], []
    keys = [stable_key(q["id"], q["question"], name) for q in questions]
    with JobLog(None if log_dir is None else log_dir / ANSWERS_LOG, lambda r: r.get("key")) as journal:
        todo = [i for i, key in enumerate(keys) if (journal.get(key) or {}).get("answer") is None]
        await run_jobs(
            [partial(_answer, upstream, policy, keys[i], questions[i]["question"]) for i in todo],
            journal,
            max_concurrency=max_concurrency,
            total=len(keys),
            done=len(keys) - len(todo),
            unit="answer",
            desc=f"answer {spec.name}",
            progress=progress,
        )
        records = [journal.get(key) or {} for key in keys]
    pairs = list(zip(questions, records, strict=True))
    items = [_item(q, r["answer"], name) for q, r in pairs if r.get("answer") is not None]
    failed = [(q, str(r.get("error"))) for q, r in pairs if r.get("answer") is None]
    return items, failed


def evaluate_paper(datasets: Sequence[str | EvalSet], **options: Any) -> EvalReport:
    """Run the Aligner paper's evaluation protocol on ``datasets`` (names in `EVAL_SETS`) and return one report.

    - Questions: `load_eval_questions` (``paths={name: local path}``, ``n`` overrides the paper's subset size,
      ``seed`` the sample).
    - Upstream answers: ``answers=`` (rows of question, answer, upstream_model; matched by question text, one
      item per row), else ``upstream=`` (a chat model, runnable or function; ``upstream_name=`` labels it), else
      the set's own answers (``beavertails-30k``).
    - ``aligner``: corrects every answer (an `Aligner` or a model name).
    - ``judge``: a chat model (``preset`` prompts, both orders), a function of (question, original, corrected,
      dimension), or ``{dimension: judge}``; ``reward_model``/``cost_model``: score-model paths (or judges),
      built with ``score_options`` (device, dtype, allow_pickle, ...).
    - ``log_dir``: ``answers.jsonl`` and ``judgments.jsonl``, so an interrupted run resumes.

    Works from sync code and inside a running event loop (Jupyter); in async code use `aevaluate_paper`.
    """
    return run_sync(lambda: aevaluate_paper(datasets, **options))
