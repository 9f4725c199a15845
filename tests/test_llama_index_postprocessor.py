"""AlignerNodePostprocessor on real VectorStoreIndex pipelines (tiny random Aligner, MockEmbedding)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.schema import MetadataMode, NodeRelationship, NodeWithScore, QueryBundle, TextNode

from aligner_chains import Aligner, ConfigError, InputTooLongError
from aligner_chains.llama_index import AlignerNodePostprocessor
from aligner_chains.llama_index.offline import ExtractiveLLM

QUERY = "How do I reach support?"
TEXTS = {
    "support": "Support answers on weekdays. Mail jane.doe@example.com or call +1 415-555-0132.",
    "capital": "Paris is the capital of France. The quick brown fox jumps over the lazy dog.",
    "bread": "Mix flour, water, salt and yeast. Bake the bread for forty minutes.",
}
LONG = "lorem ipsum dolor sit amet " * 200  # far beyond the tiny model's 512-token context


class RecordingLLM(ExtractiveLLM):
    """ExtractiveLLM that remembers every prompt it was given."""

    _prompts: list[str] = PrivateAttr(default_factory=list)

    def answer(self, prompt: str) -> str:
        self._prompts.append(prompt)
        return super().answer(prompt)


@pytest.fixture(scope="module")
def index() -> VectorStoreIndex:
    docs = [
        Document(text=text, id_=f"doc-{name}", metadata={"source": f"{name}.txt", "topic": name})
        for name, text in TEXTS.items()
    ]
    return VectorStoreIndex.from_documents(docs, embed_model=MockEmbedding(embed_dim=8))


def _retrieved(index: VectorStoreIndex) -> list[NodeWithScore]:
    return index.as_retriever(similarity_top_k=len(TEXTS)).retrieve(QUERY)


def _spy_generate(aligner: Aligner, monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    calls: list[dict] = []
    original = aligner.backend.generate

    def spy(prompts, params, **kwargs):
        calls.append({"n": len(prompts), "thread": threading.current_thread()})
        return original(prompts, params, **kwargs)

    monkeypatch.setattr(aligner.backend, "generate", spy)
    return calls


def test_nodes_corrected_in_one_batch_keeping_identity(
    index: VectorStoreIndex, tiny_aligner: Aligner, monkeypatch: pytest.MonkeyPatch
) -> None:
    nodes = _retrieved(index)
    expected = tiny_aligner.correct_batch([(QUERY, n.node.get_content()) for n in nodes])
    calls = _spy_generate(tiny_aligner, monkeypatch)

    out = AlignerNodePostprocessor(tiny_aligner).postprocess_nodes(nodes, query_str=QUERY)

    assert calls == [{"n": len(TEXTS), "thread": threading.current_thread()}]  # one padded generate
    assert len(out) == len(nodes)
    for before, after, c in zip(nodes, out, expected, strict=True):
        assert after.node.node_id == before.node.node_id and after.score == before.score
        assert after.node.relationships == before.node.relationships
        assert after.node.relationships[NodeRelationship.SOURCE].node_id == before.node.ref_doc_id
        for key, value in before.node.metadata.items():
            assert after.node.metadata[key] == value
        assert after.node.metadata["aligner_changed"] is c.changed
        if c.changed:
            assert after.node.get_content() == c.corrected
            assert after.node.metadata["aligner_original_text"] == before.node.get_content()
        else:
            assert after.node.get_content() == before.node.get_content()
    assert any(c.changed for c in expected)
    # the index's own nodes are untouched
    assert sorted(n.node.get_content() for n in _retrieved(index)) == sorted(TEXTS.values())


def test_original_text_excluded_from_llm_and_embed_views(index: VectorStoreIndex, tiny_aligner: Aligner) -> None:
    out = AlignerNodePostprocessor(tiny_aligner).postprocess_nodes(_retrieved(index), query_str=QUERY)
    for nws in out:
        node = nws.node
        for mode in (MetadataMode.LLM, MetadataMode.EMBED):
            view = node.get_content(metadata_mode=mode)
            assert "aligner_original_text" not in view and "aligner_changed" not in view
            assert "topic: " in view  # ordinary metadata still shown
            if node.metadata["aligner_changed"]:
                assert node.metadata["aligner_original_text"] not in view
        assert "aligner_original_text" in node.get_content(metadata_mode=MetadataMode.ALL)


def test_query_engine_pipeline_llm_sees_corrected_chunks_only(index: VectorStoreIndex, tiny_aligner: Aligner) -> None:
    llm = RecordingLLM()
    engine = index.as_query_engine(
        llm=llm, similarity_top_k=len(TEXTS), node_postprocessors=[AlignerNodePostprocessor(tiny_aligner)]
    )
    response = engine.query(QUERY)

    assert len(llm._prompts) == 1
    prompt = llm._prompts[0]
    corrected = {n.node.node_id: n.node for n in response.source_nodes}
    assert len(corrected) == len(TEXTS)
    for node in corrected.values():
        assert node.get_content() in prompt
        if node.metadata["aligner_changed"]:
            assert node.metadata["aligner_original_text"] not in prompt
    support = next(n for n in corrected.values() if n.metadata["topic"] == "support")
    if support.metadata["aligner_changed"]:
        assert "jane.doe@example.com" not in prompt  # the LLM saw the rewritten chunk only
    assert "aligner_original_text" not in prompt and "aligner_changed" not in prompt


async def test_async_postprocess_runs_off_the_event_loop(
    index: VectorStoreIndex, tiny_aligner: Aligner, monkeypatch: pytest.MonkeyPatch
) -> None:
    nodes = _retrieved(index)
    postprocessor = AlignerNodePostprocessor(tiny_aligner)
    sync = postprocessor.postprocess_nodes(nodes, query_str=QUERY)
    calls = _spy_generate(tiny_aligner, monkeypatch)

    out = await postprocessor.apostprocess_nodes(nodes, query_str=QUERY)

    assert len(calls) == 1 and calls[0]["n"] == len(TEXTS)
    assert calls[0]["thread"] is not threading.current_thread()  # generation in a worker thread
    assert [n.node.get_content() for n in out] == [n.node.get_content() for n in sync]
    assert [n.node.node_id for n in out] == [n.node.node_id for n in nodes]


async def test_aquery_pipeline_with_postprocessor(index: VectorStoreIndex, tiny_aligner: Aligner) -> None:
    engine = index.as_query_engine(
        llm=ExtractiveLLM(), similarity_top_k=2, node_postprocessors=[AlignerNodePostprocessor(tiny_aligner)]
    )
    sync, async_ = engine.query(QUERY), await engine.aquery(QUERY)
    assert sync.response == async_.response
    assert [n.node.get_content() for n in sync.source_nodes] == [n.node.get_content() for n in async_.source_nodes]
    assert all("aligner_changed" in n.node.metadata for n in async_.source_nodes)


def _nodes_with_long() -> list[NodeWithScore]:
    return [
        NodeWithScore(node=TextNode(text=TEXTS["support"], id_="ok-1"), score=0.9),
        NodeWithScore(node=TextNode(text=LONG, id_="too-long"), score=0.5),
        NodeWithScore(node=TextNode(text=TEXTS["bread"], id_="ok-2"), score=0.1),
    ]


def test_error_policy_raise(tiny_aligner: Aligner) -> None:
    with pytest.raises(InputTooLongError):
        AlignerNodePostprocessor(tiny_aligner).postprocess_nodes(_nodes_with_long(), query_str=QUERY)


def test_error_policy_passthrough_marks_only_the_failed_node(tiny_aligner: Aligner) -> None:
    nodes = _nodes_with_long()
    out = AlignerNodePostprocessor(tiny_aligner, on_error="passthrough").postprocess_nodes(nodes, query_str=QUERY)
    failed = out[1].node
    assert failed.get_content() == LONG and failed.metadata["aligner_changed"] is False
    assert failed.metadata["aligner_error"].startswith("InputTooLongError")
    assert "aligner_error" not in failed.get_content(metadata_mode=MetadataMode.LLM)
    for i in (0, 2):
        assert "aligner_error" not in out[i].node.metadata
        assert out[i].node.get_content() == tiny_aligner.correct(QUERY, nodes[i].node.get_content()).corrected
    assert [n.score for n in out] == [0.9, 0.5, 0.1]


def test_a_node_that_breaks_generation_fails_only_itself(
    index: VectorStoreIndex, tiny_aligner: Aligner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch path: a generation error of one node (not only a too-long input) marks that node alone."""
    nodes = _retrieved(index)
    broken = next(i for i, n in enumerate(nodes) if "Paris" in n.node.get_content())
    original = tiny_aligner.backend.generate

    def generate(prompts, params, **kwargs):
        if any("Paris" in prompt for prompt in prompts):
            raise RuntimeError("this node breaks the model")
        return original(prompts, params, **kwargs)

    monkeypatch.setattr(tiny_aligner.backend, "generate", generate)
    out = AlignerNodePostprocessor(tiny_aligner, on_error="passthrough").postprocess_nodes(nodes, query_str=QUERY)
    assert out[broken].node.metadata["aligner_error"] == "RuntimeError: this node breaks the model"
    assert out[broken].node.get_content() == nodes[broken].node.get_content()
    for i, node in enumerate(out):
        if i != broken:
            assert "aligner_error" not in node.node.metadata
            assert node.node.get_content() == tiny_aligner.correct(QUERY, nodes[i].node.get_content()).corrected


async def test_error_policy_passthrough_async(tiny_aligner: Aligner) -> None:
    out = await AlignerNodePostprocessor(tiny_aligner, on_error="passthrough").apostprocess_nodes(
        _nodes_with_long(), query_str=QUERY
    )
    assert out[1].node.metadata["aligner_error"].startswith("InputTooLongError")


def test_needs_a_query(tiny_aligner: Aligner) -> None:
    with pytest.raises(ConfigError, match="query_str"):
        AlignerNodePostprocessor(tiny_aligner).postprocess_nodes(_nodes_with_long())


def test_lazy_loading_and_options(tiny_model_dir: Path, tiny_aligner: Aligner) -> None:
    missing = AlignerNodePostprocessor("/nonexistent/aligner")  # nothing is loaded yet
    assert missing.postprocess_nodes([], query_bundle=QueryBundle(QUERY)) == []

    postprocessor = AlignerNodePostprocessor(tiny_model_dir, on_error="passthrough", max_new_tokens=4, device="cpu")
    aligner = postprocessor.get_aligner()
    assert aligner.on_error == "passthrough" and aligner.generation.max_new_tokens == 4
    assert aligner.backend.loaded is tiny_aligner.backend.loaded  # shared model cache
    assert postprocessor.get_aligner() is aligner

    with pytest.raises(ConfigError, match="already built"):
        AlignerNodePostprocessor(tiny_aligner, device="cpu")
    with pytest.raises(ConfigError, match="unknown option 'devise'. Did you mean 'device'"):
        AlignerNodePostprocessor(tiny_aligner, devise="cpu")
    with pytest.raises(ConfigError, match="on_error"):
        AlignerNodePostprocessor(tiny_aligner, on_error="ignore")


def test_serialisation_round_trip(tiny_model_dir: Path, tiny_aligner: Aligner) -> None:
    postprocessor = AlignerNodePostprocessor(str(tiny_model_dir), on_error="passthrough", batch_size=4, dtype="fp32")
    data = postprocessor.to_dict()
    assert data["aligner"] == str(tiny_model_dir) and data["aligner_kwargs"] == {"dtype": "fp32"}
    clone = AlignerNodePostprocessor.from_dict(data)
    assert clone.batch_size == 4 and clone.on_error == "passthrough"
    assert clone.get_aligner().backend.loaded is tiny_aligner.backend.loaded
    assert AlignerNodePostprocessor(tiny_aligner).to_dict()["aligner"] == tiny_aligner.model_name
