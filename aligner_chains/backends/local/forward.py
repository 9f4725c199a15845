"""What a causal LM's ``forward`` accepts, and the position ids that padded rows need."""

from __future__ import annotations

import inspect
from typing import Any

import torch


def forward_parameters(model: Any) -> frozenset[str]:
    """Keyword names of the causal LM's ``forward``, under any DDP or PEFT wrapper.

    Lets callers pass what the installed transformers understands: ``logits_to_keep`` (>= 4.50),
    the KV cache as ``cache`` (5.x) or ``past_key_values`` (before).
    """
    inner = getattr(model, "module", model)  # DistributedDataParallel
    inner = inner.get_base_model() if hasattr(inner, "get_base_model") else inner  # PeftModel
    return frozenset(inspect.signature(inner.forward).parameters)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, so left- and right-padded rows see the same positions."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
