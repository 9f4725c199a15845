"""What a causal LM's ``forward`` accepts and honours, and the position ids that padded rows need.

`copy_aware_blocker` decides, from the model's config alone, whether copy-aware decoding is exact
for it (see `aligner_chains.backends.local.speculative`); `model_blocker` reads those facts off a
loaded model.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Sequence
from typing import Any

import torch

# Attention implementations whose mask honours a 2-D attention mask with holes (masked columns between
# visible ones): transformers' eager and sdpa masks AND the 2-D mask into the causal mask column by column.
# flex_attention does the same in its block mask, but needs torch.compile (it did not build on our CPU
# machines) and flash attention unpads by the mask; neither is verified here, so they take plain generate.
HOLE_AWARE_ATTENTION = ("eager", "sdpa")

_WINDOW_LAYERS = {"sliding_attention", "chunked_attention", "hybrid_sliding", "reference_sliding_attention"}
_STATE_LAYERS = {"conv", "linear_attention", "hybrid", "mamba", "recurrent"}


def forward_parameters(model: Any) -> frozenset[str]:
    """Keyword names of the causal LM's ``forward``, under any DDP or PEFT wrapper.

    Lets callers pass what the installed transformers understands: ``logits_to_keep`` (>= 4.50),
    the KV cache as ``cache`` (5.x) or ``past_key_values`` (before).
    """
    return frozenset(inspect.signature(_unwrap(model).forward).parameters)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, so left- and right-padded rows see the same positions."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def copy_aware_blocker(config: Any, *, stateful: bool = False, cache_layers: Sequence[str] | None = None) -> str | None:
    """Why copy-aware decoding is not exact for a model with this ``config``, or None when it is.

    It is exact by construction only with full attention over a dynamic KV cache, through an
    attention implementation that honours a 2-D mask with holes (rejected drafts stay in the cache
    as masked columns): a sliding window would count those holes, and recurrent or convolution
    state cannot take drafts back. ``stateful`` is the model class's ``_is_stateful``;
    ``cache_layers`` the class names of the layers of ``DynamicCache(config=config)``.
    """
    if getattr(config, "is_encoder_decoder", False):
        return "encoder-decoder model"
    if stateful:
        return "recurrent state (the model is stateful: rejected drafts cannot be taken back)"
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    layer_types = getattr(text, "layer_types", None)
    if layer_types:  # authoritative where present: per-layer window, state or full attention
        other = next((kind for kind in layer_types if kind != "full_attention"), None)
        if other in _WINDOW_LAYERS:
            window = getattr(text, "sliding_window", None) or getattr(text, "attention_chunk_size", None)
            return f"sliding window (config.layer_types has {other!r}, window {window})"
        if other in _STATE_LAYERS:
            return f"recurrent or convolution state (config.layer_types has {other!r})"
        if other is not None:
            return f"layers other than full attention (config.layer_types has {other!r})"
    else:
        window = getattr(text, "sliding_window", None)
        if window and getattr(text, "use_sliding_window", True) is not False:
            return f"sliding window (config.sliding_window={window})"
        chunk = getattr(text, "attention_chunk_size", None)
        if chunk:
            return f"chunked attention (config.attention_chunk_size={chunk})"
    implementation = getattr(config, "_attn_implementation", None)
    if implementation is not None and implementation not in HOLE_AWARE_ATTENTION:
        return (
            f"attention implementation {implementation!r} (copy-aware decoding needs one that honours a "
            f"2-D mask with holes: {', '.join(HOLE_AWARE_ATTENTION)})"
        )
    odd = sorted({name for name in cache_layers or () if name != "DynamicLayer"})
    if odd:
        return f"KV cache layers other than plain dynamic ones ({', '.join(odd)})"
    return None


def model_blocker(model: Any) -> str | None:
    """`copy_aware_blocker` for a loaded causal LM (under any DDP or PEFT wrapper), plus what its forward accepts."""
    from transformers import DynamicCache

    name = type(_unwrap(model)).__name__
    blocker = copy_aware_blocker(model.config, stateful=bool(getattr(_unwrap(model), "_is_stateful", False)))
    if blocker is not None:
        return blocker
    parameters = forward_parameters(model)
    if "position_ids" not in parameters:
        return f"{name}.forward takes no position_ids"
    if not {"cache", "past_key_values"} & parameters:
        return f"{name}.forward takes no KV cache"
    try:
        cache = DynamicCache(config=model.config)
    except Exception as exc:  # an older transformers, or a config it cannot build a cache for
        return f"no dynamic KV cache for this config ({type(exc).__name__}: {exc})"
    if not hasattr(cache, "batch_select_indices"):
        return "the dynamic KV cache cannot select rows (batch_select_indices)"
    return copy_aware_blocker(
        model.config, cache_layers=[type(layer).__name__ for layer in getattr(cache, "layers", ())]
    )


def tree_mask_blocker(model: Any) -> str | None:
    """Why ``model`` cannot verify a tree of drafts in one pass, or None when it can.

    A tree needs a 4-D attention mask (each draft sees only its own ancestors). transformers'
    ``create_causal_mask`` passes a 4-D mask through as given; a model that builds its mask some
    other way, or derives ALiBi biases from the 2-D mask, would misread it.
    """
    inner = _unwrap(model)
    if getattr(model.config, "alibi", False):
        return "ALiBi biases are computed from the 2-D attention mask"
    module = sys.modules.get(type(inner).__module__)
    if module is None or not hasattr(module, "create_causal_mask"):
        return f"{type(inner).__name__} does not build its mask with transformers' create_causal_mask"
    return None


def _unwrap(model: Any) -> Any:
    """The causal LM under a DistributedDataParallel or PEFT wrapper."""
    inner = getattr(model, "module", model)  # DistributedDataParallel
    return inner.get_base_model() if hasattr(inner, "get_base_model") else inner  # PeftModel
