"""`AlignerMiddleware`: correct an agent's final answer (``langchain.agents.create_agent``, extra ``langchain``).

With ``stream_mode="segments"`` the final answer is corrected while it streams. The model call is wrapped:
the agent's model becomes an `AlignedChatModel` around it (`_AgentModel`) that streams each corrected segment
as soon as it is ready, and passes a turn that calls tools through untouched from its first tool call on.
In a graph streamed with ``stream_mode="messages"`` no uncorrected token of the final answer reaches the
stream: the model's own run is tagged ``"nostream"`` (LangGraph leaves it out), the wrapper's run streams only
corrected segments (raw text only in a turn that has already called a tool, so is no final answer), and the
final answer written to the state is the corrected message under the same id (LangGraph does not send it
again).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.utils import message_chunk_to_message
from langchain_core.outputs import ChatResult
from langchain_core.runnables.config import ensure_config
from pydantic import Field, SkipValidation

from aligner_chains.core import Aligner
from aligner_chains.core.errors import MissingDependencyError
from aligner_chains.core.segmented import StreamMode
from aligner_chains.langchain.chat_model import AlignedChatModel, UpstreamCalls, as_ai_message, chat_result
from aligner_chains.langchain.messages import is_tool_call_only, last_human_text
from aligner_chains.langchain.question import QUESTION_METADATA_KEY
from aligner_chains.langchain.runnable import AlignerRunnable

try:
    from langchain.agents.middleware import AgentMiddleware, ExtendedModelResponse, ModelRequest, ModelResponse
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise MissingDependencyError(
        "AlignerMiddleware needs the `langchain` agents package (1.x): pip install -e '.[langchain]'."
    ) from exc

__all__ = ["AlignerMiddleware"]


class AlignerMiddleware(AgentMiddleware):
    """Agent middleware that corrects the final assistant message with an Aligner.

    Only a model turn without tool calls (the one that ends the agent loop) is corrected, against
    the conversation's last human message; tool-calling turns and structured responses are left
    alone. The corrected message keeps its id and metadata and carries ``response_metadata["aligner"]``.

    ``stream_mode="segments"`` (an option of the aligner, like ``segment_min_chars``): when the agent streams
    (``stream_mode="messages"``), the final answer streams corrected, segment by segment, and none of its
    uncorrected tokens; a refusal ends it. Put this middleware after any middleware that changes the model
    (the innermost wrapper sees the model that answers). With a ``response_format`` the final answer is
    structured data, which is not corrected, and the model streams as in ``"whole"`` mode.
    """

    def __init__(self, aligner: AlignerRunnable | Aligner | str | None = None, **options: Any) -> None:
        """``aligner``: an `AlignerRunnable`, an `Aligner` or a model name; ``options`` configure it.

        None: the default model (``$ALIGNER_MODEL``, else the shipped demo; see `aligner_chains.core.default_model`).
        """
        super().__init__()
        if isinstance(aligner, AlignerRunnable):
            self.aligner = aligner.with_options(**options)
        else:
            self.aligner = AlignerRunnable(model=aligner, **options)
        self.tools = []

    @property
    def stream_mode(self) -> StreamMode:
        """The aligner's ``stream_mode``: ``"segments"`` corrects a streamed final answer as it streams."""
        return self.aligner.stream_mode

    def _streams_segments(self, request: ModelRequest) -> bool:
        return self.aligner.stream_mode == "segments" and request.response_format is None

    def _wrapped(self, request: ModelRequest, tool_turns: dict[str, AIMessage]) -> ModelRequest:
        """``request`` with its model wrapped in `_AgentModel`, which records tool-calling turns in ``tool_turns``."""
        model = _AgentModel(llm=request.model, aligner=self.aligner, tool_turns=tool_turns, name="AlignedChatModel")
        return request.override(model=model)

    @staticmethod
    def _config(messages: list[BaseMessage]) -> Any:
        config = ensure_config()  # the model node's config: the Aligner run nests under it
        question = last_human_text(messages)
        if question is not None:
            config["metadata"] = {**(config.get("metadata") or {}), QUESTION_METADATA_KEY: question}
        return config

    def wrap_model_call(self, request: ModelRequest, handler: Callable[[ModelRequest], Any]) -> Any:
        """Call the model; if it answered without tool calls, correct the answer."""
        if self._streams_segments(request):
            tool_turns: dict[str, AIMessage] = {}
            answer = _FinalAnswer.of(_restored(handler(self._wrapped(request, tool_turns)), tool_turns))
            if answer.message is None or _streamed_correction(answer.message):
                return answer.response
        else:
            answer = _FinalAnswer.of(handler(request))
            if answer.message is None:
                return answer.response
        return answer.replaced(self.aligner.invoke(answer.message, self._config(request.messages)))

    async def awrap_model_call(self, request: ModelRequest, handler: Callable[[ModelRequest], Awaitable[Any]]) -> Any:
        """Async `wrap_model_call`."""
        if self._streams_segments(request):
            tool_turns: dict[str, AIMessage] = {}
            answer = _FinalAnswer.of(_restored(await handler(self._wrapped(request, tool_turns)), tool_turns))
            if answer.message is None or _streamed_correction(answer.message):
                return answer.response
        else:
            answer = _FinalAnswer.of(await handler(request))
            if answer.message is None:
                return answer.response
        return answer.replaced(await self.aligner.ainvoke(answer.message, self._config(request.messages)))


class _AgentModel(AlignedChatModel):
    """The agent's model under ``AlignerMiddleware(stream_mode="segments")``.

    Streamed, a reply is corrected segment by segment, except a turn that calls tools: from its first tool call
    on it passes through, and the turn as the model wrote it is recorded in ``tool_turns`` (by id) so that the
    middleware puts it back untouched. Not streamed, a reply is returned as it is: the middleware corrects a
    final answer as a whole.
    """

    tool_turns: SkipValidation[dict[str, AIMessage]] = Field(default_factory=dict)
    """Filled in as turns stream: the middleware's own dict (not a validated copy), shared by ``bind_tools`` copies."""

    def _keep(self, turn: AIMessageChunk) -> None:
        if turn.id is not None:
            self.tool_turns[turn.id] = cast(AIMessage, message_chunk_to_message(turn))

    def _corrected(self, upstream: Iterator[AIMessageChunk], calls: UpstreamCalls) -> Iterator[AIMessageChunk]:
        return self.aligner.transform_segments(
            upstream, calls.aligner_config, on_tool_turn=self._keep, **calls.generation
        )

    def _acorrected(
        self, upstream: AsyncIterator[AIMessageChunk], calls: UpstreamCalls
    ) -> AsyncIterator[AIMessageChunk]:
        return self.aligner.atransform_segments(
            upstream, calls.aligner_config, on_tool_turn=self._keep, **calls.generation
        )

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        calls = self._calls(messages, stop, run_manager, kwargs)
        return chat_result(as_ai_message(self.llm.invoke(messages, calls.upstream_config, **calls.upstream_kwargs)))

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        calls = self._calls(messages, stop, run_manager, kwargs)
        reply = await self.llm.ainvoke(messages, calls.upstream_config, **calls.upstream_kwargs)
        return chat_result(as_ai_message(reply))


def _streamed_correction(message: AIMessage) -> bool:
    """Whether ``message`` was corrected segment by segment as it streamed (nothing left to correct)."""
    stats = (message.response_metadata.get("aligner") or {}).get("stats") or {}
    return stats.get("stream_mode") == "segments"


def _restored(response: Any, tool_turns: dict[str, AIMessage]) -> Any:
    """``response`` with each tool-calling turn that streamed through `_AgentModel` as the model wrote it."""
    model_response = response.model_response if isinstance(response, ExtendedModelResponse) else response
    if not tool_turns or not isinstance(model_response, ModelResponse):
        return response
    result = [
        tool_turns[m.id].model_copy(update={"name": m.name}) if isinstance(m, AIMessage) and m.id in tool_turns else m
        for m in model_response.result
    ]
    return _rewrapped(response, ModelResponse(result=result, structured_response=model_response.structured_response))


def _rewrapped(response: Any, model_response: ModelResponse) -> Any:
    """``model_response`` in the wrapper ``response`` came in (an `ExtendedModelResponse` keeps its command)."""
    if isinstance(response, ExtendedModelResponse):
        return ExtendedModelResponse(model_response=model_response, command=response.command)
    return model_response


@dataclass
class _FinalAnswer:
    """A model node's response and, when it is an agent's final answer, the message to correct in it."""

    response: Any
    model_response: ModelResponse | None = None
    index: int = -1

    @property
    def message(self) -> AIMessage | None:
        return None if self.model_response is None else self.model_response.result[self.index]

    @classmethod
    def of(cls, response: Any) -> _FinalAnswer:
        """Find the final answer: the last AI message of a text response, when it calls no tools."""
        if isinstance(response, AIMessage):
            response = ModelResponse(result=[response])
        model_response = response.model_response if isinstance(response, ExtendedModelResponse) else response
        if not isinstance(model_response, ModelResponse) or model_response.structured_response is not None:
            return cls(response)
        for index in range(len(model_response.result) - 1, -1, -1):
            message = model_response.result[index]
            if isinstance(message, AIMessage):
                if message.tool_calls or message.invalid_tool_calls or is_tool_call_only(message):
                    return cls(response)
                return cls(response, model_response, index)
        return cls(response)

    def replaced(self, message: AIMessage) -> Any:
        """The response with the final answer replaced by ``message``."""
        assert self.model_response is not None
        result = list(self.model_response.result)
        result[self.index] = message
        return _rewrapped(
            self.response, ModelResponse(result=result, structured_response=self.model_response.structured_response)
        )
