"""`resolve_aligner`: the one rule by which adapters turn what they were given into an `Aligner`."""

from __future__ import annotations

from typing import Any

from aligner_chains.core.aligner import Aligner
from aligner_chains.core.errors import ConfigError
from aligner_chains.core.model_files import default_model
from aligner_chains.core.options import LOADING_OPTIONS


def resolve_aligner(aligner: Aligner | str | None = None, default: str | None = None, **options: Any) -> Aligner:
    """An `Aligner` from what an adapter was given: an Aligner, a model path/hub id, or None.

    None loads ``default``, or when that is None too the default model (`default_model`: ``$ALIGNER_MODEL``,
    else the shipped demo).

    Options left at None are ignored. For a built Aligner, generation settings and ``on_error``
    apply to a copy sharing its weights; loading options (device, dtype, ...) cannot and raise.
    Adapters call this lazily, so weights load on first use and come from the shared model cache.
    """
    options = {k: v for k, v in options.items() if v is not None}
    on_error = options.pop("on_error", None)
    if isinstance(aligner, Aligner):
        loading = sorted(set(options) & LOADING_OPTIONS)
        if loading:
            raise ConfigError(
                f"Loading options {loading} cannot apply to an already built Aligner; "
                "pass a model name instead, or build the Aligner with them."
            )
        return aligner.with_options(on_error=on_error, **options) if (on_error or options) else aligner
    if aligner is None:
        aligner = default if default is not None else default_model()
    if not isinstance(aligner, str):
        raise TypeError(f"aligner must be an Aligner, a model path/hub id or None, got {type(aligner).__name__}")
    return Aligner.from_pretrained(aligner, on_error=on_error or "raise", **options)
