"""`LocalBackend`: an Aligner run in this process by a Hugging Face causal LM."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import torch

from aligner_chains.backends.local.inference_thread import run_inference
from aligner_chains.backends.local.loading import LoadedModel
from aligner_chains.backends.local.running import row_stats
from aligner_chains.backends.local.settings import check_generation, checkpoint_max_new_tokens
from aligner_chains.backends.local.speculative import CopyAwareSpeculative, set_draft_phrases
from aligner_chains.backends.local.strategy import DecodingStrategy, HFGenerate
from aligner_chains.backends.tokenizers import LockedTokenizer, decode_text
from aligner_chains.core.errors import ConfigError
from aligner_chains.core.generation import Backend, GenerationOutput, GenerationParams, StopSignal, check_limits


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

    supports_stop = True

    def __init__(self, loaded: LoadedModel, strategy: DecodingStrategy | None = None) -> None:
        self.loaded = loaded
        self.name = loaded.model_id
        self.max_context = loaded.max_context
        self.strategy = strategy or CopyAwareSpeculative()
        # Every encode and decode, here and in the server, goes through the tokenizer's one lock.
        self.tokenizer = LockedTokenizer(loaded.tokenizer)
        self.eos_token_ids = _eos_ids(loaded)
        self.pad_token_id = int(self.tokenizer.pad_token_id)
        self.default_max_new_tokens = checkpoint_max_new_tokens(loaded.model) or self.default_max_new_tokens
        phrases = (loaded.aligner_config or {}).get("draft_phrases") or []
        if phrases:  # checked by `read_aligner_config`: a list of strings
            encoded = self._encode([" " + phrase for phrase in phrases], add_special_tokens=False)["input_ids"]
            set_draft_phrases(loaded.model, encoded)

    def check_generation(self, params: GenerationParams) -> None:
        check_generation(params)

    def strategy_for(self, params: GenerationParams) -> DecodingStrategy:
        """The decoder of a call: the backend's, unless the call switches it (``speculative=True/False``)."""
        if params.speculative is None:
            return self.strategy
        if params.speculative:
            return self.strategy if isinstance(self.strategy, CopyAwareSpeculative) else CopyAwareSpeculative()
        if isinstance(self.strategy, HFGenerate):
            return self.strategy
        return getattr(self.strategy, "fallback", None) or HFGenerate()

    def _encode(self, text: str | list[str], **kwargs: Any) -> Any:
        """Tokenise under the model's tokenizer lock (fast tokenizers are not safe to share across threads)."""
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
        # A strategy that hands this model or these settings to plain generate mixes limits as that does.
        strategy = self.strategy_for(params)
        return strategy.fallback_reason(self.loaded.model, params) is None and strategy.mixes_limits(params)

    def generate(
        self,
        prompts: Sequence[str],
        params: GenerationParams,
        sources: Sequence[str] | None = None,
        limits: Sequence[int] | None = None,
        stop: StopSignal | None = None,
    ) -> list[GenerationOutput]:
        return self._run(list(prompts), params, stop_event=stop, sources=sources, limits=limits)

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
        batch, source_ids = self.encode_batch(prompts, sources)
        input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
        result = run_inference(
            self.loaded.lock,
            self.strategy_for(params).decode,
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
        rows = result.tokens.tolist()
        return [
            self.output(row[: limits[i]] if limits is not None else row, stats, int(n_prompt))
            for i, (row, stats, n_prompt) in enumerate(zip(rows, result.stats, prompt_lengths, strict=True))
        ]

    def output(self, tokens: Sequence[int], stats: dict[str, Any], prompt_tokens: int) -> GenerationOutput:
        """A row's generated ``tokens`` as a `GenerationOutput`: cut at its first EOS ("stop"), else "length"."""
        ids: list[int] = []
        finish: Literal["stop", "length"] = "length"
        stops = set(self.eos_token_ids)
        for token in tokens:
            if token in stops:
                finish = "stop"
                break
            ids.append(token)
        return GenerationOutput(
            token_ids=ids,
            text=decode_text(self.tokenizer, ids),
            finish_reason=finish,
            prompt_tokens=prompt_tokens,
            stats=stats,
        )

    def encode_batch(self, prompts: list[str], sources: Sequence[str | None] | None) -> tuple[Any, Any]:
        """Left-padded prompt ids on the model's device, and each source's ids (drafts copy from them; None
        where a row has no source)."""
        batch = self._encode(prompts, return_tensors="pt", padding=True, add_special_tokens=True)
        source_ids = None
        if sources is not None:
            texts = [" " + text for text in sources if text is not None]
            encoded = iter(self._encode(texts, add_special_tokens=False)["input_ids"] if texts else ())
            source_ids = [next(encoded) if text is not None else None for text in sources]
        return {key: batch[key].to(self.loaded.device) for key in ("input_ids", "attention_mask")}, source_ids

    def open_session(self, params: GenerationParams) -> LocalSession | None:
        """An in-flight batch of copy-aware decoding, where it is exact for these settings on this model and
        the model's KV cache can be joined; None otherwise (the micro-batcher then runs whole batches)."""
        strategy = self.strategy_for(params)
        if not isinstance(strategy, CopyAwareSpeculative) or strategy.fallback_reason(self.loaded.model, params):
            return None
        session = LocalSession(self, strategy)
        return session if session.batch.can_join else None

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


class LocalSession:
    """Rows of one running copy-aware batch on a local model that requests join and leave between passes
    (`aligner_chains.core.generation.DecodeSession`); each call holds the model's lock for one pass."""

    def __init__(self, backend: LocalBackend, strategy: CopyAwareSpeculative) -> None:
        self.backend = backend
        model = backend.loaded.model
        self.batch = strategy.open_batch(model, backend.pad_token_id, backend.eos_token_ids, backend.loaded.device)
        self.reason = strategy.exact_reason(model)
        self.decoder = strategy.name
        self.prompt_tokens: dict[int, int] = {}  # id(row) -> its prompt's tokens

    def __len__(self) -> int:
        return len(self.batch)

    def add(self, prompts: Sequence[str], sources: Sequence[str | None], limits: Sequence[int]) -> list[Any]:
        """Start rows for ``prompts`` (their prompt pass runs now); one handle per row."""
        check_limits(limits, len(prompts))
        encoded, source_ids = self.backend.encode_batch(list(prompts), sources)
        rows = run_inference(
            self.backend.loaded.lock,
            self.batch.add,
            encoded["input_ids"],
            encoded["attention_mask"],
            source_ids,
            list(limits),
        )
        for row, n_prompt in zip(rows, encoded["attention_mask"].sum(dim=1).tolist(), strict=True):
            self.prompt_tokens[id(row)] = int(n_prompt)
        return rows

    def step(self) -> None:
        run_inference(self.backend.loaded.lock, self.batch.step)

    def passes_left(self) -> float:
        return self.batch.passes_left()

    def finished(self) -> list[tuple[Any, GenerationOutput]]:
        done = self.batch.finished()
        self.remove(done)
        outputs = []
        for row in done:
            stats = row_stats(row, self.decoder, self.reason)
            outputs.append((row, self.backend.output(row.generated, stats, self.prompt_tokens.pop(id(row)))))
        return outputs

    def remove(self, handles: Sequence[Any]) -> None:
        run_inference(self.backend.loaded.lock, self.batch.remove, handles)
        for row in handles:
            if not row.done:  # finished rows keep theirs until `finished` reports them
                self.prompt_tokens.pop(id(row), None)
