"""``aligner-chains correct`` on hostile input (issue #16): a bad row is named by its line and never stops the job
silently, wrecks the output, or crashes every resume; ``--on-error`` chooses what the row becomes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aligner_chains.cli import main

TOO_LONG = "word " * 2000  # far beyond the tiny model's 512-token context, even without a question


def write_input(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def row(i: int, answer: str | None = None) -> str:
    return json.dumps({"question": f"Question {i}?", "answer": answer or f"Answer number {i}.", "id": i})


def run(model: Path, src: Path, dst: Path, *extra: str) -> int:
    args = ["correct", "--model", str(model), "--input", str(src), "--output", str(dst), "--max-new-tokens", "4"]
    return main([*args, "--batch-size", "3", "--quiet", *extra])


def output_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]


def test_an_over_long_row_stops_at_its_line_then_resumes(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write_input(tmp_path / "in.jsonl", [row(0), row(1), row(2, TOO_LONG), row(3), row(4)])
    dst = tmp_path / "out.jsonl"
    assert run(tiny_model_dir, src, dst) == 2
    err = capsys.readouterr().err
    assert "in.jsonl:3: InputTooLongError" in err and "--on-error passthrough|skip" in err
    assert "truncate_question" not in err  # the answer alone is too long: cutting the question cannot help
    assert [r["id"] for r in output_rows(dst)] == [0, 1]  # the lines before it are kept: a rerun resumes there
    assert run(tiny_model_dir, src, dst) == 2 and len(output_rows(dst)) == 2  # stops there again, nothing lost
    capsys.readouterr()

    assert run(tiny_model_dir, src, dst, "--on-error", "passthrough") == 0
    rows = output_rows(dst)
    assert [r["id"] for r in rows] == [0, 1, 2, 3, 4]  # one line per input line
    failed = rows[2]
    assert failed["finish_reason"] == "error" and failed["corrected"] == failed["original"] == TOO_LONG
    assert failed["error"].startswith(f"{src}:3: InputTooLongError")
    assert "in.jsonl:3" in capsys.readouterr().err
    assert run(tiny_model_dir, src, dst) == 0  # done: nothing to redo, no error
    assert "all 5 lines already corrected" in capsys.readouterr().err


def test_skip_writes_a_marker_row_per_bad_line(tiny_model_dir: Path, tmp_path: Path) -> None:
    lines = [row(0), row(1, TOO_LONG), "not json", row(3), '{"question": "q"}', "", row(6)]
    src = write_input(tmp_path / "in.jsonl", lines)
    dst = tmp_path / "out.jsonl"
    assert run(tiny_model_dir, src, dst, "--on-error", "skip") == 0
    rows = output_rows(dst)
    assert len(rows) == len(lines)
    markers = {i: r for i, r in enumerate(rows, start=1) if r.get("skipped")}
    assert sorted(markers) == [2, 3, 5, 6]
    assert markers[2] == {"id": 1, "line": 2, "skipped": True, "error": markers[2]["error"]}
    assert "in.jsonl:2: InputTooLongError" in markers[2]["error"] and "corrected" not in markers[2]
    assert "in.jsonl:3: not valid JSON" in markers[3]["error"]
    assert "in.jsonl:5: field 'answer'" in markers[5]["error"]
    assert "in.jsonl:6: empty line" in markers[6]["error"]
    assert [r["id"] for r in rows if not r.get("skipped")] == [0, 3, 6]


def test_a_lone_surrogate_is_reported_per_line_never_a_crash_on_resume(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad_answer = '{"question": "Q?", "answer": "An emoji cut in half: \\ud83d.", "id": 1}'
    bad_extra = '{"question": "Q?", "answer": "Fine.", "id": 2, "meta": {"tags": ["ok", "\\udfff"]}}'
    src = write_input(tmp_path / "in.jsonl", [row(0), bad_answer, bad_extra, row(3)])
    dst = tmp_path / "out.jsonl"
    assert run(tiny_model_dir, src, dst) == 2  # stop (default): named before any work, the model not even loaded
    err = capsys.readouterr().err
    assert "in.jsonl:2: field 'answer' at character 22 holds a lone surrogate" in err
    assert not dst.exists() or dst.read_text() == ""

    assert run(tiny_model_dir, src, dst, "--on-error", "passthrough") == 0
    err = capsys.readouterr().err
    assert "in.jsonl:2" in err and "in.jsonl:3: field 'meta'['tags'][1]" in err
    dst.read_bytes().decode("utf-8")  # the output stays valid UTF-8
    rows = output_rows(dst)
    assert len(rows) == 4 and rows[1]["skipped"] and rows[2]["skipped"] and rows[1]["line"] == 2
    assert run(tiny_model_dir, src, dst) == 0  # resuming a finished output: no crash, nothing redone
    assert "all 4 lines already corrected" in capsys.readouterr().err


@pytest.mark.parametrize(("flag", "value"), [("--batch-size", "0"), ("--batch-size", "-3"), ("--max-new-tokens", "0")])
def test_zero_sizes_are_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str) -> None:
    src = write_input(tmp_path / "in.jsonl", [row(0)])
    with pytest.raises(SystemExit) as info:
        main(["correct", "--input", str(src), "--output", str(tmp_path / "o.jsonl"), flag, value])
    assert info.value.code == 2
    assert f"argument {flag}: {value} is not a positive whole number" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()
