"""A seconds-long smoke run of the soak benchmark: its scenarios run, count no errors, and leave RESULTS.md alone."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")

from benchmarks import soak
from benchmarks.results import RESULTS


@pytest.mark.slow
def test_soak_quick_run_has_no_errors(capsys: pytest.CaptureFixture[str]) -> None:
    before = RESULTS.read_text(encoding="utf-8")
    assert soak.main(["--quick", "--no-write"]) == 0
    err = capsys.readouterr().err
    for scenario in ("slow clients", "abandoned /v1/completions", "abandoned /v1/corrections", "mixed load"):
        assert f"{scenario}" in err
    assert "5 closed by the server" in err  # every slow connection of the quick run was closed
    assert RESULTS.read_text(encoding="utf-8") == before
