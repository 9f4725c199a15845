"""The cookbook notebooks are committed with the outputs of a real run (`make notebooks`), plots included.

Fast: reads the stored notebooks only. tests/test_*_notebook.py run them again, with tiny models, and
check there that every cell that prints has stored outputs and that a run writes nothing into the checkout.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cookbook.refresh import NOTEBOOKS, output_problems

nbformat = pytest.importorskip("nbformat")


def _outputs(path: Path) -> list[dict]:
    notebook = nbformat.read(path, as_version=4)
    return [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.get("outputs", [])]


def test_there_are_five_notebooks() -> None:
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_with_outputs(path: Path) -> None:
    """Every code cell ran once, in order, without an error; the outputs are those of a real run, not a test's."""
    assert not output_problems(nbformat.read(path, as_version=4))
    text = "\n".join(f"{out.get('text', '')}{out.get('data', {}).get('text/plain', '')}" for out in _outputs(path))
    assert text.strip(), "no outputs: run `make notebooks`"
    assert "pytest-of-" not in text and "/tmp/pytest" not in text  # a test run's tiny models, not the demo
    assert "IProgress not found" not in text


@pytest.mark.parametrize("stem", ["04_preference_learning_and_oaif", "05_evaluate_and_synthesize"])
def test_plots_are_stored(stem: str) -> None:
    """The plots are PNG outputs, so they show where the repository is browsed."""
    assert any("image/png" in out.get("data", {}) for out in _outputs(Path(NOTEBOOKS[0].parent, f"{stem}.ipynb")))


def test_output_problems_names_what_is_wrong() -> None:
    """The checker flags a cell that never ran, an error, a widget, timings, and outputs a fresh run has."""
    v4 = nbformat.v4
    committed = v4.new_notebook(cells=[v4.new_code_cell("print(1)"), v4.new_code_cell("1 / 0", execution_count=2)])
    committed.cells[1].outputs = [v4.new_output("error", ename="ZeroDivisionError", evalue="", traceback=[])]
    committed.cells[1].metadata["execution"] = {"iopub.status.busy": "2025-01-01T00:00:00Z"}
    fresh = v4.new_notebook(cells=[v4.new_code_cell("print(1)"), v4.new_code_cell("1 / 0")])
    fresh.cells[0].outputs = [v4.new_output("stream", name="stdout", text="1\n")]
    assert output_problems(committed, fresh) == [
        "the code cells were not run once each, top to bottom (execution counts)",
        "code cell 1: no stored outputs, but a run prints some",
        "code cell 2: an error output",
        "code cell 2: execution timings in its metadata",
    ]
    committed.cells[1].outputs = [v4.new_output("display_data", data={"application/vnd.jupyter.widget-view+json": {}})]
    assert "code cell 2: a widget output" in output_problems(committed)
