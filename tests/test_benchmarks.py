"""Seconds-long smoke runs of the benchmarks: the code that produces RESULTS.md runs and measures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from benchmarks import gpu, speed
from benchmarks.results import RESULTS


def test_gpu_benchmark_code_path_on_a_tiny_cpu_model(capsys: pytest.CaptureFixture[str]) -> None:
    before = RESULTS.read_text(encoding="utf-8")
    model = gpu.build_model(gpu.TINY, torch.device("cpu"), torch.float32)
    row = gpu.bench_batch(model, batch=3, prompt_len=12, n=30, repeats=1)
    assert row["identical rows"] == 3  # copy-aware output is plain greedy output, token for token
    assert row["passes (copy task, mean per row)"] < 10  # the copy task accepts long drafts
    assert min(row["plain"], row["copy-aware, copy task"]) > 0
    assert gpu.main(["--tiny"]) == 0
    assert "| 4 |" in capsys.readouterr().out
    assert RESULTS.read_text(encoding="utf-8") == before  # smoke runs leave the figures alone


@pytest.mark.gpu
def test_gpu_benchmark_bf16_on_cuda() -> None:
    model = gpu.build_model(gpu.TINY, torch.device("cuda"), torch.bfloat16)
    row = gpu.bench_batch(model, batch=8, prompt_len=32, n=64, repeats=1)
    assert row["peak GiB"] > 0 and row["copy-aware, copy task"] > 0
    assert gpu.memory_bandwidth(torch.device("cuda"), 1 << 26) > 1e10


def test_speed_benchmark_quick_run(capsys: pytest.CaptureFixture[str]) -> None:
    before = RESULTS.read_text(encoding="utf-8")
    assert speed.main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert "| 1 | copy-aware |" in out and "micro-batched, in flight, max_batch_size=32" in out
    assert "micro-batched, whole batches, max_batch_size=32" in out and "| in flight |" in out
    assert "A tighter bound (`batching_bound`)" in out and "| two |" in out  # section 4: one inference thread
    assert "False" not in out  # every decoding row reproduced plain greedy output
    assert RESULTS.read_text(encoding="utf-8") == before


def test_batching_bound_adds_verified_positions_and_the_longest_rows_passes() -> None:
    stats = [
        {"draft_tokens": 10, "forward_passes": 3},  # 10 drafts + 2 roots after the prompt pass
        {"draft_tokens": 4, "forward_passes": 5},  # 4 drafts + 4 roots; the most passes: 4 after the prompt
    ]
    costs = {"per_position_s": 0.001, "per_pass_s": 0.01}
    assert speed.batching_bound(stats, 0.5, costs) == pytest.approx(0.5 + 20 * 0.001 + 4 * 0.01)


def test_precision_benchmark_quick_run(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import precision

    before = RESULTS.read_text(encoding="utf-8")
    assert precision.main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert "| llama | float32 | 4/4 | 4/4 | 4/4 | copy-aware |" in out  # fp32: identical to plain greedy
    assert "| llama | bfloat16 |" in out
    assert precision.agreement([[1, 2, 3], [4, 5]], [[1, 2, 3], [4, 6, 7]]) == {
        "identical": 1,
        "rows": 2,
        "first_differences": [1],
    }
    assert RESULTS.read_text(encoding="utf-8") == before


def test_demo_quality_benchmark_quick_run(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import demo_quality

    before = RESULTS.read_text(encoding="utf-8")
    assert demo_quality.main(["--quick", "--part", "validation"]) == 0
    out = capsys.readouterr().out
    for label in demo_quality.LABELS.values():
        assert f"| {label} | " in out
    assert "CPU latency per correction" in out and "nan" not in out.split("CPU latency")[1]
    assert RESULTS.read_text(encoding="utf-8") == before


@pytest.mark.slow
def test_streaming_benchmark_quick_run(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import streaming

    before = RESULTS.read_text(encoding="utf-8")
    assert streaming.main(["--quick"]) == 0
    out = capsys.readouterr().out
    for rate in ("30", "100"):
        assert f"| {rate} | whole | " in out and f"| {rate} | segments | " in out
    assert "segment-wise output equals the whole-answer output" in out and "nan" not in out
    assert RESULTS.read_text(encoding="utf-8") == before


@pytest.mark.slow
def test_scale_benchmark_runs_every_path_and_checks_the_corrections(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import scale

    before = RESULTS.read_text(encoding="utf-8")
    assert scale.main(["--rows", "12", "--no-write"]) == 0  # 1 would mean a path changed a correction
    out = capsys.readouterr().out
    paths = ["single process", "--server x1", "--server x2"] + (["ray, 2 actors"] if scale.have_ray() else [])
    for path in paths:
        assert f"| {path} | " in out
    assert out.count("yes, every row") == len(paths) - 1 and "**NO**" not in out
    assert RESULTS.read_text(encoding="utf-8") == before


def test_make_bench_writes_a_new_results_file_unless_asked_to_update(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from benchmarks import demo_quality, results, run, scale, serving_load, soak, streaming
    from benchmarks.results import TARGET_ENV, write_section

    def fake(title: str):
        def main(argv: list[str]) -> int:
            write_section(title, [f"figures of {title}"])
            return 0

        return main

    for module in (speed, serving_load, soak, demo_quality, scale, streaming, gpu):
        monkeypatch.setattr(module, "main", fake(module.__name__.split(".")[-1]))
    monkeypatch.delenv(TARGET_ENV, raising=False)
    before = RESULTS.read_text(encoding="utf-8")
    assert run.main(["--out", str(tmp_path / "results-now.md")]) == 0
    written = (tmp_path / "results-now.md").read_text(encoding="utf-8")
    assert written.startswith(results.HEADER) and "## speed\n\nfigures of speed" in written
    assert "## demo_quality" in written and RESULTS.read_text(encoding="utf-8") == before
    assert TARGET_ENV not in os.environ  # set only while the benchmarks run
    assert results.new_results_file().parent == RESULTS.parent
    assert results.new_results_file().name.startswith("results-20") and results.new_results_file().suffix == ".md"
    committed = tmp_path / "RESULTS.md"
    committed.write_text(results.HEADER + "\n## speed\n\nold figures\n\n## Other\n\nkept\n", encoding="utf-8")
    monkeypatch.setattr(results, "RESULTS", committed)  # --update writes RESULTS.md: here, a copy
    assert run.main(["--update"]) == 0
    updated = committed.read_text(encoding="utf-8")
    assert "figures of speed" in updated and "old figures" not in updated and "## Other\n\nkept" in updated
    assert "benchmark figures go to" in capsys.readouterr().err
