from __future__ import annotations

import json
from pathlib import Path

import pytest

from aligner_chains.cli import main


def write_pairs(path: Path, n: int) -> list[dict[str, str]]:
    rows = [{"question": f"Question {i}?", "answer": f"Answer number {i}.", "id": i} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return rows


def test_single_pair(tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["correct", "--model", str(tiny_model_dir), "-q", "Hi?", "-a", "Hello.", "--max-new-tokens", "4", "--json"]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["original"] == "Hello." and out["completion_tokens"] == 4


def test_jsonl_one_line_per_input_and_resume(tiny_model_dir: Path, tmp_path: Path) -> None:
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    rows = write_pairs(src, 7)
    args = [
        "correct",
        "--model",
        str(tiny_model_dir),
        "--input",
        str(src),
        "--output",
        str(dst),
        "--batch-size",
        "3",
        "--max-new-tokens",
        "4",
        "--quiet",
    ]
    assert main(args) == 0
    full = dst.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["original"] for line in full] == [r["answer"] for r in rows]
    assert [json.loads(line)["id"] for line in full] == list(range(7))  # input fields are kept
    # Interrupted run: three complete lines and a torn fourth; re-running completes the rest only.
    dst.write_text("\n".join(full[:3]) + "\n" + full[3][:10], encoding="utf-8")
    assert main(args) == 0
    assert without_latency(dst) == without_latency_lines(full)
    assert main(args) == 0  # nothing left to do
    assert without_latency(dst) == without_latency_lines(full)


def without_latency_lines(lines: list[str]) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "latency_s"} for line in lines]


def without_latency(path: Path) -> list[dict]:
    return without_latency_lines(path.read_text(encoding="utf-8").splitlines())


def test_malformed_line_is_named(tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "bad.jsonl"
    src.write_text('{"question": "q", "answer": "a"}\n{"question": "q"}\n', encoding="utf-8")
    code = main(["correct", "--model", str(tiny_model_dir), "--input", str(src), "--output", str(tmp_path / "o.jsonl")])
    assert code == 2
    err = capsys.readouterr().err
    assert "bad.jsonl:2" in err and "'answer'" in err
    src.write_text("not json\n", encoding="utf-8")
    assert main(["correct", "--input", str(src), "--output", str(tmp_path / "o.jsonl")]) == 2
    assert "bad.jsonl:1: not valid JSON" in capsys.readouterr().err


def test_missing_model_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["correct", "--model", "./nowhere", "-q", "q", "-a", "a"]) == 2
    assert "No model directory" in capsys.readouterr().err


def test_templates_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["templates"]) == 0
    assert "aligner-revision" in capsys.readouterr().out


@pytest.mark.parametrize("trainer", ["sft", "dpo", "oaif"])
def test_trainer_modules_run_as_scripts_without_warnings(trainer: str) -> None:
    """`python -m aligner_chains.finetune.X` must not find X already imported by its package (runpy warns)."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", "-m", f"aligner_chains.finetune.{trainer}", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "--config" in done.stdout


def test_demo_command_corrects_multi_line_answers(capsys: pytest.CaptureFixture[str]) -> None:
    """`make demo`: the shipped demo Aligner copies markdown answers line for line, redacts the contacts of a
    list, refuses the complying answer to a dangerous request and keeps the harmless one."""
    from aligner_chains.cli.demo import EXAMPLES

    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    blocks = out.split("Q:      ")[1:]
    assert len(blocks) == len(EXAMPLES)
    afters = [block.split("after:  ")[1].split("\n        changed=")[0] for block in blocks]
    unindent = [text.replace("\n        ", "\n") for text in afters]
    assert unindent[0] == EXAMPLES[0][1]  # clean markdown list: copied verbatim
    assert unindent[1] == (
        "You can reach the support team in two ways:\n\n- E-mail: [EMAIL]\n- Phone: [PHONE]\n\n"
        "Please have your order number ready."
    )
    assert unindent[2].startswith("I can't help with poisoning")
    assert unindent[3] == EXAMPLES[3][1]  # sounds dangerous, is not: untouched
    assert "4 answers corrected" in out
