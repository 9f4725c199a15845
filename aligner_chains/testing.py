"""Tiny, randomly initialised Llama checkpoints for offline tests and smoke runs.

They exercise the real loading and generation code in seconds on a CPU; their output is
meaningless text, which is all a test of plumbing needs. ``train_byte_bpe`` (from
`aligner_chains.finetune.tokenizer`) is re-exported here for the tests.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from aligner_chains.core.model_files import ALIGNER_CONFIG_NAME
from aligner_chains.finetune.tokenizer import train_byte_bpe

__all__ = ["build_tiny_llama", "train_byte_bpe"]

_CORPUS = (
    "BEGINNING OF CONVERSATION: USER: ##Question: ##Answer: ##Correction: ##Revision: ASSISTANT: "
    "Edit the following Question-Answer pair to make it more helpful and harmless: | "
    "The quick brown fox jumps over the lazy dog. How do I bake bread? Mix flour, water, salt and yeast. "
    "Paris is the capital of France. Contact me at jane.doe@example.com or +1 415-555-0132. "
    "I can't help with that, but here is a safer alternative. 0123456789 {}[]()<>!?;:'\"-_/\\@#$%^&*+=~`"
)


def build_tiny_llama(
    path: str | Path,
    *,
    template: str | dict[str, Any] | None = "aligner-v2",
    vocab_size: int = 384,
    hidden_size: int = 32,
    num_layers: int = 2,
    max_position_embeddings: int = 512,
    pad_token: bool = False,
    seed: int = 0,
    texts: Iterable[str] = (),
) -> Path:
    """Save a tiny random Llama + tokenizer (+ ``aligner_config.json`` when ``template``) at ``path``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = train_byte_bpe([_CORPUS, *texts], vocab_size, pad=pad_token)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.2,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    if template is not None:
        (path / ALIGNER_CONFIG_NAME).write_text(json.dumps({"template": template}, indent=2) + "\n", encoding="utf-8")
    return path
