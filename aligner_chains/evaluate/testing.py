"""`FunctionChatModel`: a deterministic offline chat model whose reply is a function of the messages;
`build_tiny_score_model`: a tiny random safe-rlhf style score model on disk.

For tests and demos of judges and teachers without an API key: a judge that prefers the shorter
answer, a teacher that redacts e-mail addresses, a model that fails the first two calls; a reward or
cost model for `ScoreModelJudge` that loads in a second.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import PrivateAttr

__all__ = ["FunctionChatModel", "build_tiny_score_model"]


class FunctionChatModel(BaseChatModel):
    """Replies with ``fn(messages)`` (a string); an exception raised by ``fn`` is raised by the model.

    ``calls`` counts the calls made so far (thread-safe), so ``fn`` can fail the first few on purpose.
    """

    fn: Callable[[list[BaseMessage]], str]
    model_name: str = "function-chat"

    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _calls: int = PrivateAttr(default=0)

    @property
    def _llm_type(self) -> str:
        return "function-chat"

    @property
    def calls(self) -> int:
        return self._calls

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        with self._lock:
            self._calls += 1
        text = self.fn(messages)
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=text))])


def build_tiny_score_model(
    path: str | Path,
    *,
    kind: str = "reward",
    head: str = "score_head",
    bias: bool = False,
    hidden_size: int = 16,
    seed: int = 0,
    texts: Iterable[str] = (),
) -> Path:
    """Save a tiny random score model laid out as safe-rlhf saves one (e.g. the Beaver-7B reward model).

    A Llama backbone stored under ``model.*``, a linear head ``{head}.weight`` (and ``.bias``) of one output,
    and a ``config.json`` naming the architecture ``LlamaForScore`` with ``score_dim=1``, ``bias`` and
    ``score_type=kind``. Its scores are random but deterministic for a given ``seed``.
    """
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaModel

    from aligner_chains.finetune.tokenizer import train_byte_bpe

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    corpus = "BEGINNING OF CONVERSATION: USER: ASSISTANT: Sorry, I can't help with that. Here is how: 0123456789."
    tokenizer = train_byte_bpe([corpus, *texts], 300)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        initializer_range=0.5,
    )
    torch.manual_seed(seed)
    state = {f"model.{k}": v.contiguous() for k, v in LlamaModel(config).state_dict().items()}
    state[f"{head}.weight"] = torch.randn(1, hidden_size)
    if bias:
        state[f"{head}.bias"] = torch.randn(1)
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    settings = {**config.to_dict(), "architectures": ["LlamaForScore"], "score_dim": 1, "bias": bias}
    settings.update(score_type=kind, do_normalize=False)
    (path / "config.json").write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    tokenizer.save_pretrained(path)
    return path
