"""`AlignerSpec`: which Aligner a worker process builds, as plain picklable settings (never the weights)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aligner_chains.core.aligner import Overflow
from aligner_chains.core.errors import ConfigError


@dataclass(frozen=True)
class AlignerSpec:
    """The arguments of `Aligner.from_pretrained` (``model``) or `Aligner.from_server` (``servers``).

    Shipped to every Ray actor, which builds its Aligner from it once, in its constructor: a spec is a
    few strings, where a built Aligner would be the model's weights. ``servers`` (one URL or a list of
    them) goes to `Aligner.from_server` as given, with ``model`` as the served model's name; otherwise
    ``model`` (None: the default model) loads locally with ``device`` and ``dtype``. ``options`` are
    further keyword arguments of the chosen constructor (e.g. ``{"speculative": False}`` or
    ``{"max_concurrency": 32}``).
    """

    model: str | None = None
    servers: str | Sequence[str] | None = None
    template: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    max_new_tokens: int | None = None
    overflow: Overflow = "raise"
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.servers is not None and not isinstance(self.servers, str):
            if not self.servers:
                raise ConfigError("servers=[]: give a server URL or a list of them, or servers=None to load locally.")
            object.__setattr__(self, "servers", list(self.servers))  # a tuple or generator pickles as a list
        if self.servers is not None and (self.device, self.dtype) != ("auto", "auto"):
            raise ConfigError(
                f"device={self.device!r}, dtype={self.dtype!r} set how a local model loads; with servers= the "
                "server decides. Leave them at 'auto'."
            )

    def build(self) -> Any:
        """The `Aligner` this spec describes (loads the weights, or connects to the servers)."""
        from aligner_chains.core.aligner import Aligner

        generation = {"max_new_tokens": self.max_new_tokens} if self.max_new_tokens is not None else {}
        if self.servers is not None:
            return Aligner.from_server(
                self.servers,  # one URL or a list: passed as given
                model=self.model,
                template=self.template,
                overflow=self.overflow,
                **self.options,
                **generation,
            )
        return Aligner.from_pretrained(
            self.model,
            template=self.template,
            device=self.device,
            dtype=self.dtype,
            overflow=self.overflow,
            **self.options,
            **generation,
        )
