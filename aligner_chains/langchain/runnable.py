"""`AlignerRunnable`: an Aligner as a LangChain runnable, so that ``chain = llm | AlignerRunnable()`` works.

The runnable translates LangChain values into (question, answer) pairs and back, and delegates every
correction to `aligner_chains.core.Aligner` (templates, padding, batching and generation live there).
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any, Literal, Union

from langchain_core.callbacks import (
    AsyncCallbackManagerForChainRun,
    CallbackManagerForChainRun,
    adispatch_custom_event,
    dispatch_custom_event,
)
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.runnables import Runnable, RunnableConfig, RunnableSerializable
from langchain_core.runnables.config import patch_config
from langchain_core.runnables.utils import AddableDict
from pydantic import ConfigDict, Field, PrivateAttr

from aligner_chains.core.aligner import LOADING_OPTIONS, Aligner, resolve_aligner
from aligner_chains.core.errors import DataError, MissingQuestionError
from aligner_chains.core.result import Correction
from aligner_chains.core.templates import Template
from aligner_chains.langchain.messages import final_chunk, is_tool_call_only, message_text, piece_chunk, with_text
from aligner_chains.langchain.question import (
    DEFAULT_QUESTION_KEYS,
    QUESTION_METADATA_KEY,
    extract_question,
    recorder,
)

__all__ = [
    "DEFAULT_MODEL",
    "DIFF_EVENT",
    "AlignedChain",
    "AlignerRunnable",
    "MissingQuestionError",
]

DEFAULT_MODEL = "aligner/aligner-7b-v1.0"
"""The model `AlignerRunnable()` loads when given none."""

DIFF_EVENT = "aligner_diff"
"""Name of the custom event (``on_custom_event`` in ``astream_events``) that carries each correction's diff."""

AlignerInput = Union[str, AIMessage, dict[str, Any]]  # noqa: UP007 (pydantic/langchain schema generation)
AlignerOutput = Union[str, AIMessage, dict[str, Any]]  # noqa: UP007

# The loading options that are fields of the runnable (a strategy object is not serialisable).
_LOAD_OPTIONS = sorted(LOADING_OPTIONS - {"strategy"})


@dataclass
class _Item:
    """One input, parsed: what kind it is, the answer value (str or AIMessage) and its text."""

    kind: Literal["str", "message", "dict"]
    value: Any
    answer_value: Any
    answer: str
    question: str | None = None
    passthrough: bool = False


class _HybridMethod:
    """A method callable on the class (``cls(**options)`` is used) or on an instance (it is used)."""

    def __init__(self, func: Any) -> None:
        self.func = func
        functools.update_wrapper(self, func)  # type: ignore[arg-type]

    def __get__(self, obj: Any, owner: type) -> Any:
        return functools.partial(self.func, owner, obj)


def _collect(chunks: Iterator[Any] | list[Any]) -> Any:
    """Add up a stream of inputs the way LangChain does (str, message chunks, dict chunks)."""
    final: Any = None
    for chunk in chunks:
        final = _add(final, chunk)
    return final


def _add(final: Any, chunk: Any) -> Any:
    if final is None:
        return chunk
    if isinstance(final, str) and isinstance(chunk, str):
        return final + chunk
    if isinstance(final, AIMessageChunk) and isinstance(chunk, AIMessageChunk):
        return final + chunk
    if isinstance(final, dict) and isinstance(chunk, dict):
        try:
            return AddableDict(final) + AddableDict(chunk)
        except TypeError:
            return {**final, **chunk}
    return chunk


def _diff_payload(correction: Correction) -> dict[str, Any]:
    return {
        "question": correction.question,
        "original": correction.original,
        "corrected": correction.corrected,
        "changed": correction.changed,
        "diff": [edit.model_dump() for edit in correction.diff()],
        "summary": correction.summary(),
    }


class AlignerRunnable(RunnableSerializable[AlignerInput, AlignerOutput]):
    """Corrects an upstream answer with an Aligner: ``chain = llm | AlignerRunnable(model="demo")``.

    Input: a ``str``, an ``AIMessage``/``AIMessageChunk``, or a dict with the question and answer
    (``question_key``/``answer_key``). The output has the type of the input: a message keeps its id,
    metadata, usage and tool calls, only its text is corrected, and ``response_metadata["aligner"]``
    holds `Correction.summary()`; a dict comes back with the corrected answer and an ``"aligner"`` key.
    Tool-call-only messages pass through untouched. Without a question in the input, the question is
    recovered from the chain the runnable runs in (see `aligner_chains.langchain.question`).

    Weights load lazily on first use through the core's shared model cache, so copies made by
    ``configurable_fields``/``configurable_alternatives`` or ``with_config`` do not load them again.
    """

    model: str | Aligner | None = None
    """A model path, ``"demo"``, a hub id or a built `Aligner`; None loads ``aligner/aligner-7b-v1.0``."""
    template: str | Template | None = None
    device: str | None = None
    dtype: str | None = None
    device_map: str | None = None
    quantization: Literal["4bit", "8bit"] | None = None
    adapter: str | None = None
    trust_remote_code: bool | None = None
    allow_pickle: bool | None = None
    revision: str | None = None
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
    name: str | None = "Aligner"

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid", ignored_types=(_HybridMethod,))

    _aligner: Aligner | None = PrivateAttr(default=None)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def __init__(self, model: str | Aligner | None = None, **kwargs: Any) -> None:
        super().__init__(model=model, **kwargs)

    # ----------------------------------------------------------------- configuration

    @classmethod
    def is_lc_serializable(cls) -> bool:
        """Not serializable: it may hold a built Aligner with loaded weights."""
        return False

    def get_aligner(self) -> Aligner:
        """The `Aligner`, loaded on first use (weights come from the core's process-wide cache)."""
        if self._aligner is None:
            with self._lock:
                if self._aligner is None:
                    options = {k: getattr(self, k) for k in _LOAD_OPTIONS if getattr(self, k) is not None}
                    self._aligner = resolve_aligner(self.model, default=DEFAULT_MODEL, **options)
        return self._aligner

    def _generation(self, overrides: dict[str, Any]) -> dict[str, Any]:
        fixed = {
            k: getattr(self, k) for k in ("max_new_tokens", "do_sample", "temperature") if getattr(self, k) is not None
        }
        return {**fixed, **self.generation_kwargs, **overrides}

    def _model_label(self) -> str:
        if isinstance(self.model, Aligner):
            return self.model.model_name
        return self.model or DEFAULT_MODEL

    def _with(self, **options: Any) -> AlignerRunnable:
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
        aligner = cls(**options) if self is None else self._with(**options)
        return AlignedChain(chain=chain, aligner=aligner)

    # ----------------------------------------------------------------- translation

    def _parse(self, value: Any) -> _Item:
        if isinstance(value, str):
            return _Item("str", value, value, value)
        if isinstance(value, AIMessage):
            return _Item("message", value, value, message_text(value), passthrough=is_tool_call_only(value))
        if isinstance(value, dict):
            if self.answer_key not in value:
                raise DataError(
                    f"The dict given to AlignerRunnable has no {self.answer_key!r} key (keys: {sorted(value)}). "
                    f"Put the answer under {self.answer_key!r} or set answer_key=."
                )
            answer = value[self.answer_key]
            if isinstance(answer, str):
                item = _Item("dict", value, answer, answer)
            elif isinstance(answer, AIMessage):
                item = _Item("dict", value, answer, message_text(answer), passthrough=is_tool_call_only(answer))
            else:
                raise TypeError(
                    f"The answer under {self.answer_key!r} must be a str or an AIMessage, "
                    f"got {type(answer).__name__}: {answer!r:.80}"
                )
            question = value.get(self.question_key)
            if question is not None:
                item.question = question if isinstance(question, str) else extract_question(question)
            return item
        raise TypeError(
            "AlignerRunnable takes a str, an AIMessage/AIMessageChunk, or a dict with "
            f"{self.question_key!r} and {self.answer_key!r}; got {type(value).__name__}: {value!r:.80}"
        )

    def _resolve_question(self, item: _Item, run_manager: Any, config: RunnableConfig | None) -> str:
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

    def _prepare(self, value: Any, run_manager: Any, config: RunnableConfig | None) -> _Item:
        item = self._parse(value)
        if not item.passthrough:
            item.question = self._resolve_question(item, run_manager, config)
        return item

    def _failed(self, item: _Item, exc: Exception) -> Correction:
        """A passthrough result for a failure outside the core (the model could not be loaded)."""
        template = self.template.name if isinstance(self.template, Template) else (self.template or "")
        return Correction.failed(item.question or "", item.answer, exc, template=template, model=self._model_label())

    def _output(self, item: _Item, correction: Correction) -> Any:
        text = item.answer if correction.finish_reason == "skipped" else correction.corrected
        meta = correction.summary()
        if item.kind == "str":
            return text
        if item.kind == "message":
            return with_text(item.answer_value, text, meta)
        answer = text if isinstance(item.answer_value, str) else with_text(item.answer_value, text, meta)
        return {**item.value, self.answer_key: answer, "aligner": meta}

    def _piece(self, item: _Item, piece: str) -> Any:
        if item.kind == "str":
            return piece
        chunk = piece if isinstance(item.answer_value, str) else piece_chunk(item.answer_value, piece)
        return chunk if item.kind == "message" else AddableDict({self.answer_key: chunk})

    def _tail(self, item: _Item, correction: Correction) -> Any:
        meta = correction.summary()
        if item.kind == "message":
            return final_chunk(item.answer_value, meta)
        if item.kind == "dict":
            tail = AddableDict({k: v for k, v in item.value.items() if k != self.answer_key})
            if isinstance(item.answer_value, AIMessage):
                tail[self.answer_key] = final_chunk(item.answer_value, meta)
            tail["aligner"] = meta
            return tail
        return None

    def _batch_size(self, config: RunnableConfig | None) -> int:
        cap = (config or {}).get("max_concurrency")
        return min(self.batch_size, cap) if cap else self.batch_size

    # ----------------------------------------------------------------- correction (sync)

    def _correct(self, items: list[_Item], batch_size: int, generation: dict[str, Any]) -> list[Correction]:
        try:
            aligner = self.get_aligner()
        except Exception as exc:
            if self.on_error == "raise":
                raise
            return [self._failed(item, exc) for item in items]
        pairs = [(item.question or "", item.answer) for item in items]
        return aligner.correct_batch(pairs, batch_size=batch_size, on_error=self.on_error, **generation)

    def _iter_correction(self, item: _Item, generation: dict[str, Any]) -> Iterator[str | Correction]:
        try:
            aligner = self.get_aligner()
        except Exception as exc:
            if self.on_error == "raise":
                raise
            yield item.answer
            yield self._failed(item, exc)
            return
        yield from aligner.iter_correction(item.question or "", item.answer, on_error=self.on_error, **generation)

    def _emit(self, correction: Correction, config: RunnableConfig) -> None:
        dispatch_custom_event(DIFF_EVENT, _diff_payload(correction), config=config)

    def _invoke(
        self, value: AlignerInput, run_manager: CallbackManagerForChainRun, config: RunnableConfig, **kwargs: Any
    ) -> AlignerOutput:
        item = self._prepare(value, run_manager, config)
        if item.passthrough:
            return value
        [correction] = self._correct([item], 1, self._generation(kwargs))
        self._emit(correction, config)
        return self._output(item, correction)

    def invoke(self, input: AlignerInput, config: RunnableConfig | None = None, **kwargs: Any) -> AlignerOutput:
        """Correct one answer; keyword arguments are per-call generation settings."""
        return self._call_with_config(self._invoke, input, config, **kwargs)

    def _batch(
        self,
        values: list[AlignerInput],
        run_manager: list[CallbackManagerForChainRun],
        config: list[RunnableConfig],
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        results: list[Any] = [None] * len(values)
        todo: list[tuple[int, _Item]] = []
        for i, value in enumerate(values):
            try:
                item = self._prepare(value, run_manager[i], config[i])
            except Exception as exc:
                if not return_exceptions:
                    raise
                results[i] = exc
                continue
            if item.passthrough:
                results[i] = value
            else:
                todo.append((i, item))
        if todo:
            corrections = self._correct(
                [item for _, item in todo], self._batch_size(config[0]), self._generation(kwargs)
            )
            for (i, item), correction in zip(todo, corrections, strict=True):
                self._emit(correction, config[i])
                results[i] = self._output(item, correction)
        return results

    def batch(
        self,
        inputs: list[AlignerInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[AlignerOutput]:
        """Correct many answers with one padded generation per ``batch_size`` (capped by ``max_concurrency``)."""
        if not inputs:
            return []
        func = functools.partial(self._batch, return_exceptions=return_exceptions)
        return self._batch_with_config(func, inputs, config, return_exceptions=return_exceptions, **kwargs)

    def _transform(
        self,
        chunks: Iterator[AlignerInput],
        run_manager: CallbackManagerForChainRun,
        config: RunnableConfig,
        **kwargs: Any,
    ) -> Iterator[AlignerOutput]:
        value = _collect(chunks)
        if value is None:
            return
        item = self._prepare(value, run_manager, config)
        if item.passthrough:
            yield value
            return
        correction: Correction | None = None
        emitted = False
        for piece in self._iter_correction(item, self._generation(kwargs)):
            if isinstance(piece, str):
                if piece:
                    emitted = True
                    yield self._piece(item, piece)
            else:
                correction = piece
        assert correction is not None
        if correction.finish_reason == "skipped" and item.answer:
            emitted = True
            yield self._piece(item, item.answer)
        if not emitted and item.kind != "message":
            yield self._piece(item, "")  # a string or dict stream always carries the answer
        tail = self._tail(item, correction)
        if tail is not None:
            yield tail
        self._emit(correction, config)

    def transform(
        self, input: Iterator[AlignerInput], config: RunnableConfig | None = None, **kwargs: Any
    ) -> Iterator[AlignerOutput]:
        """Consume the upstream stream, then stream the correction as it is generated."""
        yield from self._transform_stream_with_config(input, self._transform, config, **kwargs)

    def stream(
        self, input: AlignerInput, config: RunnableConfig | None = None, **kwargs: Any
    ) -> Iterator[AlignerOutput]:
        """Stream the correction: strings for string input, ``AIMessageChunk``s for message input."""
        yield from self.transform(iter([input]), config, **kwargs)

    # ----------------------------------------------------------------- correction (async)

    async def _aget_aligner(self) -> Aligner:
        if self._aligner is not None:
            return self._aligner
        return await asyncio.to_thread(self.get_aligner)

    async def _acorrect(self, items: list[_Item], batch_size: int, generation: dict[str, Any]) -> list[Correction]:
        try:
            aligner = await self._aget_aligner()
        except Exception as exc:
            if self.on_error == "raise":
                raise
            return [self._failed(item, exc) for item in items]
        pairs = [(item.question or "", item.answer) for item in items]
        return await aligner.acorrect_batch(pairs, batch_size=batch_size, on_error=self.on_error, **generation)

    async def _aiter_correction(self, item: _Item, generation: dict[str, Any]) -> AsyncIterator[str | Correction]:
        try:
            aligner = await self._aget_aligner()
        except Exception as exc:
            if self.on_error == "raise":
                raise
            yield item.answer
            yield self._failed(item, exc)
            return
        async for piece in aligner.aiter_correction(
            item.question or "", item.answer, on_error=self.on_error, **generation
        ):
            yield piece

    async def _aemit(self, correction: Correction, config: RunnableConfig) -> None:
        await adispatch_custom_event(DIFF_EVENT, _diff_payload(correction), config=config)

    async def _ainvoke(
        self,
        value: AlignerInput,
        run_manager: AsyncCallbackManagerForChainRun,
        config: RunnableConfig,
        **kwargs: Any,
    ) -> AlignerOutput:
        item = self._prepare(value, run_manager, config)
        if item.passthrough:
            return value
        [correction] = await self._acorrect([item], 1, self._generation(kwargs))
        await self._aemit(correction, config)
        return self._output(item, correction)

    async def ainvoke(self, input: AlignerInput, config: RunnableConfig | None = None, **kwargs: Any) -> AlignerOutput:
        """Async `invoke`: generation runs in a worker thread."""
        return await self._acall_with_config(self._ainvoke, input, config, **kwargs)

    async def _abatch(
        self,
        values: list[AlignerInput],
        run_manager: list[AsyncCallbackManagerForChainRun],
        config: list[RunnableConfig],
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        results: list[Any] = [None] * len(values)
        todo: list[tuple[int, _Item]] = []
        for i, value in enumerate(values):
            try:
                item = self._prepare(value, run_manager[i], config[i])
            except Exception as exc:
                if not return_exceptions:
                    raise
                results[i] = exc
                continue
            if item.passthrough:
                results[i] = value
            else:
                todo.append((i, item))
        if todo:
            corrections = await self._acorrect(
                [item for _, item in todo], self._batch_size(config[0]), self._generation(kwargs)
            )
            for (i, item), correction in zip(todo, corrections, strict=True):
                await self._aemit(correction, config[i])
                results[i] = self._output(item, correction)
        return results

    async def abatch(
        self,
        inputs: list[AlignerInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[AlignerOutput]:
        """Async `batch`: one batched correction per ``batch_size``."""
        if not inputs:
            return []
        func = functools.partial(self._abatch, return_exceptions=return_exceptions)
        return await self._abatch_with_config(func, inputs, config, return_exceptions=return_exceptions, **kwargs)

    async def _atransform(
        self,
        chunks: AsyncIterator[AlignerInput],
        run_manager: AsyncCallbackManagerForChainRun,
        config: RunnableConfig,
        **kwargs: Any,
    ) -> AsyncIterator[AlignerOutput]:
        value: Any = None
        async for chunk in chunks:
            value = _add(value, chunk)
        if value is None:
            return
        item = self._prepare(value, run_manager, config)
        if item.passthrough:
            yield value
            return
        correction: Correction | None = None
        emitted = False
        async for piece in self._aiter_correction(item, self._generation(kwargs)):
            if isinstance(piece, str):
                if piece:
                    emitted = True
                    yield self._piece(item, piece)
            else:
                correction = piece
        assert correction is not None
        if correction.finish_reason == "skipped" and item.answer:
            emitted = True
            yield self._piece(item, item.answer)
        if not emitted and item.kind != "message":
            yield self._piece(item, "")  # a string or dict stream always carries the answer
        tail = self._tail(item, correction)
        if tail is not None:
            yield tail
        await self._aemit(correction, config)

    async def atransform(
        self, input: AsyncIterator[AlignerInput], config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[AlignerOutput]:
        """Async `transform`."""
        async for chunk in self._atransform_stream_with_config(input, self._atransform, config, **kwargs):
            yield chunk

    async def astream(
        self, input: AlignerInput, config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[AlignerOutput]:
        """Async `stream`."""

        async def once() -> AsyncIterator[AlignerInput]:
            yield input

        async for chunk in self.atransform(once(), config, **kwargs):
            yield chunk


class AlignedChain(RunnableSerializable[Any, Any]):
    """``chain`` then ``aligner``, the question read explicitly from the chain's input (`AlignerRunnable.wrap`)."""

    chain: Runnable[Any, Any]
    aligner: AlignerRunnable
    name: str | None = "AlignedChain"

    model_config = ConfigDict(arbitrary_types_allowed=True)

    @classmethod
    def is_lc_serializable(cls) -> bool:
        """Not serializable (see `AlignerRunnable`)."""
        return False

    def _question(self, value: Any) -> str | None:
        return extract_question(value, (self.aligner.question_key, *DEFAULT_QUESTION_KEYS))

    def _chain_config(self, config: RunnableConfig, run_manager: Any) -> RunnableConfig:
        return patch_config(config, callbacks=run_manager.get_child("aligned:chain"))

    def _aligner_config(self, config: RunnableConfig, run_manager: Any, question: str | None) -> RunnableConfig:
        child = patch_config(config, callbacks=run_manager.get_child("aligned:aligner"))
        if question is not None:
            child["metadata"] = {**(child.get("metadata") or {}), QUESTION_METADATA_KEY: question}
        return child

    def _invoke(
        self, value: Any, run_manager: CallbackManagerForChainRun, config: RunnableConfig, **kwargs: Any
    ) -> Any:
        answer = self.chain.invoke(value, self._chain_config(config, run_manager), **kwargs)
        return self.aligner.invoke(answer, self._aligner_config(config, run_manager, self._question(value)))

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        """Run the chain, then correct its answer to the question found in ``input``."""
        return self._call_with_config(self._invoke, input, config, **kwargs)

    async def _ainvoke(
        self, value: Any, run_manager: AsyncCallbackManagerForChainRun, config: RunnableConfig, **kwargs: Any
    ) -> Any:
        answer = await self.chain.ainvoke(value, self._chain_config(config, run_manager), **kwargs)
        return await self.aligner.ainvoke(answer, self._aligner_config(config, run_manager, self._question(value)))

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        """Async `invoke`."""
        return await self._acall_with_config(self._ainvoke, input, config, **kwargs)

    def _batch(
        self,
        values: list[Any],
        run_manager: list[CallbackManagerForChainRun],
        config: list[RunnableConfig],
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        answers = self.chain.batch(
            values,
            [self._chain_config(c, rm) for c, rm in zip(config, run_manager, strict=True)],
            return_exceptions=return_exceptions,
            **kwargs,
        )
        ok = [i for i, answer in enumerate(answers) if not isinstance(answer, Exception)]
        if not ok:
            return list(answers)
        corrected = self.aligner.batch(
            [answers[i] for i in ok],
            [self._aligner_config(config[i], run_manager[i], self._question(values[i])) for i in ok],
            return_exceptions=return_exceptions,
        )
        out = list(answers)
        for i, result in zip(ok, corrected, strict=True):
            out[i] = result
        return out

    def batch(
        self,
        inputs: list[Any],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        """Batch the chain, then one batched correction of all its answers."""
        if not inputs:
            return []
        func = functools.partial(self._batch, return_exceptions=return_exceptions)
        return self._batch_with_config(func, inputs, config, return_exceptions=return_exceptions, **kwargs)

    async def _abatch(
        self,
        values: list[Any],
        run_manager: list[AsyncCallbackManagerForChainRun],
        config: list[RunnableConfig],
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        answers = await self.chain.abatch(
            values,
            [self._chain_config(c, rm) for c, rm in zip(config, run_manager, strict=True)],
            return_exceptions=return_exceptions,
            **kwargs,
        )
        ok = [i for i, answer in enumerate(answers) if not isinstance(answer, Exception)]
        if not ok:
            return list(answers)
        corrected = await self.aligner.abatch(
            [answers[i] for i in ok],
            [self._aligner_config(config[i], run_manager[i], self._question(values[i])) for i in ok],
            return_exceptions=return_exceptions,
        )
        out = list(answers)
        for i, result in zip(ok, corrected, strict=True):
            out[i] = result
        return out

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

    def _transform(
        self, chunks: Iterator[Any], run_manager: CallbackManagerForChainRun, config: RunnableConfig, **kwargs: Any
    ) -> Iterator[Any]:
        value = _collect(chunks)
        answers = self.chain.transform(iter([value]), self._chain_config(config, run_manager), **kwargs)
        yield from self.aligner.transform(answers, self._aligner_config(config, run_manager, self._question(value)))

    def transform(self, input: Iterator[Any], config: RunnableConfig | None = None, **kwargs: Any) -> Iterator[Any]:
        """Stream the chain's answer into the Aligner, then stream the correction."""
        yield from self._transform_stream_with_config(input, self._transform, config, **kwargs)

    def stream(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Iterator[Any]:
        """Stream the correction."""
        yield from self.transform(iter([input]), config, **kwargs)

    async def _atransform(
        self,
        chunks: AsyncIterator[Any],
        run_manager: AsyncCallbackManagerForChainRun,
        config: RunnableConfig,
        **kwargs: Any,
    ) -> AsyncIterator[Any]:
        value: Any = None
        async for chunk in chunks:
            value = _add(value, chunk)

        async def once() -> AsyncIterator[Any]:
            yield value

        answers = self.chain.atransform(once(), self._chain_config(config, run_manager), **kwargs)
        config_ = self._aligner_config(config, run_manager, self._question(value))
        async for out in self.aligner.atransform(answers, config_):
            yield out

    async def atransform(
        self, input: AsyncIterator[Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[Any]:
        """Async `transform`."""
        async for chunk in self._atransform_stream_with_config(input, self._atransform, config, **kwargs):
            yield chunk

    async def astream(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> AsyncIterator[Any]:
        """Async `stream`."""

        async def once() -> AsyncIterator[Any]:
            yield input

        async for chunk in self.atransform(once(), config, **kwargs):
            yield chunk
