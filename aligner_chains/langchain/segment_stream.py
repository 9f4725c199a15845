"""``stream_mode="segments"`` in the LangChain adapters: what correcting an answer while it streams needs.

`AlignerRunnable` gives the text of each upstream chunk to `Aligner.iter_segments` as it arrives and sends
each corrected segment on as soon as the Aligner has written it (`aligner_chains.core.segmented` says how
segments are cut and corrected). This module holds the two pieces around that loop:

- `Upstream`/`AsyncUpstream`: the upstream stream, read by the correction and stopped when the correction
  stops early (the consumer left, or a refusal ended the answer);
- `SegmentFeed`: the text of each chunk for the Aligner, and the chunks added up for the closing chunk.

Stopping throws `UpstreamStopped` into the upstream stream rather than closing it: LangChain's streaming
helper reads the rest of a closed step's input to trace it, so after a close every step above would still
generate to the end. For the same reason the runnable's own trace records only the chunks the correction
read (`Upstream.traced`), never the rest of the upstream.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from typing import Any

from langchain_core.messages import AIMessageChunk

from aligner_chains.core.segmented import stream_segmenter
from aligner_chains.langchain.messages import message_text
from aligner_chains.langchain.translation import add_chunk

__all__ = [
    "END",
    "AsyncUpstream",
    "SegmentFeed",
    "ToolTurn",
    "Upstream",
    "UpstreamStopped",
    "astop_stream",
    "is_streamed_chunk",
    "stop_stream",
]

END: Any = object()
"""What `Upstream.next_chunk` returns once the upstream has ended."""


class UpstreamStopped(Exception):
    """Thrown into an upstream stream that a segment-wise correction stops reading; its runs end with it."""


class ToolTurn(Exception):
    """Raised by `SegmentFeed` at the first tool call of a turn whose tool calls pass untouched.

    ``rest``: the turn's text not yet cut into a segment (segments before it are corrected as usual);
    ``chunk``: the chunk with the tool call, not yet sent.
    """

    def __init__(self, rest: str, chunk: AIMessageChunk) -> None:
        super().__init__("the turn calls tools")
        self.rest = rest
        self.chunk = chunk


def stop_stream(stream: Any) -> None:
    """Stop a sync stream now: throw `UpstreamStopped` into it (a generator passes it down to the model's
    own stream), or close it if it takes no throw."""
    throw = getattr(stream, "throw", None)
    if throw is None:
        close = getattr(stream, "close", None)
        if close is not None:
            close()
        return
    try:
        throw(UpstreamStopped("the segment-wise correction stopped reading"))
    except (UpstreamStopped, StopIteration):
        return
    stream.close()  # it caught the signal and went on


async def astop_stream(stream: Any) -> None:
    """Async `stop_stream`."""
    athrow = getattr(stream, "athrow", None)
    if athrow is None:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()
        return
    try:
        await athrow(UpstreamStopped("the segment-wise correction stopped reading"))
    except (UpstreamStopped, StopAsyncIteration):
        return
    await stream.aclose()


def is_streamed_chunk(value: Any) -> bool:
    """Whether ``value`` is a piece of a streamed answer (a string or a message chunk), not a whole value."""
    return isinstance(value, (str, AIMessageChunk))


def _calls_tools(chunk: AIMessageChunk) -> bool:
    return bool(chunk.tool_call_chunks or chunk.tool_calls or chunk.invalid_tool_calls)


class _Read:
    """The chunks read from an upstream so far, replayed to the correction and to the trace."""

    def __init__(self) -> None:
        self.read: list[Any] = []
        self.finished = False  # ended, failed or stopped: nothing more will be read
        self._position = 0  # the correction's position in ``read``

    def _replayed(self) -> Any:
        """The next chunk already read for the correction, else None."""
        if self._position < len(self.read):
            self._position += 1
            return self.read[self._position - 1]
        return None


class Upstream(_Read):
    """A sync upstream stream, read by one thread at a time; `stop` ends it early."""

    def __init__(self, chunks: Iterable[Any]) -> None:
        super().__init__()
        self._chunks = iter(chunks)

    def _pull(self) -> Any:
        if self.finished:
            return END
        try:
            chunk = next(self._chunks)
        except StopIteration:
            self.finished = True
            return END
        except BaseException:
            self.finished = True
            raise
        self.read.append(chunk)
        return chunk

    def traced(self) -> Iterator[Any]:
        """The input LangChain's streaming helper records: it pulls the first chunk itself (so the upstream
        run starts first, as with any step), then sees only the chunks the correction has read."""
        if not self.read:
            self._pull()
        position = 0
        while position < len(self.read):
            yield self.read[position]
            position += 1

    def next_chunk(self) -> Any:
        """The next chunk for the correction (`END` after the last): first those already read."""
        replayed = self._replayed()
        if replayed is not None:
            return replayed
        chunk = self._pull()
        if chunk is not END:
            self._position += 1
        return chunk

    def rest(self) -> Iterator[Any]:
        """The chunks not yet given to the correction."""
        while (chunk := self.next_chunk()) is not END:
            yield chunk

    def stop(self) -> None:
        """Stop the upstream now if it is still streaming (by the thread that reads it)."""
        if not self.finished:
            self.finished = True
            stop_stream(self._chunks)


class AsyncUpstream(_Read):
    """An async upstream stream; `astop` ends it early."""

    def __init__(self, chunks: AsyncIterable[Any]) -> None:
        super().__init__()
        self._chunks = aiter(chunks)

    async def _pull(self) -> Any:
        if self.finished:
            return END
        try:
            chunk = await anext(self._chunks)
        except StopAsyncIteration:
            self.finished = True
            return END
        except BaseException:  # including a cancellation, which has ended the upstream already
            self.finished = True
            raise
        self.read.append(chunk)
        return chunk

    async def traced(self) -> AsyncIterator[Any]:
        """Async `Upstream.traced`."""
        if not self.read:
            await self._pull()
        position = 0
        while position < len(self.read):
            yield self.read[position]
            position += 1

    async def next_chunk(self) -> Any:
        """Async `Upstream.next_chunk`."""
        replayed = self._replayed()
        if replayed is not None:
            return replayed
        chunk = await self._pull()
        if chunk is not END:
            self._position += 1
        return chunk

    async def rest(self) -> AsyncIterator[Any]:
        """Async `Upstream.rest`."""
        while (chunk := await self.next_chunk()) is not END:
            yield chunk

    async def astop(self) -> None:
        """Async `Upstream.stop`."""
        if not self.finished:
            self.finished = True
            await astop_stream(self._chunks)


class SegmentFeed:
    """The text of an upstream stream, chunk by chunk, for `Aligner.iter_segments`; the chunks added up.

    ``untouched_tool_turns``: a turn that calls tools is not corrected from its first tool call on; the
    feed ends there with `ToolTurn`, and the caller passes the rest through (segments completed before
    the tool call have been corrected and shown by then). The feed cuts segments as the core does (same
    `Segmenter`, same pieces) to know which text is not shown yet.
    """

    def __init__(self, upstream: Upstream | AsyncUpstream, *, min_chars: int, untouched_tool_turns: bool) -> None:
        self.upstream = upstream
        self.total: Any = None  # the chunks so far, added up
        self._segmenter = stream_segmenter(min_chars) if untouched_tool_turns else None
        self._separator = ""  # the whitespace that ended the last segment: it goes before the next text
        self.started = False  # the correction has begun reading: from then on, only its reader stops the upstream

    def take(self, chunk: Any) -> str:
        """Add ``chunk`` up and return its text."""
        if isinstance(chunk, str):
            text = chunk
        elif isinstance(chunk, AIMessageChunk):
            text = message_text(chunk)
        else:
            raise TypeError(
                f"A segment-wise stream takes strings or AIMessageChunks, got {type(chunk).__name__}: {chunk!r:.80}"
            )
        self.total = add_chunk(self.total, chunk)
        if self._segmenter is None:
            return text
        if isinstance(chunk, AIMessageChunk) and _calls_tools(chunk):
            raise ToolTurn(self._separator + self._segmenter.finish(), chunk)
        for segment in self._segmenter.feed(text):
            self._separator = segment[len(segment.rstrip()) :]
        return text

    def pieces(self) -> Iterator[str]:
        """The text of each chunk as it arrives (read by the correction's worker thread); leaving stops the
        upstream."""
        upstream = self.upstream
        assert isinstance(upstream, Upstream)
        self.started = True
        try:
            while (chunk := upstream.next_chunk()) is not END:
                yield self.take(chunk)
        except GeneratorExit:
            upstream.stop()
            raise

    async def apieces(self) -> AsyncIterator[str]:
        """Async `pieces`."""
        upstream = self.upstream
        assert isinstance(upstream, AsyncUpstream)
        self.started = True
        try:
            while (chunk := await upstream.next_chunk()) is not END:
                yield self.take(chunk)
        except GeneratorExit:
            await upstream.astop()
            raise
