"""`AlignerRunnable`: input types and mirrored outputs, metadata, batch, streaming, async, events,
callbacks, error policies, lazy loading and `configurable_fields` without reloading weights."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.runnables import ConfigurableField, RunnableLambda, RunnablePassthrough

import aligner_chains
from aligner_chains import Aligner, ConfigError, InputTooLongError, ModelNotFoundError
from aligner_chains.backends.local.strategy import HFGenerate
from aligner_chains.langchain import DIFF_EVENT, AlignerRunnable
from aligner_chains.langchain.testing import ScriptedChatModel

Q = "What is the capital of France?"
A = "Paris is the capital of France."
TOOL_CALL = {"name": "search", "args": {"q": "france"}, "id": "call_1", "type": "tool_call"}


def rich_message(**update: Any) -> AIMessage:
    """An upstream reply with everything a provider attaches."""
    fields: dict[str, Any] = {
        "content": A,
        "id": "run-123",
        "name": "bot",
        "response_metadata": {"model_name": "upstream-1", "finish_reason": "stop"},
        "usage_metadata": {"input_tokens": 7, "output_tokens": 6, "total_tokens": 13},
        "additional_kwargs": {"refusal": None},
    }
    fields.update(update)
    return AIMessage(**fields)


def stable(meta: dict[str, Any]) -> dict[str, Any]:
    """Correction metadata without wall-clock fields."""
    return {k: v for k, v in meta.items() if k not in ("latency_s",)}


def add_all(chunks: list[Any]) -> Any:
    total = chunks[0]
    for chunk in chunks[1:]:
        total = total + chunk
    return total


@pytest.fixture
def aligner(tiny_aligner: Aligner) -> AlignerRunnable:
    return AlignerRunnable(tiny_aligner)


class Failing(HFGenerate):
    """A decoding strategy that fails its first ``failures`` calls (then generates normally)."""

    def __init__(self, failures: int = 10**9) -> None:
        self.failures = failures
        self.calls = 0
        self._lock = threading.Lock()

    def decode(self, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            self.calls += 1
            fail = self.calls <= self.failures
        if fail:
            raise RuntimeError("generation exploded")
        return super().decode(*args, **kwargs)


def failing_aligner(model_dir: Path, failures: int = 10**9) -> Aligner:
    return Aligner.from_pretrained(str(model_dir), strategy=Failing(failures), max_new_tokens=8)


# ---------------------------------------------------------------------------- construction


def test_lazy_exports_and_lazy_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    assert aligner_chains.AlignerRunnable is AlignerRunnable
    assert aligner_chains.AlignedChatModel.__name__ == "AlignedChatModel"
    import aligner_chains.langchain as adapter

    assert set(adapter.__all__) <= set(dir(adapter))  # the lazy AlignerMiddleware too
    calls: list[Any] = []
    monkeypatch.setattr("aligner_chains.langchain.runnable.resolve_aligner", lambda *a, **k: calls.append((a, k)))
    runnable = AlignerRunnable()
    assert runnable.model is None and not calls  # nothing loads at construction
    runnable.get_aligner()
    assert calls == [((None,), {})]  # None goes to the core's one default-model rule


def test_default_model_is_the_core_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ALIGNER_MODEL", raising=False)
    assert AlignerRunnable().model_name == "demo"
    monkeypatch.setenv("ALIGNER_MODEL", "my/aligner")
    assert AlignerRunnable().model_name == "my/aligner"  # read when asked, not at import
    assert AlignerRunnable("demo").model_name == "demo"


def test_options_pass_through_to_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []
    monkeypatch.setattr("aligner_chains.langchain.runnable.resolve_aligner", lambda *a, **k: calls.append((a, k)))
    AlignerRunnable("demo", template="aligner-v1", device="cpu", dtype="float32", revision="main").get_aligner()
    assert calls == [
        (
            ("demo",),
            {
                "template": "aligner-v1",
                "device": "cpu",
                "dtype": "float32",
                "revision": "main",
            },
        )
    ]
    with pytest.raises(ConfigError, match="unknown option 'max_tokens'. Did you mean 'max_new_tokens'"):
        AlignerRunnable(max_tokens=3)
    with pytest.raises(ConfigError, match="'devcie'. Did you mean 'device'"):
        AlignerRunnable("demo", devcie="cpu")


def test_name_and_unknown_input_type(aligner: AlignerRunnable) -> None:
    assert aligner.get_name() == "Aligner"
    with pytest.raises(TypeError, match="takes a str, an AIMessage"):
        aligner.invoke(HumanMessage("not an answer"))
    with pytest.raises(ValueError, match="no 'answer' key"):
        aligner.invoke({"question": "q"})


# ---------------------------------------------------------------------------- input types


def test_str_in_str_out(aligner: AlignerRunnable, tiny_aligner: Aligner) -> None:
    out = aligner.invoke({"question": Q, "answer": A})["answer"]
    assert out == tiny_aligner.correct(Q, A).corrected
    assert isinstance(aligner.invoke(A), str)


def test_message_keeps_everything_but_text(aligner: AlignerRunnable, tiny_aligner: Aligner) -> None:
    message = rich_message(tool_calls=[TOOL_CALL])
    out = (RunnableLambda(lambda _: message) | aligner).invoke(Q)
    assert type(out) is AIMessage
    expected = tiny_aligner.correct(Q, A)
    assert out.content == expected.corrected
    assert out.id == "run-123" and out.name == "bot"
    assert out.usage_metadata == message.usage_metadata
    assert out.additional_kwargs == message.additional_kwargs
    assert out.tool_calls == message.tool_calls
    meta = out.response_metadata
    assert meta["model_name"] == "upstream-1" and meta["finish_reason"] == "stop"
    summary = meta["aligner"]
    assert summary["original"] == A and summary["changed"] == expected.changed
    assert summary["template"] == "aligner-v2" and summary["model"] == tiny_aligner.model_name
    assert summary["prompt_tokens"] == expected.prompt_tokens and summary["completion_tokens"] == 8
    assert summary["latency_s"] > 0 and summary["error"] is None
    assert "question" not in summary and "corrected" not in summary
    json.dumps(summary)


def test_chunk_in_chunk_out(aligner: AlignerRunnable) -> None:
    chunk = AIMessageChunk(content=A, id="c-1", response_metadata={"model_name": "m"})
    out = aligner.invoke(chunk)
    assert type(out) is AIMessageChunk and out.id == "c-1" and out.response_metadata["model_name"] == "m"
    assert "aligner" in out.response_metadata


def test_content_blocks_only_text_corrected(aligner: AlignerRunnable, tiny_aligner: Aligner) -> None:
    image = {"type": "image", "url": "https://example.com/x.png"}
    reasoning = {"type": "reasoning", "reasoning": "thinking..."}
    message = rich_message(
        content=[reasoning, {"type": "text", "text": "Paris is "}, image, {"type": "text", "text": "the capital."}]
    )
    out = aligner.invoke(message)
    corrected = tiny_aligner.correct("", "Paris is the capital.").corrected
    assert out.content == [reasoning, {"type": "text", "text": corrected}, image]


def test_tool_call_only_message_passes_untouched(aligner: AlignerRunnable) -> None:
    message = rich_message(content="", tool_calls=[TOOL_CALL])
    assert aligner.invoke(message) is message
    assert list(aligner.stream(message)) == [message]
    assert aligner.batch([message, message]) == [message, message]


def test_empty_answer_is_skipped_not_sent(aligner: AlignerRunnable) -> None:
    out = aligner.invoke(rich_message(content="  "))
    assert out.content == "  " and out.response_metadata["aligner"]["finish_reason"] == "skipped"


def test_dict_mirrors_and_keeps_other_keys(aligner: AlignerRunnable, tiny_aligner: Aligner) -> None:
    out = aligner.invoke({"question": Q, "answer": rich_message(), "context": "docs"})
    assert set(out) == {"question", "answer", "context", "aligner"}
    assert isinstance(out["answer"], AIMessage) and out["answer"].id == "run-123"
    assert out["answer"].content == tiny_aligner.correct(Q, A).corrected
    assert out["aligner"]["original"] == A and out["context"] == "docs"
    custom = AlignerRunnable(tiny_aligner, question_key="q", answer_key="a").invoke({"q": Q, "a": A})
    assert custom["a"] == tiny_aligner.correct(Q, A).corrected


# ---------------------------------------------------------------------------- batch


PAIRS = [(Q, A), ("How do I bake bread?", "Mix flour, water, salt and yeast."), ("Hi", "Hello!")]


def test_batch_equals_single_and_is_one_generate(aligner: AlignerRunnable, tiny_aligner, monkeypatch) -> None:
    inputs = [{"question": q, "answer": a} for q, a in PAIRS]
    singles = [aligner.invoke(x)["answer"] for x in inputs]
    calls: list[int] = []
    original = tiny_aligner.backend.generate
    monkeypatch.setattr(
        tiny_aligner.backend,
        "generate",
        lambda prompts, params, **kw: calls.append(len(prompts)) or original(prompts, params, **kw),
    )
    assert [o["answer"] for o in aligner.batch(inputs)] == singles
    assert calls == [3]


def test_batch_size_and_max_concurrency_split_batches(tiny_aligner, monkeypatch) -> None:
    calls: list[int] = []
    original = tiny_aligner.backend.generate
    monkeypatch.setattr(
        tiny_aligner.backend,
        "generate",
        lambda prompts, params, **kw: calls.append(len(prompts)) or original(prompts, params, **kw),
    )
    inputs = [{"question": q, "answer": a} for q, a in PAIRS * 2]
    AlignerRunnable(tiny_aligner, batch_size=4).batch(inputs)
    assert calls == [4, 2]
    calls.clear()
    AlignerRunnable(tiny_aligner, batch_size=4).batch(inputs, config={"max_concurrency": 2})
    assert calls == [2, 2, 2]


def test_batch_in_a_chain_is_one_generate(tiny_aligner, monkeypatch) -> None:
    questions = ["one?", "two?", "three?"]
    llm = ScriptedChatModel(answers={q: f"Answer {q}" for q in questions})
    calls: list[int] = []
    original = tiny_aligner.backend.generate
    monkeypatch.setattr(
        tiny_aligner.backend,
        "generate",
        lambda prompts, params, **kw: calls.append(len(prompts)) or original(prompts, params, **kw),
    )
    outs = (llm | AlignerRunnable(tiny_aligner)).batch(questions)
    assert calls == [3] and all(isinstance(o, AIMessage) for o in outs)


async def test_abatch_equals_ainvoke(aligner: AlignerRunnable) -> None:
    inputs = [{"question": q, "answer": a} for q, a in PAIRS]
    singles = [(await aligner.ainvoke(x))["answer"] for x in inputs]
    assert [o["answer"] for o in await aligner.abatch(inputs)] == singles


def test_batch_return_exceptions_keeps_good_items(aligner: AlignerRunnable) -> None:
    outs = aligner.batch([A, 42], return_exceptions=True)
    assert isinstance(outs[0], str) and isinstance(outs[1], TypeError)
    with pytest.raises(TypeError):
        aligner.batch([A, 42])


def _break_on(marker: str, aligner: Aligner, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every generation that holds a prompt with ``marker`` fail (as a row that breaks the model would)."""
    original = aligner.backend.generate

    def generate(prompts, params, **kwargs):
        if any(marker in prompt for prompt in prompts):
            raise RuntimeError("this row breaks the model")
        return original(prompts, params, **kwargs)

    monkeypatch.setattr(aligner.backend, "generate", generate)


BATCH_INPUTS = [
    {"question": Q, "answer": A},
    {"question": "BOOM?", "answer": A},  # fails in generation
    {"question": Q, "answer": "word " * 2000},  # fails before: longer than the context
    {"question": "Hi", "answer": "Hello!"},
]


def test_batch_return_exceptions_fails_only_the_failing_input(
    aligner: AlignerRunnable, tiny_aligner: Aligner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As langchain-core's batch: one failing input fails only itself, in generation or before it."""
    _break_on("BOOM", tiny_aligner, monkeypatch)
    singles = [aligner.invoke(BATCH_INPUTS[i])["answer"] for i in (0, 3)]
    outs = aligner.batch(BATCH_INPUTS, return_exceptions=True)
    assert [outs[0]["answer"], outs[3]["answer"]] == singles
    assert isinstance(outs[1], RuntimeError) and "breaks the model" in str(outs[1])
    assert isinstance(outs[2], InputTooLongError)
    with pytest.raises((RuntimeError, InputTooLongError)):
        aligner.batch(BATCH_INPUTS)


async def test_abatch_return_exceptions_fails_only_the_failing_input(
    aligner: AlignerRunnable, tiny_aligner: Aligner, monkeypatch: pytest.MonkeyPatch
) -> None:
    _break_on("BOOM", tiny_aligner, monkeypatch)
    outs = await aligner.abatch(BATCH_INPUTS, return_exceptions=True)
    assert [type(o) for o in outs] == [dict, RuntimeError, InputTooLongError, dict]
    assert outs[0]["answer"] == (await aligner.ainvoke(BATCH_INPUTS[0]))["answer"]


# ---------------------------------------------------------------------------- streaming


def test_stream_string_input(aligner: AlignerRunnable) -> None:
    chunks = list(aligner.stream({"question": Q, "answer": A}))
    assert len(chunks) > 2
    total = add_all(chunks)
    assert total["answer"] == aligner.invoke({"question": Q, "answer": A})["answer"]
    assert stable(total["aligner"]) == stable(aligner.invoke({"question": Q, "answer": A})["aligner"])
    pieces = list(aligner.stream(A))
    assert len(pieces) > 1 and all(isinstance(p, str) for p in pieces)
    assert "".join(pieces) == aligner.invoke(A)


def test_stream_message_after_streaming_model(aligner: AlignerRunnable) -> None:
    llm = ScriptedChatModel(responses=[rich_message(id=None)])
    chain = llm | aligner
    chunks = list(chain.stream(Q))
    assert len(chunks) > 2 and all(isinstance(c, AIMessageChunk) for c in chunks)
    total = add_all(chunks)
    invoked = (ScriptedChatModel(responses=[rich_message(id=None)]) | aligner).invoke(Q)
    assert total.content == invoked.content
    assert total.usage_metadata == invoked.usage_metadata
    assert stable(total.response_metadata["aligner"]) == stable(invoked.response_metadata["aligner"])
    assert total.response_metadata["model_name"] == "upstream-1"
    assert len({c.id for c in chunks}) == 1


def test_stream_keeps_tool_calls_and_blocks(aligner: AlignerRunnable) -> None:
    message = rich_message(tool_calls=[TOOL_CALL])
    total = add_all(list(aligner.stream(message)))
    assert total.tool_calls == [TOOL_CALL] and total.content == aligner.invoke(message).content


def test_transform_consumes_upstream_chunks(aligner: AlignerRunnable) -> None:
    upstream = [AIMessageChunk(content=w, id="x") for w in ("Paris ", "is ", "the capital.")]
    out = add_all(list(aligner.transform(iter(upstream))))
    assert out.response_metadata["aligner"]["original"] == "Paris is the capital."
    assert out.content == aligner.invoke(AIMessage(content="Paris is the capital.", id="x")).content


async def test_astream_and_atransform(aligner: AlignerRunnable) -> None:
    chunks = [c async for c in (ScriptedChatModel(responses=[A]) | aligner).astream(Q)]
    assert len(chunks) > 2
    expected = (ScriptedChatModel(responses=[A]) | aligner).invoke(Q)
    assert add_all(chunks).content == expected.content
    pieces = [p async for p in aligner.astream(A)]
    assert "".join(pieces) == await aligner.ainvoke(A)

    async def upstream():
        for word in ("Paris ", "is ", "nice."):
            yield word

    assert "".join([p async for p in aligner.atransform(upstream())]) == aligner.invoke("Paris is nice.")


# ---------------------------------------------------------------------------- callbacks and events


class Recorder(BaseCallbackHandler):
    def __init__(self) -> None:
        self.starts: list[tuple[str, UUID, UUID | None]] = []
        self.custom: list[tuple[str, Any]] = []

    def on_chain_start(self, serialized, inputs, *, run_id, parent_run_id=None, **kwargs) -> None:
        self.starts.append((kwargs.get("name") or "", run_id, parent_run_id))

    def on_custom_event(self, name, data, *, run_id, **kwargs) -> None:
        self.custom.append((name, data))


def test_callbacks_see_an_aligner_run_and_the_diff(aligner: AlignerRunnable) -> None:
    handler = Recorder()
    chain = ScriptedChatModel(responses=[A]) | aligner
    chain.invoke(Q, config={"callbacks": [handler]})
    names = {name: (run_id, parent) for name, run_id, parent in handler.starts}
    assert "Aligner" in names and "RunnableSequence" in names
    assert names["Aligner"][1] == names["RunnableSequence"][0]  # nested under the chain
    [(event, data)] = handler.custom
    assert event == DIFF_EVENT and data["original"] == A and data["question"] == Q
    assert isinstance(data["diff"], list) and data["changed"] == bool(data["diff"])


async def test_astream_events_v2(aligner: AlignerRunnable) -> None:
    chain = ScriptedChatModel(responses=[A]) | aligner
    events = [e async for e in chain.astream_events(Q, version="v2")]
    aligner_events = [e["event"] for e in events if e["name"] == "Aligner"]
    assert aligner_events[0] == "on_chain_start" and aligner_events[-1] == "on_chain_end"
    assert aligner_events.count("on_chain_stream") > 1
    custom = [e for e in events if e["event"] == "on_custom_event"]
    assert len(custom) == 1 and custom[0]["name"] == DIFF_EVENT
    assert custom[0]["data"]["original"] == A
    diff = custom[0]["data"]["diff"]
    assert all({"op", "original", "corrected"} <= set(edit) for edit in diff)


# ---------------------------------------------------------------------------- error policies


def test_on_error_raise(tiny_model_dir: Path) -> None:
    runnable = AlignerRunnable(failing_aligner(tiny_model_dir))
    with pytest.raises(RuntimeError, match="exploded"):
        runnable.invoke(rich_message())
    with pytest.raises(RuntimeError, match="exploded"):
        runnable.batch([A, A])
    with pytest.raises(RuntimeError, match="exploded"):
        list(runnable.stream(A))


def test_on_error_passthrough(tiny_model_dir: Path) -> None:
    runnable = AlignerRunnable(failing_aligner(tiny_model_dir), on_error="passthrough")
    out = (ScriptedChatModel(responses=[rich_message()]) | runnable).invoke(Q)
    assert out.content == A and out.id == "run-123"
    assert "exploded" in out.response_metadata["aligner"]["error"]
    assert out.response_metadata["aligner"]["finish_reason"] == "error"
    assert runnable.batch([A, "Other answer."]) == [A, "Other answer."]
    streamed = add_all(list(runnable.stream(rich_message())))
    assert streamed.content == A and "exploded" in streamed.response_metadata["aligner"]["error"]


async def test_on_error_passthrough_async(tiny_model_dir: Path) -> None:
    runnable = AlignerRunnable(failing_aligner(tiny_model_dir), on_error="passthrough")
    assert await runnable.ainvoke(A) == A
    assert await runnable.abatch([A]) == [A]
    assert "".join([p async for p in runnable.astream(A)]) == A


def test_loading_failure_follows_the_policy(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope")
    with pytest.raises(ModelNotFoundError):
        AlignerRunnable(missing).invoke(A)
    out = AlignerRunnable(missing, on_error="passthrough").invoke(rich_message())
    assert out.content == A and "ModelNotFoundError" in out.response_metadata["aligner"]["error"]
    assert "".join(AlignerRunnable(missing, on_error="passthrough").stream(A)) == A


def test_with_fallbacks_and_with_retry(tiny_model_dir: Path, tiny_aligner: Aligner) -> None:
    broken = AlignerRunnable(failing_aligner(tiny_model_dir))
    chain = ScriptedChatModel(responses=[A]) | StrOutputParser() | broken.with_fallbacks([RunnablePassthrough()])
    assert chain.invoke(Q) == A
    flaky = AlignerRunnable(failing_aligner(tiny_model_dir, failures=1))
    out = flaky.with_retry(stop_after_attempt=2, wait_exponential_jitter=False).invoke({"question": Q, "answer": A})
    assert out["answer"] == tiny_aligner.correct(Q, A).corrected


# ---------------------------------------------------------------------------- configurable


def test_configurable_fields_do_not_reload_weights(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = AlignerRunnable(str(tiny_model_dir), max_new_tokens=8)
    base.invoke(A)  # warm the shared cache
    loads: list[Any] = []
    import aligner_chains.backends.local.loading as loading

    original = loading._load_uncached
    monkeypatch.setattr(loading, "_load_uncached", lambda *a, **k: loads.append(a) or original(*a, **k))
    runnable = base.configurable_fields(max_new_tokens=ConfigurableField(id="aligner_max_new_tokens"))
    short = runnable.invoke({"question": Q, "answer": A}, config={"configurable": {"aligner_max_new_tokens": 3}})
    full = runnable.invoke({"question": Q, "answer": A})
    assert short["aligner"]["completion_tokens"] <= 3 < full["aligner"]["completion_tokens"]
    runnable.batch([A, A], config={"configurable": {"aligner_max_new_tokens": 2}})
    assert loads == []


def test_configurable_alternatives(tiny_model_dir: Path, tiny_pad_model_dir: Path) -> None:
    runnable = AlignerRunnable(str(tiny_model_dir), max_new_tokens=4).configurable_alternatives(
        ConfigurableField(id="aligner"), default_key="v2", v1=AlignerRunnable(str(tiny_pad_model_dir), max_new_tokens=4)
    )
    assert runnable.invoke({"question": Q, "answer": A})["aligner"]["template"] == "aligner-v2"
    other = runnable.invoke({"question": Q, "answer": A}, config={"configurable": {"aligner": "v1"}})
    assert other["aligner"]["template"] == "aligner-v1"


def test_per_call_generation_kwargs(aligner: AlignerRunnable) -> None:
    out = aligner.invoke({"question": Q, "answer": A}, max_new_tokens=2)
    assert out["aligner"]["completion_tokens"] <= 2


def test_concurrent_invokes_share_one_load(tiny_model_dir: Path) -> None:
    runnable = AlignerRunnable(str(tiny_model_dir), max_new_tokens=4)
    results: list[Any] = []
    threads = [threading.Thread(target=lambda: results.append(runnable.invoke(A))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3 and len(set(results)) == 1
