"""`LazyAligner`: the Aligner a LlamaIndex adapter was given, resolved through the core on first use."""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any

from aligner_chains.core import LOADING_OPTIONS, Aligner, default_model, resolve_aligner
from aligner_chains.core.errors import ConfigError
from aligner_chains.core.options import check_options

__all__ = ["LazyAligner"]


class LazyAligner:
    """The Aligner an adapter was given, resolved through the core's `resolve_aligner` on first use.

    ``aligner`` is an `Aligner` (options re-applied at once, no loading), a model path / hub id /
    ``"demo"``, or None: the default model (``$ALIGNER_MODEL``, else the shipped demo; see
    `aligner_chains.core.default_model`). A name is loaded on first use, once, from the shared model
    cache; concurrent first uses wait for the same load.
    """

    def __init__(
        self,
        aligner: Aligner | str | os.PathLike[str] | None = None,
        *,
        on_error: str | None = None,
        max_new_tokens: int | None = None,
        **loading: Any,
    ) -> None:
        if isinstance(aligner, os.PathLike):
            aligner = os.fspath(aligner)
        if aligner is not None and not isinstance(aligner, (Aligner, str)):
            raise TypeError(
                f"aligner must be an Aligner, a model path / hub id / 'demo', or None; got {type(aligner).__name__}."
            )
        check_options(
            sorted(loading),
            LOADING_OPTIONS,
            "The Aligner options",
            f"Loading options are {sorted(LOADING_OPTIONS)}; generation settings other than max_new_tokens "
            "go in generation_kwargs={...}.",
            also=("on_error", "max_new_tokens", "generation_kwargs"),
        )
        if on_error not in (None, "raise", "passthrough"):
            raise ConfigError(f"on_error={on_error!r}: use 'raise' or 'passthrough'.")
        self.spec: Aligner | str | None = aligner
        self.options: dict[str, Any] = {
            k: v
            for k, v in {"on_error": on_error, "max_new_tokens": max_new_tokens, **loading}.items()
            if v is not None
        }
        self._lock = threading.Lock()
        self._aligner: Aligner | None = None
        if isinstance(aligner, Aligner):  # nothing to load: apply the options now, so mistakes show at once
            self.get()

    @property
    def loaded(self) -> bool:
        """Whether the Aligner has been resolved (weights loaded) already."""
        return self._aligner is not None

    def get(self) -> Aligner:
        """The Aligner, loading it on first use."""
        if self._aligner is None:
            with self._lock:
                if self._aligner is None:
                    # Only options that are set are passed: resolve_aligner refuses loading options for a built
                    # Aligner even when they are None. None goes through: the core applies its default model.
                    self._aligner = resolve_aligner(self.spec, **self.options)
        return self._aligner

    async def aget(self) -> Aligner:
        """`get` that loads in a worker thread, so a first load does not block the event loop."""
        if self._aligner is not None:
            return self._aligner
        return await asyncio.to_thread(self.get)

    def describe(self) -> str:
        """The model this adapter uses, as a string (for serialisation and logs); None: the default model."""
        if isinstance(self.spec, Aligner):
            return self.spec.model_name
        return self.spec or default_model()
