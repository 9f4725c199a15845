"""Writing benchmark figures into RESULTS.md: one section per benchmark, with machine, date and command."""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
HEADER = "# Benchmark results\n\nMeasured numbers, one section per benchmark; each section says how to reproduce it.\n"


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
    """Replace (or append) the ``## title`` section of RESULTS.md with ``lines``; other sections are kept."""
    heading = f"## {title}"
    section = "\n".join([heading, "", *lines, ""])
    text = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else HEADER
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    RESULTS.write_text(text.rstrip("\n") + "\n", encoding="utf-8")
    print(f"wrote the '{title}' section of {RESULTS}", file=sys.stderr)
