"""`AlignerQueryEngine`: wrap any LlamaIndex query engine and correct its final answer."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Literal

import llama_index.core.instrumentation as instrument
from llama_index.core.base.base_query_engine import BaseQueryEngine
from llama_index.core.base.response.schema import RESPONSE_TYPE
from llama_index.core.callbacks import CallbackManager
from llama_index.core.prompts.mixin import PromptMixinType
from llama_index.core.schema import NodeWithScore, QueryBundle

from aligner_chains.core import Aligner
from aligner_chains.core.segmented import DEFAULT_STREAM_MODE, StreamMode, check_stream_mode
from aligner_chains.llama_index.lazy import LazyAligner
from aligner_chains.llama_index.responses import acorrect_response, correct_response

dispatcher = instrument.get_dispatcher(__name__)

COMPONENT = "query_engine"


class AlignerQueryEngine(BaseQueryEngine):
    """A query engine whose answers are corrected by an Aligner (question = the query string).

    The wrapped engine runs as usual (retrieval, node postprocessors, synthesis); then its
    ``Response.response`` is corrected. The result keeps ``source_nodes`` and the wrapped engine's
    metadata, and adds ``metadata["aligner"] = Correction.summary()``.

    - Streaming engines: the result is a `StreamingResponse` (or `AsyncStreamingResponse` from
      ``aquery``) whose generator yields the corrected text; ``metadata["aligner"]`` is filled when
      the stream ends. ``stream_mode="whole"`` reads the upstream answer in full first, then yields
      the correction as the Aligner writes it; ``"segments"`` corrects each segment (paragraph,
      sentence) as soon as the upstream has written it, so the stream trails the upstream by about
      one segment, and stops reading the upstream when a refusal replaces the answer or the consumer
      stops (see `aligner_chains.core.segmented`). The default is ``DEFAULT_STREAM_MODE``.
    - ``aquery`` awaits the wrapped engine's ``aquery`` and corrects in a worker thread.
    - The engine keeps no per-query state: many queries may run at once, from threads or tasks.
    - ``on_error="passthrough"``: a failed correction returns the upstream answer unchanged with
      ``metadata["aligner"]["finish_reason"] == "error"``; ``"raise"`` (default) raises.
    - Structured (`PydanticResponse`) answers are refused with a `TypeError`: they are not text.

    ``aligner`` is an `Aligner`, a model path / hub id / ``"demo"``, or None: the default model
    (``$ALIGNER_MODEL``, else the shipped demo; see `aligner_chains.core.default_model`); a name loads on
    first use through the shared model cache. Other keyword arguments are loading options of
    ``Aligner.from_pretrained`` (``device``, ``dtype``, ``quantization``, ``adapter``, ...).

    Example::

        engine = AlignerQueryEngine(index.as_query_engine(llm=llm), aligner="demo")
        response = engine.query("How do I reach support?")
        print(response, response.metadata["aligner"]["changed"])
    """

    def __init__(
        self,
        query_engine: BaseQueryEngine,
        aligner: Aligner | str | os.PathLike[str] | None = None,
        *,
        on_error: Literal["raise", "passthrough"] | None = None,
        max_new_tokens: int | None = None,
        generation_kwargs: dict[str, Any] | None = None,
        stream_mode: StreamMode = DEFAULT_STREAM_MODE,
        callback_manager: CallbackManager | None = None,
        **aligner_kwargs: Any,
    ) -> None:
        if not isinstance(query_engine, BaseQueryEngine):
            raise TypeError(
                f"query_engine must be a LlamaIndex query engine (BaseQueryEngine), got {type(query_engine).__name__}; "
                "e.g. index.as_query_engine(llm=...)."
            )
        self._query_engine = query_engine
        self._stream_mode = check_stream_mode(stream_mode)
        self._source = LazyAligner(aligner, on_error=on_error, max_new_tokens=max_new_tokens, **aligner_kwargs)
        self._generation = dict(generation_kwargs or {})
        super().__init__(callback_manager=callback_manager or getattr(query_engine, "callback_manager", None))

    @property
    def query_engine(self) -> BaseQueryEngine:
        """The wrapped query engine."""
        return self._query_engine

    @property
    def stream_mode(self) -> StreamMode:
        """How a streamed answer is corrected: ``"whole"`` or ``"segments"``."""
        return self._stream_mode

    def get_aligner(self) -> Aligner:
        """The Aligner in use (loaded on first call)."""
        return self._source.get()

    def _get_prompt_modules(self) -> PromptMixinType:
        return {"query_engine": self._query_engine}

    # ------------------------------------------------------------------ querying

    def _query(self, query_bundle: QueryBundle) -> RESPONSE_TYPE:
        response = self._query_engine.query(query_bundle)
        return self._correct(query_bundle.query_str, response)

    async def _aquery(self, query_bundle: QueryBundle) -> RESPONSE_TYPE:
        response = await self._query_engine.aquery(query_bundle)
        return await self._acorrect(query_bundle.query_str, response)

    def retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        """The wrapped engine's retrieval (with its node postprocessors)."""
        return self._query_engine.retrieve(query_bundle)

    def synthesize(
        self,
        query_bundle: QueryBundle,
        nodes: list[NodeWithScore],
        additional_source_nodes: Sequence[NodeWithScore] | None = None,
    ) -> RESPONSE_TYPE:
        """The wrapped engine's synthesis from ``nodes``, corrected."""
        response = self._query_engine.synthesize(query_bundle, nodes, additional_source_nodes)
        return self._correct(query_bundle.query_str, response)

    async def asynthesize(
        self,
        query_bundle: QueryBundle,
        nodes: list[NodeWithScore],
        additional_source_nodes: Sequence[NodeWithScore] | None = None,
    ) -> RESPONSE_TYPE:
        response = await self._query_engine.asynthesize(query_bundle, nodes, additional_source_nodes)
        return await self._acorrect(query_bundle.query_str, response)

    @dispatcher.span
    def _correct(self, query: str, response: RESPONSE_TYPE) -> RESPONSE_TYPE:
        aligner = self._source.get()
        return correct_response(aligner, COMPONENT, query, response, self._generation, self._stream_mode)  # type: ignore[return-value]

    @dispatcher.span
    async def _acorrect(self, query: str, response: RESPONSE_TYPE) -> RESPONSE_TYPE:
        aligner = await self._source.aget()
        return await acorrect_response(aligner, COMPONENT, query, response, self._generation, self._stream_mode)  # type: ignore[return-value]

    def __repr__(self) -> str:
        return (
            f"AlignerQueryEngine(query_engine={type(self._query_engine).__name__}, aligner={self._source.describe()!r})"
        )
