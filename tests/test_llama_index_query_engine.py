"""AlignerQueryEngine around real VectorStoreIndex query engines: sync, async, streaming, concurrency, errors."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.base.response.schema import (
    AsyncStreamingResponse,
    PydanticResponse,
    Response,
    StreamingResponse,
)
from llama_index.core.bridge.pydantic import BaseModel
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.query_engine import CustomQueryEngine
from llama_index.core.schema import QueryBundle

from aligner_chains import Aligner, InputTooLongError
from aligner_chains.llama_index import AlignerNodePostprocessor, AlignerQueryEngine
from aligner_chains.llama_index.offline import ExtractiveLLM

DOCS = [
    "Paris is the capital of France.",
    "Bake the bread for forty minutes at high heat.",
    "Support answers mail sent to jane.doe@example.com on weekdays.",
    "The quick brown fox jumps over the lazy dog.",
    "Rome is the capital of Italy and has many old churches.",
    "Tomatoes grow best in warm sunny gardens.",
]
QUERIES = [
    "What is the capital of France?",
    "How long do I bake bread?",
    "How do I mail support?",
    "What does the quick fox do?",
    "Which city has old churches?",
    "Where do tomatoes grow?",
]
LONG = "lorem ipsum dolor sit amet " * 200


@pytest.fixture(scope="module")
def index() -> VectorStoreIndex:
    return VectorStoreIndex.from_documents([Document(text=t) for t in DOCS], embed_model=MockEmbedding(embed_dim=8))


def _engine(index: VectorStoreIndex, **kwargs):
    # every chunk retrieved: the ExtractiveLLM then picks the sentence that matches the query
    return index.as_query_engine(llm=ExtractiveLLM(), similarity_top_k=len(DOCS), **kwargs)


class FixedAnswerEngine(CustomQueryEngine):
    """A query engine answering every query with ``answer`` (or a PydanticResponse)."""

    answer: str = ""
    structured: bool = False

    def custom_query(self, query_str: str):
        if self.structured:

            class Out(BaseModel):
                text: str

            return PydanticResponse(response=Out(text=self.answer))
        return Response(self.answer, metadata={"upstream": True})


def test_sync_query_corrects_answer_and_keeps_sources(index: VectorStoreIndex, tiny_aligner: Aligner) -> None:
    inner = _engine(index)
    upstream = inner.query(QUERIES[0])
    assert upstream.response == DOCS[0]
    expected = tiny_aligner.correct(QUERIES[0], DOCS[0])

    response = AlignerQueryEngine(inner, tiny_aligner).query(QUERIES[0])

    assert isinstance(response, Response)
    assert response.response == (expected.corrected if expected.changed else DOCS[0])
    summary = response.metadata["aligner"]
    assert summary["original"] == DOCS[0] and summary["changed"] == expected.changed
    assert summary["finish_reason"] == expected.finish_reason and summary["model"] == tiny_aligner.model_name
    assert "question" not in summary and "corrected" not in summary
    assert [n.node.node_id for n in response.source_nodes] == [n.node.node_id for n in upstream.source_nodes]
    for node_id, meta in upstream.metadata.items():  # the wrapped engine's metadata is kept
        assert response.metadata[node_id] == meta


async def test_aquery_matches_query(index: VectorStoreIndex, tiny_aligner: Aligner) -> None:
    engine = AlignerQueryEngine(_engine(index), tiny_aligner)
    sync, async_ = engine.query(QUERIES[1]), await engine.aquery(QUERIES[1])
    assert isinstance(async_, Response)
    assert async_.response == sync.response and async_.metadata["aligner"]["original"] == DOCS[1]
    assert len(async_.source_nodes) == len(DOCS)


def test_streaming_yields_the_correction_as_it_is_generated(index: VectorStoreIndex, tiny_aligner: Aligner) -> None:
    expected = tiny_aligner.correct(QUERIES[2], DOCS[2]).corrected
    pieces_expected = list(tiny_aligner.stream(QUERIES[2], DOCS[2]))
    response = AlignerQueryEngine(_engine(index, streaming=True), tiny_aligner).query(QUERIES[2])

    assert isinstance(response, StreamingResponse)
    assert "aligner" not in response.metadata  # filled when the stream ends
    pieces = list(response.response_gen)
    assert len(pieces) > 1 and pieces == pieces_expected and "".join(pieces) == expected
    assert response.metadata["aligner"]["original"] == DOCS[2]
    assert len(response.source_nodes) == len(DOCS)


async def test_async_streaming(index: VectorStoreIndex, tiny_aligner: Aligner) -> None:
    expected = tiny_aligner.correct(QUERIES[3], DOCS[3]).corrected
    response = await AlignerQueryEngine(_engine(index, streaming=True), tiny_aligner).aquery(QUERIES[3])
    assert isinstance(response, AsyncStreamingResponse)
    pieces = [p async for p in response.async_response_gen()]
    assert len(pieces) > 1 and "".join(pieces) == expected
    assert response.metadata["aligner"]["original"] == DOCS[3]


async def test_many_concurrent_aqueries_each_get_their_own_answer(
    index: VectorStoreIndex, tiny_aligner: Aligner
) -> None:
    engine = AlignerQueryEngine(_engine(index), tiny_aligner)
    expected = {q: tiny_aligner.correct(q, doc) for q, doc in zip(QUERIES, DOCS, strict=True)}
    queries = QUERIES * 2

    results = await asyncio.gather(*(engine.aquery(q) for q in queries))

    for query, result in zip(queries, results, strict=True):
        c = expected[query]
        assert result.metadata["aligner"]["original"] == c.original  # this query's own upstream answer
        assert result.response == (c.corrected if c.changed else c.original)


async def test_concurrent_aqueries_with_postprocessor(index: VectorStoreIndex, tiny_aligner: Aligner) -> None:
    postprocessor = AlignerNodePostprocessor(tiny_aligner)
    inner = index.as_query_engine(llm=ExtractiveLLM(), similarity_top_k=2, node_postprocessors=[postprocessor])
    engine = AlignerQueryEngine(inner, tiny_aligner)
    queries = QUERIES[:3]
    sequential = [engine.query(q) for q in queries]

    results = await asyncio.gather(*(engine.aquery(q) for q in queries))

    for seq, res in zip(sequential, results, strict=True):
        assert res.response == seq.response
        assert _without_batch_effects(res.metadata["aligner"]) == _without_batch_effects(seq.metadata["aligner"])
        assert [n.node.get_content() for n in res.source_nodes] == [n.node.get_content() for n in seq.source_nodes]
        assert all(n.node.metadata["aligner_changed"] in (True, False) for n in res.source_nodes)


def _without_batch_effects(summary: dict) -> dict:
    """The summary less what depends on which requests shared a batch: the wall time, and the
    decoding statistics (the verification blocks are sized for the whole batch; the tokens are not)."""
    return {k: v for k, v in summary.items() if k not in ("latency_s", "stats")}


def test_concurrent_threads(index: VectorStoreIndex, tiny_aligner: Aligner) -> None:
    engine = AlignerQueryEngine(_engine(index), tiny_aligner)
    sequential = [engine.query(q).response for q in QUERIES]
    with ThreadPoolExecutor(max_workers=4) as pool:
        threaded = list(pool.map(lambda q: engine.query(q), QUERIES))
    assert [r.response for r in threaded] == sequential
    assert [r.metadata["aligner"]["original"] for r in threaded] == DOCS


def test_error_policy_raise(tiny_aligner: Aligner) -> None:
    with pytest.raises(InputTooLongError):
        AlignerQueryEngine(FixedAnswerEngine(answer=LONG), tiny_aligner).query("q")


def test_error_policy_passthrough(tiny_aligner: Aligner) -> None:
    response = AlignerQueryEngine(FixedAnswerEngine(answer=LONG), tiny_aligner, on_error="passthrough").query("q")
    assert response.response == LONG and response.metadata["upstream"] is True
    summary = response.metadata["aligner"]
    assert summary["finish_reason"] == "error" and summary["error"].startswith("InputTooLongError")
    assert summary["changed"] is False


async def test_error_policy_passthrough_async_and_streaming(index: VectorStoreIndex, tiny_aligner: Aligner) -> None:
    engine = AlignerQueryEngine(FixedAnswerEngine(answer=LONG), tiny_aligner, on_error="passthrough")
    response = await engine.aquery("q")
    assert response.response == LONG and response.metadata["aligner"]["finish_reason"] == "error"

    streaming = AlignerQueryEngine(
        _engine(index, streaming=True), tiny_aligner, on_error="passthrough", max_new_tokens=600
    )
    response = streaming.query(QUERIES[0])  # 600 new tokens cannot fit the 512-token context: fails before a piece
    assert list(response.response_gen) == [DOCS[0]]
    assert response.metadata["aligner"]["error"].startswith("InputTooLongError")


def test_empty_answer_is_skipped(tiny_aligner: Aligner) -> None:
    response = AlignerQueryEngine(FixedAnswerEngine(answer=""), tiny_aligner).query("q")
    assert response.response == "" and response.metadata["aligner"]["finish_reason"] == "skipped"


def test_structured_response_is_refused(tiny_aligner: Aligner) -> None:
    with pytest.raises(TypeError, match="PydanticResponse"):
        AlignerQueryEngine(FixedAnswerEngine(answer="x", structured=True), tiny_aligner).query("q")


def test_wraps_only_query_engines(tiny_aligner: Aligner) -> None:
    with pytest.raises(TypeError, match="query engine"):
        AlignerQueryEngine(ExtractiveLLM(), tiny_aligner)  # type: ignore[arg-type]


def test_retrieve_and_synthesize_delegate(index: VectorStoreIndex, tiny_aligner: Aligner) -> None:
    engine = AlignerQueryEngine(_engine(index), tiny_aligner)
    bundle = QueryBundle(QUERIES[4])
    nodes = engine.retrieve(bundle)
    assert len(nodes) == len(DOCS)
    response = engine.synthesize(bundle, nodes)
    assert response.metadata["aligner"]["original"] == DOCS[4]
    assert "query_engine" in engine._get_prompt_modules()
    assert any(k.startswith("query_engine:") for k in engine.get_prompts())


def test_default_model_is_the_core_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple] = []
    monkeypatch.setattr("aligner_chains.llama_index.lazy.resolve_aligner", lambda *a, **k: calls.append((a, k)))
    monkeypatch.setenv("ALIGNER_MODEL", "my/aligner")
    engine = AlignerQueryEngine(FixedAnswerEngine(answer="x"))
    assert "'my/aligner'" in repr(engine)  # read when asked, not at import
    monkeypatch.delenv("ALIGNER_MODEL")
    assert "'demo'" in repr(engine)
    engine.get_aligner()
    assert calls == [((None,), {})]  # None goes to the core's one default-model rule
