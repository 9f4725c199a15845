"""Instrumentation events the LlamaIndex adapter sends through ``llama_index_instrumentation``.

Every correction (a batch of retrieved nodes, a query engine's answer, a workflow result) is
bracketed by an `AlignerCorrectionStartEvent` and an `AlignerCorrectionEndEvent`, sent from inside a
dispatcher span, so an event handler registered on the root dispatcher sees them with the span id::

    import llama_index.core.instrumentation as instrument

    instrument.get_dispatcher().add_event_handler(MyHandler())

The adapters send them with `emit_start` and `emit_end`.
"""

from __future__ import annotations

from typing import Any, Literal

import llama_index.core.instrumentation as instrument
from llama_index.core.instrumentation.events.base import BaseEvent
from pydantic import Field

from aligner_chains.core.result import Correction

__all__ = [
    "AlignerCorrectionEndEvent",
    "AlignerCorrectionStartEvent",
    "Component",
    "emit_end",
    "emit_start",
]

dispatcher = instrument.get_dispatcher(__name__)

Component = Literal["node_postprocessor", "query_engine", "workflow"]


class AlignerCorrectionStartEvent(BaseEvent):
    """An Aligner is about to correct ``num_items`` texts for ``query``.

    Attributes:
        component: which adapter sent it: ``node_postprocessor``, ``query_engine`` or ``workflow``.
        query: the question given to the Aligner.
        num_items: how many texts are corrected together (nodes of one query, or one answer).
        streaming: whether the correction is streamed.
        model: the Aligner's model id or path.
    """

    component: Component
    query: str
    num_items: int
    streaming: bool = False
    model: str = ""

    @classmethod
    def class_name(cls) -> str:
        return "AlignerCorrectionStartEvent"


class AlignerCorrectionEndEvent(BaseEvent):
    """An Aligner finished; ``summaries`` holds one ``Correction.summary()`` per item, in input order.

    Attributes:
        component: which adapter sent it.
        query: the question given to the Aligner.
        summaries: ``Correction.summary()`` of every item (original text, changed, finish_reason,
            token counts, latency, error).
        num_changed: how many items the Aligner changed.
        num_errors: how many items failed and were passed through (``on_error="passthrough"``).
        streaming: whether the correction was streamed.
    """

    component: Component
    query: str
    summaries: list[dict[str, Any]] = Field(default_factory=list)
    num_changed: int = 0
    num_errors: int = 0
    streaming: bool = False

    @classmethod
    def class_name(cls) -> str:
        return "AlignerCorrectionEndEvent"


def emit_start(component: Component, query: str, num_items: int, *, streaming: bool = False, model: str = "") -> None:
    """Send an `AlignerCorrectionStartEvent` (from the caller's span, if any)."""
    dispatcher.event(
        AlignerCorrectionStartEvent(
            component=component, query=query, num_items=num_items, streaming=streaming, model=model
        )
    )


def emit_end(component: Component, query: str, corrections: list[Correction], *, streaming: bool = False) -> None:
    """Send an `AlignerCorrectionEndEvent` summing up ``corrections`` (from the caller's span, if any)."""
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
