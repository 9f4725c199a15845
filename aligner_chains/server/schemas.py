"""Request bodies of the Aligner server. Strict types: ``"5"`` is not a number, ``1`` is not a string.

Unknown fields are accepted and ignored (as vLLM does), so OpenAI clients that send extra options work;
options that would change the result and are not supported answer 400 instead of being ignored.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

#: Smallest non-zero temperature: below it ``logits / temperature`` overflows and sampling fails (vLLM clamps here).
MIN_TEMPERATURE = 0.01


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)


def _check_temperature(value: float | None) -> float | None:
    if value is not None and 0 < value < MIN_TEMPERATURE:
        raise ValueError(
            f"temperature={value!r} is too small to sample with (it overflows the logits); "
            f"use 0 for greedy decoding or a value from {MIN_TEMPERATURE} to 2"
        )
    return value


class StreamOptions(_Body):
    include_usage: bool = False


class CompletionRequest(_Body):
    """``POST /v1/completions`` (the OpenAI legacy completions API)."""

    model: str | None = None
    prompt: str | list[str]
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=-1)
    repetition_penalty: float | None = Field(default=None, gt=0)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1)
    best_of: int | None = Field(default=None, ge=1)
    echo: bool = False
    logprobs: int | None = None
    suffix: str | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    user: str | None = None
    return_token_ids: bool = False

    _temperature = field_validator("temperature")(_check_temperature)


class CorrectionItem(_Body):
    question: str
    answer: str


class CorrectionRequest(_Body):
    """``POST /v1/corrections``: one ``question`` + ``answer``, or ``items``; a `Correction` comes back."""

    model: str | None = None
    question: str | None = None
    answer: str | None = None
    items: list[CorrectionItem] | None = None
    stream: bool = False
    max_new_tokens: int | None = Field(default=None, ge=1)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    on_error: Literal["raise", "passthrough"] | None = None
    include_diff: bool = False
    stream_mode: str | None = None
    """With ``stream=true``: ``"whole"`` or ``"segments"`` (None: the server's setting); checked by the route."""

    _temperature = field_validator("temperature")(_check_temperature)


class TokenizeRequest(_Body):
    model: str | None = None
    prompt: str
    add_special_tokens: bool = True


class DetokenizeRequest(_Body):
    model: str | None = None
    tokens: list[int]
