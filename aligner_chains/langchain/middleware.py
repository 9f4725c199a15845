"""`AlignerMiddleware`: correct an agent's final answer (``langchain.agents.create_agent``, extra ``langchain``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.runnables.config import ensure_config

from aligner_chains.core.aligner import Aligner
from aligner_chains.core.errors import MissingDependencyError
from aligner_chains.langchain.messages import is_tool_call_only, last_human_text
from aligner_chains.langchain.question import QUESTION_METADATA_KEY
from aligner_chains.langchain.runnable import AlignerRunnable

try:
    from langchain.agents.middleware import AgentMiddleware, ExtendedModelResponse, ModelRequest, ModelResponse
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise MissingDependencyError(
        "AlignerMiddleware needs the `langchain` agents package (1.x): pip install 'aligner-chains[langchain]'."
    ) from exc

__all__ = ["AlignerMiddleware"]


class AlignerMiddleware(AgentMiddleware):
    """Agent middleware that corrects the final assistant message with an Aligner.

    Only a model turn without tool calls (the one that ends the agent loop) is corrected, against
    the conversation's last human message; tool-calling turns and structured responses are left
    alone. The corrected message keeps its id and metadata and carries ``response_metadata["aligner"]``.
    """

    def __init__(self, aligner: AlignerRunnable | Aligner | str | None = None, **options: Any) -> None:
        """``aligner``: an `AlignerRunnable`, an `Aligner`, a model name or None; ``options`` configure it."""
        super().__init__()
        if isinstance(aligner, AlignerRunnable):
            self.aligner = aligner._with(**options)
        else:
            self.aligner = AlignerRunnable(model=aligner, **options)
        self.tools = []

    @staticmethod
    def _target(response: Any) -> tuple[ModelResponse | None, int | None]:
        """The model response and the index of the final answer to correct in it (None: nothing to do)."""
        model_response = response.model_response if isinstance(response, ExtendedModelResponse) else response
        if not isinstance(model_response, ModelResponse) or model_response.structured_response is not None:
            return None, None
        for index in range(len(model_response.result) - 1, -1, -1):
            message = model_response.result[index]
            if isinstance(message, AIMessage):
                if message.tool_calls or message.invalid_tool_calls or is_tool_call_only(message):
                    return None, None
                return model_response, index
        return None, None

    @staticmethod
    def _config(messages: list[BaseMessage]) -> Any:
        config = ensure_config()  # the model node's config: the Aligner run nests under it
        question = last_human_text(messages)
        if question is not None:
            config["metadata"] = {**(config.get("metadata") or {}), QUESTION_METADATA_KEY: question}
        return config

    @staticmethod
    def _replace(response: Any, model_response: ModelResponse, index: int, message: AIMessage) -> Any:
        result = list(model_response.result)
        result[index] = message
        new = ModelResponse(result=result, structured_response=model_response.structured_response)
        if isinstance(response, ExtendedModelResponse):
            return ExtendedModelResponse(model_response=new, command=response.command)
        return new

    def wrap_model_call(self, request: ModelRequest, handler: Callable[[ModelRequest], Any]) -> Any:
        """Call the model; if it answered without tool calls, correct the answer."""
        response = handler(request)
        if isinstance(response, AIMessage):
            response = ModelResponse(result=[response])
        model_response, index = self._target(response)
        if model_response is None or index is None:
            return response
        message = model_response.result[index]
        corrected = self.aligner.invoke(message, self._config(request.messages))
        return self._replace(response, model_response, index, corrected)

    async def awrap_model_call(self, request: ModelRequest, handler: Callable[[ModelRequest], Awaitable[Any]]) -> Any:
        """Async `wrap_model_call`."""
        response = await handler(request)
        if isinstance(response, AIMessage):
            response = ModelResponse(result=[response])
        model_response, index = self._target(response)
        if model_response is None or index is None:
            return response
        message = model_response.result[index]
        corrected = await self.aligner.ainvoke(message, self._config(request.messages))
        return self._replace(response, model_response, index, corrected)
