"""AlpacaEval interchange: ``model_outputs.json`` in the schema of the shipped Aligner-2B traces (the slice in
tests/fixtures), reference outputs for judging corrections against their originals, and annotations read back
into a report with AlpacaEval's preference convention (1: output_1, 2: output_2, 1.5 or 0: draw)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from aligner_chains.core.errors import DataError
from aligner_chains.evaluate import (
    CallableJudge,
    alpaca_eval_win_rate,
    evaluate,
    load_items,
    read_annotations,
    write_model_outputs,
)
from aligner_chains.evaluate.alpaca_eval import alpaca_eval_rows

SLICE = Path(__file__).parent / "fixtures" / "alpaca_eval_aligner2b_slice.json"
GENERATOR = "aligner-2b_gpt-4-turbo-2024-04-09"


def test_model_outputs_have_the_schema_of_the_shipped_aligner_2b_traces(tmp_path: Path) -> None:
    shipped = json.loads(SLICE.read_text(encoding="utf-8"))
    paths = write_model_outputs(load_items(SLICE), tmp_path / "ae", generator=GENERATOR, dataset="helpful_base")
    written = json.loads(paths["model_outputs"].read_text(encoding="utf-8"))
    assert paths["model_outputs"].name == "model_outputs.json"
    assert len(written) == len(shipped) == 101
    for ours, theirs in zip(written, shipped, strict=True):
        assert set(theirs) <= set(ours) and set(ours) - set(theirs) == {"dataset"}  # AlpacaEval's own column
        assert {k: ours[k] for k in theirs} == theirs  # same texts, same generator, field for field
        assert all(isinstance(v, str) for v in ours.values())
    # the file reads back as correction items, like the shipped traces do
    again = load_items(paths["model_outputs"])
    assert [(i.question, i.original, i.corrected) for i in again] == [
        (i.question, i.original, i.corrected) for i in load_items(SLICE)
    ]
    reference = json.loads(paths["reference_outputs"].read_text(encoding="utf-8"))
    assert set(reference[0]) == {"instruction", "output", "generator", "dataset"}
    assert [r["output"] for r in reference] == [r["original_output"] for r in shipped]
    assert [r["instruction"] for r in reference] == [r["instruction"] for r in shipped]


def test_rows_from_a_report_are_named_aligner_then_upstream() -> None:
    items = [
        {"question": "Q1?", "answer": "Mail a@b.com", "corrected": "Mail [EMAIL]", "upstream_model": "gpt-4-turbo"},
        {"question": "Q2?", "answer": "Fine.", "corrected": "Fine.", "upstream_model": "org/llama-70b"},
    ]
    report = evaluate(items, [CallableJudge(lambda q, o, c: "tie", dimension=d) for d in ("a", "b")], progress=False)
    report = report.model_copy(update={"aligner": "/models/aligner-2b/"})
    model_rows, reference_rows = alpaca_eval_rows(report)
    assert [r["generator"] for r in model_rows] == ["aligner-2b_gpt-4-turbo", "aligner-2b_llama-70b"]  # once each
    assert [r["generator"] for r in reference_rows] == ["gpt-4-turbo", "llama-70b"]
    assert model_rows[0] == {
        "instruction": "Q1?",
        "output": "Mail [EMAIL]",
        "generator": "aligner-2b_gpt-4-turbo",
        "dataset": "aligner-chains",
        "original_output": "Mail a@b.com",
    }
    with pytest.raises(DataError, match="no corrected answer"):
        alpaca_eval_rows([{"question": "Q?", "answer": "A."}])


def _annotation(i: int, preference: object) -> dict:
    """One row of AlpacaEval's annotations.json (the columns its README lists, with its cost and time columns)."""
    return {
        "instruction": f"Instruction {i}",
        "output_1": f"original answer {i}",
        "generator_1": "gpt-4-turbo-2024-04-09",
        "dataset": "helpful_base",
        "output_2": f"corrected answer {i}",
        "generator_2": GENERATOR,
        "annotator": "weighted_alpaca_eval_gpt4_turbo",
        "preference": preference,
        "price_per_example": 0.0131,
        "time_per_example": 0.81,
        "raw_completion": {"logprobs": None},
    }


def test_annotations_read_back_into_a_report(tmp_path: Path) -> None:
    prefs = [1.93, 1.62, 1.5, 1.0000001, 1.2, 0, 2, None, float("nan")]
    path = tmp_path / "annotations.json"
    rows = [_annotation(i, p) for i, p in enumerate(prefs)]
    path.write_text(json.dumps(rows).replace("NaN", "null"), encoding="utf-8")
    report = read_annotations(path)
    row = report.win_rate()
    assert report.dimensions == ["weighted_alpaca_eval_gpt4_turbo"] and report.group_by == "generator"
    assert (row.wins, row.ties, row.losses, row.unparseable) == (3, 2, 2, 2)
    assert row.win_rate == pytest.approx((3 - 2) / 7)
    assert report.results[0].original == "original answer 0" and report.results[0].corrected == "corrected answer 0"
    assert report.groups == [GENERATOR] and report.edits.n == 9
    # AlpacaEval's own figure: mean(preference - 1), a 0 counted as the 1.5 draw, missing ones left out
    known = [1.93, 1.62, 1.5, 1.0000001, 1.2, 1.5, 2]
    assert alpaca_eval_win_rate(rows[:-1]) == pytest.approx(sum(p - 1 for p in known) / len(known))
    assert not math.isnan(alpaca_eval_win_rate(path))


def test_malformed_annotations_are_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"row 0 lacks \['preference'\]"):
        read_annotations([{k: v for k, v in _annotation(0, 2).items() if k != "preference"}])
    with pytest.raises(DataError, match="preference 3.5 is not a number from 1 to 2"):
        read_annotations([_annotation(0, 3.5)])
    with pytest.raises(DataError, match="preference 'B' is not a number"):
        read_annotations([_annotation(0, "B")])
    with pytest.raises(DataError, match="non-empty JSON list"):
        read_annotations([])
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="Cannot read AlpacaEval annotations"):
        read_annotations(tmp_path / "bad.json")
    with pytest.raises(DataError, match="no row has a preference"):
        alpaca_eval_win_rate([_annotation(0, None)])
