"""`AlignedChatModel`: any chat model whose replies are corrected by an Aligner, usable wherever a chat model is."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManager,
    AsyncCallbackManagerForLLMRun,
    CallbackManager,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.language_models.chat_models import agenerate_from_stream, generate_from_stream
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableBinding, RunnableConfig
from langchain_core.tools import BaseTool
from pydantic import ConfigDict, Field, field_validator, model_validator

from aligner_chains.core import Aligner
from aligner_chains.core.options import check_options, field_names
from aligner_chains.core.segmented import DEFAULT_MIN_CHARS, DEFAULT_STREAM_MODE, StreamMode, check_stream_mode
from aligner_chains.langchain.messages import last_human_text
from aligner_chains.langchain.question import QUESTION_METADATA_KEY
from aligner_chains.langchain.runnable import AlignerRunnable
from aligner_chains.langchain.segment_stream import UpstreamStopped, astop_stream, stop_stream

__all__ = ["AlignedChatModel", "UpstreamCalls", "as_ai_message", "chat_result"]


def as_ai_message(reply: Any) -> AIMessage:
    """The upstream model's reply as an `AIMessage` (a string becomes its content; another message is copied)."""
    if isinstance(reply, AIMessage):
        return reply
    if isinstance(reply, str):
        return AIMessage(content=reply)
    if isinstance(reply, BaseMessage):
        return AIMessage(content=reply.content, id=reply.id, response_metadata=dict(reply.response_metadata))
    raise TypeError(
        f"The upstream model of AlignedChatModel returned {type(reply).__name__}, not a message: {reply!r:.80}"
    )


def _as_ai_chunk(chunk: Any) -> AIMessageChunk:
    if isinstance(chunk, AIMessageChunk):
        return chunk
    if isinstance(chunk, str):
        return AIMessageChunk(content=chunk)
    message = as_ai_message(chunk)
    return AIMessageChunk(**message.model_dump(exclude={"type"}))


def _child_callbacks(run_manager: Any) -> Any:
    """Callbacks for runs nested under a chat-model run (LLM run managers have no ``get_child``)."""
    if run_manager is None:
        return None
    manager_class = AsyncCallbackManager if isinstance(run_manager, AsyncCallbackManagerForLLMRun) else CallbackManager
    manager = manager_class(handlers=[], parent_run_id=run_manager.run_id)
    manager.set_handlers(run_manager.inheritable_handlers)
    manager.add_tags(run_manager.inheritable_tags)
    manager.add_metadata(run_manager.inheritable_metadata)
    return manager


def _ai_chunks(stream: Iterator[Any]) -> Iterator[AIMessageChunk]:
    """The upstream's stream as message chunks; a stop thrown in (`UpstreamStopped`) goes on to the stream."""
    try:
        for chunk in stream:
            yield _as_ai_chunk(chunk)
    except UpstreamStopped:
        stop_stream(stream)
        raise


async def _aai_chunks(stream: AsyncIterator[Any]) -> AsyncIterator[AIMessageChunk]:
    """Async `_ai_chunks`."""
    try:
        async for chunk in stream:
            yield _as_ai_chunk(chunk)
    except UpstreamStopped:
        await astop_stream(stream)
        raise


def chat_result(message: BaseMessage) -> ChatResult:
    """A `ChatResult` of one generation: what a chat model's ``_generate`` returns."""
    return ChatResult(generations=[ChatGeneration(message=message)])


@dataclass
class UpstreamCalls:
    """What one reply calls: the upstream model (config, keyword arguments), then the Aligner."""

    upstream_config: RunnableConfig
    upstream_kwargs: dict[str, Any]
    aligner_config: RunnableConfig
    generation: dict[str, Any]


def _chat_model_of(llm: Runnable[Any, Any]) -> BaseChatModel | None:
    while isinstance(llm, RunnableBinding):
        llm = llm.bound
    return llm if isinstance(llm, BaseChatModel) else None


_UPSTREAM_PARAMS = {"timeout", "max_retries", "api_key"}
_STREAM_FIELDS = ("stream_mode", "segment_min_chars")

#: Tag of the upstream model's runs: LangGraph's ``stream_mode="messages"`` leaves out chat-model runs tagged
#: so, and the upstream's tokens are uncorrected (the corrected ones are this model's own).
NOSTREAM_TAG = "nostream"


class AlignedChatModel(BaseChatModel):
    """A chat model whose every reply is corrected by an Aligner: ``AlignedChatModel(llm=chat_model, aligner="demo")``.

    The upstream model answers; the Aligner corrects the text of the answer to the conversation's last
    human message. Ids, metadata, usage and tool calls of the reply are kept (tool-call-only turns are
    not corrected), and ``response_metadata["aligner"]`` holds the correction summary. ``bind_tools``
    (and so tool-calling ``with_structured_output``) delegate to the upstream model.

    Standard parameters: ``max_tokens`` and ``temperature`` set the Aligner's generation (``None`` or
    ``0`` is greedy); ``stop`` is passed to the upstream model; ``streaming=True`` makes ``invoke``
    use the streaming path. ``timeout``, ``max_retries`` and ``api_key`` are accepted (LangChain's standard
    parameters) and ignored: set them on the upstream model. Any other unknown keyword raises `ConfigError`.

    ``stream_mode`` and ``segment_min_chars`` set the aligner's (see `AlignerRunnable`); not given, they are
    the aligner's. The upstream model's runs are tagged ``"nostream"``, so that in a LangGraph graph streamed
    with ``stream_mode="messages"`` only the corrected reply streams, not the upstream's uncorrected tokens.
    """

    llm: Runnable[LanguageModelInput, BaseMessage]
    """The upstream chat model (or any runnable from messages to a message)."""
    aligner: AlignerRunnable = Field(default_factory=AlignerRunnable)
    """An `AlignerRunnable`, an `Aligner`, a model path / hub id / ``"demo"``.

    None: the default model (``$ALIGNER_MODEL``, else the shipped demo; see `aligner_chains.core.default_model`).
    """
    max_tokens: int | None = None
    temperature: float | None = None
    stop: list[str] | None = None
    streaming: bool = False
    stream_mode: StreamMode = DEFAULT_STREAM_MODE
    """``"whole"`` or ``"segments"``: how streamed replies are corrected (`AlignerRunnable.stream_mode`)."""
    segment_min_chars: int = Field(default=DEFAULT_MIN_CHARS, ge=1)
    """With ``stream_mode="segments"``: the shortest segment (`AlignerRunnable.segment_min_chars`)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    def __init__(self, **kwargs: Any) -> None:
        # BaseChatModel ignores unknown keywords: a typo (``max_tokns=``) would silently do nothing. LangChain's
        # standard timeout/max_retries/api_key belong to the upstream model: accepted, and left to it.
        check_options(kwargs, field_names(type(self)) | _UPSTREAM_PARAMS, type(self).__name__)
        if "stream_mode" in kwargs:
            check_stream_mode(kwargs["stream_mode"])
        super().__init__(**kwargs)

    @field_validator("aligner", mode="before")
    @classmethod
    def _coerce_aligner(cls, value: Any) -> AlignerRunnable:
        if isinstance(value, AlignerRunnable):
            return value
        if value is None or isinstance(value, (str, Aligner)):
            return AlignerRunnable(model=value)
        raise TypeError(
            f"aligner must be an AlignerRunnable, an Aligner, a model path/hub id or None, got {type(value).__name__}"
        )

    @model_validator(mode="after")
    def _stream_settings(self) -> AlignedChatModel:
        """Stream settings given here go to the aligner; the others are read from it."""
        given = {name: getattr(self, name) for name in _STREAM_FIELDS if name in self.model_fields_set}
        if any(getattr(self.aligner, name) != value for name, value in given.items()):
            self.aligner = self.aligner.with_options(**given)
        for name in _STREAM_FIELDS:
            self.__dict__[name] = getattr(self.aligner, name)
        return self

    @property
    def _llm_type(self) -> str:
        return "aligned-chat-model"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        upstream = _chat_model_of(self.llm)
        return {
            "llm": upstream._llm_type if upstream is not None else type(self.llm).__name__,
            "aligner": self.aligner.model_name,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> Any:
        """Tracing parameters: the upstream model's provider and name, the Aligner's generation settings."""
        params = super()._get_ls_params(stop=stop, **kwargs)
        upstream = _chat_model_of(self.llm)
        upstream_params: dict[str, Any] = {}
        if upstream is not None:
            try:
                upstream_params = dict(upstream._get_ls_params(stop=stop))
            except Exception:
                upstream_params = {}
        params["ls_provider"] = upstream_params.get("ls_provider") or "aligner_chains"
        if isinstance(kwargs.get("model"), str):
            params["ls_model_name"] = kwargs["model"]
        else:
            params["ls_model_name"] = upstream_params.get("ls_model_name") or self.aligner.model_name
        if self.max_tokens is not None:
            params["ls_max_tokens"] = self.max_tokens
        if self.temperature is not None:
            params["ls_temperature"] = self.temperature
        if stop or self.stop:
            params["ls_stop"] = stop or self.stop
        return params

    # ----------------------------------------------------------------- steps shared by sync and async

    def _generation(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.max_tokens is not None:
            out["max_new_tokens"] = self.max_tokens
        if self.temperature is not None:
            out.update(
                {"do_sample": True, "temperature": self.temperature} if self.temperature > 0 else {"do_sample": False}
            )
        return out

    def _calls(
        self, messages: list[BaseMessage], stop: list[str] | None, run_manager: Any, kwargs: dict[str, Any]
    ) -> UpstreamCalls:
        """The arguments of the upstream call and of the Aligner call for one reply."""
        callbacks = _child_callbacks(run_manager)
        stop = stop or self.stop
        aligner_config: RunnableConfig = {"callbacks": callbacks}
        question = last_human_text(messages)
        if question is not None:
            aligner_config["metadata"] = {QUESTION_METADATA_KEY: question}
        return UpstreamCalls(
            upstream_config={"callbacks": callbacks, "tags": [NOSTREAM_TAG]},
            upstream_kwargs={**kwargs, "stop": stop} if stop else dict(kwargs),
            aligner_config=aligner_config,
            generation=self._generation(),
        )

    def _corrected(self, upstream: Iterator[AIMessageChunk], calls: UpstreamCalls) -> Iterator[AIMessageChunk]:
        """The corrected chunks of a streamed reply."""
        return self.aligner.transform(upstream, calls.aligner_config, **calls.generation)

    def _acorrected(
        self, upstream: AsyncIterator[AIMessageChunk], calls: UpstreamCalls
    ) -> AsyncIterator[AIMessageChunk]:
        """Async `_corrected`."""
        return self.aligner.atransform(upstream, calls.aligner_config, **calls.generation)

    # ----------------------------------------------------------------- generation

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.streaming:
            return generate_from_stream(self._stream(messages, stop=stop, run_manager=run_manager, **kwargs))
        calls = self._calls(messages, stop, run_manager, kwargs)
        reply = self.llm.invoke(messages, calls.upstream_config, **calls.upstream_kwargs)
        return chat_result(self.aligner.invoke(as_ai_message(reply), calls.aligner_config, **calls.generation))

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.streaming:
            return await agenerate_from_stream(self._astream(messages, stop=stop, run_manager=run_manager, **kwargs))
        calls = self._calls(messages, stop, run_manager, kwargs)
        reply = await self.llm.ainvoke(messages, calls.upstream_config, **calls.upstream_kwargs)
        return chat_result(await self.aligner.ainvoke(as_ai_message(reply), calls.aligner_config, **calls.generation))

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        calls = self._calls(messages, stop, run_manager, kwargs)
        upstream = _ai_chunks(self.llm.stream(messages, calls.upstream_config, **calls.upstream_kwargs))
        for chunk in self._corrected(upstream, calls):
            generation = ChatGenerationChunk(message=chunk)
            if run_manager:
                run_manager.on_llm_new_token(chunk.text, chunk=generation)
            yield generation

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        calls = self._calls(messages, stop, run_manager, kwargs)
        upstream = _aai_chunks(self.llm.astream(messages, calls.upstream_config, **calls.upstream_kwargs))
        async for chunk in self._acorrected(upstream, calls):
            generation = ChatGenerationChunk(message=chunk)
            if run_manager:
                await run_manager.on_llm_new_token(chunk.text, chunk=generation)
            yield generation

    # ----------------------------------------------------------------- tools

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools through the upstream model's own ``bind_tools``; replies stay corrected."""
        bind = getattr(self.llm, "bind_tools", None)
        if bind is None:
            raise NotImplementedError(
                f"The upstream model {type(self.llm).__name__} has no bind_tools; use a chat model with tool calling."
            )
        if tool_choice is not None:
            kwargs["tool_choice"] = tool_choice
        return self.model_copy(update={"llm": bind(tools, **kwargs)}).bind()
