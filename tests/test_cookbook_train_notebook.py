"""`cookbook/01_train_a_custom_aligner.ipynb` executes end to end (the short training setting)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cookbook.refresh import execute, output_problems

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbclient")

NOTEBOOK = Path(__file__).resolve().parents[1] / "cookbook" / "01_train_a_custom_aligner.ipynb"


@pytest.mark.slow
def test_train_notebook_runs(tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALIGNER_WORKDIR", str(tmp_path / "work"))
    monkeypatch.setenv("ALIGNER_MODEL", str(tiny_model_dir))
    notebook = execute(NOTEBOOK, tmp_path, timeout=600)  # fails if it wrote into the checkout
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "\n".join(o.get("text", "") for o in outputs)
    assert "exported to" in text and "exact_match" in text
    assert (tmp_path / "work" / "phase2" / "final" / "aligner_config.json").is_file()
    assert not output_problems(nbformat.read(NOTEBOOK, as_version=4), notebook)  # stored by `make notebooks`
