"""`AlignerNodePostprocessor`: correct retrieved chunks (redact, defuse, fix) before the answer is written."""

from __future__ import annotations

import os
from typing import Any, Literal

import llama_index.core.instrumentation as instrument
from llama_index.core.bridge.pydantic import Field, PrivateAttr, field_serializer
from llama_index.core.callbacks import CallbackManager
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle

from aligner_chains.core import Aligner
from aligner_chains.core.errors import ConfigError
from aligner_chains.core.result import Correction
from aligner_chains.llama_index.events import emit_end, emit_start
from aligner_chains.llama_index.lazy import LazyAligner

dispatcher = instrument.get_dispatcher(__name__)

COMPONENT = "node_postprocessor"


class AlignerNodePostprocessor(BaseNodePostprocessor):
    """Correct every retrieved node with an Aligner: question = the query, answer = the node's text.

    All nodes of one query are corrected in one batched call (``batch_size`` pairs per padded
    generation). Each node comes back as a copy with the same id, score, relationships and metadata;
    the retrieved node (which may be the index's own object) is never modified. On a copy:

    - the text is replaced by the correction when the Aligner changed it, and the original text is
      kept in ``metadata[original_text_key]``;
    - ``metadata[changed_key]`` says whether the Aligner changed it;
    - ``metadata[error_key]`` holds the reason when a correction failed and ``on_error="passthrough"``
      passed the node through unchanged.

    These keys are excluded from the embed and LLM metadata views, so the original text never reaches
    the LLM. ``aligner`` is an `Aligner`, a model path / hub id / ``"demo"``, or None: the default model
    (``$ALIGNER_MODEL``, else the shipped demo; see `aligner_chains.core.default_model`); a name loads on
    first use through the shared model cache. Other keyword arguments are loading options
    of ``Aligner.from_pretrained`` (``device``, ``dtype``, ``quantization``, ``adapter``, ...).

    Example::

        postprocessor = AlignerNodePostprocessor("demo", on_error="passthrough")
        engine = index.as_query_engine(llm=llm, node_postprocessors=[postprocessor])
    """

    aligner: Any = Field(
        default=None,
        description="An Aligner, a model path / hub id / 'demo', or None: the default model "
        "($ALIGNER_MODEL, else the shipped demo; see aligner_chains.core.default_model).",
    )
    on_error: Literal["raise", "passthrough"] | None = Field(
        default=None, description="Failed corrections: raise, or pass the node through unchanged and marked."
    )
    max_new_tokens: int | None = Field(default=None, ge=1, description="Longest correction, in tokens.")
    batch_size: int = Field(default=16, ge=1, description="Pairs per padded generation.")
    aligner_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Loading options for Aligner.from_pretrained (device, dtype, ...)."
    )
    generation_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Generation settings applied to every call (do_sample, ...)."
    )
    original_text_key: str = Field(default="aligner_original_text", description="Metadata key of the original text.")
    changed_key: str = Field(default="aligner_changed", description="Metadata key of the changed flag.")
    error_key: str = Field(default="aligner_error", description="Metadata key of a passed-through failure.")

    _source: LazyAligner = PrivateAttr()

    def __init__(
        self,
        aligner: Aligner | str | os.PathLike[str] | None = None,
        *,
        on_error: Literal["raise", "passthrough"] | None = None,
        max_new_tokens: int | None = None,
        batch_size: int = 16,
        generation_kwargs: dict[str, Any] | None = None,
        original_text_key: str = "aligner_original_text",
        changed_key: str = "aligner_changed",
        error_key: str = "aligner_error",
        callback_manager: CallbackManager | None = None,
        **aligner_kwargs: Any,
    ) -> None:
        aligner_kwargs = {**(aligner_kwargs.pop("aligner_kwargs", None) or {}), **aligner_kwargs}  # from to_dict()
        if isinstance(aligner, os.PathLike):
            aligner = os.fspath(aligner)
        source = LazyAligner(aligner, on_error=on_error, max_new_tokens=max_new_tokens, **aligner_kwargs)
        super().__init__(
            aligner=aligner,
            on_error=on_error,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            aligner_kwargs=aligner_kwargs,
            generation_kwargs=dict(generation_kwargs or {}),
            original_text_key=original_text_key,
            changed_key=changed_key,
            error_key=error_key,
            callback_manager=callback_manager or CallbackManager(),
        )
        self._source = source

    @field_serializer("aligner")
    def _serialize_aligner(self, value: Any) -> str | None:
        return value.model_name if isinstance(value, Aligner) else value

    @classmethod
    def class_name(cls) -> str:
        return "AlignerNodePostprocessor"

    def get_aligner(self) -> Aligner:
        """The Aligner in use (loaded on first call)."""
        return self._source.get()

    # ------------------------------------------------------------------ postprocessing

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        query = _query_of(query_bundle)
        if not nodes:
            return []
        aligner = self._source.get()
        corrections = aligner.correct_batch(self._started(aligner, query, nodes), **self._batch_options())
        return self._finished(query, nodes, corrections)

    @dispatcher.span
    async def _apostprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        query = _query_of(query_bundle)
        if not nodes:
            return []
        aligner = await self._source.aget()
        corrections = await aligner.acorrect_batch(self._started(aligner, query, nodes), **self._batch_options())
        return self._finished(query, nodes, corrections)

    # ------------------------------------------------------------------ steps shared by sync and async

    def _batch_options(self) -> dict[str, Any]:
        return {"batch_size": self.batch_size, **self.generation_kwargs}

    @staticmethod
    def _started(aligner: Aligner, query: str, nodes: list[NodeWithScore]) -> list[tuple[str, str]]:
        """Announce the correction of ``nodes``; returns their (query, text) pairs."""
        emit_start(COMPONENT, query, len(nodes), model=aligner.model_name)
        return [(query, _text_of(n)) for n in nodes]

    def _finished(self, query: str, nodes: list[NodeWithScore], corrections: list[Correction]) -> list[NodeWithScore]:
        """Report ``corrections`` and return the corrected copies of ``nodes``."""
        emit_end(COMPONENT, query, corrections)
        return [self._rewrite(n, c) for n, c in zip(nodes, corrections, strict=True)]

    def _rewrite(self, node_with_score: NodeWithScore, correction: Correction) -> NodeWithScore:
        node = node_with_score.node.model_copy(deep=True)
        if correction.changed:
            node.metadata.setdefault(self.original_text_key, correction.original)
            node.set_content(correction.corrected)
        node.metadata[self.changed_key] = correction.changed
        if correction.error is not None:
            node.metadata[self.error_key] = correction.error
        for key in (self.original_text_key, self.changed_key, self.error_key):
            if key not in node.excluded_embed_metadata_keys:
                node.excluded_embed_metadata_keys.append(key)
            if key not in node.excluded_llm_metadata_keys:
                node.excluded_llm_metadata_keys.append(key)
        return NodeWithScore(node=node, score=node_with_score.score)


def _query_of(query_bundle: QueryBundle | None) -> str:
    if query_bundle is None:
        raise ConfigError(
            "AlignerNodePostprocessor corrects each node as an answer to the query, but got no query: "
            "call postprocess_nodes(nodes, query_str=...) or query_bundle=QueryBundle(...)."
        )
    return query_bundle.query_str


def _text_of(node_with_score: NodeWithScore) -> str:
    return node_with_score.node.get_content(metadata_mode=MetadataMode.NONE)
