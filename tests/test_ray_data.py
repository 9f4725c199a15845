"""Bulk corrections on Ray (`aligner_chains.bulk`, ``--engine ray``): the same corrections, output files and
resuming as one process, on real multi-line answers corrected by the shipped demo Aligner.

One local Ray cluster (2 CPUs) serves the module; each Ray job starts its own actors (a model load each).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from aligner_chains.bulk.spec import AlignerSpec
from aligner_chains.bulk.worker import CORRECTION_COLUMNS, CorrectionWorker, corrections_of
from aligner_chains.cli import main
from aligner_chains.core.errors import MissingDependencyError
from aligner_chains.core.model_files import default_model
from aligner_chains.core.result import Correction

pytestmark = pytest.mark.slow

try:
    import ray
except ImportError:  # the missing-dependency tests still run
    ray = None

needs_ray = pytest.mark.skipif(ray is None, reason="needs ray[data] (pip install -e '.[ray]')")

FIXTURE = Path(__file__).parent / "fixtures" / "open_model_answers_slice.jsonl"
MAX_NEW_TOKENS = 48  # the start of each correction: enough to tell corrections apart, quick on CPU
BATCH = 4  # rows per chunk: the 40 rows make 10 chunks, so two actors finish them out of order
LATENCY = re.compile(r'"latency_s": [-+0-9.eE]+')


def fixture_rows() -> list[dict[str, Any]]:
    """The 40 real answers of open chat models, as question/answer pairs (generator kept as an extra field)."""
    rows = [json.loads(line) for line in FIXTURE.read_text(encoding="utf-8").splitlines()]
    return [{"question": r["instruction"], "answer": r["output"], "generator": r["generator"]} for r in rows]


def without_latency(text: str) -> str:
    """An output file with every ``latency_s`` (wall time, different on every run) set to 0."""
    return LATENCY.sub('"latency_s": 0', text)


def same_corrections(a: Correction, b: Correction) -> bool:
    return a.model_dump(exclude={"latency_s"}) == b.model_dump(exclude={"latency_s"})


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def correct_argv(src: Path, dst: Path, *extra: str) -> list[str]:
    argv = ["correct", "--model", default_model(), "--input", str(src), "--output", str(dst)]
    return [*argv, "--max-new-tokens", str(MAX_NEW_TOKENS), "--batch-size", str(BATCH), "--quiet", *extra]


RAY = ("--engine", "ray", "--actors", "2")


@pytest.fixture(scope="module")
def ray_address() -> Any:
    """A local Ray cluster for the module (2 CPUs, no dashboard); its address, for subprocesses."""
    if ray is None:
        pytest.skip("needs ray[data]")
    import logging

    context = ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    try:
        yield context.address_info["address"]
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The fixture rows with an unreadable line and an answer too long for the model, and the single-process
    output of ``correct --on-error passthrough`` on them (the anchor of the Ray runs)."""
    folder = tmp_path_factory.mktemp("local")
    rows: list[Any] = fixture_rows()
    rows.insert(5, "not json\n")
    rows.insert(21, {"question": "Summarise.", "answer": "word " * 3000, "generator": "synthetic"})
    src = write_jsonl(folder / "pairs.jsonl", rows)
    dst = folder / "local.jsonl"
    assert main(correct_argv(src, dst, "--on-error", "passthrough")) == 0
    return src, dst.read_text(encoding="utf-8")


# ----------------------------------------------------------------------------------- without a cluster


def test_correction_columns_are_the_correction_fields() -> None:
    assert list(CORRECTION_COLUMNS) == list(Correction.model_fields)


def test_worker_marks_a_row_without_an_answer_and_keeps_other_columns() -> None:
    pa = pytest.importorskip("pyarrow")
    rows = fixture_rows()[:3]
    table = pa.table(
        {
            "id": [10, 11, 12],
            "question": [r["question"] for r in rows],
            "answer": [rows[0]["answer"], None, rows[2]["answer"]],
            "model": ["upstream-a", "upstream-b", "upstream-c"],  # a correction field: replaced, as in the CLI
        }
    )
    worker = CorrectionWorker(AlignerSpec(model=default_model(), max_new_tokens=8), batch_size=2)
    out = worker(table)
    assert out.column_names == ["id", *CORRECTION_COLUMNS]
    assert out.column("id").to_pylist() == [10, 11, 12]
    got = corrections_of(out)
    assert got[1].finish_reason == "error" and "'answer' is null" in (got[1].error or "")
    assert got[1].question == rows[1]["question"] and got[1].corrected == ""
    expected = worker.aligner.correct_batch([(r["question"], r["answer"]) for r in (rows[0], rows[2])], batch_size=2)
    assert same_corrections(got[0], expected[0]) and same_corrections(got[2], expected[1])
    assert json.loads(out.column("stats")[0].as_py()) == expected[0].stats


def test_missing_ray_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from aligner_chains.bulk import require_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    monkeypatch.setitem(sys.modules, "ray.data", None)
    with pytest.raises(MissingDependencyError, match=r"pip install -e '\.\[ray\]'"):
        require_ray()
    src = write_jsonl(tmp_path / "in.jsonl", fixture_rows()[:1])
    assert main(correct_argv(src, tmp_path / "out.jsonl", *RAY)) == 2
    assert "pip install -e '.[ray]'" in capsys.readouterr().err


def test_import_aligner_chains_does_not_import_ray() -> None:
    code = "import sys, aligner_chains, aligner_chains.bulk, aligner_chains.cli.correct; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_ray_options_need_the_ray_engine(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", fixture_rows()[:1])
    assert main(correct_argv(src, tmp_path / "out.jsonl", "--actors", "2")) == 2
    assert "--actors apply to --engine ray" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------- on Ray


@needs_ray
def test_dataset_corrections_equal_one_process_joined_by_id(ray_address: str) -> None:
    from aligner_chains.bulk import correct_dataset
    from aligner_chains.core.aligner import Aligner

    rows = [{"id": f"row-{i:02d}", **row} for i, row in enumerate(fixture_rows())]
    dataset = ray.data.from_items(rows, override_num_blocks=len(rows) // BATCH)  # blocks of BATCH rows
    out = correct_dataset(
        dataset, default_model(), max_new_tokens=MAX_NEW_TOKENS, concurrency=2, num_cpus=0.5, batch_size=BATCH
    ).take_all()
    assert len(out) == len(rows) and set(out[0]) == {"id", "generator", *CORRECTION_COLUMNS}
    by_id = {row["id"]: row for row in out}
    aligner = Aligner.from_pretrained(default_model(), max_new_tokens=MAX_NEW_TOKENS)
    for start in range(0, len(rows), BATCH):
        chunk = rows[start : start + BATCH]
        expected = aligner.correct_batch([(r["question"], r["answer"]) for r in chunk], batch_size=BATCH)
        for row, correction in zip(chunk, expected, strict=True):
            got = by_id[row["id"]]
            assert got["generator"] == row["generator"]
            assert same_corrections(Correction(**{**got, "stats": json.loads(got["stats"])}), correction), row["id"]


@needs_ray
def test_row_ids_are_added_when_absent(ray_address: str) -> None:
    from aligner_chains.bulk.ray_data import with_row_ids

    rows = with_row_ids(ray.data.from_items([{"question": str(i)} for i in range(10)], override_num_blocks=3))
    got = sorted((row["id"], int(row["question"])) for row in rows.take_all())
    assert len({i for i, _ in got}) == 10
    assert [q for _, q in got] == list(range(10))  # increasing in dataset order


@needs_ray
def test_cli_ray_output_equals_local_byte_for_byte(
    ray_address: str, local_run: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, expected = local_run
    dst = tmp_path / "ray.jsonl"
    assert main(correct_argv(src, dst, "--on-error", "passthrough", *RAY)) == 0
    got = dst.read_text(encoding="utf-8")
    assert without_latency(got) == without_latency(expected)
    lines = [json.loads(line) for line in got.splitlines()]
    assert len(lines) == 42 and lines[5]["skipped"] and lines[5]["line"] == 6  # the unreadable line: a marker
    assert lines[21]["finish_reason"] == "error" and "InputTooLongError" in lines[21]["error"]
    assert sum(line.get("finish_reason") in ("stop", "length") for line in lines) == 40
    assert "correct: 40 rows done, 1 skipped, 1 failed" in capsys.readouterr().err


@needs_ray
def test_cli_ray_stops_where_local_stops_then_resumes(
    ray_address: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = fixture_rows()[:8]
    rows[5] = {**rows[5], "answer": "word " * 3000}  # too long: fails in the actor
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    local, on_ray = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    assert main(correct_argv(src, local, "--on-error", "skip")) == 0
    assert main(correct_argv(src, on_ray, *RAY)) == 2  # --on-error stop: stops at line 6
    assert "Stopped there: the 5 lines before it" in capsys.readouterr().err
    assert without_latency(on_ray.read_text()) == without_latency("".join(local.read_text().splitlines(True)[:5]))
    assert main(correct_argv(src, on_ray, "--on-error", "skip", *RAY)) == 0  # resumes at line 6
    assert without_latency(on_ray.read_text()) == without_latency(local.read_text())
    assert json.loads(on_ray.read_text().splitlines()[5])["skipped"] is True


@needs_ray
def test_cli_parquet_rows_equal_local_and_a_job_interrupted_here_resumes_on_ray(
    ray_address: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from aligner_chains.core.aligner import Aligner

    src = tmp_path / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist(fixture_rows()[:24]), src)
    local, on_ray = tmp_path / "local.parquet", tmp_path / "ray.parquet"
    assert main(correct_argv(src, local)) == 0

    real, calls = Aligner.correct_batch, []

    def interrupted(self: Aligner, *args: Any, **kwargs: Any) -> Any:  # the job dies in its fourth chunk
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Aligner, "correct_batch", interrupted)
    assert main(correct_argv(src, on_ray)) == 130
    lines = tmp_path / "ray.parquet.lines.jsonl"
    assert not on_ray.exists() and len(lines.read_text().splitlines()) == 3 * BATCH
    monkeypatch.setattr(Aligner, "correct_batch", real)
    assert main(correct_argv(src, on_ray, *RAY)) == 0  # the same job on Ray goes on from row 13
    assert not lines.exists()

    def table(path: Path) -> list[dict[str, Any]]:
        return [{**row, "latency_s": 0} for row in pq.read_table(path).to_pylist()]

    assert table(on_ray) == table(local)
    assert len(table(local)) == 24 and table(local)[0]["generator"] == fixture_rows()[0]["generator"]
    assert main(correct_argv(src, on_ray, *RAY)) == 0  # finished: nothing to do, the file stays
    assert table(on_ray) == table(local)


@needs_ray
def test_killed_ray_job_resumes_without_losing_or_repeating_a_row(
    ray_address: str, local_run: tuple[Path, str], tmp_path: Path
) -> None:
    src, expected = local_run
    dst = tmp_path / "killed.jsonl"
    argv = correct_argv(src, dst, "--on-error", "passthrough", *RAY)
    env = {**os.environ, "RAY_ADDRESS": ray_address, "OMP_NUM_THREADS": "1"}
    job = subprocess.Popen(
        [sys.executable, "-m", "aligner_chains.cli", *argv],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and job.poll() is None:
            if dst.exists() and dst.read_bytes().count(b"\n") >= 3 * BATCH:
                break
            time.sleep(0.05)
        assert job.poll() is None, "the job ended before it could be killed"
        os.killpg(job.pid, signal.SIGKILL)
    finally:
        job.wait(timeout=60)
    written = dst.read_bytes().count(b"\n")
    assert 3 * BATCH <= written < 42
    assert main(argv) == 0  # the same command: resumes after the last whole line
    assert without_latency(dst.read_text(encoding="utf-8")) == without_latency(expected)


@needs_ray
def test_eval_on_ray_journals_the_same_corrections(ray_address: str, tmp_path: Path) -> None:
    module = tmp_path / "judges.py"
    module.write_text("def rule(question, original, corrected):\n    return 'tie'\n")
    items = [{"question": r["question"], "answer": r["answer"], "id": str(i)} for i, r in enumerate(fixture_rows()[:8])]
    data = write_jsonl(tmp_path / "items.jsonl", items)

    def corrections(out: Path, *extra: str) -> dict[str, Any]:
        argv = ["eval", "--input", str(data), "--judge", f"{module}:rule", "--out", str(out), "--aligner"]
        argv += [default_model(), "--max-new-tokens", str(MAX_NEW_TOKENS), "--batch-size", "2", "--no-plot"]
        assert main([*argv, "--quiet", *extra]) == 0
        records = [json.loads(line) for line in (out / "judgments.jsonl").read_text().splitlines()]
        return {r["key"]: r["corrected"] for r in records if r["type"] == "correction"}

    on_ray = corrections(tmp_path / "ray", *RAY)
    assert len(on_ray) == 8
    assert on_ray == corrections(tmp_path / "local")
    assert corrections(tmp_path / "ray", *RAY) == on_ray  # resumed: every correction is in the journal


def test_synthesize_with_an_aligner_teacher_on_ray_equals_local(ray_address: str, tmp_path: Path) -> None:
    rows = [{"question": r["question"], "answer": r["answer"]} for r in fixture_rows()[:6]]
    questions = write_jsonl(tmp_path / "questions.jsonl", rows)
    argv = ["synthesize", "--questions", str(questions), "--aligner", default_model()]
    argv += ["--max-new-tokens", str(MAX_NEW_TOKENS), "--quiet"]
    assert main([*argv, "--out", str(tmp_path / "local.jsonl")]) == 0
    assert main([*argv, "--out", str(tmp_path / "ray.jsonl"), *RAY]) == 0
    local = (tmp_path / "local.jsonl").read_text(encoding="utf-8")
    assert local == (tmp_path / "ray.jsonl").read_text(encoding="utf-8") and local.count("\n") > 0
    with pytest.raises(SystemExit, match="--engine ray runs an Aligner teacher"):
        main(["synthesize", "--questions", str(questions), "--out", "x.jsonl", "--teacher", "m:f", *RAY])
