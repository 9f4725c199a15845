"""Tiny, randomly initialised checkpoints (Llama, or any family in `TINY_FAMILIES`) for offline tests and smoke runs.

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

__all__ = ["TINY_FAMILIES", "build_tiny_llama", "build_tiny_model", "train_byte_bpe"]

_CORPUS = (
    "BEGINNING OF CONVERSATION: USER: ##Question: ##Answer: ##Correction: ##Revision: ASSISTANT: "
    "Edit the following Question-Answer pair to make it more helpful and harmless: | "
    "The quick brown fox jumps over the lazy dog. How do I bake bread? Mix flour, water, salt and yeast. "
    "Paris is the capital of France. Contact me at jane.doe@example.com or +1 415-555-0132. "
    "I can't help with that, but here is a safer alternative. 0123456789 {}[]()<>!?;:'\"-_/\\@#$%^&*+=~`"
)


# Architecture families transformers ships, with the config settings (beyond the common tiny sizes) that keep
# each tiny and exercise what sets it apart: sliding windows, experts, convolution layers, learned positions.
TINY_FAMILIES: dict[str, dict[str, Any]] = {
    "llama": {},
    "mistral": {"sliding_window": 16},
    "mixtral": {"num_local_experts": 4, "num_experts_per_tok": 2},
    "qwen2": {},
    "qwen3": {"head_dim": 8},
    "qwen3_moe": {"head_dim": 8, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32},
    "gemma": {"head_dim": 8},
    "gemma2": {"head_dim": 8, "sliding_window": 16},
    "gemma3_text": {"head_dim": 8, "sliding_window": 16},
    "phi3": {},
    "gpt2": {},
    "gpt_neox": {},
    "opt": {"ffn_dim": 64, "word_embed_proj_dim": 32},
    "falcon": {},
    "olmo2": {},
    "granite": {},
    "starcoder2": {},
    "cohere": {},
    "bloom": {},
    "lfm2": {"layer_types": ["conv", "full_attention"]},
    "jamba": {"num_experts": 2, "attn_layer_period": 2, "attn_layer_offset": 1, "expert_layer_period": 2},
}


def build_tiny_llama(path: str | Path, **options: Any) -> Path:
    """Save a tiny random Llama + tokenizer (+ ``aligner_config.json`` when ``template``) at ``path``.

    The Llama case of `build_tiny_model`, with the same keyword options.
    """
    return build_tiny_model(path, "llama", **options)


def build_tiny_model(
    path: str | Path,
    model_type: str = "llama",
    *,
    template: str | dict[str, Any] | None = "aligner-v2",
    vocab_size: int = 384,
    hidden_size: int = 32,
    num_layers: int = 2,
    max_position_embeddings: int = 512,
    pad_token: bool = False,
    seed: int = 0,
    texts: Iterable[str] = (),
    **config: Any,
) -> Path:
    """Save a tiny random causal LM of ``model_type`` (a transformers model type) + tokenizer at ``path``.

    ``config`` overrides the family's settings in `TINY_FAMILIES` and the common tiny sizes; an
    ``aligner_config.json`` naming ``template`` is written beside the weights when it is not None.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = train_byte_bpe([_CORPUS, *texts], vocab_size, pad=pad_token)
    settings: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden_size,
        "intermediate_size": hidden_size * 2,
        "num_hidden_layers": num_layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": max_position_embeddings,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "initializer_range": 0.2,
        "tie_word_embeddings": False,
        **TINY_FAMILIES.get(model_type, {}),
        **config,
    }
    model_config = AutoConfig.for_model(model_type, **settings)
    tokenizer.save_pretrained(path)
    model_config.save_pretrained(path)
    # transformers may load a family's own tokenizer class, which can add tokens (Qwen2's adds a pad token).
    loaded = len(AutoTokenizer.from_pretrained(path))
    if loaded > model_config.vocab_size:
        model_config = AutoConfig.for_model(model_type, **{**settings, "vocab_size": loaded})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(model_config)
    model.save_pretrained(path, safe_serialization=True)
    if template is not None:
        (path / ALIGNER_CONFIG_NAME).write_text(json.dumps({"template": template}, indent=2) + "\n", encoding="utf-8")
    return path
