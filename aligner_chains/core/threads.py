"""Blocking work seen from asyncio: a blocking iterator run in a worker thread, its items yielded to the loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


async def iterate_in_thread(factory: Callable[[], Iterator[T]]) -> AsyncIterator[T]:
    """Run a blocking iterator in a worker thread and yield its items; closing this stops the iterator."""
    loop = asyncio.get_running_loop()
    items: asyncio.Queue[Any] = asyncio.Queue()
    cancelled = threading.Event()
    done = object()

    def put(item: Any) -> None:
        try:
            loop.call_soon_threadsafe(items.put_nowait, item)
        except RuntimeError:  # the loop is gone: nobody is listening any more
            cancelled.set()

    def work() -> None:
        if cancelled.is_set():  # the consumer left before this thread started: do not start generating
            put(done)
            return
        iterator = factory()
        try:
            for item in iterator:
                if cancelled.is_set():
                    break
                put(item)
        except BaseException as exc:
            put(_Raised(exc))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
            put(done)

    worker = loop.run_in_executor(None, work)
    try:
        while (item := await items.get()) is not done:
            if isinstance(item, _Raised):
                raise item.exc
            yield item
    finally:
        cancelled.set()
        del worker


class _Raised:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc
