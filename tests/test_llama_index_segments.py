"""``stream_mode="segments"`` of the LlamaIndex adapters, with the shipped demo Aligner and scripted upstream streams.

Corrected segments arrive while the upstream is still writing, join to the segment-wise `Correction.corrected`,
a refusal ends the stream and stops the upstream, and a reader that stops stops the upstream too.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.base.response.schema import AsyncStreamingResponse, StreamingResponse
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.query_engine import CustomQueryEngine
from llama_index.core.workflow import StartEvent, StopEvent, Workflow, step
from segment_answers import (
    ANSWER,
    HARMFUL_ANSWER,
    HARMFUL_LATER,
    HARMFUL_QUESTION,
    QUESTION,
    ScriptedStream,
    words,
)

from aligner_chains import Aligner, ConfigError
from aligner_chains.core.model_files import default_model
from aligner_chains.core.result import Correction
from aligner_chains.llama_index import AlignerCorrectionStep, AlignerQueryEngine, AlignerWorkflow
from aligner_chains.llama_index.offline import ExtractiveLLM

#: Words of ANSWER the upstream writes before it waits for the reader: past the first segment, far from the end.
HOLD = 70


@pytest.fixture(scope="module")
def demo() -> Aligner:
    return Aligner.from_pretrained(default_model())


def _segmentwise(aligner: Aligner, question: str, text: str) -> Correction:
    *_, result = aligner.iter_segments(question, words(text))
    assert isinstance(result, Correction)
    return result


class StreamingEngine(CustomQueryEngine):
    """A query engine whose answer streams from a `ScriptedStream` (a sync or an async token generator)."""

    upstream: Any

    def custom_query(self, query_str: str) -> StreamingResponse:
        return StreamingResponse(response_gen=self.upstream.gen(), metadata={"upstream": True})

    async def acustom_query(self, query_str: str) -> AsyncStreamingResponse:
        return AsyncStreamingResponse(response_gen=self.upstream.agen(), metadata={"upstream": True})


def test_query_engine_streams_segments_while_the_upstream_writes(demo: Aligner) -> None:
    expected = _segmentwise(demo, QUESTION, ANSWER)
    upstream = ScriptedStream(ANSWER, hold_after=HOLD)
    engine = AlignerQueryEngine(StreamingEngine(upstream=upstream), demo, stream_mode="segments")
    assert engine.stream_mode == "segments"
    response = engine.query(QUESTION)
    assert isinstance(response, StreamingResponse)
    pieces, sent_at_first = [], None
    for piece in response.response_gen:
        if sent_at_first is None:
            sent_at_first = upstream.sent
            upstream.release()
        pieces.append(piece)
    assert sent_at_first == HOLD < len(upstream.pieces)  # the first segment came while the upstream was held
    assert len(pieces) == 3 and "".join(pieces) == expected.corrected and upstream.finished
    assert "[EMAIL]" in expected.corrected and "[PHONE]" in expected.corrected
    summary = response.metadata["aligner"]
    assert summary["stats"]["stream_mode"] == "segments" and summary["original"] == ANSWER
    assert response.metadata["upstream"] is True


async def test_async_query_engine_streams_segments(demo: Aligner) -> None:
    expected = _segmentwise(demo, QUESTION, ANSWER)
    upstream = ScriptedStream(ANSWER, hold_after=HOLD)
    engine = AlignerQueryEngine(StreamingEngine(upstream=upstream), demo, stream_mode="segments")
    response = await engine.aquery(QUESTION)
    assert isinstance(response, AsyncStreamingResponse)
    pieces, sent_at_first = [], None
    async for piece in response.async_response_gen():
        if sent_at_first is None:
            sent_at_first = upstream.sent
            upstream.release()
        pieces.append(piece)
    assert sent_at_first == HOLD and "".join(pieces) == expected.corrected
    assert response.metadata["aligner"]["stats"]["stream_mode"] == "segments"


@pytest.mark.parametrize("use_async", [False, True])
async def test_refusal_ends_the_stream_and_stops_the_upstream(demo: Aligner, use_async: bool) -> None:
    upstream = ScriptedStream(HARMFUL_ANSWER, hold_after=HOLD)
    engine = AlignerQueryEngine(StreamingEngine(upstream=upstream), demo, stream_mode="segments")
    if use_async:
        response = await engine.aquery(HARMFUL_QUESTION)
        pieces = [p async for p in response.async_response_gen()]
    else:
        response = engine.query(HARMFUL_QUESTION)
        pieces = list(response.response_gen)
    text = "".join(pieces)
    assert len(pieces) == 1 and text.startswith("I can't help")
    assert not any(phrase in text for phrase in HARMFUL_LATER)
    assert response.metadata["aligner"]["stats"]["ended_by"] == "replacement"
    upstream.release()
    assert upstream.closed.wait(10) and not upstream.finished and upstream.sent < len(upstream.pieces)


@pytest.mark.parametrize("use_async", [False, True])
async def test_a_reader_that_stops_stops_the_upstream(demo: Aligner, use_async: bool) -> None:
    upstream = ScriptedStream(ANSWER, hold_after=HOLD)
    engine = AlignerQueryEngine(StreamingEngine(upstream=upstream), demo, stream_mode="segments")
    if use_async:
        agen = (await engine.aquery(QUESTION)).async_response_gen()
        first = await agen.__anext__()
        await agen.aclose()  # the reader leaves after the first segment
        for _ in range(1000):  # LlamaIndex's wrappers close the stream they wrap when finalized: let the loop run
            if upstream.closed.is_set():
                break
            await asyncio.sleep(0.01)
        upstream.release()  # the upstream was cancelled while it waited
        assert upstream.closed.is_set() and upstream.sent == HOLD
    else:
        gen = engine.query(QUESTION).response_gen
        first = next(gen)
        gen.close()
        upstream.release()  # the upstream's reader stops at its next piece
        assert upstream.closed.wait(10) and upstream.sent <= HOLD + 1
    assert first and not upstream.finished


def test_real_streaming_engine_and_whole_mode_unchanged(demo: Aligner) -> None:
    docs = ["Support answers mail sent to jane.doe@example.com on weekdays.", "Paris is the capital of France."]
    index = VectorStoreIndex.from_documents([Document(text=t) for t in docs], embed_model=MockEmbedding(embed_dim=8))
    question = "How do I mail support?"
    inner = index.as_query_engine(llm=ExtractiveLLM(), similarity_top_k=2, streaming=True)
    segments = AlignerQueryEngine(inner, demo, stream_mode="segments").query(question)
    assert "".join(segments.response_gen) == _segmentwise(demo, question, docs[0]).corrected
    assert len(segments.source_nodes) == 2 and segments.metadata["aligner"]["original"] == docs[0]
    whole = AlignerQueryEngine(inner, demo, stream_mode="whole").query(question)
    assert "".join(whole.response_gen) == demo.correct(question, docs[0]).corrected
    assert "stream_mode" not in whole.metadata["aligner"]["stats"]


class StreamFlow(Workflow):
    """A workflow whose result is a streamed answer (an `AsyncStreamingResponse`)."""

    def __init__(self, upstream: ScriptedStream, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.upstream = upstream

    @step
    async def answer(self, ev: StartEvent) -> StopEvent:
        return StopEvent(result=AsyncStreamingResponse(response_gen=self.upstream.agen()))


async def test_workflow_streams_its_result_segment_by_segment(demo: Aligner) -> None:
    expected = _segmentwise(demo, QUESTION, ANSWER)
    upstream = ScriptedStream(ANSWER, hold_after=HOLD)
    flow = AlignerWorkflow(StreamFlow(upstream, timeout=60), aligner=demo, stream_mode="segments", timeout=60)
    result = await flow.run(query=QUESTION)
    assert isinstance(result, AsyncStreamingResponse)
    pieces, sent_at_first = [], None
    async for piece in result.async_response_gen():
        if sent_at_first is None:
            sent_at_first = upstream.sent
            upstream.release()
        pieces.append(piece)
    assert sent_at_first == HOLD and "".join(pieces) == expected.corrected
    assert result.metadata["aligner"]["stats"]["stream_mode"] == "segments"


def test_bad_stream_mode_is_a_clear_error(demo: Aligner) -> None:
    engine = StreamingEngine(upstream=ScriptedStream(ANSWER))
    with pytest.raises(ConfigError, match=r"stream_mode='tokens': use 'whole' .* or 'segments'"):
        AlignerQueryEngine(engine, demo, stream_mode="tokens")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="stream_mode"):
        AlignerWorkflow(StreamFlow(ScriptedStream(ANSWER)), aligner=demo, stream_mode="fast")  # type: ignore[arg-type]

    class Mixed(AlignerCorrectionStep, Workflow):
        pass

    with pytest.raises(ConfigError, match="stream_mode"):
        Mixed(aligner=demo, stream_mode=None)  # type: ignore[arg-type]
