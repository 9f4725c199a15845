"""Correct a LlamaIndex answer: a ``str``, a `Response`, a `StreamingResponse` or an `AsyncStreamingResponse`.

Used by `AlignerQueryEngine` and the workflow steps. Nothing here generates, pads or renders prompts:
every correction goes through an `Aligner`, bracketed by the instrumentation events of
`aligner_chains.llama_index.events`. The sync and async paths share every step but the Aligner call.

A streamed answer is corrected as ``stream_mode`` says: ``"whole"`` reads the upstream answer in full, then
streams its correction; ``"segments"`` feeds the upstream's tokens to `Aligner.iter_segments` (or
``aiter_segments``), so each segment's correction is shown as soon as the upstream has written it, and a
consumer that stops reading stops the Aligner and closes the upstream generator.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any

from llama_index.core.base.response.schema import (
    RESPONSE_TYPE,
    AsyncStreamingResponse,
    PydanticResponse,
    Response,
    StreamingResponse,
)

from aligner_chains.core import Aligner
from aligner_chains.core.result import Correction
from aligner_chains.core.segmented import DEFAULT_STREAM_MODE, StreamMode
from aligner_chains.llama_index.events import Component, emit_end, emit_start

__all__ = ["METADATA_KEY", "acorrect_response", "correct_response", "shown_text"]

#: Key of ``Response.metadata`` (and ``StreamingResponse.metadata``) that holds ``Correction.summary()``.
METADATA_KEY = "aligner"


def shown_text(correction: Correction, original: str | None) -> str | None:
    """What to show: the correction if the Aligner changed the text, else the original untouched.

    (An unchanged correction can differ from the original in surrounding whitespace only, and a
    skipped or passed-through one carries the original anyway.)
    """
    return correction.corrected if correction.changed else original


def correct_response(
    aligner: Aligner,
    component: Component,
    query: str,
    response: Any,
    generation: dict[str, Any],
    stream_mode: StreamMode = DEFAULT_STREAM_MODE,
) -> RESPONSE_TYPE | str:
    """A corrected copy of ``response`` (str, `Response` or `StreamingResponse`); sources kept."""
    if isinstance(response, StreamingResponse):
        pieces = functools.partial(_stream, aligner, component, query, generation, stream_mode)
        return _restream(StreamingResponse, response, pieces)
    answer = _answer_of(response)
    emit_start(component, query, 1, model=aligner.model_name)
    return _corrected(component, query, response, aligner.correct(query, answer, **generation))


async def acorrect_response(
    aligner: Aligner,
    component: Component,
    query: str,
    response: Any,
    generation: dict[str, Any],
    stream_mode: StreamMode = DEFAULT_STREAM_MODE,
) -> RESPONSE_TYPE | str:
    """Async `correct_response`; also takes an `AsyncStreamingResponse` (and gives one back)."""
    if isinstance(response, AsyncStreamingResponse):
        pieces = functools.partial(_astream, aligner, component, query, generation, stream_mode)
        return _restream(AsyncStreamingResponse, response, pieces)
    if isinstance(response, StreamingResponse):  # a sync stream from an async engine: keep its kind
        return correct_response(aligner, component, query, response, generation, stream_mode)
    answer = _answer_of(response)
    emit_start(component, query, 1, model=aligner.model_name)
    return _corrected(component, query, response, await aligner.acorrect(query, answer, **generation))


# ----------------------------------------------------------------------------- steps shared by sync and async


def _answer_of(response: Any) -> str:
    """The text to correct of a ``str`` or `Response`; other kinds are refused."""
    if isinstance(response, str):
        return response
    if isinstance(response, Response):
        return response.response or ""
    raise _unsupported(response)


def _corrected(component: Component, query: str, response: str | Response, correction: Correction) -> Any:
    """``response`` with ``correction`` applied (a `Response` keeps its sources, metadata gains the summary)."""
    emit_end(component, query, [correction])
    if isinstance(response, str):
        return shown_text(correction, response) or ""
    return Response(
        response=shown_text(correction, response.response),
        source_nodes=response.source_nodes,
        metadata={**(response.metadata or {}), METADATA_KEY: correction.summary()},
    )


def _unsupported(response: Any) -> TypeError:
    if isinstance(response, AsyncStreamingResponse):
        return TypeError(
            "The wrapped engine returned an AsyncStreamingResponse to a synchronous query: use aquery() "
            "to correct an async stream."
        )
    if isinstance(response, PydanticResponse):
        return TypeError(
            "The Aligner corrects text answers, but the wrapped engine returned a PydanticResponse (structured "
            "output): correcting it as text would break its schema. Drop output_cls, or correct a text field "
            "yourself with aligner.correct(question, text)."
        )
    return TypeError(
        f"Cannot correct a {type(response).__name__}: expected a str, Response, StreamingResponse or "
        "AsyncStreamingResponse."
    )


def _restream(kind: type[Any], upstream: Any, pieces: Callable[[Any, dict[str, Any]], Any]) -> Any:
    """A streaming response of ``kind`` with ``upstream``'s sources, streaming ``pieces(upstream, metadata)``.

    The generator fills ``metadata[METADATA_KEY]`` when the correction ends.
    """
    metadata = dict(upstream.metadata or {})
    return kind(response_gen=pieces(upstream, metadata), source_nodes=upstream.source_nodes, metadata=metadata)


def _stream_started(
    aligner: Aligner, component: Component, query: str, metadata: dict[str, Any]
) -> Callable[[Correction], None]:
    """Announce a streamed correction; returns what to call with its final `Correction`."""
    emit_start(component, query, 1, streaming=True, model=aligner.model_name)

    def finish(correction: Correction) -> None:
        metadata[METADATA_KEY] = correction.summary()
        emit_end(component, query, [correction], streaming=True)

    return finish


def _stream(
    aligner: Aligner,
    component: Component,
    query: str,
    generation: dict[str, Any],
    stream_mode: StreamMode,
    upstream: StreamingResponse,
    metadata: dict[str, Any],
) -> Iterator[str]:
    pieces: Iterable[str]
    if upstream.response_txt is not None or upstream.response_gen is None:
        pieces = [upstream.response_txt or ""]
    else:
        pieces = upstream.response_gen
    if stream_mode == "segments":  # the upstream is read while the Aligner corrects what it has written
        finish = _stream_started(aligner, component, query, metadata)
        items = aligner.iter_segments(query, pieces, **generation)
    else:  # the Aligner needs the whole answer: the upstream is drained when the consumer starts reading
        answer = "".join(pieces)
        finish = _stream_started(aligner, component, query, metadata)
        items = aligner.iter_correction(query, answer, **generation)
    try:
        for item in items:
            if isinstance(item, str):
                yield item
            else:
                finish(item)
    finally:
        items.close()  # a consumer that stops reading stops the Aligner (and, segment-wise, the upstream)


async def _astream(
    aligner: Aligner,
    component: Component,
    query: str,
    generation: dict[str, Any],
    stream_mode: StreamMode,
    upstream: AsyncStreamingResponse,
    metadata: dict[str, Any],
) -> AsyncIterator[str]:
    if stream_mode == "segments":
        finish = _stream_started(aligner, component, query, metadata)
        items = aligner.aiter_segments(query, upstream.async_response_gen(), **generation)
    else:
        answer = "".join([piece async for piece in upstream.async_response_gen()])
        finish = _stream_started(aligner, component, query, metadata)
        items = aligner.aiter_correction(query, answer, **generation)
    try:
        async for item in items:
            if isinstance(item, str):
                yield item
            else:
                finish(item)
    finally:
        await items.aclose()  # type: ignore[attr-defined]
