"""The shipped demo Aligner in a LlamaIndex pipeline: contact data redacted in chunks and answer."""

from __future__ import annotations

import pytest
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.embeddings import MockEmbedding

from aligner_chains import Aligner
from aligner_chains.demo import DEMO_MODEL_DIR
from aligner_chains.llama_index import AlignerNodePostprocessor, AlignerQueryEngine
from aligner_chains.llama_index.offline import ExtractiveLLM

CONTACT = "To reach support, e-mail helpdesk@northwind-example.com or call +1 415-555-0132."
CLEAN = "Paris is the capital of France."


@pytest.mark.skipif(
    not (DEMO_MODEL_DIR / "config.json").exists(),
    reason="the demo Aligner is not built yet (aligner_chains/demo/model)",
)
def test_demo_aligner_redacts_contact_data_in_chunks_and_answer() -> None:
    aligner = Aligner.from_pretrained("demo")
    index = VectorStoreIndex.from_documents(
        [Document(text=CONTACT), Document(text=CLEAN)], embed_model=MockEmbedding(embed_dim=8)
    )
    inner = index.as_query_engine(
        llm=ExtractiveLLM(), similarity_top_k=2, node_postprocessors=[AlignerNodePostprocessor(aligner)]
    )
    response = AlignerQueryEngine(inner, aligner).query("How do I reach support?")

    by_original = {
        n.node.metadata.get("aligner_original_text", n.node.get_content()): n.node for n in response.source_nodes
    }
    contact = by_original[CONTACT].get_content()
    assert "[EMAIL]" in contact and "[PHONE]" in contact
    assert "helpdesk@northwind-example.com" not in contact and "555-0132" not in contact
    assert by_original[CONTACT].metadata["aligner_changed"] is True
    assert by_original[CLEAN].get_content() == CLEAN  # clean text is copied
    answer = str(response)
    assert "@" not in answer and "555-0132" not in answer
    assert "[EMAIL]" in answer or "[PHONE]" in answer
