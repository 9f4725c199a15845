"""`AlignerMiddleware`: correct an agent's final answer (``langchain.agents.create_agent``, extra ``langchain``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.runnables.config import ensure_config

from aligner_chains.core import Aligner
from aligner_chains.core.errors import MissingDependencyError
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

    @staticmethod
    def _config(messages: list[BaseMessage]) -> Any:
        config = ensure_config()  # the model node's config: the Aligner run nests under it
        question = last_human_text(messages)
        if question is not None:
            config["metadata"] = {**(config.get("metadata") or {}), QUESTION_METADATA_KEY: question}
        return config

    def wrap_model_call(self, request: ModelRequest, handler: Callable[[ModelRequest], Any]) -> Any:
        """Call the model; if it answered without tool calls, correct the answer."""
        answer = _FinalAnswer.of(handler(request))
        if answer.message is None:
            return answer.response
        return answer.replaced(self.aligner.invoke(answer.message, self._config(request.messages)))

    async def awrap_model_call(self, request: ModelRequest, handler: Callable[[ModelRequest], Awaitable[Any]]) -> Any:
        """Async `wrap_model_call`."""
        answer = _FinalAnswer.of(await handler(request))
        if answer.message is None:
            return answer.response
        return answer.replaced(await self.aligner.ainvoke(answer.message, self._config(request.messages)))


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
        new = ModelResponse(result=result, structured_response=self.model_response.structured_response)
        if isinstance(self.response, ExtendedModelResponse):
            return ExtendedModelResponse(model_response=new, command=self.response.command)
        return new
