"""`AlignerRunnable`: an Aligner as a LangChain runnable, so that ``chain = llm | AlignerRunnable()`` works.

The runnable translates LangChain values into (question, answer) pairs and back (the pure steps are in
`aligner_chains.langchain.translation`), and delegates every correction to `aligner_chains.core.Aligner`
(templates, padding, batching and generation live there). Each behaviour is written once: the sync
and async methods are thin wrappers around the same steps, differing only in how they call the Aligner.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Union

from langchain_core.callbacks import (
    AsyncCallbackManagerForChainRun,
    CallbackManagerForChainRun,
    adispatch_custom_event,
    dispatch_custom_event,
)
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.runnables import Runnable, RunnableConfig, RunnableSerializable
from pydantic import ConfigDict, Field, PrivateAttr

from aligner_chains.core import LOADING_OPTIONS, Aligner, default_model, resolve_aligner
from aligner_chains.core.errors import MissingQuestionError
from aligner_chains.core.options import TokenizerMode, check_options, field_names
from aligner_chains.core.result import Correction
from aligner_chains.core.segmented import DEFAULT_MIN_CHARS, DEFAULT_STREAM_MODE, StreamMode, check_stream_mode
from aligner_chains.core.templates import Template
from aligner_chains.langchain.messages import is_tool_call_only, message_text
from aligner_chains.langchain.question import DEFAULT_QUESTION_KEYS, QUESTION_METADATA_KEY, recorder
from aligner_chains.langchain.segment_stream import (
    AsyncUpstream,
    SegmentFeed,
    ToolTurn,
    Upstream,
    is_streamed_chunk,
)
from aligner_chains.langchain.traced import TracedRunnableMixin, aiter_values
from aligner_chains.langchain.translation import (
    ParsedInput,
    StreamOutput,
    acollect_chunks,
    add_chunk,
    build_output,
    collect_chunks,
    diff_payload,
    parse_input,
)
from aligner_chains.langchain.unloaded import UnloadedAligner

if TYPE_CHECKING:
    from aligner_chains.langchain.aligned_chain import AlignedChain

__all__ = [
    "DIFF_EVENT",
    "AlignerRunnable",
    "MissingQuestionError",
]

DIFF_EVENT = "aligner_diff"
"""Name of the custom event (``on_custom_event`` in ``astream_events``) that carries each correction's diff."""

AlignerInput = Union[str, AIMessage, dict[str, Any]]  # noqa: UP007 (pydantic/langchain schema generation)
AlignerOutput = Union[str, AIMessage, dict[str, Any]]  # noqa: UP007

# The loading options that are fields of the runnable (a strategy object is not serialisable).
_LOAD_OPTIONS = sorted(LOADING_OPTIONS - {"strategy"})
_OPTIONS_HINT = (
    "Generation settings other than max_new_tokens, do_sample and temperature go in generation_kwargs={...}."
)


class _HybridMethod:
    """A method callable on the class (``cls(**options)`` is used) or on an instance (it is used)."""

    def __init__(self, func: Any) -> None:
        self.func = func
        functools.update_wrapper(self, func)  # type: ignore[arg-type]

    def __get__(self, obj: Any, owner: type) -> Any:
        return functools.partial(self.func, owner, obj)


@dataclass
class _Batch:
    """One ``batch`` call in progress: the results so far (errors, passed-through inputs) and what to correct."""

    results: list[Any]
    todo: list[tuple[int, ParsedInput]]
    size: int
    return_exceptions: bool = False

    def options(self, on_error: str) -> dict[str, Any]:
        """``correct_batch`` options: with ``return_exceptions`` a failing input fails only itself."""
        return {"batch_size": self.size, "on_error": on_error, "return_exceptions": self.return_exceptions}

    @property
    def pairs(self) -> list[tuple[str, str]]:
        return [(item.question or "", item.answer) for _, item in self.todo]

    def finish(self, corrections: list[Correction | Exception], answer_key: str) -> list[tuple[int, Correction]]:
        """Fill in the corrected outputs (or each failed input's exception, under ``return_exceptions``);
        returns (input index, correction) for the diff events."""
        done = []
        for (i, item), correction in zip(self.todo, corrections, strict=True):
            if isinstance(correction, Exception):
                self.results[i] = correction
            else:
                self.results[i] = build_output(item, correction, answer_key)
                done.append((i, correction))
        return done


class AlignerRunnable(TracedRunnableMixin, RunnableSerializable[AlignerInput, AlignerOutput]):
    """Corrects an upstream answer with an Aligner: ``chain = llm | AlignerRunnable(model="demo")``.

    Input: a ``str``, an ``AIMessage``/``AIMessageChunk``, or a dict with the question and answer
    (``question_key``/``answer_key``). The output has the type of the input: a message keeps its id,
    metadata, usage and tool calls, only its text is corrected, and ``response_metadata["aligner"]``
    holds `Correction.summary()`; a dict comes back with the corrected answer and an ``"aligner"`` key.
    Tool-call-only messages pass through untouched. Without a question in the input, the question is
    recovered from the chain the runnable runs in (see `aligner_chains.langchain.question`).

    ``invoke``/``ainvoke`` take per-call generation settings as keyword arguments; ``batch``/``abatch``
    correct with one padded generation per ``batch_size`` (capped by ``max_concurrency``);
    ``stream``/``transform`` read the whole upstream answer, then stream the correction as it is generated
    (``stream_mode="whole"``), or correct each segment as soon as the upstream has written it (``"segments"``).

    Weights load lazily on first use through the core's shared model cache, so copies made by
    ``configurable_fields``/``configurable_alternatives`` or ``with_config`` do not load them again.
    """

    model: str | Aligner | None = None
    """A model path, ``"demo"``, a hub id or a built `Aligner`.

    None: the default model (``$ALIGNER_MODEL``, else the shipped demo; see `aligner_chains.core.default_model`).
    """
    template: str | Template | None = None
    device: str | None = None
    dtype: str | None = None
    device_map: str | None = None
    quantization: Literal["4bit", "8bit"] | None = None
    adapter: str | None = None
    trust_remote_code: bool | None = None
    allow_pickle: bool | None = None
    revision: str | None = None
    tokenizer_mode: TokenizerMode | None = None
    overflow: Literal["raise", "truncate_question"] | None = None
    max_new_tokens: int | None = None
    do_sample: bool | None = None
    temperature: float | None = None
    generation_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Other ``generate`` settings (``top_p``, ``repetition_penalty``, ...)."""
    on_error: Literal["raise", "passthrough"] = "raise"
    """``passthrough`` returns the upstream answer unchanged, marked in ``response_metadata["aligner"]["error"]``."""
    on_missing_question: Literal["empty", "raise"] = "empty"
    """What to do when no question is found: correct with an empty question, or raise `MissingQuestionError`."""
    question_key: str = "question"
    answer_key: str = "answer"
    batch_size: int = Field(default=16, ge=1)
    """Pairs per padded generation in ``batch``/``abatch`` (also capped by ``max_concurrency``)."""
    stream_mode: StreamMode = DEFAULT_STREAM_MODE
    """How ``stream``/``transform`` correct a streamed upstream answer.

    ``"whole"``: read the whole answer, then stream its correction as it is generated. ``"segments"``: correct
    each segment (a paragraph, line or sentences of at least ``segment_min_chars`` characters) as soon as the
    upstream has written it, so the output trails the upstream by about one segment; a refusal ends the stream
    and stops the upstream (`aligner_chains.core.segmented`). ``invoke``/``batch`` are the same in both.
    """
    segment_min_chars: int = Field(default=DEFAULT_MIN_CHARS, ge=1)
    """With ``stream_mode="segments"``: a segment ends at the first boundary after this many characters."""
    name: str | None = "Aligner"

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid", ignored_types=(_HybridMethod,))

    _aligner: Aligner | None = PrivateAttr(default=None)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def __init__(self, model: str | Aligner | None = None, **kwargs: Any) -> None:
        check_options(kwargs, field_names(type(self)), type(self).__name__, _OPTIONS_HINT)
        if "stream_mode" in kwargs:
            check_stream_mode(kwargs["stream_mode"])
        super().__init__(model=model, **kwargs)

    # ----------------------------------------------------------------- configuration

    @property
    def model_name(self) -> str:
        """The model corrections use: the `Aligner`'s, the name given, or the default model (`default_model`)."""
        if isinstance(self.model, Aligner):
            return self.model.model_name
        return self.model or default_model()

    def get_aligner(self) -> Aligner:
        """The `Aligner`, loaded on first use (weights come from the core's process-wide cache)."""
        if self._aligner is None:
            with self._lock:
                if self._aligner is None:
                    options = {k: getattr(self, k) for k in _LOAD_OPTIONS if getattr(self, k) is not None}
                    self._aligner = resolve_aligner(self.model, **options)
        return self._aligner

    def with_options(self, **options: Any) -> AlignerRunnable:
        """A copy with these fields changed (validated again; the copy loads its own Aligner on first use)."""
        if not options:
            return self
        fields = {k: getattr(self, k) for k in type(self).model_fields}
        return type(self)(**{**fields, **options})

    @_HybridMethod
    def wrap(cls, self: AlignerRunnable | None, chain: Runnable[Any, Any], **options: Any) -> AlignedChain:
        """``chain`` followed by this Aligner, reading the question from the chain's input explicitly.

        Call it on the class (``AlignerRunnable.wrap(chain, model="demo")``) or on an instance
        (``AlignerRunnable(model="demo").wrap(chain)``); keyword options configure the Aligner.
        """
        from aligner_chains.langchain.aligned_chain import AlignedChain

        aligner = cls(**options) if self is None else self.with_options(**options)
        return AlignedChain(chain=chain, aligner=aligner)

    def _generation(self, overrides: dict[str, Any]) -> dict[str, Any]:
        """Generation settings of the Aligner calls: the fields, then ``generation_kwargs``, then per call."""
        fixed = {
            k: getattr(self, k) for k in ("max_new_tokens", "do_sample", "temperature") if getattr(self, k) is not None
        }
        return {**fixed, **self.generation_kwargs, **overrides}

    def _batch_size(self, config: RunnableConfig | None) -> int:
        cap = (config or {}).get("max_concurrency")
        return min(self.batch_size, cap) if cap else self.batch_size

    # ----------------------------------------------------------------- loading

    def _loaded(self) -> Aligner | UnloadedAligner:
        """The Aligner; if it cannot load and ``on_error="passthrough"``, a stand-in that passes answers through."""
        try:
            return self.get_aligner()
        except Exception as exc:
            if self.on_error == "raise":
                raise
            template = self.template.name if isinstance(self.template, Template) else (self.template or "")
            return UnloadedAligner(exc, template=template, model=self.model_name)

    async def _aloaded(self) -> Aligner | UnloadedAligner:
        """`_loaded`, loading in a worker thread so that a first load does not block the event loop."""
        return self._aligner if self._aligner is not None else await asyncio.to_thread(self._loaded)

    # ----------------------------------------------------------------- steps shared by sync and async

    def _resolve_question(self, item: ParsedInput, run_manager: Any, config: RunnableConfig | None) -> str:
        if item.question is not None:
            return item.question
        explicit = ((config or {}).get("metadata") or {}).get(QUESTION_METADATA_KEY)
        if isinstance(explicit, str):
            return explicit
        parent = getattr(run_manager, "parent_run_id", None)
        found = recorder.find_question(parent, item.answer, (self.question_key, *DEFAULT_QUESTION_KEYS))
        if found is not None:
            return found
        if self.on_missing_question == "raise":
            raise MissingQuestionError(
                f"No question found for the answer {item.answer!r:.80}: the input has no {self.question_key!r} key "
                "and none of the enclosing runs has a human message, a string prompt or a "
                f"{self.question_key!r}/'input' key. Pass a dict with {self.question_key!r}, use "
                "AlignerRunnable.wrap(chain), or set on_missing_question='empty'."
            )
        return ""

    def _prepare(self, value: Any, run_manager: Any, config: RunnableConfig | None) -> ParsedInput:
        item = parse_input(value, question_key=self.question_key, answer_key=self.answer_key)
        if not item.passthrough:
            item.question = self._resolve_question(item, run_manager, config)
        return item

    def _prepare_batch(
        self, values: list[Any], run_managers: list[Any], configs: list[RunnableConfig], return_exceptions: bool
    ) -> _Batch:
        batch = _Batch([None] * len(values), [], self._batch_size(configs[0]), return_exceptions)
        for i, value in enumerate(values):
            try:
                item = self._prepare(value, run_managers[i], configs[i])
            except Exception as exc:
                if not return_exceptions:
                    raise
                batch.results[i] = exc
                continue
            if item.passthrough:
                batch.results[i] = value
            else:
                batch.todo.append((i, item))
        return batch

    def _open_stream(self, value: Any, run_manager: Any, config: RunnableConfig) -> StreamOutput:
        """The output of a stream whose input added up to ``value`` (None: the input stream was empty)."""
        return StreamOutput(None if value is None else self._prepare(value, run_manager, config), self.answer_key)

    def _open_segments(self, first: str | AIMessageChunk, run_manager: Any, config: RunnableConfig) -> StreamOutput:
        """The output of a segment-wise stream that began with ``first``; the question is found now, once the
        upstream run has started (the rest of the answer is not known yet)."""
        if isinstance(first, str):
            item = ParsedInput("str", first, first, first)
        else:
            item = ParsedInput("message", first, first, message_text(first))
        item.question = self._resolve_question(item, run_manager, config)
        return StreamOutput(item, self.answer_key)

    def _segments_options(self, overrides: dict[str, Any]) -> dict[str, Any]:
        return {"min_chars": self.segment_min_chars, "on_error": self.on_error, **self._generation(overrides)}

    @staticmethod
    def _close_segments(output: StreamOutput, feed: SegmentFeed) -> list[Any]:
        """The closing chunks of a segment-wise stream: as for a whole answer, now that the upstream is known
        (what it streamed; only its start if a refusal ended it); a tool-call-only message passes through."""
        item = output.item
        assert item is not None
        item.value = item.answer_value = feed.total
        item.answer = output.correction.original if output.correction is not None else ""
        if item.kind == "message" and is_tool_call_only(feed.total):
            item.passthrough = True
            output.correction = None
        return output.close()

    @staticmethod
    def _piece_chunks(output: StreamOutput, feed: SegmentFeed, piece: str | Correction) -> list[Any]:
        if output.item is not None and output.item.kind == "message":
            output.item.answer_value = feed.total  # chunks take the id and content form of the message so far
        return output.feed(piece)

    # ----------------------------------------------------------------- sync

    def _correct(self, batch: _Batch, overrides: dict[str, Any]) -> list[Correction | Exception]:
        if not batch.todo:
            return []
        return self._loaded().correct_batch(batch.pairs, **batch.options(self.on_error), **self._generation(overrides))

    def _pieces(self, output: StreamOutput, overrides: dict[str, Any]) -> Iterable[str | Correction]:
        if not output.correcting:
            return ()
        return self._loaded().iter_correction(*output.pair, on_error=self.on_error, **self._generation(overrides))

    def _emit(self, correction: Correction | None, config: RunnableConfig) -> None:
        if correction is not None:
            dispatch_custom_event(DIFF_EVENT, diff_payload(correction), config=config)

    def _invoke(
        self, value: AlignerInput, run_manager: CallbackManagerForChainRun, config: RunnableConfig, **kwargs: Any
    ) -> AlignerOutput:
        return self._batch([value], [run_manager], [config], **kwargs)[0]

    def _batch(
        self,
        values: list[AlignerInput],
        run_manager: list[CallbackManagerForChainRun],
        config: list[RunnableConfig],
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        batch = self._prepare_batch(values, run_manager, config, return_exceptions)
        for i, correction in batch.finish(self._correct(batch, kwargs), self.answer_key):
            self._emit(correction, config[i])
        return batch.results

    def _transform(
        self,
        chunks: Iterator[AlignerInput],
        run_manager: CallbackManagerForChainRun,
        config: RunnableConfig,
        **kwargs: Any,
    ) -> Iterator[AlignerOutput]:
        output = self._open_stream(collect_chunks(chunks), run_manager, config)
        for piece in self._pieces(output, kwargs):
            yield from output.feed(piece)
        yield from output.close()
        self._emit(output.correction, config)

    def transform(
        self, input: Iterator[AlignerInput], config: RunnableConfig | None = None, **kwargs: Any
    ) -> Iterator[AlignerOutput]:
        """Stream the correction of a streamed input, as ``stream_mode`` says (``stream`` is this on one input)."""
        if self.stream_mode == "segments":
            return self.transform_segments(input, config, **kwargs)
        return super().transform(input, config, **kwargs)

    def transform_segments(
        self,
        input: Iterator[AlignerInput],
        config: RunnableConfig | None = None,
        *,
        on_tool_turn: Callable[[AIMessageChunk], None] | None = None,
        **kwargs: Any,
    ) -> Iterator[AlignerOutput]:
        """`transform` with ``stream_mode="segments"``, whatever the field says.

        A stream of strings or message chunks is corrected segment by segment while it streams; a stream of
        whole values (dicts, messages) is corrected as a whole, having nothing to stream. ``on_tool_turn``
        (for agents): a message that calls tools is left untouched from its first tool call on (its chunks
        pass through as they come), and ``on_tool_turn`` receives it, all its chunks added up.
        """
        upstream = Upstream(input)
        step = functools.partial(self._transform_segments, upstream, on_tool_turn)
        yield from self._transform_stream_with_config(upstream.traced(), step, config, **kwargs)

    def _transform_segments(
        self,
        upstream: Upstream,
        on_tool_turn: Callable[[AIMessageChunk], None] | None,
        chunks: Iterator[AlignerInput],
        run_manager: CallbackManagerForChainRun,
        config: RunnableConfig,
        **kwargs: Any,
    ) -> Iterator[AlignerOutput]:
        del chunks  # LangChain's copy of the input: the correction reads ``upstream`` itself
        feed = SegmentFeed(upstream, min_chars=self.segment_min_chars, untouched_tool_turns=on_tool_turn is not None)
        owner = True  # whether this thread may stop the upstream: not once the correction's worker reads it
        try:
            first = upstream.read[0] if upstream.read else None
            if not is_streamed_chunk(first):  # whole values (or nothing): nothing to stream
                yield from self._transform(upstream.rest(), run_manager, config, **kwargs)
                return
            output = self._open_segments(first, run_manager, config)
            items = self._loaded().iter_segments(output.pair[0], feed.pieces(), **self._segments_options(kwargs))
            owner = False
            try:
                for piece in items:
                    yield from self._piece_chunks(output, feed, piece)
            except ToolTurn as turn:  # the worker has stopped reading: the rest passes through from here
                owner = True
                yield from output.feed(turn.rest)
                yield turn.chunk
                for chunk in upstream.rest():
                    feed.total = add_chunk(feed.total, chunk)
                    yield chunk
                assert on_tool_turn is not None
                on_tool_turn(feed.total)
                return
            finally:
                items.close()
            yield from self._close_segments(output, feed)
            self._emit(output.correction, config)
        finally:
            if owner or not feed.started:
                upstream.stop()

    # ----------------------------------------------------------------- async: the same steps, awaited

    async def _acorrect(self, batch: _Batch, overrides: dict[str, Any]) -> list[Correction | Exception]:
        if not batch.todo:
            return []
        aligner = await self._aloaded()
        return await aligner.acorrect_batch(batch.pairs, **batch.options(self.on_error), **self._generation(overrides))

    async def _apieces(self, output: StreamOutput, overrides: dict[str, Any]) -> AsyncIterable[str | Correction]:
        if not output.correcting:
            return aiter_values()
        return (await self._aloaded()).aiter_correction(
            *output.pair, on_error=self.on_error, **self._generation(overrides)
        )

    async def _aemit(self, correction: Correction | None, config: RunnableConfig) -> None:
        if correction is not None:
            await adispatch_custom_event(DIFF_EVENT, diff_payload(correction), config=config)

    async def _ainvoke(
        self, value: AlignerInput, run_manager: AsyncCallbackManagerForChainRun, config: RunnableConfig, **kwargs: Any
    ) -> AlignerOutput:
        return (await self._abatch([value], [run_manager], [config], **kwargs))[0]

    async def _abatch(
        self,
        values: list[AlignerInput],
        run_manager: list[AsyncCallbackManagerForChainRun],
        config: list[RunnableConfig],
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        batch = self._prepare_batch(values, run_manager, config, return_exceptions)
        for i, correction in batch.finish(await self._acorrect(batch, kwargs), self.answer_key):
            await self._aemit(correction, config[i])
        return batch.results

    async def _atransform(
        self,
        chunks: AsyncIterator[AlignerInput],
        run_manager: AsyncCallbackManagerForChainRun,
        config: RunnableConfig,
        **kwargs: Any,
    ) -> AsyncIterator[AlignerOutput]:
        output = self._open_stream(await acollect_chunks(chunks), run_manager, config)
        async for piece in await self._apieces(output, kwargs):
            for chunk in output.feed(piece):
                yield chunk
        for chunk in output.close():
            yield chunk
        await self._aemit(output.correction, config)

    def atransform(
        self, input: AsyncIterator[AlignerInput], config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[AlignerOutput]:
        """Async `transform`."""
        if self.stream_mode == "segments":
            return self.atransform_segments(input, config, **kwargs)
        return super().atransform(input, config, **kwargs)

    async def atransform_segments(
        self,
        input: AsyncIterator[AlignerInput],
        config: RunnableConfig | None = None,
        *,
        on_tool_turn: Callable[[AIMessageChunk], None] | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[AlignerOutput]:
        """Async `transform_segments`."""
        upstream = AsyncUpstream(input)
        step = functools.partial(self._atransform_segments, upstream, on_tool_turn)
        chunks = self._atransform_stream_with_config(upstream.traced(), step, config, **kwargs)
        try:
            async for chunk in chunks:
                yield chunk
        finally:
            await chunks.aclose()  # at once: a consumer that left stops the upstream and the Aligner now

    async def _atransform_segments(
        self,
        upstream: AsyncUpstream,
        on_tool_turn: Callable[[AIMessageChunk], None] | None,
        chunks: AsyncIterator[AlignerInput],
        run_manager: AsyncCallbackManagerForChainRun,
        config: RunnableConfig,
        **kwargs: Any,
    ) -> AsyncIterator[AlignerOutput]:
        del chunks  # LangChain's copy of the input: the correction reads ``upstream`` itself
        feed = SegmentFeed(upstream, min_chars=self.segment_min_chars, untouched_tool_turns=on_tool_turn is not None)
        owner = True  # whether this task may stop the upstream: not once the correction's reader task reads it
        try:
            first = upstream.read[0] if upstream.read else None
            if not is_streamed_chunk(first):  # whole values (or nothing): nothing to stream
                async for chunk in self._atransform(upstream.rest(), run_manager, config, **kwargs):
                    yield chunk
                return
            output = self._open_segments(first, run_manager, config)
            items = (await self._aloaded()).aiter_segments(
                output.pair[0], feed.apieces(), **self._segments_options(kwargs)
            )
            owner = False
            try:
                async for piece in items:
                    for chunk in self._piece_chunks(output, feed, piece):
                        yield chunk
            except ToolTurn as turn:  # the reader task has stopped: the rest passes through from here
                owner = True
                for chunk in output.feed(turn.rest):
                    yield chunk
                yield turn.chunk
                async for chunk in upstream.rest():
                    feed.total = add_chunk(feed.total, chunk)
                    yield chunk
                assert on_tool_turn is not None
                on_tool_turn(feed.total)
                return
            finally:
                await items.aclose()
            for chunk in self._close_segments(output, feed):
                yield chunk
            await self._aemit(output.correction, config)
        finally:
            if owner or not feed.started:
                await upstream.astop()
