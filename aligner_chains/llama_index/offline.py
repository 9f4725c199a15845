"""A deterministic stand-in LLM for offline RAG tests, demos and notebooks.

`ExtractiveLLM` answers from the retrieved context: it returns the context sentence that shares the
most words with the query (the first one on ties). The whole pipeline (retrieval, node
postprocessors, prompt building, synthesis, streaming) is real; only the writing is trivial and
predictable. It is an upstream model for the Aligner to correct, not part of the Aligner.
"""

from __future__ import annotations

import re
from typing import Any

from llama_index.core.base.llms.types import (
    CompletionResponse,
    CompletionResponseGen,
    LLMMetadata,
)
from llama_index.core.bridge.pydantic import Field
from llama_index.core.llms.callbacks import llm_completion_callback
from llama_index.core.llms.custom import CustomLLM

_RULE = re.compile(r"^-{5,}\s*$", re.MULTILINE)
_QUERY = re.compile(r"^(?:Query|Question):\s*(.*)$", re.MULTILINE)
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")
_WORD = re.compile(r"[a-z0-9]+")
_METADATA_LINE = re.compile(r"^[\w.-]+: \S.*$")


def split_prompt(prompt: str) -> tuple[str, str]:
    """(context, query) of a LlamaIndex QA prompt; the whole prompt is the context if it has no rules."""
    parts = _RULE.split(prompt)
    context = parts[1] if len(parts) >= 3 else prompt
    found = _QUERY.findall(prompt)
    return context.strip(), (found[-1].strip() if found else "")


def best_sentences(context: str, query: str, n: int = 1) -> list[str]:
    """The ``n`` context sentences sharing most words with ``query``, in context order (ties: earliest)."""
    sentences: list[str] = []
    for block in context.split("\n\n"):
        lines = [line for line in block.splitlines() if line.strip()]
        if lines and all(_METADATA_LINE.match(line) for line in lines):
            continue  # a node's metadata block ("file_name: x.txt"), not content
        sentences.extend(s.strip() for s in _SENTENCE.split(block) if s.strip())
    # Headings and fragments ("# Returns", "Shipping") are not answers.
    sentences = [s for s in sentences if not s.startswith("#") and len(s.split()) >= 3] or sentences
    if not sentences:
        return []
    words = {w for w in _WORD.findall(query.lower()) if len(w) > 2}
    scored = sorted(range(len(sentences)), key=lambda i: (-len(words & set(_WORD.findall(sentences[i].lower()))), i))
    return [sentences[i] for i in sorted(scored[:n])]


class ExtractiveLLM(CustomLLM):
    """Answers with the context sentence(s) closest to the query; streams word by word. Deterministic."""

    num_sentences: int = Field(default=1, ge=1, description="How many context sentences to answer with.")
    fallback: str = Field(default="I don't know.", description="Answer when the prompt has no context.")
    context_window: int = Field(default=32768, description="Context window reported to LlamaIndex.")

    @classmethod
    def class_name(cls) -> str:
        return "ExtractiveLLM"

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(
            context_window=self.context_window, num_output=256, model_name="extractive", is_chat_model=False
        )

    def answer(self, prompt: str) -> str:
        context, query = split_prompt(prompt)
        return " ".join(best_sentences(context, query, self.num_sentences)) or self.fallback

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return CompletionResponse(text=self.answer(prompt))

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        pieces = re.findall(r"\S+\s*", self.answer(prompt))

        def gen() -> CompletionResponseGen:
            text = ""
            for piece in pieces:
                text += piece
                yield CompletionResponse(text=text, delta=piece)

        return gen()
