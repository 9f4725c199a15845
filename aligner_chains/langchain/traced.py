"""`TracedRunnableMixin`: the public methods of a runnable, each opening its run through LangChain's helpers.

``invoke``/``ainvoke``, ``batch``/``abatch``, ``transform``/``atransform`` and ``stream``/``astream``
written once for `AlignerRunnable` and `AlignedChain`; each class writes only its ``_invoke``,
``_batch`` and ``_transform`` steps (and their async forms).
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.runnables import RunnableConfig

__all__ = ["TracedRunnableMixin", "aiter_values"]


async def aiter_values(*values: Any) -> AsyncIterator[Any]:
    """An async iterator over ``values`` (an async stream of one input: ``aiter_values(input)``)."""
    for value in values:
        yield value


class TracedRunnableMixin:
    """The public methods of a runnable, mixed in before ``RunnableSerializable``, whose helpers they use.

    Each runs the class's ``_invoke``/``_ainvoke``, ``_batch``/``_abatch`` or ``_transform``/``_atransform``
    through ``_call_with_config``, ``_batch_with_config``, ``_transform_stream_with_config`` (and their
    async forms), which open the run: callbacks, tracing, config. ``stream`` is ``transform`` of one input.
    """

    @classmethod
    def is_lc_serializable(cls) -> bool:
        """Not serializable: an Aligner runnable may hold a built Aligner with loaded weights."""
        return False

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        """Run on one input."""
        return self._call_with_config(self._invoke, input, config, **kwargs)

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        """Async `invoke`: generation runs in a worker thread."""
        return await self._acall_with_config(self._ainvoke, input, config, **kwargs)

    def batch(
        self,
        inputs: list[Any],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        """Run on many inputs with one batched correction per ``batch_size`` (capped by ``max_concurrency``)."""
        if not inputs:
            return []
        func = functools.partial(self._batch, return_exceptions=return_exceptions)
        return self._batch_with_config(func, inputs, config, return_exceptions=return_exceptions, **kwargs)

    async def abatch(
        self,
        inputs: list[Any],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        """Async `batch`."""
        if not inputs:
            return []
        func = functools.partial(self._abatch, return_exceptions=return_exceptions)
        return await self._abatch_with_config(func, inputs, config, return_exceptions=return_exceptions, **kwargs)

    def transform(self, input: Iterator[Any], config: RunnableConfig | None = None, **kwargs: Any) -> Iterator[Any]:
        """Consume the input stream, then stream the correction as it is generated."""
        yield from self._transform_stream_with_config(input, self._transform, config, **kwargs)

    async def atransform(
        self, input: AsyncIterator[Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[Any]:
        """Async `transform`."""
        async for chunk in self._atransform_stream_with_config(input, self._atransform, config, **kwargs):
            yield chunk

    def stream(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Iterator[Any]:
        """Stream the correction: strings for string input, ``AIMessageChunk``s for message input."""
        yield from self.transform(iter([input]), config, **kwargs)

    async def astream(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> AsyncIterator[Any]:
        """Async `stream`."""
        async for chunk in self.atransform(aiter_values(input), config, **kwargs):
            yield chunk
