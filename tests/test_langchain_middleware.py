"""`AlignerMiddleware` in a real `create_agent` loop with a scripted chat model: the final answer is
corrected, tool-calling turns and tool calls are not; sync and async."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("langchain.agents", reason="needs the `langchain` extra")

from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool

from aligner_chains import Aligner
from aligner_chains.langchain import AlignedChatModel, AlignerMiddleware, AlignerRunnable
from aligner_chains.langchain.testing import ScriptedChatModel

Q = "What is the weather in Paris?"
FINAL = "It is sunny in Paris today."
CALL = {"name": "weather", "args": {"city": "Paris"}, "id": "call_w", "type": "tool_call"}


@tool
def weather(city: str) -> str:
    """Weather for a city."""
    return f"sunny in {city}"


class Spy(Aligner):
    """The tiny Aligner, remembering what it corrects."""

    def __init__(self, base: Aligner) -> None:
        super().__init__(base.backend, base.template, generation=base.generation)
        self.pairs: list[tuple[str, str]] = []

    def correct_batch(self, pairs: Any, batch_size: int = 16, **kwargs: Any) -> Any:
        pairs = list(pairs)
        self.pairs.extend(pairs)
        return super().correct_batch(pairs, batch_size, **kwargs)


def scripted() -> ScriptedChatModel:
    return ScriptedChatModel(responses=[AIMessage(content="Let me check.", tool_calls=[CALL]), FINAL])


@pytest.fixture
def spy(tiny_aligner: Aligner) -> Spy:
    return Spy(tiny_aligner)


def check_run(messages: list[Any], spy: Spy, tiny_aligner: Aligner) -> None:
    human, tool_turn, tool_result, final = messages
    assert isinstance(human, HumanMessage) and human.content == Q
    assert isinstance(tool_turn, AIMessage) and tool_turn.content == "Let me check."
    assert tool_turn.tool_calls[0]["name"] == "weather" and "aligner" not in tool_turn.response_metadata
    assert isinstance(tool_result, ToolMessage) and tool_result.content == "sunny in Paris"
    assert isinstance(final, AIMessage) and not final.tool_calls
    assert final.content == tiny_aligner.correct(Q, FINAL).corrected
    assert final.response_metadata["aligner"]["original"] == FINAL
    assert final.response_metadata["model_name"] == "scripted-chat" and final.id is not None
    assert spy.pairs == [(Q, FINAL)]  # only the final answer was corrected, against the user's question


def test_agent_final_answer_is_corrected(spy: Spy, tiny_aligner: Aligner) -> None:
    agent = create_agent(model=scripted(), tools=[weather], middleware=[AlignerMiddleware(spy)])
    result = agent.invoke({"messages": [HumanMessage(Q)]})
    check_run(result["messages"], spy, tiny_aligner)


async def test_agent_async(spy: Spy, tiny_aligner: Aligner) -> None:
    agent = create_agent(model=scripted(), tools=[weather], middleware=[AlignerMiddleware(AlignerRunnable(spy))])
    result = await agent.ainvoke({"messages": [HumanMessage(Q)]})
    check_run(result["messages"], spy, tiny_aligner)


def test_agent_stream_updates(spy: Spy, tiny_aligner: Aligner) -> None:
    agent = create_agent(model=scripted(), tools=[weather], middleware=[AlignerMiddleware(spy)])
    updates = list(agent.stream({"messages": [HumanMessage(Q)]}, stream_mode="updates"))
    finals = [
        m
        for update in updates
        for node in update.values()
        if isinstance(node, dict)
        for m in node.get("messages", [])
        if isinstance(m, AIMessage) and not m.tool_calls
    ]
    assert [m.response_metadata["aligner"]["original"] for m in finals] == [FINAL]


def test_options_and_passthrough(tiny_model_dir, tmp_path) -> None:
    middleware = AlignerMiddleware(str(tiny_model_dir), max_new_tokens=3)
    assert middleware.aligner.max_new_tokens == 3 and middleware.name == "AlignerMiddleware"
    broken = AlignerMiddleware(str(tmp_path / "missing"), on_error="passthrough")
    agent = create_agent(model=scripted(), tools=[weather], middleware=[broken])
    final = agent.invoke({"messages": [HumanMessage(Q)]})["messages"][-1]
    assert final.content == FINAL and "ModelNotFoundError" in final.response_metadata["aligner"]["error"]


def test_aligned_chat_model_drives_an_agent(spy: Spy, tiny_aligner: Aligner) -> None:
    """The chat-model form works in an agent too (tool-calling turns keep their tool calls)."""
    agent = create_agent(model=AlignedChatModel(llm=scripted(), aligner=spy), tools=[weather])
    messages = agent.invoke({"messages": [HumanMessage(Q)]})["messages"]
    assert messages[1].tool_calls[0]["id"] == "call_w" and isinstance(messages[2], ToolMessage)
    assert messages[-1].response_metadata["aligner"]["original"] == FINAL
    assert (Q, FINAL) in spy.pairs
