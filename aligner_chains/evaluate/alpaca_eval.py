"""AlpacaEval interchange: hand corrections to the AlpacaEval tool, read its annotations back as a report.

```python
from aligner_chains.evaluate.alpaca_eval import read_annotations, write_model_outputs

write_model_outputs(report, "ae/")   # ae/model_outputs.json (corrections), ae/reference_outputs.json (originals)
# alpaca_eval --model_outputs ae/model_outputs.json --reference_outputs ae/reference_outputs.json
report = read_annotations("ae/weighted_alpaca_eval_gpt4_turbo/annotations.json")
```

``model_outputs.json`` is AlpacaEval's format: a JSON list of ``{"instruction", "output", "generator",
"dataset"}``, here with ``"original_output"`` too, as in the Aligner-2B submissions to AlpacaEval (so
`load_items` reads the file back as correction items). ``reference_outputs.json`` holds the originals in the
same format: passed as ``--reference_outputs``, AlpacaEval judges each correction against its own original;
without it, against AlpacaEval's default reference model.

In AlpacaEval's ``annotations.json`` ``output_1`` is the reference, ``output_2`` the model evaluated, and
``preference`` runs from 1 (``output_1`` preferred) to 2 (``output_2`` preferred); 1.5, or 0 in older files,
is a draw. `read_annotations` turns each row into a verdict for ``output_2`` (above 1.5: win, below: loss),
so the report's win rate is this library's ``(wins − losses) / judged``; `alpaca_eval_win_rate` gives
AlpacaEval's own figure, the mean of ``preference − 1``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from aligner_chains.core.errors import DataError
from aligner_chains.evaluate.report import EvalReport, ItemResult, build_report
from aligner_chains.evaluate.runner import load_items
from aligner_chains.jobs import stable_key

__all__ = [
    "MODEL_OUTPUTS",
    "REFERENCE_OUTPUTS",
    "alpaca_eval_rows",
    "alpaca_eval_win_rate",
    "read_annotations",
    "write_model_outputs",
]

MODEL_OUTPUTS = "model_outputs.json"
REFERENCE_OUTPUTS = "reference_outputs.json"


def _name(label: str | None) -> str | None:
    """A model label without its folders (a local Aligner path becomes its last part)."""
    return None if label is None else Path(str(label).rstrip("/")).name or str(label)


def alpaca_eval_rows(
    source: EvalReport | str | Path | Iterable[Any],
    *,
    generator: str | None = None,
    dataset: str = "aligner-chains",
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """``(model_outputs, reference_outputs)`` rows for AlpacaEval from corrections.

    ``source``: an `EvalReport` (each corrected item once), or correction items as `load_items` reads them
    (a file of ``aligner-chains correct`` output, dicts, `EvalItem`s). ``generator`` names the corrected
    outputs; by default ``<aligner>_<upstream model>`` as the Aligner-2B submissions are named (e.g.
    ``aligner-2b_gpt-4-turbo-2024-04-09``). ``dataset`` fills rows that carry no ``dataset`` of their own.
    """
    triples: list[tuple[str, str, str, str | None, str]] = []  # question, original, corrected, upstream, dataset
    if isinstance(source, EvalReport):
        aligner = _name(source.aligner)
        seen: set[int] = set()
        for r in source.results:
            if r.corrected is None or r.index in seen:
                continue
            seen.add(r.index)
            upstream = r.group if source.group_by == "upstream_model" else None
            group_dataset = r.group if source.group_by == "dataset" and r.group else dataset
            triples.append((r.question, r.original, r.corrected, upstream, group_dataset))
    else:
        aligner = None
        for item in load_items(source):
            if item.corrected is None:
                raise DataError(f"Item {item.id or item.question[:40]!r} has no corrected answer for AlpacaEval.")
            row_dataset = item.group("dataset") or dataset
            triples.append((item.question, item.original, item.corrected, item.upstream_model, row_dataset))
    if not triples:
        raise DataError("No corrected answers to write: the source holds no corrected items.")
    model_rows, reference_rows = [], []
    for question, original, corrected, upstream, row_dataset in triples:
        name = generator or "_".join(p for p in (aligner or "corrected", _name(upstream)) if p)
        model_rows.append(
            {
                "instruction": question,
                "output": corrected,
                "generator": name,
                "dataset": row_dataset,
                "original_output": original,
            }
        )
        reference = _name(upstream) or "original"
        reference_rows.append(
            {"instruction": question, "output": original, "generator": reference, "dataset": row_dataset}
        )
    return model_rows, reference_rows


def write_model_outputs(
    source: EvalReport | str | Path | Iterable[Any],
    out_dir: str | Path,
    *,
    generator: str | None = None,
    dataset: str = "aligner-chains",
) -> dict[str, Path]:
    """Write ``model_outputs.json`` (corrections) and ``reference_outputs.json`` (originals) into ``out_dir``
    (see `alpaca_eval_rows`); returns their paths as ``{"model_outputs", "reference_outputs"}``."""
    model_rows, reference_rows = alpaca_eval_rows(source, generator=generator, dataset=dataset)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"model_outputs": out / MODEL_OUTPUTS, "reference_outputs": out / REFERENCE_OUTPUTS}
    for key, rows in (("model_outputs", model_rows), ("reference_outputs", reference_rows)):
        paths[key].write_text(json.dumps(rows, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return paths


def _annotation_rows(source: str | Path | Iterable[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    if isinstance(source, (str, Path)):
        where = str(source)
        try:
            rows = json.loads(Path(source).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"Cannot read AlpacaEval annotations {where!r}: {exc}.") from exc
    else:
        where, rows = "annotations", list(source)
    if not isinstance(rows, list) or not rows:
        raise DataError(f"{where}: expected a non-empty JSON list of annotation objects.")
    for i, row in enumerate(rows):
        fields = ("instruction", "output_1", "output_2", "preference")
        missing = [f for f in fields if not isinstance(row, dict) or f not in row]
        if missing:
            raise DataError(
                f"{where}: row {i} lacks {missing}; AlpacaEval annotations have instruction, output_1 (reference), "
                "output_2 (model), preference."
            )
    return rows, where


def _preference(value: Any, where: str) -> float | None:
    """A preference as a float (0, AlpacaEval 1.0's draw, read as 1.5); None when the annotator gave none."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value == 0 or 1 <= value <= 2):
        raise DataError(f"{where}: preference {value!r} is not a number from 1 to 2 (or 0 for a draw).")
    return 1.5 if value == 0 else float(value)


def read_annotations(
    source: str | Path | Iterable[dict[str, Any]],
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> EvalReport:
    """An `EvalReport` from AlpacaEval annotations (a path to ``annotations.json`` or its rows).

    One dimension, named after the ``annotator``; ``output_1`` is the report's original, ``output_2`` its
    corrected answer, grouped by ``generator_2``; a missing preference counts as unparseable. Edit statistics
    compare ``output_2`` with ``output_1`` (meaningful when the reference outputs were the originals).
    """
    rows, where = _annotation_rows(source)
    dimension = str(rows[0].get("annotator") or "alpaca_eval")
    results, edit_pairs = [], []
    for i, row in enumerate(rows):
        preference = _preference(row["preference"], f"{where}: row {i}")
        group = row.get("generator_2")
        base = {
            "index": i,
            "key": stable_key(row["instruction"], row["output_1"], row["output_2"]),
            "dimension": dimension,
            "group": None if group is None else str(group),
            "question": row["instruction"],
            "original": row["output_1"],
            "corrected": row["output_2"],
        }
        if preference is None:
            results.append(ItemResult(**base, status="unparseable"))
        else:
            verdict = "win" if preference > 1.5 else "loss" if preference < 1.5 else "tie"
            results.append(ItemResult(**base, status="ok", verdict=verdict))
        edit_pairs.append((base["group"], row["output_1"], row["output_2"]))
    return build_report(
        results,
        n_items=len(rows),
        dimensions=[dimension],
        judges={dimension: f"AlpacaEval({dimension})"},
        group_by="generator",
        aligner=None,
        edit_pairs=edit_pairs,
        n_resamples=n_resamples,
        confidence=confidence,
        seed=seed,
    )


def alpaca_eval_win_rate(source: str | Path | Iterable[dict[str, Any]]) -> float:
    """AlpacaEval's win rate of ``output_2``, from 0 to 1: the mean of ``preference − 1`` (draws count 0.5)."""
    rows, where = _annotation_rows(source)
    prefs = [p for i, row in enumerate(rows) if (p := _preference(row["preference"], f"{where}: row {i}")) is not None]
    if not prefs:
        raise DataError(f"{where}: no row has a preference.")
    return sum(p - 1 for p in prefs) / len(prefs)
