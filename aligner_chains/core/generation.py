"""What every backend shares: generation settings, one completion's result, and the `Backend` interface.

`Backend` is what an `Aligner` talks to; the local backend (``aligner_chains.backends.local``) runs a
Hugging Face model in this process, the remote one (``aligner_chains.backends.remote``) an
OpenAI-compatible server. Nothing here imports torch or transformers.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from aligner_chains.core.errors import ConfigError

DEFAULT_MAX_NEW_TOKENS = 2048


class GenerationParams(BaseModel):
    """Decoding settings; greedy by default. Extra keys are passed to ``model.generate`` (the local backend
    accepts those of transformers' ``GenerationConfig``, see `Backend.check_generation`).

    ``speculative`` switches the decoder for a call: False takes plain decoding, True copy-aware decoding
    (where it is exact), None the Aligner's own choice. It is not a ``generate`` setting.
    """

    model_config = ConfigDict(extra="allow")

    max_new_tokens: int | None = Field(default=None, ge=1)
    do_sample: bool = False
    temperature: float | None = Field(default=None, gt=0)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    repetition_penalty: float | None = Field(default=None, gt=0)
    speculative: bool | None = None

    def merged(self, overrides: dict[str, Any] | None) -> GenerationParams:
        """A copy with ``overrides`` applied (validated); None values leave a setting as it is."""
        if not overrides:
            return self
        data = self.model_dump()
        data.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return GenerationParams(**data)
        except Exception as exc:
            raise ConfigError(f"Invalid generation settings {overrides!r}: {exc}") from exc

    def with_max_new_tokens(self, max_new_tokens: int | None) -> GenerationParams:
        """A copy with another token limit (None: unset)."""
        return self.model_copy(update={"max_new_tokens": max_new_tokens})

    def generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``model.generate`` (unset values omitted)."""
        data = {k: v for k, v in self.model_dump(exclude={"speculative"}).items() if v is not None}
        if not self.do_sample:  # greedy: sampling knobs would only trigger warnings
            for key in ("temperature", "top_p", "top_k"):
                data.pop(key, None)
        return data


@dataclass
class GenerationOutput:
    """One generated completion: its token ids (without prompt or EOS) and decoded text."""

    token_ids: list[int]
    text: str
    finish_reason: Literal["stop", "length"]
    prompt_tokens: int
    stats: dict[str, Any] = field(default_factory=dict)


class StopSignal(Protocol):
    """Anything with ``is_set()``, e.g. a `threading.Event`: checked between decoding steps."""

    def is_set(self) -> bool: ...


class DecodeSession(Protocol):
    """One running batch that requests join and leave between forward passes (in-flight batching).

    `add` starts new rows (their prompt pass runs at once) and returns a handle per row; `step` runs one
    pass over every row; `finished` hands back the rows that are done, with their outputs, and takes
    them out; `remove` drops rows whose callers have gone. Settings are the session's, limits per row.
    """

    def add(self, prompts: Sequence[str], sources: Sequence[str | None], limits: Sequence[int]) -> list[Any]: ...

    def step(self) -> None: ...

    def passes_left(self) -> float:
        """A rough estimate of the passes until the batch's last row is done."""
        ...

    def finished(self) -> list[tuple[Any, GenerationOutput]]: ...

    def remove(self, handles: Sequence[Any]) -> None: ...

    def __len__(self) -> int: ...


class Backend(ABC):
    """Turns rendered prompts into completions; local models and remote servers implement it."""

    name: str = ""
    max_context: int | None = None
    #: Whether `generate` takes ``stop=`` (a backend written before it existed need not).
    supports_stop: bool = False
    #: ``max_new_tokens`` when a call sets none and the context leaves room (a checkpoint may say less).
    default_max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS

    @abstractmethod
    def count_tokens(self, text: str) -> int:
        """Tokens ``text`` takes as a prompt (special tokens included)."""

    @abstractmethod
    def truncate_left(self, text: str, n_tokens: int) -> str:
        """``text`` with its first ``n_tokens`` tokens removed."""

    def check_generation(self, params: GenerationParams) -> None:
        """Raise `ConfigError` for settings this backend cannot apply (an unknown one names the closest valid one).

        The base accepts every setting (a server decides on its own extras); the local backend checks extras
        against transformers' ``GenerationConfig``. Called once for an Aligner's defaults, and per call for overrides.
        """
        return None

    def decode(self, token_ids: Sequence[int]) -> str:
        """Completion token ids to text as corrections report it (backends with a tokenizer override this)."""
        raise NotImplementedError(f"{type(self).__name__} cannot decode token ids")

    def can_mix_limits(self, params: GenerationParams) -> bool:
        """True when one `generate` call can give each row its own token limit (its ``limits``).

        Otherwise a batch shares one limit, and rows that would overrun the context with it must
        be generated apart.
        """
        return False

    def open_session(self, params: GenerationParams) -> DecodeSession | None:
        """A `DecodeSession` for requests with these settings, or None where the backend has none for them
        (then a micro-batch runs as one `generate` call and new requests wait for it to end)."""
        return None

    @abstractmethod
    def generate(
        self,
        prompts: Sequence[str],
        params: GenerationParams,
        sources: Sequence[str] | None = None,
        limits: Sequence[int] | None = None,
        stop: StopSignal | None = None,
    ) -> list[GenerationOutput]:
        """Complete every prompt; one batched call. ``sources`` (the answers) may seed copy drafts.

        ``limits`` (only where `can_mix_limits`) gives each row its own ``max_new_tokens``. Once
        ``stop.is_set()`` (every caller of the batch has gone), generation may end early; rows then
        hold what they had.
        """

    @abstractmethod
    def stream(
        self, prompt: str, params: GenerationParams, source: str | None = None
    ) -> Iterator[str | GenerationOutput]:
        """Yield text pieces as they are generated, then the final `GenerationOutput`."""


def check_limits(limits: Sequence[int] | None, n_prompts: int) -> None:
    """Raise when per-row ``limits`` are given but do not match the prompts one to one."""
    if limits is not None and len(limits) != n_prompts:
        raise ValueError(f"{len(limits)} limits for {n_prompts} prompts")
