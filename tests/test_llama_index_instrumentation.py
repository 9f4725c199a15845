"""Instrumentation: dispatcher spans and start/end events carrying Correction summaries."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import llama_index.core.instrumentation as instrument
import pytest
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.bridge.pydantic import Field
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.instrumentation.span_handlers import SimpleSpanHandler

from aligner_chains import Aligner
from aligner_chains.llama_index import (
    AlignerCorrectionEndEvent,
    AlignerCorrectionStartEvent,
    AlignerNodePostprocessor,
    AlignerQueryEngine,
)
from aligner_chains.llama_index.offline import ExtractiveLLM

DOCS = ["Paris is the capital of France.", "Support answers mail sent to jane.doe@example.com on weekdays."]
QUERY = "What is the capital of France?"


class Collector(BaseEventHandler):
    events: list[BaseEvent] = Field(default_factory=list)

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        if isinstance(event, (AlignerCorrectionStartEvent, AlignerCorrectionEndEvent)):
            self.events.append(event)


@pytest.fixture
def collector() -> Iterator[tuple[Collector, SimpleSpanHandler]]:
    root = instrument.get_dispatcher()
    handler, spans = Collector(), SimpleSpanHandler()
    root.add_event_handler(handler)
    root.add_span_handler(spans)
    try:
        yield handler, spans
    finally:
        root.event_handlers.remove(handler)
        root.span_handlers.remove(spans)


@pytest.fixture(scope="module")
def index() -> VectorStoreIndex:
    return VectorStoreIndex.from_documents([Document(text=t) for t in DOCS], embed_model=MockEmbedding(embed_dim=8))


def _engine(index: VectorStoreIndex, aligner: Aligner, **kwargs: Any) -> AlignerQueryEngine:
    inner = index.as_query_engine(
        llm=ExtractiveLLM(), similarity_top_k=2, node_postprocessors=[AlignerNodePostprocessor(aligner)], **kwargs
    )
    return AlignerQueryEngine(inner, aligner)


def _check(events: list[BaseEvent], response: Any, *, node_span: str, answer_span: str, streaming: bool) -> None:
    kinds = [(type(e).__name__, e.component) for e in events]
    assert kinds == [
        ("AlignerCorrectionStartEvent", "node_postprocessor"),
        ("AlignerCorrectionEndEvent", "node_postprocessor"),
        ("AlignerCorrectionStartEvent", "query_engine"),
        ("AlignerCorrectionEndEvent", "query_engine"),
    ]
    node_start, node_end, answer_start, answer_end = events
    assert node_start.num_items == 2 and node_start.query == QUERY and node_start.model
    assert len(node_end.summaries) == 2 and {s["original"] for s in node_end.summaries} == set(DOCS)
    assert node_end.num_changed == sum(s["changed"] for s in node_end.summaries)
    assert node_start.span_id.startswith(node_span) and node_end.span_id == node_start.span_id
    assert answer_start.num_items == 1 and answer_start.streaming is streaming and answer_end.streaming is streaming
    assert answer_end.summaries == [response.metadata["aligner"]]
    if not streaming:  # a stream ends after its span has closed
        assert answer_start.span_id.startswith(answer_span) and answer_end.span_id == answer_start.span_id
    for summary in node_end.summaries + answer_end.summaries:
        assert "question" not in summary and "corrected" not in summary


def test_sync_query_events_and_spans(index, tiny_aligner, collector) -> None:
    handler, spans = collector
    response = _engine(index, tiny_aligner).query(QUERY)
    _check(
        handler.events,
        response,
        node_span="AlignerNodePostprocessor._postprocess_nodes",
        answer_span="AlignerQueryEngine._correct",
        streaming=False,
    )
    span_ids = {s.id_ for s in spans.completed_spans}
    assert {e.span_id for e in handler.events} <= span_ids  # the events' spans were entered and exited
    outer = [s for s in spans.completed_spans if s.id_.startswith("AlignerQueryEngine.query")]
    assert outer, "the wrapper's query() span is recorded"


async def test_async_query_events_and_spans(index, tiny_aligner, collector) -> None:
    handler, spans = collector
    response = await _engine(index, tiny_aligner).aquery(QUERY)
    _check(
        handler.events,
        response,
        node_span="AlignerNodePostprocessor._apostprocess_nodes",
        answer_span="AlignerQueryEngine._acorrect",
        streaming=False,
    )
    assert {e.span_id for e in handler.events} <= {s.id_ for s in spans.completed_spans}


def test_streaming_end_event_after_the_stream(index, tiny_aligner, collector) -> None:
    handler, _ = collector
    response = _engine(index, tiny_aligner, streaming=True).query(QUERY)
    assert [e.component for e in handler.events] == ["node_postprocessor", "node_postprocessor"]
    text = "".join(response.response_gen)
    _check(handler.events, response, node_span="AlignerNodePostprocessor", answer_span="", streaming=True)
    assert text == tiny_aligner.correct(QUERY, response.metadata["aligner"]["original"]).corrected


def test_error_is_reported_in_events(tiny_aligner, collector) -> None:
    handler, _ = collector
    from llama_index.core.schema import NodeWithScore, TextNode

    nodes = [NodeWithScore(node=TextNode(text="lorem ipsum " * 400)), NodeWithScore(node=TextNode(text=DOCS[0]))]
    AlignerNodePostprocessor(tiny_aligner, on_error="passthrough").postprocess_nodes(nodes, query_str=QUERY)
    end = handler.events[-1]
    assert isinstance(end, AlignerCorrectionEndEvent) and end.num_errors == 1
    assert end.summaries[0]["finish_reason"] == "error" and end.summaries[1]["finish_reason"] != "error"
