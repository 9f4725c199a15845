"""Generation settings of the local backend: which keys ``model.generate`` takes, and the checkpoint's own.

The core's `GenerationParams` passes extra keys on to ``model.generate``; here they are checked against
transformers' ``GenerationConfig`` (the core does not import transformers), so a typo fails at once with
the closest valid name instead of switching copy-aware decoding off and failing inside ``generate``.

A checkpoint's ``generation_config.json`` (``repetition_penalty``, ``no_repeat_ngram_size``, ...) is applied
by ``model.generate`` to every call that does not set the key itself. Copy-aware decoding verifies plain
greedy argmax, so `inherited_settings` names what it would miss; the decoder then takes plain ``generate``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

from aligner_chains.core.errors import ConfigError
from aligner_chains.core.generation import GenerationParams
from aligner_chains.core.options import unknown_option_error

# GenerationConfig keys a caller may not set, with the reason and what to do instead.
RESERVED: dict[str, str] = {
    "eos_token_id": "the backend takes it from the checkpoint (generation_config.json and the tokenizer)",
    "pad_token_id": "the backend takes it from the tokenizer",
    "bos_token_id": "the backend takes it from the tokenizer",
    "decoder_start_token_id": "Aligners are decoder-only models",
    "max_length": "use max_new_tokens",
    "num_return_sequences": "an Aligner returns one correction per answer",
    "return_dict_in_generate": "the backend reads the generated token ids only",
    "output_scores": "the backend reads the generated token ids only",
    "output_logits": "the backend reads the generated token ids only",
    "output_attentions": "the backend reads the generated token ids only",
    "output_hidden_states": "the backend reads the generated token ids only",
    "stop_strings": "stop strings need the tokenizer inside generate; the server's stop= applies them",
    "streamer": "use Aligner.stream",
}
_BOOKKEEPING = {"transformers_version", "_from_model_config"}

# Keys of a checkpoint's generation_config that do not change which token greedy decoding picks next:
# token ids and lengths (the Aligner passes its own), sampling knobs (unused when greedy, and a call that
# samples takes plain generate anyway), caching, compilation and output flags.
_NEUTRAL = {
    *_BOOKKEEPING,
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "decoder_start_token_id",
    "max_length",
    "max_new_tokens",
    "max_time",
    "do_sample",
    "temperature",
    "top_p",
    "top_k",
    "typical_p",
    "min_p",
    "top_h",
    "epsilon_cutoff",
    "eta_cutoff",
    "use_cache",
    "cache_implementation",
    "cache_config",
    "max_cache_len",
    "compile_config",
    "disable_compile",
    "low_memory",
    "prefill_chunk_size",
    "continuous_batching_config",
    "return_dict_in_generate",
    "output_scores",
    "output_logits",
    "output_attentions",
    "output_hidden_states",
    "num_return_sequences",
    "remove_invalid_values",
    "renormalize_logits",
    "length_penalty",  # applies to beam search only, which num_beams decides
    "early_stopping",
}


@functools.cache
def generate_settings() -> frozenset[str]:
    """Keys a caller may pass through `GenerationParams` to ``model.generate`` (transformers' GenerationConfig)."""
    from transformers import GenerationConfig

    return frozenset(GenerationConfig().to_dict()) - _BOOKKEEPING - frozenset(RESERVED)


def check_generation_keys(
    names: Iterable[str], *, also: Iterable[str] = (), where: str = "Generation settings"
) -> None:
    """Raise `ConfigError` for a name that is neither a generation setting nor in ``also`` (named options
    of the caller, e.g. ``from_pretrained``'s), naming the closest valid option or why it is reserved."""
    known = set(GenerationParams.model_fields) | generate_settings() | set(also)
    for name in names:
        if name in RESERVED:
            raise ConfigError(f"{where}: {name!r} cannot be set here: {RESERVED[name]}.")
        if name not in known:
            raise unknown_option_error(
                name,
                known,
                where,
                "Generation settings are GenerationParams fields (max_new_tokens, do_sample, temperature, top_p, "
                "top_k, repetition_penalty, speculative) or keys of transformers' GenerationConfig.",
            )


def check_generation(params: GenerationParams) -> None:
    """`check_generation_keys` for the extra keys of ``params``."""
    check_generation_keys(params.model_extra or {})


def inherited_settings(model: Any, params: GenerationParams) -> dict[str, Any]:
    """Settings of the checkpoint's ``generation_config`` that ``model.generate`` would apply to this call
    (the call does not set them) and that can change which token greedy decoding picks."""
    config = getattr(model, "generation_config", None)
    if config is None:
        return {}
    try:
        diff = config.to_diff_dict()
    except Exception:  # an unusual config object: judge by the attributes we know
        diff = {k: v for k, v in vars(config).items() if not k.startswith("_")}
    explicit = params.generate_kwargs()
    return {k: v for k, v in diff.items() if k not in _NEUTRAL and k not in explicit and v is not None}


def checkpoint_max_new_tokens(model: Any) -> int | None:
    """The checkpoint's own ``max_new_tokens`` (generation_config.json), if it sets one."""
    value = getattr(getattr(model, "generation_config", None), "max_new_tokens", None)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None
