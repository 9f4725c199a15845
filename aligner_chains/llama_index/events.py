"""Instrumentation events the LlamaIndex adapter sends through ``llama_index_instrumentation``.

Every correction (a batch of retrieved nodes, a query engine's answer, a workflow result) is
bracketed by an `AlignerCorrectionStartEvent` and an `AlignerCorrectionEndEvent`, sent from inside a
dispatcher span, so an event handler registered on the root dispatcher sees them with the span id::

    import llama_index.core.instrumentation as instrument

    instrument.get_dispatcher().add_event_handler(MyHandler())
"""

from __future__ import annotations

from typing import Any, Literal

from llama_index.core.instrumentation.events.base import BaseEvent
from pydantic import Field

Component = Literal["node_postprocessor", "query_engine", "workflow"]


class AlignerCorrectionStartEvent(BaseEvent):
    """An Aligner is about to correct ``num_items`` texts for ``query``.

    Args:
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

    Args:
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
