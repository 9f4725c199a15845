"""The command line's surface: --version, the trainers' --help, the summary line of every batch command,
the coloured diff of ``correct --diff``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from aligner_chains import __version__
from aligner_chains.cli import main
from aligner_chains.cli.correct import use_color
from aligner_chains.cli.options import summary_line
from aligner_chains.finetune.config import DPOConfig, OAIFConfig, SFTConfig, field_docs

SUMMARY = re.compile(
    r"^(?P<command>[a-z ]+): (?P<done>\d+) \w+ done, (?P<skipped>\d+) skipped.*?, (?P<failed>\d+) failed in "
)


def last_summary(err: str) -> dict[str, str]:
    """The counts of the last summary line on stderr."""
    found = [m for m in map(SUMMARY.match, err.strip().splitlines()) if m]
    assert found, f"no summary line in {err!r}"
    return found[-1].groupdict()


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"aligner-chains {__version__}"


@pytest.mark.parametrize(("kind", "config"), [("sft", SFTConfig), ("dpo", DPOConfig), ("oaif", OAIFConfig)])
def test_trainer_help_lists_every_field_and_the_overrides(
    kind: str, config: type, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main(["train", kind, "--help"])
    out = capsys.readouterr().out
    assert f"aligner-chains train {kind} --config" in out and "--key value" in out and "--lora.r 8" in out
    rows = field_docs(config)
    assert {"lora.r", "max_steps", "output_dir"} <= {row.name for row in rows}
    for row in rows:
        assert row.doc, f"{config.__name__}.{row.name} has no doc line"
        assert f"  {row.name} ({row.type}; " in out
    assert "  train_file (str; required)" in out or kind == "oaif"
    if kind == "sft":
        assert "  model_config (mapping[str, Any] | null; default null)" in out  # the alias, as files write it
        assert "  learning_rate (float; default 2e-05)" in out and "  report_to (list[str]; default [])" in out


def test_summary_line_format() -> None:
    line = summary_line("correct", 4.21, done=98, skipped=1, skipped_why="unreadable line", failed=1)
    assert line == "correct: 98 rows done, 1 skipped (unreadable line), 1 failed in 4.2 s"
    assert summary_line("train sft", 125, done=1, unit="steps", note="final train loss 1.0000") == (
        "train sft: 1 step done, 0 skipped, 0 failed in 2 min 5 s; final train loss 1.0000"
    )


def test_correct_ends_with_a_summary(tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text('{"question": "Q?", "answer": "A."}\nnot json\n{"question": "R?", "answer": "B."}\n')
    argv = ["correct", "--model", str(tiny_model_dir), "--input", str(src), "--output", str(dst)]
    argv += ["--max-new-tokens", "4", "--quiet", "--on-error", "skip"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert last_summary(err) == {"command": "correct", "done": "2", "skipped": "1", "failed": "0"}
    assert err.strip().splitlines()[-1].startswith("correct: 2 rows done, 1 skipped, 0 failed in ")
    assert main(argv) == 0  # resumed: every line is there
    assert capsys.readouterr().err.strip().endswith("; 3 rows done before")


def test_correct_diff_is_coloured_only_on_a_terminal(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["correct", "--model", str(tiny_model_dir), "-q", "Hi?", "-a", "Hello there.", "--max-new-tokens", "3"]
    assert main([*argv, "--diff"]) == 0
    out = capsys.readouterr().out
    assert "\x1b[" not in out and ("[-" in out or "{+" in out or out.strip() == "Hello there.")

    class Terminal:
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    assert use_color(Terminal()) and not use_color(object())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not use_color(Terminal())


EVAL_JUDGES = """
def rule(question, original, corrected):
    if "boom" in question:
        raise ValueError("the judge failed")
    return "win" if "[EMAIL]" in corrected else "tie"
"""


def test_eval_ends_with_a_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    module = tmp_path / "judges.py"
    module.write_text(EVAL_JUDGES)
    data = tmp_path / "items.jsonl"
    rows = [{"question": q, "original": "Mail a@b.com.", "corrected": "Mail [EMAIL]."} for q in ("Q1?", "Q2?", "boom")]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = ["eval", "--input", str(data), "--judge", f"{module}:rule", "--out", str(tmp_path / "r")]
    argv += ["--retries", "0", "--no-plot", "--quiet"]
    assert main(argv) == 1  # a judgment failed
    assert last_summary(capsys.readouterr().err) == {"command": "eval", "done": "2", "skipped": "0", "failed": "1"}


SYNTH_MODELS = """
from aligner_chains.evaluate.testing import FunctionChatModel


def upstream():
    return FunctionChatModel(fn=lambda messages: "Reach me at x@example.com.")


def teacher():
    return FunctionChatModel(fn=lambda messages: "Reach me at [EMAIL].")
"""


def test_synthesize_ends_with_a_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    module = tmp_path / "models.py"
    module.write_text(SYNTH_MODELS)
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps({"question": q}) + "\n" for q in ("One?", "Two?", "One?")))
    argv = ["synthesize", "--questions", str(questions), "--upstream", f"{module}:upstream"]
    argv += ["--teacher", f"{module}:teacher", "--out", str(tmp_path / "qac.jsonl"), "--quiet"]
    assert main(argv) == 0
    summary = last_summary(capsys.readouterr().err)
    assert summary == {"command": "synthesize", "done": "2", "skipped": "1", "failed": "0"}  # one duplicate
