"""`cookbook/03_llamaindex_rag.ipynb` executes end to end (with a tiny Aligner instead of the demo)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cookbook.refresh import execute, output_problems

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbclient")

NOTEBOOK = Path(__file__).resolve().parents[1] / "cookbook" / "03_llamaindex_rag.ipynb"


@pytest.mark.slow
def test_llamaindex_rag_notebook_runs(tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALIGNER_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("ALIGNER_MAX_NEW_TOKENS", "12")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # tiny models: one thread is fastest on a shared CPU
    notebook = execute(NOTEBOOK, tmp_path, timeout=300)  # fails if it wrote into the checkout
    outputs = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "\n".join(out.get("text", "") for out in outputs)
    assert "chunks from ['returns.md', 'security.md', 'shipping.txt', 'support.md', 'team.txt']" in text
    assert "answer: - To reach customer support, e-mail helpdesk@northwind-example.com" in text  # section 0, no Aligner
    assert "support.md: changed=" in text and "LLM's own answer:" in text
    assert "[start] node_postprocessor: 2 item(s)" in text and "[end]   query_engine:" in text
    assert "(from returns.md)" in text and "original : Press enquiries go to" in text
    assert not output_problems(nbformat.read(NOTEBOOK, as_version=4), notebook)  # stored by `make notebooks`
