"""`cookbook/04_preference_learning_and_oaif.ipynb` executes end to end (tiny models, offline) and shows learning."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cookbook.refresh import execute, output_problems

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbclient")
pytest.importorskip("matplotlib", reason="the notebook plots the logged metrics")

NOTEBOOK = Path(__file__).resolve().parents[1] / "cookbook" / "04_preference_learning_and_oaif.ipynb"


@pytest.mark.slow
def test_preference_notebook_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # tiny models: one thread is fastest on a shared CPU
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.delenv("ALIGNER_MODEL", raising=False)
    notebook = execute(NOTEBOOK, tmp_path, timeout=300)  # fails if it wrote into the checkout
    outputs = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "\n".join(out.get("text", "") for out in outputs)
    assert re.search(r"^0$", text, re.M) and re.search(r"^None$", text, re.M)  # a label, then a both-order tie
    assert "120 steps logged" in text
    before, after = map(float, re.search(r"held-out prompts: ([\d.]+) -> ([\d.]+) tokens", text).groups())
    assert after < before - 3  # the instructed judge made responses shorter
    rounds = re.findall(r"^\s+(\d)\s+(\d+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)", text, re.M)
    assert [r[0] for r in rounds] == ["1", "2"] and "final model:" in text
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the metrics plot
    assert not output_problems(nbformat.read(NOTEBOOK, as_version=4), notebook)  # stored by `make notebooks`
