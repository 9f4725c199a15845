"""A local RAG app: index a folder, answer questions, with an Aligner on the chunks and on the answer.

    python -m integrations.llamaindex_rag.app --docs integrations/llamaindex_rag/docs \\
        -q "How do I reach customer support?"

Pipeline: documents -> chunks -> real local embeddings (all-MiniLM-L6-v2, offline) -> vector
retrieval -> `AlignerNodePostprocessor` (each retrieved chunk corrected, e.g. contact data redacted,
before the LLM sees it) -> LLM (the offline `ExtractiveLLM`, or a local model) -> `AlignerQueryEngine`
(the answer corrected). The Aligner is ``--aligner``, else the default model (``$ALIGNER_MODEL``, else the demo).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DEFAULT_DOCS = Path(__file__).resolve().parent / "docs"
DEFAULT_EXTENSIONS = (".md", ".txt")


def build_index(
    docs: str | Path,
    *,
    embed_model: Any,
    chunk_size: int = 256,
    chunk_overlap: int = 20,
    extensions: Sequence[str] = DEFAULT_EXTENSIONS,
) -> Any:
    """A `VectorStoreIndex` over the files under ``docs`` (recursively), embedded with ``embed_model``."""
    from llama_index.core import SimpleDirectoryReader, VectorStoreIndex
    from llama_index.core.node_parser import SentenceSplitter

    folder = Path(docs).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"--docs {str(docs)!r} is not a directory; point it at a folder of documents.")
    files = [p for p in sorted(folder.rglob("*")) if p.is_file() and p.suffix.lower() in extensions]
    if not files:
        raise FileNotFoundError(f"No {', '.join(extensions)} files under {str(folder)!r}; add some or use --ext.")
    documents = SimpleDirectoryReader(input_files=[str(p) for p in files]).load_data()
    splitter = SentenceSplitter(chunk_size=chunk_size, chunk_overlap=chunk_overlap)
    return VectorStoreIndex.from_documents(documents, embed_model=embed_model, transformations=[splitter])


def build_query_engine(
    index: Any,
    *,
    llm: Any,
    aligner: Any = None,
    top_k: int = 2,
    streaming: bool = False,
    correct_chunks: bool = True,
    correct_answer: bool = True,
    on_error: str = "raise",
    max_new_tokens: int | None = None,
) -> Any:
    """The query engine: retrieval, chunk correction, synthesis with ``llm``, answer correction.

    ``aligner`` is an `Aligner`, a model path / hub id / ``"demo"``, or None (the default model); both stages
    share it (one copy of the weights).
    """
    from aligner_chains.llama_index import AlignerNodePostprocessor, AlignerQueryEngine

    postprocessors = []
    if correct_chunks:
        postprocessors.append(AlignerNodePostprocessor(aligner, on_error=on_error, max_new_tokens=max_new_tokens))
    engine = index.as_query_engine(
        llm=llm, similarity_top_k=top_k, node_postprocessors=postprocessors, streaming=streaming
    )
    if correct_answer:
        engine = AlignerQueryEngine(engine, aligner, on_error=on_error, max_new_tokens=max_new_tokens)
    return engine


def result_record(question: str, response: Any) -> dict[str, Any]:
    """A JSON-able record of one answered question: answer, upstream answer, sources and what changed."""
    from aligner_chains.llama_index import METADATA_KEY

    summary = (response.metadata or {}).get(METADATA_KEY)
    sources = []
    for source in response.source_nodes:
        node = source.node
        sources.append(
            {
                "file": node.metadata.get("file_name", node.node_id),
                "score": None if source.score is None else round(float(source.score), 4),
                "text": node.get_content(),
                "corrected": bool(node.metadata.get("aligner_changed")),
                "error": node.metadata.get("aligner_error"),
            }
        )
    return {
        "question": question,
        "answer": str(response.response) if response.response is not None else "",
        "upstream_answer": summary["original"] if summary else None,
        "answer_corrected": bool(summary and summary["changed"]),
        "answer_error": summary.get("error") if summary else None,
        "sources": sources,
    }


def _print_record(record: dict[str, Any], out: Any, *, with_answer: bool = True) -> None:
    if with_answer:
        print(f"Q: {record['question']}", file=out)
        print(f"A: {record['answer']}", file=out)
    if record["answer_corrected"]:
        print(f"   (corrected by the Aligner; the LLM wrote: {record['upstream_answer']!r})", file=out)
    if record["answer_error"]:
        print(f"   (Aligner failed, answer passed through: {record['answer_error']})", file=out)
    print("Sources:", file=out)
    for i, src in enumerate(record["sources"], 1):
        flag = " [corrected by the Aligner]" if src["corrected"] else ""
        flag += f" [Aligner error: {src['error']}]" if src["error"] else ""
        print(f"  [{i}] {src['file']} (score {src['score']}){flag}", file=out)
        print("      " + src["text"].replace("\n", "\n      "), file=out)
    print(file=out)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m integrations.llamaindex_rag.app",
        description="Answer questions over a folder of documents; an Aligner corrects the retrieved chunks "
        "and the answer. Everything runs locally and offline.",
    )
    p.add_argument("--docs", default=str(DEFAULT_DOCS), help="folder of documents (default: the sample docs)")
    p.add_argument(
        "-q",
        "--question",
        action="append",
        default=[],
        help="a question (repeatable); without one, questions are read from stdin, one a line",
    )
    p.add_argument(
        "--aligner",
        default=None,
        help="Aligner: 'demo', a model directory or a cached hub id (default: $ALIGNER_MODEL, else the demo)",
    )
    p.add_argument(
        "--llm",
        default=os.environ.get("RAG_LLM", "extractive"),
        help="'extractive' (offline fake LLM answering from the context) or a local causal LM directory",
    )
    p.add_argument(
        "--embed-model",
        default=os.environ.get("RAG_EMBED_MODEL"),
        help="local sentence-transformers directory (default: bundled all-MiniLM-L6-v2)",
    )
    p.add_argument("--top-k", type=int, default=2, help="chunks retrieved per question (default 2)")
    p.add_argument("--chunk-size", type=int, default=256, help="chunk size in tokens (default 256)")
    p.add_argument(
        "--ext", action="append", default=None, help="file extension to index (repeatable; default .md .txt)"
    )
    p.add_argument("--max-new-tokens", type=int, default=None, help="longest Aligner correction, in tokens")
    p.add_argument(
        "--on-error",
        choices=["raise", "passthrough"],
        default="raise",
        help="a failed correction raises, or passes the text through unchanged (default raise)",
    )
    p.add_argument("--no-chunk-correction", action="store_true", help="do not correct retrieved chunks")
    p.add_argument("--no-answer-correction", action="store_true", help="do not correct the answer")
    p.add_argument("--stream", action="store_true", help="stream the corrected answer as it is written")
    p.add_argument("--json", action="store_true", help="print one JSON record per question")
    p.add_argument("--device", default="auto", help="device of the Aligner (auto, cpu, cuda, mps)")
    return p


def main(argv: Sequence[str] | None = None, *, out: Any = None) -> int:
    """Run the app; returns the exit status (2 for a bad folder, model or option, with the reason)."""
    args = _parser().parse_args(argv)
    out = out or sys.stdout
    questions = list(args.question) or [line.strip() for line in sys.stdin if line.strip()]
    if not questions:
        print("No question: pass -q QUESTION or pipe questions on stdin.", file=sys.stderr)
        return 2

    from aligner_chains.core.errors import AlignerError

    try:
        return _run(args, questions, out)
    except (AlignerError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, questions: list[str], out: Any) -> int:
    from aligner_chains.core import resolve_aligner

    from .components import LocalSentenceEmbedding, load_llm

    llm = load_llm(args.llm)
    embed_model = LocalSentenceEmbedding(args.embed_model)
    # Both models are passed explicitly below, so nothing falls back to LlamaIndex's hosted defaults.
    extensions = tuple(e if e.startswith(".") else f".{e}" for e in args.ext) if args.ext else DEFAULT_EXTENSIONS
    index = build_index(args.docs, embed_model=embed_model, chunk_size=args.chunk_size, extensions=extensions)
    aligner = resolve_aligner(args.aligner, device=args.device)  # loaded once, shared by both stages
    engine = build_query_engine(
        index,
        llm=llm,
        aligner=aligner,
        top_k=args.top_k,
        streaming=args.stream,
        correct_chunks=not args.no_chunk_correction,
        correct_answer=not args.no_answer_correction,
        on_error=args.on_error,
        max_new_tokens=args.max_new_tokens,
    )
    for question in questions:
        response = engine.query(question)
        streamed = args.stream and not args.json
        if streamed:  # show the corrected answer as the Aligner writes it
            print(f"Q: {question}\nA: ", end="", file=out, flush=True)
            for piece in response.response_gen:
                print(piece, end="", file=out, flush=True)
            print(file=out)
        if args.stream:
            response = response.get_response()
        record = result_record(question, response)
        if args.json:
            print(json.dumps(record, ensure_ascii=False), file=out)
        else:
            _print_record(record, out, with_answer=not streamed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
