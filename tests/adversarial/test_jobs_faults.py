"""Resumable outputs under kills and hostile text (issue #16): a kill never costs more than the torn line, and
records holding U+2028, U+2029 or U+0085 read back as written.

The kill tests run the code under test in a forked child that SIGKILLs itself just before its n-th call that
can change a file (open, write, truncate, replace, ...), for every n until the code finishes: every moment
where a kill could land between two file operations is tried, deterministically. A control runs the old
repair (read the file, write it back whole) through the same harness and must lose data, which shows the
harness would catch it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from aligner_chains.cli.options import completed_lines, read_pairs_jsonl
from aligner_chains.evaluate import LLMJudge, evaluate, load_items
from aligner_chains.evaluate.testing import FunctionChatModel
from aligner_chains.finetune.data import load_rows, read_records
from aligner_chains.finetune.metrics import MetricsLog, read_metrics
from aligner_chains.jobs import JobLog, jsonl_lines, read_log, repair_torn_tail, write_atomic
from aligner_chains.synthesize import load_questions

SEPARATORS = "line\u2028sep\u2029para\u0085next"

HARNESS = r"""
import json, os, signal, sys
from pathlib import Path

target, path = sys.argv[1], Path(sys.argv[2])
original = path.read_bytes()
if target == "completed_lines":
    from aligner_chains.cli.options import completed_lines as run
elif target == "read_log":
    from aligner_chains.jobs import read_log as run
elif target == "write_atomic":
    from aligner_chains.jobs import write_atomic
    def run(p):
        write_atomic(p, "new content\n" * 1000)
elif target == "old_rewrite":  # the repair before the fix: read the whole file, write it back shorter
    def run(p):
        data = p.read_bytes()
        p.write_bytes(data[: data.rfind(b"\n") + 1])

MUTATING = {"open", "write", "writelines", "truncate", "ftruncate", "replace", "rename", "unlink", "remove"}
outcomes = []
for kill_at in range(1, 60):
    path.write_bytes(original)
    for leftover in path.parent.glob(".*.tmp"):
        leftover.unlink()
    child = os.fork()
    if child == 0:
        seen = 0
        def hook(frame, event, arg):
            global seen
            if event == "c_call" and getattr(arg, "__name__", "") in MUTATING:
                seen += 1
                if seen == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)
        sys.setprofile(hook)
        try:
            run(path)
        finally:
            sys.setprofile(None)
            os._exit(0)
    _, status = os.waitpid(child, 0)
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    outcomes.append({"kill_at": kill_at, "killed": killed, "content": path.read_bytes().decode("utf-8", "replace")})
    if not killed:
        break
print(json.dumps(outcomes))
"""


def kill_at_every_file_operation(target: str, path: Path) -> list[dict]:
    """Outcomes of running ``target`` on ``path``, killed before its 1st, 2nd, ... file operation, then unkilled."""
    done = subprocess.run(
        [sys.executable, "-c", HARNESS, target, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stderr
    outcomes = json.loads(done.stdout.strip().splitlines()[-1])
    assert not outcomes[-1]["killed"], "the code under test did not finish within the harness's bound"
    return outcomes


def torn_log(path: Path, n: int = 3000) -> tuple[str, str]:
    """A JSONL log of ``n`` records (with raw U+2028 & co.) and a torn last line; (whole file, repaired file)."""
    lines = "".join(json.dumps({"key": i, "reply": f"{SEPARATORS} {i}"}, ensure_ascii=False) + "\n" for i in range(n))
    whole = lines + '{"key": "torn", "reply": "cut he'
    path.write_text(whole, encoding="utf-8")
    return whole, lines


needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="the kill harness forks")


@needs_fork
@pytest.mark.parametrize("target", ["completed_lines", "read_log"])
def test_a_kill_during_the_torn_tail_repair_keeps_every_complete_line(tmp_path: Path, target: str) -> None:
    whole, repaired = torn_log(tmp_path / "out.jsonl")
    outcomes = kill_at_every_file_operation(target, tmp_path / "out.jsonl")
    assert len(outcomes) >= 3  # killed at least before opening, before truncating, and once run to the end
    for outcome in outcomes:
        assert outcome["content"] in (whole, repaired), f"killed before file operation {outcome['kill_at']}"
    assert outcomes[-1]["content"] == repaired


@needs_fork
def test_the_harness_catches_a_whole_file_rewrite(tmp_path: Path) -> None:
    whole, repaired = torn_log(tmp_path / "out.jsonl")
    outcomes = kill_at_every_file_operation("old_rewrite", tmp_path / "out.jsonl")
    lost = [o for o in outcomes if o["content"] not in (whole, repaired)]
    assert lost and lost[0]["content"] == ""  # killed after open(..., "wb"): every line gone


@needs_fork
def test_a_kill_during_an_atomic_rewrite_leaves_old_or_new(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    path.write_text("old content\n" * 1000, encoding="utf-8")
    outcomes = kill_at_every_file_operation("write_atomic", path)
    assert {o["content"] for o in outcomes} <= {"old content\n" * 1000, "new content\n" * 1000}
    assert outcomes[-1]["content"] == "new content\n" * 1000 and len(outcomes) >= 3


def test_repair_cuts_in_place_and_counts(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    for content, kept in [
        (b"", b""),
        (b"no newline at all", b""),
        (b"a\nb\n", b"a\nb\n"),
        (b"a\nb\ntorn", b"a\nb\n"),
        (b"x" * (3 << 20) + b"\n" + b"y" * (2 << 20), b"x" * (3 << 20) + b"\n"),  # LF far behind the tail
    ]:
        path.write_bytes(content)
        inode = path.stat().st_ino
        assert repair_torn_tail(path) == len(kept)
        assert path.read_bytes() == kept and path.stat().st_ino == inode  # the same file, cut, not replaced
    path.write_bytes(b'{"a": 1}\n{"b": "\xe2\x80\xa8"}\n{"c": 3, "to')
    assert completed_lines(path) == 2 and path.read_bytes().endswith(b"\n")


def test_write_atomic_failure_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "report.md"
    path.write_text("old", encoding="utf-8")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, "new")
    assert path.read_text(encoding="utf-8") == "old" and os.listdir(tmp_path) == ["report.md"]  # no temp left


# ------------------------------------------------------------------- U+2028, U+2029, U+0085 read back


def test_records_with_unicode_line_separators_read_back(tmp_path: Path) -> None:
    rows = [
        {"question": f"Q {i} {SEPARATORS}?", "answer": f"A {SEPARATORS} {i}", "correction": f"C {i} {SEPARATORS}"}
        for i in range(3)
    ]
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)  # how we write JSONL: separators raw
    assert "\u2028" in text and "\u0085" in text
    data = tmp_path / "data.jsonl"
    data.write_text(text + "\n", encoding="utf-8")
    assert [line for _, line in jsonl_lines(text)] == text.split("\n")[:-1]
    assert len(text.splitlines()) > len(rows)  # what str.splitlines would have done: records cut apart
    assert [row for _, row in read_records(data)] == rows
    assert load_rows(data) == rows
    assert [(i.question, i.original, i.corrected) for i in load_items(data)] == [
        (r["question"], r["answer"], r["correction"]) for r in rows
    ]
    assert [q.question for q in load_questions(data)] == [r["question"] for r in rows]
    assert read_pairs_jsonl(_pairs(tmp_path, rows)) == [
        {"question": r["question"], "answer": r["answer"]} for r in rows
    ]
    log = tmp_path / "log.jsonl"
    with JobLog(log, lambda record: record["key"]) as journal:
        for i, row in enumerate(rows):
            journal.add({"key": i, **row})
    assert read_log(log) == [{"key": i, **row} for i, row in enumerate(rows)]


def _pairs(tmp_path: Path, rows: list[dict]) -> Path:
    path = tmp_path / "pairs.jsonl"
    pairs = [{"question": r["question"], "answer": r["answer"]} for r in rows]
    text = "".join(json.dumps(pair, ensure_ascii=False) + "\n" for pair in pairs)
    path.write_text(text, encoding="utf-8")
    return path


def test_an_evaluation_whose_judge_replies_hold_line_separators_resumes(tmp_path: Path) -> None:
    items = [{"question": f"Question {i}?", "answer": f"Answer {i}.", "correction": f"Fixed {i}."} for i in range(4)]
    calls: list[str] = []
    down = {"Question 2?"}

    def reply(messages: list) -> str:
        text = messages[-1].content
        calls.append(text)
        if any(q in text for q in down):
            raise ConnectionError("judge unavailable")
        return "Both fine.\u2028Really\u2029truly\u0085so. [[TIE]]"

    judge = LLMJudge(FunctionChatModel(fn=reply), "helpfulness", both_orders=False)
    log = tmp_path / "judgments.jsonl"
    first = evaluate(items, judge, log=log, retries=0, progress=False)
    assert first.errors == 1 and "\u2028" in log.read_text(encoding="utf-8")
    down.clear()
    calls.clear()
    second = evaluate(items, judge, log=log, retries=0, progress=False)  # reads the log back: must not split
    assert len(calls) == 1 and "Question 2?" in calls[0]
    assert second.errors == 0 and second.win_rate().ties == 4
    assert any("\u2028" in r for result in second.results for r in result.replies)


def test_metrics_log_survives_a_torn_line_and_rewrites_atomically(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo', encoding="utf-8")
    assert read_metrics(tmp_path) == [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]
    MetricsLog(tmp_path, start_step=1)  # resuming at step 1 drops what was logged after it
    assert read_metrics(path) == [{"step": 1, "loss": 2.0}]
    assert sorted(os.listdir(tmp_path)) == ["metrics.jsonl"]
