"""Correct a workflow's final result with an Aligner (``llama_index.core.workflow``).

Two ways in:

- Mix `AlignerCorrectionStep` into your own `Workflow` and end your last step with
  ``return AlignerCorrectEvent(question=..., result=...)`` instead of a `StopEvent`: the mixed-in
  step corrects ``result`` and stops the workflow with the corrected value.
- Wrap an existing workflow whose `StopEvent` result is a text answer:
  ``AlignerWorkflow(my_workflow, aligner="demo")``; run it with the same keyword arguments.

A result may be a ``str``, a `Response` (corrected like `AlignerQueryEngine` does, with
``metadata["aligner"]``), a `StreamingResponse` or an `AsyncStreamingResponse`; a streamed result is
corrected as ``stream_mode`` says (``"whole"``: read in full, then the correction streams; ``"segments"``:
each segment corrected as soon as the wrapped workflow's stream has written it).
"""

from __future__ import annotations

import inspect
import os
from typing import Any, Literal

import llama_index.core.instrumentation as instrument
from llama_index.core.workflow import Context, Event, StartEvent, StopEvent, Workflow, step

from aligner_chains.core import LOADING_OPTIONS, Aligner
from aligner_chains.core.errors import ConfigError
from aligner_chains.core.options import check_options
from aligner_chains.core.segmented import DEFAULT_STREAM_MODE, StreamMode, check_stream_mode
from aligner_chains.llama_index.lazy import LazyAligner
from aligner_chains.llama_index.responses import acorrect_response

dispatcher = instrument.get_dispatcher(__name__)

COMPONENT = "workflow"

#: Start-event fields `AlignerWorkflow` looks for, in order, when no ``question_key`` is given.
QUESTION_KEYS = ("query", "question", "query_str", "input", "user_msg")


class AlignerCorrectEvent(Event):
    """Return this instead of a `StopEvent`: `AlignerCorrectionStep` corrects ``result`` and stops."""

    question: str
    result: Any


class AlignerCorrectionStep:
    """Mixin for a `Workflow` subclass: a ``correct_result`` step from `AlignerCorrectEvent` to `StopEvent`.

    ``class MyFlow(AlignerCorrectionStep, Workflow)`` gains the keyword arguments ``aligner``
    (an `Aligner`, a model path / hub id / ``"demo"``, or None: the default model, ``$ALIGNER_MODEL``,
    else the shipped demo, see `aligner_chains.core.default_model`; loaded on first use),
    ``on_error``, ``max_new_tokens``, ``generation_kwargs``, ``stream_mode`` (how a streamed result is
    corrected, see `AlignerQueryEngine`; default ``DEFAULT_STREAM_MODE``) and the loading options of
    ``Aligner.from_pretrained`` (``device``, ``dtype``, ``quantization``, ``adapter``, ...); every
    other keyword argument goes to `Workflow` (``timeout``, ``verbose``, ...).
    """

    def __init__(
        self,
        *args: Any,
        aligner: Aligner | str | os.PathLike[str] | None = None,
        on_error: Literal["raise", "passthrough"] | None = None,
        max_new_tokens: int | None = None,
        generation_kwargs: dict[str, Any] | None = None,
        stream_mode: StreamMode = DEFAULT_STREAM_MODE,
        **kwargs: Any,
    ) -> None:
        loading = {key: kwargs.pop(key) for key in list(kwargs) if key in LOADING_OPTIONS}
        accepted = inspect.signature(super().__init__).parameters  # the rest goes to Workflow
        if not any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
            mine = {*LOADING_OPTIONS, "aligner", "on_error", "max_new_tokens", "generation_kwargs", "stream_mode"}
            check_options(kwargs, {*accepted} - {"self"}, type(self).__name__, also=mine)
        self._aligner_source = LazyAligner(aligner, on_error=on_error, max_new_tokens=max_new_tokens, **loading)
        self._aligner_generation = dict(generation_kwargs or {})
        self._aligner_stream_mode = check_stream_mode(stream_mode)
        super().__init__(*args, **kwargs)

    def get_aligner(self) -> Aligner:
        """The Aligner in use (loaded on first call)."""
        return self._aligner_source.get()

    @step
    async def correct_result(self, ev: AlignerCorrectEvent) -> StopEvent:
        """Correct ``ev.result`` as an answer to ``ev.question`` and stop with it."""
        return StopEvent(result=await self._correct_result(ev.question, ev.result))

    @dispatcher.span
    async def _correct_result(self, question: str, result: Any) -> Any:
        aligner = await self._aligner_source.aget()
        return await acorrect_response(
            aligner, COMPONENT, question, result, self._aligner_generation, self._aligner_stream_mode
        )


class AlignerWorkflow(AlignerCorrectionStep, Workflow):
    """Run ``workflow`` and correct its `StopEvent` result, with the question taken from the start event.

    ``question_key`` names the start-event field holding the question; by default the first of
    ``query``, ``question``, ``query_str``, ``input``, ``user_msg`` that is present. Events the wrapped
    workflow writes to its stream are forwarded to this workflow's stream.

    Example::

        flow = AlignerWorkflow(MyRAGFlow(timeout=60), aligner="demo", timeout=120)
        answer = await flow.run(query="How do I reach support?")
    """

    def __init__(self, workflow: Workflow, *, question_key: str | None = None, **kwargs: Any) -> None:
        if not isinstance(workflow, Workflow):
            raise TypeError(f"workflow must be a llama_index Workflow, got {type(workflow).__name__}.")
        self.workflow = workflow
        self.question_key = question_key
        super().__init__(**kwargs)

    def _question(self, ev: StartEvent) -> str:
        keys = [self.question_key] if self.question_key else list(QUESTION_KEYS)
        for key in keys:
            value = ev.get(key)
            if value is None and key in type(ev).model_fields:
                value = getattr(ev, key)
            if isinstance(value, str):
                return value
            if value is not None and self.question_key:
                raise ConfigError(f"Start-event field {key!r} must be a str question, got {type(value).__name__}.")
        raise ConfigError(
            f"No question in the start event: looked for {keys}, it has {sorted(ev.keys())}. "
            "Pass question_key= naming the field that holds the question."
        )

    @step
    async def run_wrapped(self, ctx: Context, ev: StartEvent) -> AlignerCorrectEvent:
        """Run the wrapped workflow with this run's start arguments; hand its result to ``correct_result``."""
        question = self._question(ev)
        handler = self.workflow.run(**dict(ev.items()))
        async for event in handler.stream_events():
            if not isinstance(event, StopEvent):
                ctx.write_event_to_stream(event)
        result = await handler
        return AlignerCorrectEvent(question=question, result=result)
