"""Writing benchmark figures: one section per benchmark, with machine, date and command, into the results file.

The results file is ``benchmarks/RESULTS.md`` (the committed figures) unless ``$BENCH_RESULTS`` names
another; ``make bench`` (`benchmarks.run`) names a new ``benchmarks/results-<UTC date-time>.md`` unless
asked to update RESULTS.md (``make bench UPDATE=1``).
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
#: Environment variable naming the file sections are written into instead of RESULTS.md.
TARGET_ENV = "BENCH_RESULTS"
HEADER = "# Benchmark results\n\nMeasured numbers, one section per benchmark; each section says how to reproduce it.\n"


def target() -> Path:
    """The results file `write_section` writes into: ``$BENCH_RESULTS`` when set, else RESULTS.md."""
    named = os.environ.get(TARGET_ENV, "").strip()
    return Path(named) if named else RESULTS


def new_results_file(directory: Path = RESULTS.parent) -> Path:
    """A fresh ``results-<UTC date-time>.md`` path in ``directory`` (``benchmarks/``, where git ignores it)."""
    return directory / f"results-{dt.datetime.now(dt.timezone.utc).strftime('%Y%m%dT%H%M%SZ')}.md"


@contextmanager
def writing_to(path: Path) -> Iterator[Path]:
    """Within: every `write_section` (in this process and the ones it starts) writes into ``path``."""
    before = os.environ.get(TARGET_ENV)
    os.environ[TARGET_ENV] = str(path)
    try:
        yield path
    finally:
        if before is None:
            os.environ.pop(TARGET_ENV, None)
        else:
            os.environ[TARGET_ENV] = before


def machine() -> str:
    """CPU model, cores, load, Python and OS, as one line."""
    cpu = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        found = re.search(r"^Model name:\s*(.+)$", out, re.MULTILINE)
        if found:
            cpu = found.group(1).strip()
    except OSError:
        pass
    load = ""
    if hasattr(os, "getloadavg"):
        load = f", 1-minute load average {os.getloadavg()[0]:.1f} at the end of the run (shared with other jobs)"
    return f"{cpu}, {os.cpu_count()} logical cores{load}, Python {platform.python_version()}, {platform.system()}"


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def write_section(title: str, lines: list[str]) -> None:
    """Replace (or append) the ``## title`` section of the results file (`target`) with ``lines``; other
    sections are kept."""
    path = target()
    heading = f"## {title}"
    section = "\n".join([heading, "", *lines, ""])
    text = path.read_text(encoding="utf-8") if path.exists() else HEADER
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.rstrip("\n") + "\n", encoding="utf-8")
    print(f"wrote the '{title}' section of {path}", file=sys.stderr)
