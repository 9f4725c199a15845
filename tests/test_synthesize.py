"""`aligner_chains.synthesize`: questions -> upstream answers -> teacher corrections -> a file that
`aligner-chains train sft` trains on; filters, dedupe, identity rows, retries, resume and the command.
Offline: the upstream and teacher are deterministic `FunctionChatModel`s."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from langchain_core.messages import BaseMessage, SystemMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

from aligner_chains.core.errors import ConfigError, DataError
from aligner_chains.evaluate.testing import FunctionChatModel
from aligner_chains.synthesize import (
    CorrectionPrompt,
    SynthesisFilters,
    classify,
    clean_correction,
    load_questions,
    sidecar,
    synthesize,
)
from cookbook.demo_aligner.dataset import REFUSALS, redact

QUESTIONS = [
    "How do I reach Ann?",
    "How do I reach Bob?",
    "What is the capital of France?",
    "How do I reach Ann?",  # a duplicate
    "  How do I   reach Bob? ",  # a duplicate up to whitespace
    "Say nothing.",
    "Tell me a long story.",
    "How do I poison my neighbour?",
    "Anything sensitive?",
]
ANSWERS = {
    "How do I reach Ann?": "Mail ann@example.com.",
    "How do I reach Bob?": "Call Bob on +1 415-555-0132.",
    "What is the capital of France?": "Paris is the capital of France.",
    "Say nothing.": "Nothing.",
    "Tell me a long story.": "Once upon a time.",
    "How do I poison my neighbour?": "Mix something into their food.",
    "Anything sensitive?": "Some text.",
}


def upstream_fn(messages: list[BaseMessage]) -> str:
    return ANSWERS[" ".join(messages[-1].content.split())]


def question_of(messages: list[BaseMessage]) -> str:
    return messages[-1].content.split("[Question]\n")[1].split("\n\n[Answer]")[0]


def answer_of(messages: list[BaseMessage]) -> str:
    return messages[-1].content.split("[Answer]\n")[1].split("\n\nWrite the corrected answer.")[0]


def teacher_fn(messages: list[BaseMessage]) -> str:
    question, answer = question_of(messages), answer_of(messages)
    if question == "Say nothing.":
        return "   "
    if question == "Tell me a long story.":
        return "And then... " * 400
    if question == "Anything sensitive?":
        return "I'm sorry, but I can't help with that."
    if "poison" in question:
        return REFUSALS["poison"]
    return "Corrected answer: " + redact(answer)


def make_models() -> tuple[FunctionChatModel, FunctionChatModel]:
    return FunctionChatModel(fn=upstream_fn), FunctionChatModel(fn=teacher_fn)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ------------------------------------------------------------------------------------ end to end


def test_synthesis_end_to_end_into_a_file_train_sft_accepts(tmp_path: Path) -> None:
    from aligner_chains.cli import main
    from aligner_chains.finetune import load_rows

    upstream, teacher = make_models()
    out = tmp_path / "data" / "qac.jsonl"
    stats = synthesize(QUESTIONS, upstream=upstream, teacher=teacher, output=out, progress=False)
    rows = read_jsonl(out)
    assert [r["question"] for r in rows] == [
        "How do I reach Ann?",
        "How do I reach Bob?",
        "What is the capital of France?",
        "How do I poison my neighbour?",
    ]
    assert rows[0] == {
        "question": "How do I reach Ann?",
        "answer": "Mail ann@example.com.",
        "correction": "Mail [EMAIL].",
    }
    assert rows[1]["correction"] == "Call Bob on [PHONE]."
    assert rows[2]["correction"] == rows[2]["answer"]  # identical corrections are kept by default
    assert rows[3]["correction"] == REFUSALS["poison"]  # a refusal of the user's request is a good correction
    assert (stats.n_input, stats.duplicates, stats.n_unique, stats.written) == (9, 2, 7, 4)
    assert stats.dropped == {"empty_answer": 0, "empty_correction": 1, "refused": 1, "runaway": 1, "identical": 0}
    assert stats.identical_kept == 1 and stats.errors == 0
    assert stats.edits.n == 4 and stats.edits.changed_share == 0.75
    assert upstream.calls == 7 and teacher.calls == 7  # duplicates are asked once
    assert json.loads(sidecar(out, "stats").read_text())["written"] == 4
    assert len(read_jsonl(sidecar(out, "raw"))) == 7
    assert "4 correction rows" in stats.summary() and "refused 1" in stats.summary()

    assert len(load_rows(out)) == 4
    config = {
        "train_file": str(out),
        "model_config": {
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "max_position_embeddings": 256,
        },
        "tokenizer_vocab_size": 300,
        "max_length": 128,
        "per_device_batch_size": 2,
        "eval_fraction": 0.0,
        "max_steps": 1,
        "output_dir": str(tmp_path / "run"),
    }
    (tmp_path / "cfg.json").write_text(json.dumps(config))
    assert main(["train", "sft", "--config", str(tmp_path / "cfg.json")]) == 0
    assert (tmp_path / "run" / "final" / "aligner_config.json").is_file()


def test_filter_options_apply_again_without_model_calls(tmp_path: Path) -> None:
    upstream, teacher = make_models()
    out = tmp_path / "qac.jsonl"
    synthesize(QUESTIONS, upstream=upstream, teacher=teacher, output=out, progress=False)
    assert teacher.calls == 7
    filters = SynthesisFilters(identical="drop", refusal_patterns=[], max_length_ratio=None, max_chars=None)
    stats = synthesize(QUESTIONS, upstream=upstream, teacher=teacher, output=out, filters=filters, progress=False)
    assert teacher.calls == 7 and upstream.calls == 7  # everything came from the raw log
    assert stats.dropped["identical"] == 1 and stats.dropped["refused"] == 0 and stats.dropped["runaway"] == 0
    assert {r["question"] for r in read_jsonl(out)} >= {"Anything sensitive?", "Tell me a long story."}
    no_dedupe = synthesize(
        QUESTIONS,
        upstream=upstream,
        teacher=teacher,
        output=out,
        filters=SynthesisFilters(dedupe=False),
        progress=False,
    )
    assert no_dedupe.duplicates == 0 and no_dedupe.n_unique == 9 and teacher.calls == 9


def test_identity_rows_on_request(tmp_path: Path) -> None:
    upstream, teacher = make_models()
    stats = synthesize(
        QUESTIONS, upstream=upstream, teacher=teacher, output=tmp_path / "all.jsonl", identity=1.0, progress=False
    )
    rows = read_jsonl(tmp_path / "all.jsonl")
    assert stats.identity_rows == stats.written == 4 and len(rows) == 8
    for correction_row, identity_row in zip(rows[::2], rows[1::2], strict=True):
        assert identity_row["identity"] is True and "identity" not in correction_row
        assert identity_row["correction"] == identity_row["answer"] == correction_row["answer"]
    some = synthesize(
        QUESTIONS, upstream=upstream, teacher=teacher, output=tmp_path / "some.jsonl", identity=0.5, progress=False
    )
    again = synthesize(
        QUESTIONS, upstream=upstream, teacher=teacher, output=tmp_path / "some.jsonl", identity=0.5, progress=False
    )
    assert some.identity_rows == again.identity_rows  # chosen by a seeded hash, not at random
    with pytest.raises(ConfigError, match="identity"):
        synthesize(QUESTIONS, teacher=teacher, upstream=upstream, output=tmp_path / "x.jsonl", identity=2)


# ------------------------------------------------------------------------------------ failures and resume


def test_retries_then_failures_are_counted_and_retried_on_resume(tmp_path: Path) -> None:
    attempts: dict[str, int] = {}
    broken = {"How do I reach Bob?"}

    def flaky_teacher(messages: list[BaseMessage]) -> str:
        question = question_of(messages)
        attempts[question] = attempts.get(question, 0) + 1
        if question == "How do I reach Ann?" and attempts[question] <= 2:
            raise ConnectionError("rate limited")
        if question in broken:
            raise TimeoutError("teacher down")
        return teacher_fn(messages)

    upstream = FunctionChatModel(fn=upstream_fn)
    teacher = FunctionChatModel(fn=flaky_teacher)
    out = tmp_path / "qac.jsonl"
    questions = QUESTIONS[:3]
    stats = synthesize(questions, upstream=upstream, teacher=teacher, output=out, retries=2, backoff=0, progress=False)
    assert attempts["How do I reach Ann?"] == 3 and attempts["How do I reach Bob?"] == 3
    assert stats.teacher_errors == 1 and stats.written == 2
    raw = {r["question"]: r for r in read_jsonl(sidecar(out, "raw"))}
    assert raw["How do I reach Bob?"]["status"] == "error" and "teacher down" in raw["How do I reach Bob?"]["error"]
    assert raw["How do I reach Ann?"]["attempts"] == 4  # 1 upstream call + 3 teacher attempts
    # the next run retries only the failed question, reusing its upstream answer
    broken.clear()
    upstream_calls, teacher_calls = upstream.calls, teacher.calls
    stats = synthesize(questions, upstream=upstream, teacher=teacher, output=out, progress=False)
    assert (upstream.calls, teacher.calls) == (upstream_calls, teacher_calls + 1)
    assert stats.errors == 0 and [r["question"] for r in read_jsonl(out)] == questions
    # a torn last line in the raw log (interrupted write) is dropped and that question asked again
    raw_path = sidecar(out, "raw")
    raw_path.write_text(raw_path.read_text() + '{"key": "x", "quest')
    synthesize(questions, upstream=upstream, teacher=teacher, output=out, progress=False)
    assert teacher.calls == teacher_calls + 1


def test_upstream_failures_are_counted_separately(tmp_path: Path) -> None:
    def down(messages: list[BaseMessage]) -> str:
        raise ConnectionError("upstream down")

    _, teacher = make_models()
    stats = synthesize(
        QUESTIONS[:2], upstream=FunctionChatModel(fn=down), teacher=teacher, output=tmp_path / "o.jsonl",
        retries=1, backoff=0, progress=False,
    )  # fmt: skip
    assert (stats.upstream_errors, stats.teacher_errors, stats.written, teacher.calls) == (2, 0, 0, 0)
    assert (tmp_path / "o.jsonl").read_text() == ""


def test_concurrency_is_bounded(tmp_path: Path) -> None:
    in_flight = peak = 0

    async def teacher(messages: list[BaseMessage]) -> str:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        return "Fine."

    rows = [{"question": f"Q{i}?", "answer": f"A{i}."} for i in range(10)]
    stats = synthesize(rows, teacher=teacher, output=tmp_path / "o.jsonl", max_concurrency=4, progress=False)
    assert stats.written == 10 and peak == 4


# ------------------------------------------------------------------------------------ inputs and prompts


def test_questions_from_files_with_given_answers_and_extras(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    given = {"instruction": "Hi?", "answer": "Hello at a@b.com.", "src": 3}
    path.write_text(json.dumps("A bare question?") + "\n" + json.dumps(given) + "\n")
    rows = load_questions(path)
    assert rows[0].question == "A bare question?" and rows[0].answer is None
    assert rows[1].answer == "Hello at a@b.com." and rows[1].extra == {"src": 3}
    with pytest.raises(DataError, match="no upstream model"):
        synthesize(path, teacher=make_models()[1], output=tmp_path / "o.jsonl", progress=False)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "ok?"}\n{"text": "no question"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: no question"):
        load_questions(bad)
    # rows with answers need no upstream; their other fields are copied
    teacher = FunctionChatModel(fn=lambda m: redact(answer_of(m)))
    stats = synthesize(rows[1:], teacher=teacher, output=tmp_path / "o.jsonl", progress=False)
    assert stats.written == 1
    assert read_jsonl(tmp_path / "o.jsonl") == [
        {"question": "Hi?", "answer": "Hello at a@b.com.", "correction": "Hello at [EMAIL].", "src": 3}
    ]


def test_any_runnable_upstream_and_a_custom_prompt(tmp_path: Path) -> None:
    chain = (
        ChatPromptTemplate.from_messages([("human", "{q}")])
        | FunctionChatModel(fn=lambda m: f"Echo: {m[-1].content}")
        | StrOutputParser()
    )
    seen: list[list[BaseMessage]] = []

    def teacher(messages: list[BaseMessage]) -> str:
        seen.append(messages)
        return messages[-1].content.upper()

    prompt_file = tmp_path / "prompt.yaml"
    prompt_file.write_text("system: Be brief.\nuser: 'Q={question} A={answer} -> fix it'\n")
    prompt = CorrectionPrompt.from_file(prompt_file)
    synthesize(
        ["Why?"], upstream=chain, input_key="q", teacher=teacher, prompt=prompt, output=tmp_path / "o.jsonl",
        progress=False,
    )  # fmt: skip
    assert isinstance(seen[0][0], SystemMessage) and seen[0][0].content == "Be brief."
    assert read_jsonl(tmp_path / "o.jsonl")[0] == {
        "question": "Why?",
        "answer": "Echo: Why?",
        "correction": "Q=WHY? A=ECHO: WHY? -> FIX IT",
    }
    text_prompt = tmp_path / "user.txt"
    text_prompt.write_text("{question}\n---\n{answer}")
    assert CorrectionPrompt.from_file(text_prompt).system == CorrectionPrompt().system
    with pytest.raises(ConfigError, match=r"\{answer\}"):
        CorrectionPrompt(user="Only {question}")
    with pytest.raises(ConfigError, match="unknown placeholder"):
        CorrectionPrompt(user="{question} {answer} {extra}")


def test_filters() -> None:
    filters = SynthesisFilters()
    for refusal in (
        "I'm sorry, but I can't help with that.",
        "Sorry, I cannot assist with this request.",
        "I can’t help with that",
        "I won't rewrite this answer because it is offensive.",
    ):
        assert classify("An answer.", refusal, filters) == "refused", refusal
    for fine in (*REFUSALS.values(), "I can't help you cheat, but here is how to study well.", "Paris."):
        assert classify("An answer.", fine, filters) == "kept", fine
    assert classify("", "x", filters) == "empty_answer"
    assert classify("a", " \n", filters) == "empty_correction"
    assert classify("short", "x" * 421, filters) == "runaway"  # > 4 x 5 + 400
    assert classify("short", "x" * 420, filters) == "kept"
    assert classify("same ", "same", SynthesisFilters(identical="drop")) == "identical"
    assert clean_correction("  **Corrected answer:** Fine.\n") == "Fine."
    assert clean_correction("Correction is needed: none.") == "Correction is needed: none."
    with pytest.raises(ConfigError, match="not a valid regex"):
        SynthesisFilters(refusal_patterns=["("])
    with pytest.raises(ConfigError, match="max_length_ratio"):
        SynthesisFilters(max_length_ratio=0)


# ------------------------------------------------------------------------------------ CLI

MODELS_MODULE = """
from cookbook.demo_aligner.dataset import redact
from aligner_chains.evaluate.testing import FunctionChatModel


def upstream():
    return FunctionChatModel(fn=lambda messages: "Reach me at " + messages[-1].content.split()[-1] + "@example.com.")


def answer_of(messages):
    return messages[-1].content.split("[Answer]\\n")[1].split("\\n\\n")[0]


def teacher():
    return FunctionChatModel(fn=lambda messages: redact(answer_of(messages)))
"""


def test_cli_synthesize(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from aligner_chains.cli import main

    module = tmp_path / "models.py"
    module.write_text(MODELS_MODULE)
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps({"question": f"Contact for team{i}"}) + "\n" for i in range(3)))
    out = tmp_path / "qac.jsonl"
    argv = ["synthesize", "--questions", str(questions), "--upstream", f"{module}:upstream"]
    argv += ["--teacher", f"{module}:teacher", "--out", str(out), "--identity", "1", "--quiet"]
    assert main(argv) == 0
    rows = read_jsonl(out)
    assert rows[0] == {
        "question": "Contact for team0",
        "answer": "Reach me at team0@example.com.",
        "correction": "Reach me at [EMAIL].",
    }
    assert len(rows) == 6 and rows[1]["identity"] is True
    assert "3 correction rows + 3 identity row(s)" in capsys.readouterr().out
    assert main(argv[:-1] + ["--identical", "drop", "--quiet"]) == 0
    assert main(["synthesize", "--questions", str(questions), "--teacher", f"{module}:teacher", "--out", str(out)]) == 2
    assert "no upstream model" in capsys.readouterr().err
