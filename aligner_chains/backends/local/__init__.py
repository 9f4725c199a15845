"""The local backend: load a Hugging Face causal LM (one process-wide cache) and decode in this process.

Decoding strategies: `HFGenerate` (plain ``model.generate``) and `CopyAwareSpeculative` (the
default for greedy corrections: drafts from the answer, verified, same tokens as plain greedy in
fp32; models it is not exact on, such as sliding-window or hybrid ones, take plain ``generate``).
"""

from aligner_chains.backends.local.backend import IncrementalDecoder, LocalBackend
from aligner_chains.backends.local.loading import (
    LoadedModel,
    LoadOptions,
    Quantization,
    cached_model_count,
    clear_model_cache,
    load_model,
)
from aligner_chains.backends.local.settings import check_generation_keys
from aligner_chains.backends.local.speculative import CopyAwareSpeculative
from aligner_chains.backends.local.strategy import DecodeResult, DecodingStrategy, HFGenerate

__all__ = [
    "CopyAwareSpeculative",
    "DecodeResult",
    "DecodingStrategy",
    "HFGenerate",
    "IncrementalDecoder",
    "LoadOptions",
    "LoadedModel",
    "LocalBackend",
    "Quantization",
    "cached_model_count",
    "check_generation_keys",
    "clear_model_cache",
    "load_model",
]
