"""`cookbook/05_evaluate_and_synthesize.ipynb` executes end to end (a tiny Aligner instead of the demo)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cookbook.refresh import execute, output_problems

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbclient")

NOTEBOOK = Path(__file__).resolve().parents[1] / "cookbook" / "05_evaluate_and_synthesize.ipynb"


@pytest.mark.slow
def test_evaluate_and_synthesize_notebook_runs(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALIGNER_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("ALIGNER_MAX_NEW_TOKENS", "12")
    monkeypatch.setenv("ALIGNER_EVAL_N", "24")
    monkeypatch.delenv("ALPACA_EVAL_FILE", raising=False)
    notebook = execute(NOTEBOOK, tmp_path, timeout=300)  # fails if it wrote into the checkout
    assert not [o for c in notebook.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    text = "\n".join(
        out.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for out in cell.get("outputs", [])
    )
    # part 1: a report per dimension and kind, saved with its plot
    assert "| privacy | all | 24 |" in text and "| safety | refuse |" in text
    assert (tmp_path / "eval_report" / "win_rate.png").read_bytes()[:4] == b"\x89PNG"
    # part 2: the real Aligner-2B corrections of the shipped slice (fixed numbers)
    assert "Edit statistics of 101 Aligner-2B corrections" in text
    assert "changed: 99.0%" in text and "copied fraction: mean 37.2%, median 27.0%" in text
    assert "length ratio: mean 1.04, median 0.83" in text
    # part 3: a dataset that `train sft` reads
    assert "training rows, e.g." in text and (tmp_path / "synth" / "qac.jsonl").is_file()
    # part 4: the Aligner paper's protocol on the fixture slices: each set on its dimensions, scores, AlpacaEval
    assert "truthfulqa/truthful_qa" in text and "| honesty | truthfulqa | 4 |" in text
    assert "| harmlessness | harmfulqa | 5 |" in text and "| cost | all | 20 | lower |" in text
    assert "'dataset': 'beavertails'" in text and "'original_output'" in text
    assert (tmp_path / "paper_eval" / "report.json").is_file()
    assert (tmp_path / "paper_eval" / "alpaca_eval" / "model_outputs.json").is_file()
    assert not output_problems(nbformat.read(NOTEBOOK, as_version=4), notebook)  # stored by `make notebooks`
