"""What the LlamaIndex adapters share: lazy Aligner resolution, instrumentation, response correction.

Nothing here generates, pads or renders prompts: every correction goes through an `Aligner`.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import llama_index.core.instrumentation as instrument
from llama_index.core.base.response.schema import (
    RESPONSE_TYPE,
    AsyncStreamingResponse,
    PydanticResponse,
    Response,
    StreamingResponse,
)

from aligner_chains.core.aligner import LOADING_OPTIONS, Aligner, resolve_aligner
from aligner_chains.core.errors import ConfigError
from aligner_chains.core.result import Correction
from aligner_chains.llama_index.events import AlignerCorrectionEndEvent, AlignerCorrectionStartEvent, Component

dispatcher = instrument.get_dispatcher(__name__)

#: Key of ``Response.metadata`` (and ``StreamingResponse.metadata``) that holds ``Correction.summary()``.
METADATA_KEY = "aligner"


class LazyAligner:
    """The Aligner an adapter was given, resolved through the core's `resolve_aligner` on first use.

    ``aligner`` is an `Aligner` (options re-applied at once, no loading), a model path / hub id /
    ``"demo"``, or None (``"demo"``). A name is loaded on first use, once, from the shared model cache;
    concurrent first uses wait for the same load.
    """

    def __init__(
        self,
        aligner: Aligner | str | os.PathLike[str] | None = None,
        *,
        on_error: str | None = None,
        max_new_tokens: int | None = None,
        **loading: Any,
    ) -> None:
        if isinstance(aligner, os.PathLike):
            aligner = os.fspath(aligner)
        if aligner is not None and not isinstance(aligner, (Aligner, str)):
            raise TypeError(
                f"aligner must be an Aligner, a model path / hub id / 'demo', or None; got {type(aligner).__name__}."
            )
        unknown = sorted(set(loading) - LOADING_OPTIONS)
        if unknown:
            raise TypeError(
                f"Unknown Aligner option(s) {unknown}. Loading options are {sorted(LOADING_OPTIONS)}; "
                "generation settings other than max_new_tokens go in generation_kwargs={...}."
            )
        if on_error not in (None, "raise", "passthrough"):
            raise ConfigError(f"on_error={on_error!r}: use 'raise' or 'passthrough'.")
        self.spec: Aligner | str | None = aligner
        self.options: dict[str, Any] = {
            k: v
            for k, v in {"on_error": on_error, "max_new_tokens": max_new_tokens, **loading}.items()
            if v is not None
        }
        self._lock = threading.Lock()
        self._aligner: Aligner | None = None
        if isinstance(aligner, Aligner):  # nothing to load: apply the options now, so mistakes show at once
            self.get()

    @property
    def loaded(self) -> bool:
        """Whether the Aligner has been resolved (weights loaded) already."""
        return self._aligner is not None

    def get(self) -> Aligner:
        """The Aligner, loading it on first use."""
        if self._aligner is None:
            with self._lock:
                if self._aligner is None:
                    # Only options that are set are passed: resolve_aligner refuses loading options for a built
                    # Aligner even when they are None.
                    self._aligner = resolve_aligner(self.spec, **self.options)
        return self._aligner

    async def aget(self) -> Aligner:
        """`get` that loads in a worker thread, so a first load does not block the event loop."""
        if self._aligner is not None:
            return self._aligner
        return await asyncio.to_thread(self.get)

    def describe(self) -> str:
        """The model this adapter uses, as a string (for serialisation and logs)."""
        if isinstance(self.spec, Aligner):
            return self.spec.model_name
        return self.spec or "demo"


# ----------------------------------------------------------------------------- instrumentation


def emit_start(component: Component, query: str, num_items: int, *, streaming: bool = False, model: str = "") -> None:
    dispatcher.event(
        AlignerCorrectionStartEvent(
            component=component, query=query, num_items=num_items, streaming=streaming, model=model
        )
    )


def emit_end(component: Component, query: str, corrections: list[Correction], *, streaming: bool = False) -> None:
    dispatcher.event(
        AlignerCorrectionEndEvent(
            component=component,
            query=query,
            summaries=[c.summary() for c in corrections],
            num_changed=sum(c.changed for c in corrections),
            num_errors=sum(c.finish_reason == "error" for c in corrections),
            streaming=streaming,
        )
    )


# ----------------------------------------------------------------------------- responses


def shown_text(correction: Correction, original: str | None) -> str | None:
    """What to show: the correction if the Aligner changed the text, else the original untouched.

    (An unchanged correction can differ from the original in surrounding whitespace only, and a
    skipped or passed-through one carries the original anyway.)
    """
    return correction.corrected if correction.changed else original


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


def correct_text(
    aligner: Aligner, component: Component, query: str, answer: str, generation: dict[str, Any]
) -> Correction:
    """Correct one answer text, bracketed by instrumentation events; returns the `Correction`."""
    emit_start(component, query, 1, model=aligner.model_name)
    correction = aligner.correct(query, answer, **generation)
    emit_end(component, query, [correction])
    return correction


async def acorrect_text(
    aligner: Aligner, component: Component, query: str, answer: str, generation: dict[str, Any]
) -> Correction:
    emit_start(component, query, 1, model=aligner.model_name)
    correction = await aligner.acorrect(query, answer, **generation)
    emit_end(component, query, [correction])
    return correction


def correct_response(
    aligner: Aligner, component: Component, query: str, response: Any, generation: dict[str, Any]
) -> RESPONSE_TYPE | str:
    """A corrected copy of ``response`` (str, `Response` or `StreamingResponse`); sources kept."""
    if isinstance(response, str):
        return shown_text(correct_text(aligner, component, query, response, generation), response) or ""
    if isinstance(response, Response):
        correction = correct_text(aligner, component, query, response.response or "", generation)
        return Response(
            response=shown_text(correction, response.response),
            source_nodes=response.source_nodes,
            metadata={**(response.metadata or {}), METADATA_KEY: correction.summary()},
        )
    if isinstance(response, StreamingResponse):
        metadata = dict(response.metadata or {})
        return StreamingResponse(
            response_gen=_stream(aligner, component, query, response, metadata, generation),
            source_nodes=response.source_nodes,
            metadata=metadata,
        )
    raise _unsupported(response)


async def acorrect_response(
    aligner: Aligner, component: Component, query: str, response: Any, generation: dict[str, Any]
) -> RESPONSE_TYPE | str:
    """Async `correct_response`; also takes an `AsyncStreamingResponse` (and gives one back)."""
    if isinstance(response, str):
        correction = await acorrect_text(aligner, component, query, response, generation)
        return shown_text(correction, response) or ""
    if isinstance(response, Response):
        correction = await acorrect_text(aligner, component, query, response.response or "", generation)
        return Response(
            response=shown_text(correction, response.response),
            source_nodes=response.source_nodes,
            metadata={**(response.metadata or {}), METADATA_KEY: correction.summary()},
        )
    if isinstance(response, AsyncStreamingResponse):
        metadata = dict(response.metadata or {})
        return AsyncStreamingResponse(
            response_gen=_astream(aligner, component, query, response, metadata, generation),
            source_nodes=response.source_nodes,
            metadata=metadata,
        )
    if isinstance(response, StreamingResponse):  # a sync stream from an async engine: keep its kind
        return correct_response(aligner, component, query, response, generation)
    raise _unsupported(response)


def _stream(
    aligner: Aligner,
    component: Component,
    query: str,
    upstream: StreamingResponse,
    metadata: dict[str, Any],
    generation: dict[str, Any],
) -> Iterator[str]:
    # The Aligner needs the whole answer: the upstream stream is drained when the consumer starts reading.
    if upstream.response_txt is not None or upstream.response_gen is None:
        answer = upstream.response_txt or ""
    else:
        answer = "".join(upstream.response_gen)
    emit_start(component, query, 1, streaming=True, model=aligner.model_name)
    correction: Correction | None = None
    for item in aligner.iter_correction(query, answer, **generation):
        if isinstance(item, str):
            yield item
        else:
            correction = item
    if correction is not None:
        metadata[METADATA_KEY] = correction.summary()
        emit_end(component, query, [correction], streaming=True)


async def _astream(
    aligner: Aligner,
    component: Component,
    query: str,
    upstream: AsyncStreamingResponse,
    metadata: dict[str, Any],
    generation: dict[str, Any],
) -> AsyncIterator[str]:
    answer = "".join([piece async for piece in upstream.async_response_gen()])
    emit_start(component, query, 1, streaming=True, model=aligner.model_name)
    correction: Correction | None = None
    async for item in aligner.aiter_correction(query, answer, **generation):
        if isinstance(item, str):
            yield item
        else:
            correction = item
    if correction is not None:
        metadata[METADATA_KEY] = correction.summary()
        emit_end(component, query, [correction], streaming=True)
