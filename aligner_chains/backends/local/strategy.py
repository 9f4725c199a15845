"""Decoding strategies of the local backend: how new tokens are chosen (plain ``generate`` here)."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch

from aligner_chains.core.generation import GenerationParams

# ``Correction.stats["decoder_reason"]`` when plain decoding was asked for rather than fallen back to.
PLAIN_REQUESTED = "plain decoding requested (speculative=False or strategy=HFGenerate())"


@dataclass
class DecodeResult:
    """New token ids per row (padded with pad id after EOS), and per-row statistics.

    Every row's stats name the decoder that ran (``"decoder"``) and why (``"decoder_reason"``).
    """

    tokens: torch.Tensor
    stats: list[dict[str, Any]]


class DecodingStrategy(ABC):
    """How new tokens are chosen; the local backend delegates to one of these."""

    name: str = ""

    @abstractmethod
    def decode(
        self,
        model: Any,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        params: GenerationParams,
        *,
        eos_token_ids: list[int],
        pad_token_id: int,
        streamer: Any = None,
        stop_event: threading.Event | None = None,
        sources: list[list[int]] | None = None,
        limits: list[int] | None = None,
    ) -> DecodeResult:
        """Generate up to ``params.max_new_tokens`` (or the row's entry of ``limits``) for each left-padded row.

        ``sources`` holds, per row, token ids a strategy may draft from (the answer being corrected).
        """

    def mixes_limits(self, params: GenerationParams) -> bool:
        """True when rows of one batch can stop at their own ``limits`` without running past them."""
        return False

    def fallback_reason(self, model: Any, params: GenerationParams) -> str | None:
        """Why this strategy would hand a call on ``model`` with ``params`` to plain ``generate`` (None: it runs)."""
        return None


class _StopOnEvent:
    """A stopping criterion that ends generation when a consumer goes away."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class _StopAtLimits:
    """A stopping criterion that ends each row once it has ``limits[row]`` new tokens."""

    def __init__(self, prompt_width: int, limits: list[int], device: Any) -> None:
        self.prompt_width = prompt_width
        self.limits = torch.tensor(limits, device=device)

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        return (input_ids.shape[1] - self.prompt_width) >= self.limits


class HFGenerate(DecodingStrategy):
    """Plain ``model.generate``: greedy or sampling, whatever the params say.

    Rows that reach their own limit stop emitting, but ``generate`` keeps their positions
    advancing with the batch, so it does not claim `mixes_limits`.
    """

    name = "hf-generate"

    def decode(
        self,
        model: Any,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        params: GenerationParams,
        *,
        eos_token_ids: list[int],
        pad_token_id: int,
        streamer: Any = None,
        stop_event: threading.Event | None = None,
        sources: list[list[int]] | None = None,
        limits: list[int] | None = None,
    ) -> DecodeResult:
        from transformers import StoppingCriteriaList

        kwargs = params.generate_kwargs()
        criteria: list[Any] = []
        if stop_event is not None:
            criteria.append(_StopOnEvent(stop_event))
        if limits is not None:
            criteria.append(_StopAtLimits(input_ids.shape[1], limits, input_ids.device))
            kwargs["max_new_tokens"] = max(limits)
        if criteria:
            kwargs["stopping_criteria"] = StoppingCriteriaList(criteria)
        out = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            eos_token_id=eos_token_ids,
            pad_token_id=pad_token_id,
            streamer=streamer,
            **kwargs,
        )
        new = out[:, input_ids.shape[1] :]
        stats = {"decoder": self.name, "decoder_reason": PLAIN_REQUESTED, "forward_passes": int(new.shape[1])}
        return DecodeResult(tokens=new, stats=[dict(stats) for _ in range(new.shape[0])])
