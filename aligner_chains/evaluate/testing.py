"""`FunctionChatModel`: a deterministic offline chat model whose reply is a function of the messages.

For tests and demos of judges and teachers without an API key: a judge that prefers the shorter
answer, a teacher that redacts e-mail addresses, a model that fails the first two calls.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import PrivateAttr

__all__ = ["FunctionChatModel"]


class FunctionChatModel(BaseChatModel):
    """Replies with ``fn(messages)`` (a string); an exception raised by ``fn`` is raised by the model.

    ``calls`` counts the calls made so far (thread-safe), so ``fn`` can fail the first few on purpose.
    """

    fn: Callable[[list[BaseMessage]], str]
    model_name: str = "function-chat"

    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _calls: int = PrivateAttr(default=0)

    @property
    def _llm_type(self) -> str:
        return "function-chat"

    @property
    def calls(self) -> int:
        return self._calls

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        with self._lock:
            self._calls += 1
        text = self.fn(messages)
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=text))])
