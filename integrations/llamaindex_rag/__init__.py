"""A local RAG app on LlamaIndex with an Aligner on the retrieved chunks and on the answer.

Run ``python -m integrations.llamaindex_rag.app --help`` from the repository root.
"""
