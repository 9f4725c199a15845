"""`aligner_chains.evaluate`: win-rate arithmetic and intervals, judges (position bias, unparseable
replies, failures), resume, the Aligner-first flow, reports and the `eval` command. All offline: judges
are deterministic functions and `FunctionChatModel`s."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

import pytest
from langchain_core.messages import BaseMessage

from aligner_chains.core.errors import CheckpointError, ConfigError, DataError
from aligner_chains.evaluate import (
    CallableJudge,
    EvalItem,
    Judgment,
    LLMJudge,
    RewardModelJudge,
    as_judge,
    bootstrap_interval,
    edit_stats,
    evaluate,
    load_items,
    parse_verdict,
    summarize_edits,
    win_rate,
)
from aligner_chains.evaluate.testing import FunctionChatModel

FIXTURES = Path(__file__).parent / "fixtures"
ALPACA_SLICE = FIXTURES / "alpaca_eval_aligner2b_slice.json"


def items(n: int = 6) -> list[dict]:
    """Items whose correction redacts an e-mail (even) or repeats the answer (odd), two upstream models."""
    out = []
    for i in range(n):
        answer = f"Answer {i}: write to user{i}@example.com." if i % 2 == 0 else f"Answer {i} is fine."
        corrected = answer.replace(f"user{i}@example.com", "[EMAIL]")
        out.append({"question": f"Question {i}?", "answer": answer, "correction": corrected, "upstream": f"m{i % 2}"})
    return out


def prefers_redacted(messages: list[BaseMessage]) -> str:
    """A judge model that prefers the answer holding [EMAIL], whichever position it is in."""
    text = messages[-1].content
    a = text.split("[Answer A]")[1].split("[Answer B]")[0]
    b = text.split("[Answer B]")[1]
    if "[EMAIL]" in b and "[EMAIL]" not in a:
        return "B has no private data. [[B]]"
    if "[EMAIL]" in a and "[EMAIL]" not in b:
        return "A has no private data. [[A]]"
    return "Same. [[TIE]]"


# ------------------------------------------------------------------------------------ arithmetic


def test_win_rate_is_wins_minus_losses_over_judged() -> None:
    assert win_rate(3, 1, 1) == pytest.approx(0.4)
    assert win_rate(0, 5, 0) == 0.0
    assert win_rate(1, 0, 3) == pytest.approx(-0.5)
    assert win_rate(0, 0, 0) is None


def test_bootstrap_interval_is_deterministic_and_matches_item_resampling() -> None:
    low, high = bootstrap_interval(30, 10, 20, n_resamples=4000, seed=1)
    assert (low, high) == bootstrap_interval(30, 10, 20, n_resamples=4000, seed=1)
    assert low < win_rate(30, 10, 20) < high
    # the same interval by resampling items one by one
    rng = random.Random(0)
    verdicts = [1] * 30 + [0] * 10 + [-1] * 20
    rates = sorted(sum(rng.choice(verdicts) for _ in verdicts) / len(verdicts) for _ in range(4000))
    assert low == pytest.approx(rates[int(0.025 * 4000)], abs=0.03)
    assert high == pytest.approx(rates[int(0.975 * 4000)], abs=0.03)
    # more items, narrower interval; unanimous verdicts, no spread; nothing judged, no interval
    wide = bootstrap_interval(3, 1, 2)
    narrow = bootstrap_interval(300, 100, 200)
    assert narrow[1] - narrow[0] < wide[1] - wide[0]
    assert bootstrap_interval(5, 0, 0) == (1.0, 1.0)
    assert bootstrap_interval(0, 0, 0) is None
    with pytest.raises(ConfigError, match="confidence"):
        bootstrap_interval(1, 1, 1, confidence=95)


def test_edit_statistics_by_hand() -> None:
    # "one two" -> "one two three": the inserted " three" (6 of 13 characters) is new
    stats = edit_stats("one two", "one two three")
    assert stats.changed and stats.n_edits == 1
    assert stats.copied_fraction == pytest.approx(7 / 13)
    assert stats.length_ratio == pytest.approx(13 / 7)
    same = edit_stats("Keep me. ", "Keep me.")
    assert not same.changed and same.copied_fraction == 1.0
    assert edit_stats("x", "").copied_fraction is None and edit_stats("", "x").length_ratio is None
    summary = summarize_edits([("one two", "one two three"), ("a", "a")])
    assert summary.n == 2 and summary.changed_share == 0.5
    assert summary.copied_fraction_mean == pytest.approx((7 / 13 + 1) / 2)


# ------------------------------------------------------------------------------------ judges


def test_parse_verdict_takes_the_last_mark() -> None:
    assert parse_verdict("A is wordy, B is fine. [[B]]") == "B"
    assert parse_verdict("Unlike [[A]] suggests... final: [[ tie ]]") == "tie"
    assert parse_verdict("[[C]]") == "tie"
    assert parse_verdict("The second one is better.") is None


async def test_llm_judge_asks_both_orders_and_reads_verdicts() -> None:
    model = FunctionChatModel(fn=prefers_redacted)
    judge = LLMJudge(model, "harmlessness")
    judgment = await judge.ajudge("Q?", "mail a@b.com", "mail [EMAIL]")
    assert judgment.verdict == "win" and judgment.consistent is True and len(judgment.replies) == 2
    assert (await judge.ajudge("Q?", "mail [EMAIL]", "mail a@b.com")).verdict == "loss"
    assert judge.judge("Q?", "same", "same").verdict == "tie"
    assert model.calls == 6
    single = LLMJudge(model, "harmlessness", both_orders=False)
    assert (await single.ajudge("Q?", "a@b.com", "[EMAIL]")).consistent is None
    # the rubric and the answers reach the model
    system, user = judge.messages("Q?", "first", "second")
    assert "private data" in system.content and "[[TIE]]" in system.content
    assert "[Answer A]\nfirst" in user.content and "[Answer B]\nsecond" in user.content


def test_position_bias_becomes_ties_and_is_counted() -> None:
    always_a = FunctionChatModel(fn=lambda messages: "The first answer is better. [[A]]")
    report = evaluate(items(6), LLMJudge(always_a, "helpfulness"), progress=False)
    row = report.win_rate()
    assert (row.wins, row.ties, row.losses, row.inconsistent) == (0, 6, 0, 6)
    assert row.win_rate == 0.0
    assert all(r.consistent is False and r.verdict == "tie" for r in report.results)


def test_unparseable_replies_are_counted_never_verdicts() -> None:
    def fn(messages: list[BaseMessage]) -> str:
        return "Hard to say, both have merits." if "Question 0?" in messages[-1].content else prefers_redacted(messages)

    report = evaluate(items(6), LLMJudge(FunctionChatModel(fn=fn), "harmlessness"), progress=False)
    row = report.win_rate()
    assert row.unparseable == 1 and row.errors == 0 and row.n == 6 and row.judged == 5
    # items 2 and 4 redact (wins), 1, 3, 5 are unchanged (ties)
    assert (row.wins, row.ties, row.losses) == (2, 3, 0)
    assert row.win_rate == pytest.approx(2 / 5)
    bad = next(r for r in report.results if r.index == 0)
    assert bad.status == "unparseable" and bad.verdict is None and bad.replies == ["Hard to say, both have merits."] * 2


def test_llm_judge_options_are_checked() -> None:
    model = FunctionChatModel(fn=prefers_redacted)
    with pytest.raises(ConfigError, match="rubric="):
        LLMJudge(model, "conciseness")
    judge = LLMJudge(model, "conciseness", rubric="Prefer the shorter answer.")
    assert "Prefer the shorter answer." in judge.messages("q", "a", "b")[0].content
    with pytest.raises(ConfigError, match="answer_b"):
        LLMJudge(model, user_prompt="{question} {answer_a}")
    with pytest.raises(ConfigError, match="unknown placeholder"):
        LLMJudge(model, system_prompt="{rubric} {nope}")
    with pytest.raises(ConfigError, match="LLMJudge"):
        as_judge(model)
    with pytest.raises(TypeError, match="chat model"):
        LLMJudge(lambda q: q)
    assert [j.dimension for j in LLMJudge.for_dimensions(model)] == ["helpfulness", "harmlessness", "honesty"]


async def test_callable_judges_accept_words_numbers_scores_and_none() -> None:
    assert CallableJudge(lambda q, o, c: "WIN").judge("q", "o", "c").verdict == "win"
    assert CallableJudge(lambda q, o, c: -2.5).judge("q", "o", "c").verdict == "loss"
    assert CallableJudge(lambda q, o, c: 0).judge("q", "o", "c").verdict == "tie"
    scored = CallableJudge(lambda q, o, c: (0.1, 0.7)).judge("q", "o", "c")
    assert scored.verdict == "win" and scored.scores == {"original": 0.1, "corrected": 0.7}
    assert CallableJudge(lambda q, o, c: None).judge("q", "o", "c").status == "unparseable"
    with pytest.raises(TypeError, match="return 'win'"):
        CallableJudge(lambda q, o, c: True).judge("q", "o", "c")

    async def rule(question: str, original: str, corrected: str, dimension: str) -> str:
        return "win" if dimension == "privacy" else "loss"

    assert (await CallableJudge(rule, dimension="privacy").ajudge("q", "o", "c")).verdict == "win"
    assert CallableJudge(rule, dimension="style").judge("q", "o", "c").verdict == "loss"
    with pytest.raises(ValueError, match="only status 'ok'"):
        Judgment(status="ok")


# ------------------------------------------------------------------------------------ evaluate


def test_evaluate_breaks_down_per_dimension_and_upstream_model() -> None:
    def privacy(question: str, original: str, corrected: str) -> str:
        return "win" if "[EMAIL]" in corrected and "[EMAIL]" not in original else "tie"

    def brevity(question: str, original: str, corrected: str) -> int:
        return len(original) - len(corrected)

    judges = [CallableJudge(privacy, dimension="privacy"), CallableJudge(brevity, dimension="brevity")]
    report = evaluate(items(8), judges, progress=False)
    assert report.dimensions == ["privacy", "brevity"] and report.groups == ["m0", "m1"]
    assert report.win_rate("privacy").win_rate == pytest.approx(0.5)
    assert report.win_rate("privacy", "m0").win_rate == 1.0  # every m0 answer had an e-mail
    assert report.win_rate("privacy", "m1").win_rate == 0.0
    assert report.win_rate("brevity", "m0").wins == 4  # "[EMAIL]" is shorter than the address
    assert report.edits.n == 8 and report.edits.changed_share == 0.5
    assert report.edits_by_group["m1"].changed_share == 0.0
    assert len(report.results) == 16 and report.failures == 0
    with pytest.raises(ConfigError, match="dimension"):
        report.win_rate()
    with pytest.raises(ConfigError, match="share a dimension"):
        evaluate(items(2), [privacy, brevity], progress=False)


def test_items_read_aliases_and_bad_rows_name_the_line(tmp_path: Path) -> None:
    alpaca = load_items(ALPACA_SLICE)
    assert len(alpaca) == 101 and alpaca[0].corrected and alpaca[0].upstream_model.startswith("aligner-2b")
    assert EvalItem.from_row(("q", "a", "c"), "x").corrected == "c"
    item = EvalItem.from_row({"question": "q", "original": "a", "kind": "redact", "id": 7}, "x")
    assert item.id == "7" and item.group("kind") == "redact" and item.corrected is None
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "a", "correction": "c"}\n{"question": "q"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: no original"):
        load_items(bad)
    with pytest.raises(DataError, match="aligner="):
        evaluate([("q", "a")], lambda q, o, c: "tie", progress=False)


async def test_judgments_run_concurrently_within_the_bound() -> None:
    in_flight = peak = 0

    async def slow(question: str, original: str, corrected: str) -> str:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        return "tie"

    report = evaluate(items(12), slow, max_concurrency=3, progress=False)
    assert report.win_rate().ties == 12 and peak == 3


def test_retries_with_backoff_then_errors_are_counted() -> None:
    calls: dict[str, int] = {}

    def flaky(question: str, original: str, corrected: str) -> str:
        calls[question] = calls.get(question, 0) + 1
        if question == "Question 1?" and calls[question] <= 2:
            raise ConnectionError("rate limited")
        if question == "Question 2?":
            raise TimeoutError("judge down")
        return "win"

    report = evaluate(items(4), flaky, retries=2, backoff=0.0, progress=False)
    by_index = {r.index: r for r in report.results}
    assert by_index[1].verdict == "win" and by_index[1].attempts == 3
    assert by_index[2].status == "error" and "TimeoutError: judge down" in by_index[2].error
    assert by_index[2].attempts == 3 and calls["Question 2?"] == 3
    row = report.win_rate()
    assert (row.wins, row.errors, row.judged, row.n) == (3, 1, 3, 4) and report.errors == 1

    def broken(question: str, original: str, corrected: str) -> str:
        raise TypeError("wrong signature somewhere")  # a bug, not a flaky service: not retried

    failed = evaluate(items(1), broken, retries=5, backoff=0.0, progress=False).results[0]
    assert failed.status == "error" and failed.attempts == 1


def test_resume_skips_judged_items_and_retries_errors(tmp_path: Path) -> None:
    log = tmp_path / "judgments.jsonl"
    calls: list[str] = []
    down = {"Question 3?"}

    def judge(question: str, original: str, corrected: str) -> str:
        calls.append(question)
        if question in down:
            raise ConnectionError("unavailable")
        return "win" if original != corrected else "tie"

    first = evaluate(items(6), judge, log=log, retries=0, progress=False)
    assert first.errors == 1 and len(calls) == 6
    down.clear()
    calls.clear()
    second = evaluate(items(6), judge, log=log, retries=0, progress=False)
    assert calls == ["Question 3?"] and second.errors == 0
    row = second.win_rate()
    assert (row.wins, row.ties, row.losses, row.errors, row.win_rate) == (3, 3, 0, 0, 0.5)
    # an interrupted write leaves a torn last line: it is dropped and that item judged again
    with log.open("a") as handle:
        handle.write('{"type": "judgment", "key": "abc", "dimen')
    calls.clear()
    third = evaluate(items(6), judge, log=log, progress=False)
    assert calls == [] and third.win_rate().judged == 6
    assert log.read_text().endswith("\n")
    # a different judge (name) does not reuse these verdicts
    assert len(evaluate(items(6), CallableJudge(judge, name="other"), log=log, progress=False).results) == 6
    assert len(calls) == 6


def test_evaluate_an_aligner_corrects_first_and_resumes(tiny_aligner, tmp_path: Path) -> None:
    batches: list[int] = []
    real = tiny_aligner.acorrect_batch

    async def spy(pairs, batch_size=16, **kwargs):
        batches.append(len(pairs))
        return await real(pairs, batch_size, **kwargs)

    tiny_aligner.acorrect_batch = spy
    try:
        pairs = [{"question": f"Q{i}?", "answer": f"The answer is {i}."} for i in range(5)]
        log = tmp_path / "log.jsonl"
        report = evaluate(pairs, lambda q, o, c: "tie", aligner=tiny_aligner, log=log, batch_size=4, progress=False)
        assert batches == [4, 1] and report.aligner == tiny_aligner.model_name
        assert all(r.corrected is not None and r.status == "ok" for r in report.results)
        again = evaluate(pairs, lambda q, o, c: "tie", aligner=tiny_aligner, log=log, batch_size=4, progress=False)
        assert batches == [4, 1]  # corrections came from the log
        assert [r.corrected for r in again.results] == [r.corrected for r in report.results]
    finally:
        del tiny_aligner.acorrect_batch


def test_report_json_markdown_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    judges = [CallableJudge(lambda q, o, c: len(o) - len(c), dimension=d) for d in ("brevity", "style")]
    report = evaluate(items(6), judges, progress=True)
    assert "judge" in capsys.readouterr().err  # the progress bar
    paths = report.save(tmp_path / "report")
    data = json.loads(paths["json"].read_text())
    assert data["win_rates"][0]["dimension"] == "brevity" and data["win_rates"][0]["judged"] == 6
    assert "question" not in data["results"][0] and data["results"][0]["verdict"] in ("win", "tie", "loss")
    assert "question" in report.to_dict(texts=True)["results"][0]
    markdown = paths["markdown"].read_text()
    assert "| brevity | all | 6 | 3 | 3 | 0 | +50.0% |" in markdown
    assert "| style | m1 |" in markdown and "| m0 | 3 |" in markdown
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------- reward model


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from aligner_chains.testing import train_byte_bpe

    path = tmp_path_factory.mktemp("rm") / "model"
    tokenizer = train_byte_bpe(["Mail me at a@b.com, or write to [EMAIL]. The answer is fine."], 300)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
        num_labels=1,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def test_reward_model_judge_scores_each_side(reward_model_dir: Path) -> None:
    judge = RewardModelJudge(str(reward_model_dir), device="cpu")
    s1, s2 = judge.score("Q?", "Mail me at a@b.com."), judge.score("Q?", "Write to [EMAIL].")
    assert s1 != s2 and judge.score("Q?", "Mail me at a@b.com.") == s1
    judgment = judge.judge("Q?", "Mail me at a@b.com.", "Write to [EMAIL].")
    assert judgment.verdict == ("win" if s2 > s1 else "loss")
    assert judgment.scores == {"original": s1, "corrected": s2}
    assert "ASSISTANT:Write" in judge.text("Q?", "Write")
    wide = RewardModelJudge(str(reward_model_dir), device="cpu", margin=abs(s2 - s1) + 1, dimension="rm")
    assert wide.judge("Q?", "Mail me at a@b.com.", "Write to [EMAIL].").verdict == "tie"
    report = evaluate([("Q?", "Mail me at a@b.com.", "Write to [EMAIL].")], wide, progress=False)
    assert report.dimensions == ["rm"] and report.results[0].scores is not None


def test_reward_model_judge_refuses_wrong_checkpoints(tmp_path: Path, reward_model_dir: Path) -> None:
    config = json.loads((reward_model_dir / "config.json").read_text())
    two = tmp_path / "two"
    two.mkdir()
    for file in reward_model_dir.iterdir():
        (two / file.name).write_bytes(file.read_bytes())
    (two / "config.json").write_text(json.dumps({**config, "id2label": {"0": "a", "1": "b"}}))
    with pytest.raises(ConfigError, match="num_labels=2"):
        RewardModelJudge(str(two), device="cpu")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="safetensors"):
        RewardModelJudge(str(empty))


# ------------------------------------------------------------------------------------ CLI

JUDGE_MODULE = """
from aligner_chains.evaluate.testing import FunctionChatModel

CALLS = []


def prefers_redacted(messages):
    CALLS.append(1)
    text = messages[-1].content
    a = text.split("[Answer A]")[1].split("[Answer B]")[0]
    return "[[A]]" if "[EMAIL]" in a else "[[B]]" if "[EMAIL]" in text else "[[TIE]]"


def make_model():
    return FunctionChatModel(fn=prefers_redacted)


def rule(question, original, corrected):
    return "win" if "[EMAIL]" in corrected else "tie"
"""


def test_cli_eval_writes_a_report_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from aligner_chains.cli import main

    module = tmp_path / "judges.py"
    module.write_text(JUDGE_MODULE)
    data = tmp_path / "items.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in items(4)))
    out = tmp_path / "report"
    argv = ["eval", "--input", str(data), "--judge", f"{module}:make_model", "--out", str(out), "--quiet"]
    argv += ["--dimension", "harmlessness", "--rubric", "privacy=Prefer the answer that reveals no contact data."]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| harmlessness | all | 4 | 2 | 2 | 0 | +50.0% |" in printed and "| privacy | all |" in printed
    assert {p.name for p in out.iterdir()} == {"judgments.jsonl", "report.json", "report.md", "win_rate.png"}
    lines = (out / "judgments.jsonl").read_text().count("\n")
    assert lines == 8
    assert main(argv) == 0  # resumed: nothing judged again
    assert (out / "judgments.jsonl").read_text().count("\n") == lines
    # a judge function named directly, and a bad spec
    assert (
        main(["eval", "--input", str(data), "--judge", f"{module}:rule", "--out", str(tmp_path / "r2"), "--quiet"]) == 0
    )
    assert json.loads((tmp_path / "r2" / "report.json").read_text())["dimensions"] == ["overall"]
    assert main(["eval", "--input", str(data), "--judge", "no_such_module_xyz:thing", "--out", str(out)]) == 2
    assert "no_such_module_xyz:thing" in capsys.readouterr().err


def test_cli_eval_corrects_with_an_aligner_first(tiny_model_dir: Path, tmp_path: Path) -> None:
    from aligner_chains.cli import main

    module = tmp_path / "rules.py"
    module.write_text(JUDGE_MODULE)
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"question": f"Q{i}?", "answer": f"Mail a{i}@b.com."}) + "\n" for i in range(3)))
    argv = ["eval", "--input", str(data), "--judge", f"{module}:rule", "--aligner", str(tiny_model_dir)]
    argv += ["--max-new-tokens", "4", "--device", "cpu", "--out", str(tmp_path / "r"), "--no-plot", "--quiet"]
    assert main(argv) == 0
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["aligner"] == str(tiny_model_dir) and report["edits"]["n"] == 3
    assert not (tmp_path / "r" / "win_rate.png").exists()
    log = [json.loads(line) for line in (tmp_path / "r" / "judgments.jsonl").read_text().splitlines()]
    assert [r["type"] for r in log].count("correction") == 3


def test_specs_name_objects_and_factories() -> None:
    import tempfile

    from aligner_chains.evaluate.specs import load_object

    assert load_object("json:dumps") is json.dumps  # a function of arguments is used as it is
    assert load_object("tempfile:gettempdir") == tempfile.gettempdir()  # a no-argument factory is called
    with pytest.raises(ConfigError, match="module:factory"):
        load_object("gpt-4o")
