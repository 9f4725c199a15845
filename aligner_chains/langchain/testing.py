"""`ScriptedChatModel`: a deterministic offline chat model for tests, notebooks and demos (no API key)."""

from __future__ import annotations

import itertools
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import Field, PrivateAttr

from aligner_chains.langchain.messages import last_human_text, message_text

__all__ = ["ScriptedChatModel"]


class ScriptedChatModel(BaseChatModel):
    """Replies from a script: ``answers`` by the last human message's text, else ``responses`` in turn (cycling).

    Replies carry an id, ``response_metadata`` (model name, finish reason), ``usage_metadata`` (word
    counts) and any scripted tool calls; streaming yields word-sized chunks with the metadata and tool
    calls on the last one, as a hosted chat model does. ``bind_tools`` works (tools are recorded and
    ignored), so it can drive ``create_agent``.
    """

    responses: list[str | AIMessage] = Field(default_factory=list)
    answers: dict[str, str | AIMessage] = Field(default_factory=dict)
    default: str = "I am not sure."
    model_name: str = "scripted-chat"

    _counter: Iterator[int] = PrivateAttr(default_factory=itertools.count)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @property
    def _llm_type(self) -> str:
        return "scripted-chat"

    def _reply(self, messages: list[BaseMessage]) -> AIMessage:
        with self._lock:
            n = next(self._counter)
        question = last_human_text(messages)
        if question is not None and question in self.answers:
            scripted: str | AIMessage = self.answers[question]
        elif self.responses:
            scripted = self.responses[n % len(self.responses)]
        else:
            scripted = self.default
        message = AIMessage(content=scripted) if isinstance(scripted, str) else scripted
        words_in = sum(len(message_text(m).split()) for m in messages)
        words_out = len(message_text(message).split())
        return message.model_copy(
            update={
                "id": message.id or f"scripted-{n}",
                "response_metadata": {
                    "model_name": self.model_name,
                    "finish_reason": "stop",
                    **message.response_metadata,
                },
                "usage_metadata": message.usage_metadata
                or {"input_tokens": words_in, "output_tokens": words_out, "total_tokens": words_in + words_out},
            }
        )

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=self._reply(messages))])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        message = self._reply(messages)
        pieces = [p for p in re.split(r"(\s+)", message.content) if p] if isinstance(message.content, str) else []
        for piece in pieces:
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece, id=message.id))
            if run_manager:
                run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk
        last = AIMessageChunk(
            content="" if isinstance(message.content, str) else message.content,
            id=message.id,
            response_metadata=message.response_metadata,
            usage_metadata=message.usage_metadata,
            additional_kwargs=message.additional_kwargs,
            tool_calls=message.tool_calls,
            chunk_position="last",
        )
        yield ChatGenerationChunk(message=last)

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Record the tools on the binding (they do not change the scripted replies)."""
        formatted = [convert_to_openai_tool(tool) for tool in tools]
        if tool_choice is not None:
            kwargs["tool_choice"] = tool_choice
        return self.bind(tools=formatted, **kwargs)
