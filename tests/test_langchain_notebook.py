"""`cookbook/02_langchain_quickstart.ipynb` executes end to end (with a tiny Aligner instead of the demo)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cookbook.refresh import execute, output_problems

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbclient")
pytest.importorskip("langchain.agents", reason="the notebook's agent section needs the `langchain` extra")

NOTEBOOK = Path(__file__).resolve().parents[1] / "cookbook" / "02_langchain_quickstart.ipynb"


@pytest.mark.slow
def test_quickstart_notebook_runs(tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALIGNER_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("ALIGNER_MAX_NEW_TOKENS", "12")
    notebook = execute(NOTEBOOK, tmp_path, timeout=300)  # fails if it wrote into the checkout
    text = "\n".join(
        out.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for out in cell.get("outputs", [])
    )
    assert "original : Sydney is the capital of Australia." in text
    assert "final answer was: Write to support@example.com" in text
    assert not [o for c in notebook.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not output_problems(nbformat.read(NOTEBOOK, as_version=4), notebook)  # stored by `make notebooks`
