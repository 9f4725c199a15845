"""`AlignedChatModel`: langchain-tests' standard `ChatModelUnitTests`, plus corrected replies in
invoke / stream / batch / async, tool calling through the upstream model, and tracing params."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, SystemMessage
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableBinding
from langchain_core.tools import tool
from langchain_tests.unit_tests import ChatModelUnitTests
from pydantic import BaseModel, Field

from aligner_chains import Aligner
from aligner_chains.langchain import AlignedChatModel, AlignerRunnable
from aligner_chains.langchain.testing import ScriptedChatModel

Q = "What is the capital of France?"
A = "Paris is the capital of France."


class TestAlignedChatModelStandard(ChatModelUnitTests):
    """The standard unit suite. Nothing is xfailed; notes on what applies:

    - ``has_tool_calling``/``has_tool_choice``/``has_structured_output`` are derived by the suite from
      ``bind_tools`` (it delegates to the upstream model, here `ScriptedChatModel`), and hold.
    - ``test_serdes`` skips itself: the model holds an arbitrary upstream model and local weights, so it
      is not ``lc_serializable``. ``test_init_from_env`` skips itself: there is no API key or env config.
    - The standard params ``timeout``, ``max_retries`` and ``api_key`` belong to the upstream model, not to
      this wrapper (pydantic ignores them at init); ``temperature``/``max_tokens``/``stop`` are real fields.
    """

    @pytest.fixture(autouse=True)
    def _tiny(self, tiny_model_dir: Path) -> None:
        self.tiny_model_dir = tiny_model_dir

    @property
    def chat_model_class(self) -> type[AlignedChatModel]:
        return AlignedChatModel

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {
            "llm": ScriptedChatModel(responses=[A]),
            "aligner": AlignerRunnable(str(self.tiny_model_dir), max_new_tokens=8),
        }


@pytest.fixture
def model(tiny_aligner: Aligner) -> AlignedChatModel:
    return AlignedChatModel(llm=ScriptedChatModel(responses=[A]), aligner=tiny_aligner)


def test_reply_is_corrected_against_the_last_human_message(model: AlignedChatModel, tiny_aligner: Aligner) -> None:
    out = model.invoke([SystemMessage("sys"), HumanMessage("old"), AIMessage("x"), HumanMessage(Q)])
    assert isinstance(out, AIMessage)
    assert out.content == tiny_aligner.correct(Q, A).corrected
    assert out.response_metadata["aligner"]["original"] == A
    assert out.response_metadata["model_name"] == "scripted-chat"
    assert out.usage_metadata is not None and out.id == "scripted-0"


def test_aligner_argument_forms(tiny_model_dir: Path, tiny_aligner: Aligner) -> None:
    llm = ScriptedChatModel(responses=[A])
    assert AlignedChatModel(llm=llm, aligner=str(tiny_model_dir)).aligner.model == str(tiny_model_dir)
    assert AlignedChatModel(llm=llm, aligner=tiny_aligner).aligner.model is tiny_aligner
    assert AlignedChatModel(llm=llm).aligner.model is None  # default model, loaded lazily
    with pytest.raises(Exception, match="aligner must be"):
        AlignedChatModel(llm=llm, aligner=3)


def test_stream_yields_corrected_chunks(model: AlignedChatModel) -> None:
    chunks = list(model.stream(Q))
    assert len(chunks) > 2 and all(isinstance(c, AIMessageChunk) for c in chunks)
    total = chunks[0]
    for c in chunks[1:]:
        total = total + c
    assert total.content == model.invoke(Q).content
    assert total.response_metadata["aligner"]["original"] == A


def test_streaming_flag_and_max_tokens(tiny_aligner: Aligner) -> None:
    llm = ScriptedChatModel(responses=[A])
    plain = AlignedChatModel(llm=llm, aligner=tiny_aligner).invoke(Q)
    streamed = AlignedChatModel(llm=llm, aligner=tiny_aligner, streaming=True).invoke(Q)
    assert streamed.content == plain.content
    short = AlignedChatModel(llm=llm, aligner=tiny_aligner, max_tokens=2, temperature=0).invoke(Q)
    assert short.response_metadata["aligner"]["completion_tokens"] <= 2


async def test_async_paths(model: AlignedChatModel) -> None:
    expected = model.invoke(Q).content
    assert (await model.ainvoke(Q)).content == expected
    chunks = [c async for c in model.astream(Q)]
    assert len(chunks) > 2 and "".join(c.content for c in chunks) == expected
    outs = await model.abatch([Q, Q])
    assert [o.content for o in outs] == [expected, expected]


def test_in_a_chain_and_batch(model: AlignedChatModel) -> None:
    chain = ChatPromptTemplate.from_messages([("human", "{question}")]) | model
    outs = chain.batch([{"question": Q}, {"question": Q}])
    assert [o.content for o in outs] == [model.invoke(Q).content] * 2


def test_tool_calls_pass_through(tiny_aligner: Aligner) -> None:
    call = {"name": "add", "args": {"a": 1, "b": 2}, "id": "call_1", "type": "tool_call"}
    llm = ScriptedChatModel(responses=[AIMessage(content="", tool_calls=[call])])
    model = AlignedChatModel(llm=llm, aligner=tiny_aligner)

    @tool
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    bound = model.bind_tools([add], tool_choice="any")
    assert isinstance(bound, RunnableBinding)
    out = bound.invoke("1+2?")
    assert out.tool_calls == [call] and "aligner" not in out.response_metadata
    streamed = list(bound.stream("1+2?"))
    total = streamed[0]
    for c in streamed[1:]:
        total = total + c
    assert total.tool_calls == [call]


def test_with_structured_output_through_tool_calls(tiny_aligner: Aligner) -> None:
    class Person(BaseModel):
        """A person."""

        name: str = Field(description="name")
        age: int = Field(description="age")

    call = {"name": "Person", "args": {"name": "Ada", "age": 36}, "id": "c1", "type": "tool_call"}
    model = AlignedChatModel(
        llm=ScriptedChatModel(responses=[AIMessage(content="", tool_calls=[call])]), aligner=tiny_aligner
    )
    assert model.with_structured_output(Person).invoke("Who?") == Person(name="Ada", age=36)


def test_bind_tools_needs_an_upstream_that_binds(tiny_aligner: Aligner) -> None:
    from langchain_core.runnables import RunnableLambda

    model = AlignedChatModel(llm=RunnableLambda(lambda _: AIMessage(A)), aligner=tiny_aligner)
    assert model.invoke(Q).response_metadata["aligner"]["original"] == A  # any runnable to a message works
    with pytest.raises(NotImplementedError, match="no bind_tools"):
        model.bind_tools([])


def test_ls_params_report_upstream_and_aligner_settings(model: AlignedChatModel) -> None:
    params = AlignedChatModel(llm=model.llm, aligner=model.aligner, max_tokens=5, temperature=0.0)._get_ls_params(
        stop=["x"]
    )
    assert params["ls_model_type"] == "chat" and params["ls_model_name"] == "scripted-chat"
    assert params["ls_max_tokens"] == 5 and params["ls_temperature"] == 0.0 and params["ls_stop"] == ["x"]
    assert model._get_ls_params(model="other")["ls_model_name"] == "other"


class Runs(BaseCallbackHandler):
    def __init__(self) -> None:
        self.names: list[str] = []

    def on_chain_start(self, serialized, inputs, **kwargs) -> None:
        self.names.append(kwargs.get("name") or "")

    def on_chat_model_start(self, serialized, messages, **kwargs) -> None:
        self.names.append(kwargs.get("name") or (serialized or {}).get("name", "chat"))


def test_callbacks_see_upstream_and_aligner_runs(model: AlignedChatModel) -> None:
    runs = Runs()
    model.invoke(Q, config={"callbacks": [runs]})
    assert "Aligner" in runs.names and len([n for n in runs.names if n != "Aligner"]) == 2
