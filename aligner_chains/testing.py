"""Tiny, randomly initialised Llama checkpoints for offline tests and smoke runs.

They exercise the real loading and generation code in seconds on a CPU; their output is
meaningless text, which is all a test of plumbing needs.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from aligner_chains.core.loading import ALIGNER_CONFIG_NAME

_CORPUS = (
    "BEGINNING OF CONVERSATION: USER: ##Question: ##Answer: ##Correction: ##Revision: ASSISTANT: "
    "Edit the following Question-Answer pair to make it more helpful and harmless: | "
    "The quick brown fox jumps over the lazy dog. How do I bake bread? Mix flour, water, salt and yeast. "
    "Paris is the capital of France. Contact me at jane.doe@example.com or +1 415-555-0132. "
    "I can't help with that, but here is a safer alternative. 0123456789 {}[]()<>!?;:'\"-_/\\@#$%^&*+=~`"
)


def train_byte_bpe(texts: Iterable[str], vocab_size: int = 512, *, pad: bool = False, extra: list[str] | None = None):
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained on ``texts``; BOS added to every encoding."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "</s>"] + (["<pad>"] if pad else [])
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    if extra:
        tok.add_tokens(extra)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", bos)])
    kwargs: dict[str, Any] = {"bos_token": "<s>", "eos_token": "</s>"}
    if pad:
        kwargs["pad_token"] = "<pad>"
    return PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)


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
