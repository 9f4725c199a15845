"""Annotators: both-order LLM judging, ties, failures never becoming labels, concurrency, reward model, Aligner."""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import Field, PrivateAttr

from aligner_chains import Aligner, ConfigError
from aligner_chains.core.generation import Backend, GenerationOutput
from aligner_chains.finetune import (
    AlignerAnnotator,
    AnnotatorSettings,
    CallableAnnotator,
    LengthAnnotator,
    LLMAnnotator,
    RewardModelAnnotator,
    as_annotator,
)
from aligner_chains.finetune.annotators import annotator_from_settings, change_amount, judgement_rates, parse_verdict

_BLOCK = r"\[The Start of {0}\]\n(.*?)\n\[The End of {0}\]"


def parse_judge_prompt(text: str) -> tuple[str, str, str, str]:
    """(instructions, prompt, response A, response B) from `LLMAnnotator`'s rendered message."""
    instructions = text.split("[The Start of the Prompt]")[0].strip()
    prompt = re.search(_BLOCK.format("the Prompt"), text, re.S).group(1)
    a = re.search(_BLOCK.format("Response A"), text, re.S).group(1)
    b = re.search(_BLOCK.format("Response B"), text, re.S).group(1)
    return instructions, prompt, a, b


class RuleJudge(BaseChatModel):
    """A fake LangChain chat model that answers by rule: it reads the pair from the prompt and picks the
    shorter (or, when its instructions say "longer", the longer) response. On equal lengths it says "A",
    a position bias that asking in both orders turns into a tie."""

    seen: list[str] = Field(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "rule-judge"

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> ChatResult:
        text = messages[-1].content
        self.seen.append(text)
        instructions, _, a, b = parse_judge_prompt(text)
        longer = "longer" in instructions.lower()
        if len(a) == len(b):
            verdict = "A"
        else:
            verdict = "A" if (len(a) > len(b)) == longer else "B"
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=f"Verdict: {verdict}"))])


class ConcurrencyProbe(BaseChatModel):
    """Async fake judge that records how many calls are in flight at once."""

    delay: float = 0.02
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _now: int = PrivateAttr(default=0)
    _peak: int = PrivateAttr(default=0)

    @property
    def _llm_type(self) -> str:
        return "probe"

    def _enter(self) -> None:
        with self._lock:
            self._now += 1
            self._peak = max(self._peak, self._now)

    def _leave(self) -> None:
        with self._lock:
            self._now -= 1

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> ChatResult:
        self._enter()
        time.sleep(self.delay)
        self._leave()
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content="A"))])

    async def _agenerate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> ChatResult:
        self._enter()
        await asyncio.sleep(self.delay)
        self._leave()
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content="A"))])


class FlakyJudge(BaseChatModel):
    """Fails (raises) on replies whose prompt's response A contains 'boom'; otherwise prefers the shorter."""

    @property
    def _llm_type(self) -> str:
        return "flaky"

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> ChatResult:
        _, _, a, b = parse_judge_prompt(messages[-1].content)
        if "boom" in a:
            raise RuntimeError("judge backend unavailable")
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content="A" if len(a) < len(b) else "B"))])


class FirstWordsBackend(Backend):
    """A rule-based Aligner backend: the 'correction' keeps the first ``n`` words of the answer."""

    name = "first-words"

    def __init__(self, n: int = 2, fail_on: str | None = None) -> None:
        self.n, self.fail_on = n, fail_on

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def truncate_left(self, text: str, n_tokens: int) -> str:
        return " ".join(text.split()[n_tokens:])

    def generate(self, prompts: Sequence[str], params: Any, sources: Sequence[str] | None = None) -> list:
        outputs = []
        for prompt in prompts:
            answer = re.search(r"##Answer: (.*)\n##Correction:", prompt, re.S).group(1)
            if self.fail_on and self.fail_on in answer:
                raise RuntimeError("generation failed")
            text = " ".join(answer.split()[: self.n])
            outputs.append(
                GenerationOutput(token_ids=[0] * len(text.split()), text=text, finish_reason="stop", prompt_tokens=1)
            )
        return outputs

    def stream(self, prompt: str, params: Any):
        yield self.generate([prompt], params)[0]


def first_words_aligner(n: int = 2, fail_on: str | None = None) -> Aligner:
    return Aligner(FirstWordsBackend(n, fail_on), "aligner-v2")


# ----------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("reply", "verdict"),
    [
        ("A", "A"),
        (" b. ", "B"),
        ("[[B]]", "B"),
        ("Response A", "A"),
        ("**A**", "A"),
        ("Verdict: B", "B"),
        ("Both are fine, but the better response is A.", "A"),
        ("Response A rambles. Response B is concise. Final answer: B", "B"),
        ("A good question. I cannot decide.", None),  # the article "A" is not a verdict
        ("They are equally good.", None),
        ("", None),
        ("A or B", None),
    ],
)
def test_parse_verdict(reply: str, verdict: str | None) -> None:
    assert parse_verdict(reply) == verdict


# ----------------------------------------------------------------------------- LLM annotator


def test_llm_annotator_asks_in_both_orders_and_labels_agreement() -> None:
    judge = RuleJudge()
    annotator = LLMAnnotator(judge, instructions="Prefer the shorter response.")
    assert annotator.annotate("Q?", "short", "a much longer response") == 0
    assert annotator.annotate("Q?", "a much longer response", "short") == 1
    first, second = judge.seen[:2]  # the two orders are asked concurrently: either may arrive first
    assert {parse_judge_prompt(first)[1:], parse_judge_prompt(second)[1:]} == {
        ("Q?", "short", "a much longer response"),
        ("Q?", "a much longer response", "short"),  # swapped
    }
    assert first.startswith("Prefer the shorter response.") and second.startswith("Prefer the shorter response.")
    longer = LLMAnnotator(RuleJudge(), instructions="Prefer the longer response.")
    assert longer.annotate("Q?", "short", "a much longer response") == 1  # instructions steer the judge
    judgement = annotator.judge_batch([("Q?", "short", "longer one")])[0]
    assert (judgement.status, judgement.votes, judgement.consistent) == ("labelled", (0, 0), True)


def test_disagreement_between_orders_is_a_tie() -> None:
    annotator = LLMAnnotator(GenericFakeChatModel(messages=iter(["A"] * 6)))  # always picks the first shown
    judgements = annotator.judge_batch([("Q", "x", "yy"), ("Q", "yy", "x"), ("Q", "p", "q")])
    assert [j.label for j in judgements] == [None, None, None]
    assert {j.status for j in judgements} == {"tie"} and all(j.consistent is False for j in judgements)
    assert judgement_rates(judgements)["position_consistency"] == 0.0
    assert annotator.stats.ties == 3 and annotator.stats.labelled == 0


def test_unparseable_and_failed_replies_never_become_labels(caplog: pytest.LogCaptureFixture) -> None:
    replies = iter(["I like both.", "B", "A", "Sure! Here's a poem about judges.", "A", "B"])
    annotator = LLMAnnotator(GenericFakeChatModel(messages=replies))
    with caplog.at_level(logging.WARNING, logger="aligner_chains.finetune.annotators"):
        judgements = annotator.judge_batch([("Q", "a", "b"), ("Q", "c", "d"), ("Q", "e", "f")])
    assert [j.status for j in judgements] == ["failed", "failed", "labelled"]
    assert [j.label for j in judgements] == [None, None, 0]  # pair 3: "A" then (swapped) "B": A both times
    assert judgements[0].votes == (None, 0) and "unparseable reply 'I like both.'" in judgements[0].reason
    assert "unparseable reply" in caplog.text
    flaky = LLMAnnotator(FlakyJudge())
    with caplog.at_level(logging.WARNING, logger="aligner_chains.finetune.annotators"):
        judged = flaky.judge_batch([("Q", "boom", "longer text"), ("Q", "ok", "longer text")])
    assert [j.label for j in judged] == [None, 0]
    assert judged[0].status == "failed" and "RuntimeError: judge backend unavailable" in judged[0].reason
    assert flaky.stats.failures == 1 and flaky.stats.as_dict()["failure_rate"] == 0.5
    assert "call failed" in caplog.text


def test_single_order_mode_takes_one_reply() -> None:
    judge = RuleJudge()
    annotator = LLMAnnotator(judge, both_orders=False)
    assert annotator.annotate_batch([("Q", "a", "bbb"), ("Q", "ccc", "d")]) == [0, 1]
    assert len(judge.seen) == 2


def test_render_keeps_braces_and_template_is_checked() -> None:
    annotator = LLMAnnotator(RuleJudge(), instructions="Judge {strictly}.")
    text = annotator.render("What is {x}?", "{response_b}", "b")
    assert (
        "Judge {strictly}." in text and "What is {x}?" in text and "[The Start of Response A]\n{response_b}\n" in text
    )
    with pytest.raises(ConfigError, match="lacks"):
        LLMAnnotator(RuleJudge(), template="{prompt} {response_a}")
    with pytest.raises(TypeError, match="LangChain chat model"):
        LLMAnnotator(object())


async def test_async_calls_are_bounded_by_max_concurrency() -> None:
    probe = ConcurrencyProbe()
    annotator = LLMAnnotator(probe, max_concurrency=3)
    items = [("Q", f"a{i}", f"b{i}") for i in range(8)]
    labels = await annotator.aannotate_batch(items)
    assert labels == [None] * 8  # "A" in both orders: position bias, ties
    assert 1 < probe._peak <= 3  # concurrent, but never more than max_concurrency
    assert await annotator.aannotate("Q", "x", "y") is None


def test_sync_batch_is_bounded_by_max_concurrency() -> None:
    probe = ConcurrencyProbe()
    LLMAnnotator(probe, max_concurrency=2).judge_batch([("Q", f"a{i}", f"b{i}") for i in range(5)])
    assert 1 < probe._peak <= 2


# ----------------------------------------------------------------------------- rule, callable, reward model, Aligner


def test_length_annotator() -> None:
    shorter, longer = LengthAnnotator("shorter"), LengthAnnotator("longer", unit="words")
    assert shorter.annotate("Q", "ab", "abc") == 0 and shorter.annotate("Q", "abc", "ab") == 1
    assert shorter.annotate("Q", "ab", "cd") is None  # equal lengths tie
    assert longer.annotate("Q", "one two", "three") == 0
    with pytest.raises(ConfigError, match="prefer"):
        LengthAnnotator("wider")  # type: ignore[arg-type]


def test_callable_annotator_rejects_bad_values(caplog: pytest.LogCaptureFixture) -> None:
    def judge(prompt: str, a: str, b: str) -> Any:
        return {"x": 0, "y": 1, "t": None, "bad": "A", "flag": True}[a] if a != "raise" else 1 / 0

    annotator = as_annotator(judge)
    assert isinstance(annotator, CallableAnnotator)
    with caplog.at_level(logging.WARNING):
        judged = annotator.judge_batch([("Q", a, "b") for a in ("x", "y", "t", "bad", "flag", "raise")])
    assert [j.label for j in judged] == [0, 1, None, None, None, None]
    assert [j.status for j in judged] == ["labelled", "labelled", "tie", "failed", "failed", "failed"]
    assert "ZeroDivisionError" in judged[-1].reason and "returned 'A'" in caplog.text


async def test_async_callable_annotator() -> None:
    async def judge(prompt: str, a: str, b: str) -> int:
        await asyncio.sleep(0)
        return 0 if len(a) <= len(b) else 1

    annotator = CallableAnnotator(judge)
    assert await annotator.aannotate_batch([("Q", "a", "bb"), ("Q", "aa", "b")]) == [0, 1]


def test_as_annotator_dispatch() -> None:
    assert isinstance(as_annotator(RuleJudge()), LLMAnnotator)
    assert isinstance(as_annotator(first_words_aligner()), AlignerAnnotator)
    rule = LengthAnnotator()
    assert as_annotator(rule) is rule
    with pytest.raises(TypeError, match="Cannot use int as an annotator"):
        as_annotator(3)


def test_annotator_from_settings() -> None:
    assert isinstance(annotator_from_settings(AnnotatorSettings(type="length", prefer="longer")), LengthAnnotator)
    built = annotator_from_settings(AnnotatorSettings(type="callable", target="test_annotators:always_first"))
    assert built.annotate("Q", "a", "b") == 0
    llm = annotator_from_settings(
        AnnotatorSettings(type="llm", target="test_annotators:RuleJudge", instructions="Prefer the longer response.")
    )
    assert isinstance(llm, LLMAnnotator) and llm.annotate("Q", "a", "bbb") == 1
    with pytest.raises(ConfigError, match="needs target"):
        annotator_from_settings(AnnotatorSettings(type="callable"))
    with pytest.raises(ConfigError, match="Cannot import"):
        annotator_from_settings(AnnotatorSettings(type="callable", target="nowhere:fn"))


def always_first(prompt: str, a: str, b: str) -> int:
    return 0


def test_change_amount_by_hand() -> None:
    assert change_amount("one two three four", "one two three four") == 0.0
    # "four" -> "five": 4 changed characters of 18
    assert change_amount("one two three four", "one two three five") == pytest.approx(4 / 18)
    assert change_amount("one two three four", "one two three five", measure="chars") == 4.0
    assert change_amount("", "anything") == 1.0


def test_aligner_annotator_prefers_the_response_changed_less() -> None:
    annotator = AlignerAnnotator(first_words_aligner(2))  # keeps two words: a two-word answer is unchanged
    assert annotator.annotate("Q", "fine thanks", "well, it depends on many things") == 0
    assert annotator.annotate("Q", "it depends on many things", "sure thing") == 1
    assert annotator.annotate("Q", "yes ok", "no way") is None  # both unchanged: a tie
    failing = AlignerAnnotator(first_words_aligner(2, fail_on="boom"))
    judged = failing.judge_batch([("Q", "boom boom boom", "fine")])[0]
    assert judged.status == "failed" and judged.label is None and "generation failed" in judged.reason


def test_reward_model_annotator(tmp_path: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from aligner_chains.testing import train_byte_bpe

    tokenizer = train_byte_bpe(["How are you? fine thanks, great, terrible, awful day"], 300, pad=True)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    annotator = RewardModelAnnotator(str(tmp_path / "rm"), device="cpu", batch_size=3)
    responses = ["fine thanks", "terrible", "great day, thanks", "awful"]
    batched = annotator.scores(["How are you?"] * 4, responses)
    single = [annotator.scores(["How are you?"], [r])[0] for r in responses]
    assert batched == pytest.approx(single, abs=1e-5)  # padding does not change a score
    items = [("How are you?", responses[i], responses[j]) for i, j in ((0, 1), (2, 3), (1, 2))]
    expected = [0 if batched[i] > batched[j] else 1 for i, j in ((0, 1), (2, 3), (1, 2))]
    assert annotator.annotate_batch(items) == expected
    assert RewardModelAnnotator(str(tmp_path / "rm"), device="cpu", tie_margin=1e9).annotate(*items[0]) is None
