"""Tokenizer helpers both backends use: load a checkpoint's tokenizer, decode completions as reported."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aligner_chains.core.errors import CheckpointError


def load_tokenizer(path: Path, *, trust_remote_code: bool = False) -> Any:
    """The checkpoint's tokenizer, left-padded, with a pad token (EOS when it has none)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise CheckpointError(f"Cannot load the tokenizer from {path}: {exc}") from exc
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise CheckpointError(f"The tokenizer in {path} has neither a pad nor an EOS token; set eos_token.")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def decode_text(tokenizer: Any, ids: Sequence[int]) -> str:
    """Token ids to text the way corrections are reported: no special tokens, no space clean-up, stripped."""
    return tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False).strip()
