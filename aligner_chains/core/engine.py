"""Generation backends: what turns rendered prompts into corrected text.

`Backend` is the interface an `Aligner` talks to; `LocalBackend` runs a Hugging Face model in this
process, and a remote (OpenAI-compatible) backend can stand beside it. The decoding algorithm of
the local backend is a swappable `DecodingStrategy`.
"""

from __future__ import annotations

import queue
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from aligner_chains.core.errors import ConfigError
from aligner_chains.core.loading import LoadedModel

DEFAULT_MAX_NEW_TOKENS = 2048


class GenerationParams(BaseModel):
    """Decoding settings; greedy by default. Extra keys are passed to ``model.generate``."""

    model_config = ConfigDict(extra="allow")

    max_new_tokens: int | None = Field(default=None, ge=1)
    do_sample: bool = False
    temperature: float | None = Field(default=None, gt=0)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    repetition_penalty: float | None = Field(default=None, gt=0)

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
        data = {k: v for k, v in self.model_dump().items() if v is not None}
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


class Backend(ABC):
    """Turns rendered prompts into completions; local models and remote servers implement it."""

    name: str = ""
    max_context: int | None = None

    @abstractmethod
    def count_tokens(self, text: str) -> int:
        """Tokens ``text`` takes as a prompt (special tokens included)."""

    @abstractmethod
    def truncate_left(self, text: str, n_tokens: int) -> str:
        """``text`` with its first ``n_tokens`` tokens removed."""

    def decode(self, token_ids: Sequence[int]) -> str:
        """Completion token ids to text as corrections report it (backends with a tokenizer override this)."""
        raise NotImplementedError(f"{type(self).__name__} cannot decode token ids")

    def can_mix_limits(self, params: GenerationParams) -> bool:
        """True when one `generate` call can give each row its own token limit (its ``limits``).

        Otherwise a batch shares one limit, and rows that would overrun the context with it must
        be generated apart.
        """
        return False

    @abstractmethod
    def generate(
        self,
        prompts: Sequence[str],
        params: GenerationParams,
        sources: Sequence[str] | None = None,
        limits: Sequence[int] | None = None,
    ) -> list[GenerationOutput]:
        """Complete every prompt; one batched call. ``sources`` (the answers) may seed copy drafts.

        ``limits`` (only where `can_mix_limits`) gives each row its own ``max_new_tokens``.
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


@dataclass
class DecodeResult:
    """New token ids per row (padded with pad id after EOS), and per-row statistics."""

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
        return DecodeResult(tokens=new, stats=[{"forward_passes": int(new.shape[1])} for _ in range(new.shape[0])])


class _QueueStreamer:
    """Receives token ids from a decoding loop (first call: the prompt, skipped) into a queue."""

    def __init__(self, sink: queue.Queue[Any]) -> None:
        self.sink = sink
        self.seen_prompt = False

    def put(self, value: torch.Tensor) -> None:
        if not self.seen_prompt:
            self.seen_prompt = True
            return
        self.sink.put(value.reshape(-1).tolist())

    def end(self) -> None:
        """Called by the decoding loop when it finishes; the backend signals the end itself."""


class IncrementalDecoder:
    """Turns a growing list of token ids into text pieces whose concatenation is the final text.

    Leading whitespace is dropped and trailing whitespace held back (the final text is stripped),
    and a piece is never cut inside a multi-byte character.
    """

    def __init__(self, tokenizer: Any, stop_ids: set[int]) -> None:
        self.tokenizer = tokenizer
        self.stop_ids = stop_ids
        self.ids: list[int] = []
        self.emitted = ""
        self.stopped = False

    def push(self, ids: list[int]) -> str:
        for token in ids:
            if self.stopped or token in self.stop_ids:
                self.stopped = True
                break
            self.ids.append(token)
        text = decode_text(self.tokenizer, self.ids)
        if text.endswith("\ufffd"):
            return ""
        return self._advance(text.rstrip())

    def finish(self, final_text: str) -> str:
        return self._advance(final_text)

    def _advance(self, text: str) -> str:
        if len(text) <= len(self.emitted) or not text.startswith(self.emitted):
            return ""
        piece = text[len(self.emitted) :]
        self.emitted = text
        return piece


def decode_text(tokenizer: Any, ids: Sequence[int]) -> str:
    """Token ids to text the way corrections are reported: no special tokens, no space clean-up, stripped."""
    return tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False).strip()


def _eos_ids(loaded: LoadedModel) -> list[int]:
    ids: list[int] = []
    generation_config = getattr(loaded.model, "generation_config", None)
    configured = getattr(generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.append(configured)
    elif isinstance(configured, (list, tuple)):
        ids.extend(int(i) for i in configured)
    if loaded.tokenizer.eos_token_id is not None and loaded.tokenizer.eos_token_id not in ids:
        ids.append(int(loaded.tokenizer.eos_token_id))
    if not ids:
        raise ConfigError(f"Model {loaded.model_id!r} defines no EOS token; set tokenizer.eos_token.")
    return ids


class LocalBackend(Backend):
    """Runs a loaded Hugging Face causal LM in this process (one generation at a time per model)."""

    def __init__(self, loaded: LoadedModel, strategy: DecodingStrategy | None = None) -> None:
        from aligner_chains.core.speculative import CopyAwareSpeculative

        self.loaded = loaded
        self.name = loaded.model_id
        self.max_context = loaded.max_context
        self.strategy = strategy or CopyAwareSpeculative()
        self.tokenizer = loaded.tokenizer
        self.eos_token_ids = _eos_ids(loaded)
        self.pad_token_id = int(self.tokenizer.pad_token_id)

    def _encode(self, text: str | list[str], **kwargs: Any) -> Any:
        """Tokenise under the model's tokenizer lock (fast tokenizers are not safe to share across threads)."""
        with self.loaded.tokenizer_lock:
            return self.tokenizer(text, **kwargs)

    def count_tokens(self, text: str) -> int:
        return len(self._encode(text, add_special_tokens=True)["input_ids"])

    def decode(self, token_ids: Sequence[int]) -> str:
        return decode_text(self.tokenizer, token_ids)

    def truncate_left(self, text: str, n_tokens: int) -> str:
        if n_tokens <= 0:
            return text
        ids = self._encode(text, add_special_tokens=False)["input_ids"]
        return self.tokenizer.decode(ids[n_tokens:], clean_up_tokenization_spaces=False)

    def can_mix_limits(self, params: GenerationParams) -> bool:
        return self.strategy.mixes_limits(params)

    def generate(
        self,
        prompts: Sequence[str],
        params: GenerationParams,
        sources: Sequence[str] | None = None,
        limits: Sequence[int] | None = None,
    ) -> list[GenerationOutput]:
        return self._run(list(prompts), params, sources=sources, limits=limits)

    def _run(
        self,
        prompts: list[str],
        params: GenerationParams,
        streamer: Any = None,
        stop_event: threading.Event | None = None,
        sources: Sequence[str] | None = None,
        limits: Sequence[int] | None = None,
    ) -> list[GenerationOutput]:
        check_limits(limits, len(prompts))
        batch = self._encode(prompts, return_tensors="pt", padding=True, add_special_tokens=True)
        source_ids = (
            self._encode([" " + text for text in sources], add_special_tokens=False)["input_ids"]
            if sources is not None
            else None
        )
        input_ids = batch["input_ids"].to(self.loaded.device)
        attention_mask = batch["attention_mask"].to(self.loaded.device)
        with self.loaded.lock, torch.inference_mode():
            result = self.strategy.decode(
                self.loaded.model,
                input_ids,
                attention_mask,
                params,
                eos_token_ids=self.eos_token_ids,
                pad_token_id=self.pad_token_id,
                streamer=streamer,
                stop_event=stop_event,
                sources=source_ids,
                **({"limits": list(limits)} if limits is not None else {}),  # only strategies that mix limits
            )
        prompt_lengths = attention_mask.sum(dim=1).tolist()
        outputs = []
        stops = set(self.eos_token_ids)
        rows = result.tokens.tolist()
        for i, (row, stats, n_prompt) in enumerate(zip(rows, result.stats, prompt_lengths, strict=True)):
            ids: list[int] = []
            finish: Literal["stop", "length"] = "length"
            for token in row[: limits[i]] if limits is not None else row:
                if token in stops:
                    finish = "stop"
                    break
                ids.append(token)
            outputs.append(
                GenerationOutput(
                    token_ids=ids,
                    text=decode_text(self.tokenizer, ids),
                    finish_reason=finish,
                    prompt_tokens=int(n_prompt),
                    stats=stats,
                )
            )
        return outputs

    def stream(
        self, prompt: str, params: GenerationParams, source: str | None = None
    ) -> Iterator[str | GenerationOutput]:
        pieces: queue.Queue[Any] = queue.Queue()
        stop_event = threading.Event()
        done = object()
        result: dict[str, Any] = {}

        def work() -> None:
            try:
                sources = [source] if source is not None else None
                result["output"] = self._run([prompt], params, _QueueStreamer(pieces), stop_event, sources)[0]
            except BaseException as exc:  # re-raised in the consumer
                result["error"] = exc
            finally:
                pieces.put(done)

        thread = threading.Thread(target=work, name="aligner-stream", daemon=True)
        thread.start()
        decoder = IncrementalDecoder(self.tokenizer, set(self.eos_token_ids))
        try:
            while (item := pieces.get()) is not done:
                piece = decoder.push(item)
                if piece:
                    yield piece
            thread.join()
            if "error" in result:
                raise result["error"]
            output: GenerationOutput = result["output"]
            tail = decoder.finish(output.text)
            if tail:
                yield tail
            yield output
        finally:
            stop_event.set()
