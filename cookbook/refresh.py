"""Re-run the cookbook notebooks with the shipped demo Aligner and store their outputs in place.

`make notebooks`, or `python -m cookbook.refresh [05 ...]` for some of them. Each notebook runs in a
fresh kernel whose working directory is a temporary folder, so what it writes (reports, datasets,
checkpoints) lands there, never in the checkout; the run fails if the checkout gained a file. The
notebook is written back with its outputs and execution counts but without volatile metadata
(timings, the kernel's Python version), so a refresh diffs only where the outputs changed.
The tests (tests/test_*_notebook.py) run the notebooks the same way, with tiny models.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "cookbook").glob("[0-9][0-9]_*.ipynb"))
# The notebooks' knobs (another model, fewer rows or steps): unset, so stored outputs show the defaults.
KNOBS = (
    "ALIGNER_MODEL",
    "ALIGNER_MAX_NEW_TOKENS",
    "ALIGNER_EVAL_N",
    "ALIGNER_WORKDIR",
    "ALPACA_EVAL_FILE",
    "OAIF_STEPS",
    "BOOTSTRAP_ROUNDS",
)
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"  # plots become image/png outputs
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def untracked_files(root: Path = ROOT) -> set[str]:
    """Files in the checkout that git neither tracks nor ignores: where a stray notebook write shows up."""
    listing = subprocess.run(
        ["git", "-C", str(root), "ls-files", "--others", "--exclude-standard", "-z"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {name for name in listing.split("\0") if name}


def execute(path: Path, cwd: Path, *, timeout: int = 600) -> Any:
    """Run the notebook at ``path`` in a fresh kernel working in ``cwd``; return it with its outputs.

    Raises nbclient's ``CellExecutionError`` on a failing cell, and ``RuntimeError`` if the run left new
    files in the checkout (notebooks write under their working directory only).
    """
    import nbclient
    import nbformat

    notebook = nbformat.read(path, as_version=4)
    before = untracked_files()
    client = nbclient.NotebookClient(
        notebook,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(cwd)}},
        record_timing=False,  # no per-cell timestamps in the stored notebook
        coalesce_streams=True,  # one stream output per print run, progress bars at their final state
    )
    client.execute()
    written = sorted(untracked_files() - before)
    if written:
        raise RuntimeError(f"{path.name} wrote into the checkout: {', '.join(written)}")
    return notebook


def output_problems(committed: Any, executed: Any | None = None) -> list[str]:
    """What is wrong with the stored outputs of ``committed``, a notebook as read from disk.

    Every code cell ran, in order, without an error or a widget (which needs a live frontend); with
    ``executed``, a fresh run of the same notebook, every cell that printed or plotted there has stored
    outputs, plots included.
    """
    problems = []
    code = [cell for cell in committed.cells if cell.cell_type == "code"]
    if [cell.get("execution_count") for cell in code] != list(range(1, len(code) + 1)):
        problems.append("the code cells were not run once each, top to bottom (execution counts)")
    if "widgets" in committed.metadata:
        problems.append("widget state in the notebook metadata")
    fresh = (
        [cell for cell in executed.cells if cell.cell_type == "code"] if executed is not None else [None] * len(code)
    )
    for number, (cell, new) in enumerate(zip(code, fresh, strict=True), start=1):
        kinds = [out.get("output_type") for out in cell.get("outputs", [])]
        if "error" in kinds:
            problems.append(f"code cell {number}: an error output")
        if any(WIDGET_VIEW in out.get("data", {}) for out in cell.get("outputs", [])):
            problems.append(f"code cell {number}: a widget output")
        if "execution" in cell.metadata:
            problems.append(f"code cell {number}: execution timings in its metadata")
        if new is not None and new.get("outputs") and not cell.get("outputs"):
            problems.append(f"code cell {number}: no stored outputs, but a run prints some")
        if new is not None and _has_image(new) and not _has_image(cell):
            problems.append(f"code cell {number}: no stored image, but a run shows one")
    return problems


def _has_image(cell: Any) -> bool:
    return any("image/png" in out.get("data", {}) for out in cell.get("outputs", []))


def refresh(path: Path, *, timeout: int) -> float:
    """Execute ``path`` in a temporary directory and write it back with its outputs; return seconds taken."""
    import nbformat

    start = time.perf_counter()
    metadata = nbformat.read(path, as_version=4).metadata
    with tempfile.TemporaryDirectory(prefix=f"notebook-{path.stem[:2]}-") as cwd:
        notebook = execute(path, Path(cwd), timeout=timeout)
    notebook.metadata = metadata  # as committed: no kernel version, no widget state
    for cell in notebook.cells:
        cell.metadata.pop("execution", None)
    problems = output_problems(notebook)
    if problems:
        raise RuntimeError(f"{path.name}: " + "; ".join(problems))
    nbformat.write(notebook, path)
    return time.perf_counter() - start


def _select(names: Sequence[str]) -> list[Path]:
    if not names:
        return NOTEBOOKS
    chosen = []
    for name in names:
        found = [p for p in NOTEBOOKS if p.name.startswith(Path(name).name)]
        if len(found) != 1:
            raise SystemExit(f"{name!r} names {len(found)} of {', '.join(p.name for p in NOTEBOOKS)}; give one.")
        chosen += found
    return chosen


def main(argv: Sequence[str] | None = None) -> int:
    """Refresh the stored outputs of the named notebooks (all of them by default)."""
    parser = argparse.ArgumentParser(prog="python -m cookbook.refresh", description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", help="file names or their start (e.g. 05); default: all")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds one cell may take (default 3600)")
    args = parser.parse_args(argv)
    paths = _select(args.notebooks)
    for knob in KNOBS:
        os.environ.pop(knob, None)
    os.environ["MPLBACKEND"] = INLINE_BACKEND
    for path in paths:
        print(f"{path.name}: running ...", flush=True)
        seconds = refresh(path, timeout=args.timeout)
        print(f"{path.name}: outputs stored ({seconds:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
