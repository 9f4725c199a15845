"""`Aligner`: correct (question, answer) pairs with a learned corrector, sync, batched, streamed or async."""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from aligner_chains.core.batching import RequestFuture, default_batcher, run_isolated
from aligner_chains.core.errors import BackendTimeoutError, ConfigError, InputTooLongError, TemplateError
from aligner_chains.core.generation import Backend, GenerationOutput, GenerationParams, StopSignal
from aligner_chains.core.model_files import default_model
from aligner_chains.core.options import TokenizerMode, as_pair
from aligner_chains.core.result import Correction
from aligner_chains.core.segmented import SegmentedCorrections
from aligner_chains.core.templates import DEFAULT_TEMPLATE, Template, get_template, template_for_model
from aligner_chains.core.threads import iterate_in_thread

if TYPE_CHECKING:  # the local backend (torch, transformers) is imported only by from_pretrained
    from aligner_chains.backends.local import DecodingStrategy, Quantization

Overflow = Literal["raise", "truncate_question"]
OnError = Literal["raise", "passthrough"]

# `acorrect` renders and counts tokens here (CPU work that would stall an event loop), apart from the default
# executor, whose threads long streamed generations may hold. Two threads: a local tokenizer runs one call at
# a time anyway, and each thread preparing a huge input holds its own copies of it (memory).
_PREPARER = ThreadPoolExecutor(max_workers=2, thread_name_prefix="aligner-prepare")


@dataclass
class _Prepared:
    """A validated request: the prompt to send, or a skip (empty answer)."""

    question: str
    answer: str
    prompt: str
    prompt_tokens: int
    params: GenerationParams
    skip: bool = False

    @property
    def source(self) -> str:
        """What copy-aware decoding drafts from: the answer."""
        return self.answer


class Aligner(SegmentedCorrections):
    """A corrector for upstream answers: render the template, generate, report a `Correction`.

    An empty or whitespace-only answer is not sent to the model: the result has ``corrected=""``,
    ``changed=False`` and ``finish_reason="skipped"`` (there is nothing to correct).
    """

    def __init__(
        self,
        backend: Backend,
        template: str | Template,
        *,
        generation: GenerationParams | dict[str, Any] | None = None,
        overflow: Overflow = "raise",
        on_error: OnError = "raise",
        micro_batching: bool = True,
        max_batch_size: int = 16,
        max_wait_ms: float = 5.0,
        timeout: float = 600.0,
    ) -> None:
        if overflow not in ("raise", "truncate_question"):
            raise ConfigError(f"overflow={overflow!r}: use 'raise' or 'truncate_question'.")
        _check_on_error(on_error)
        self.on_error: OnError = on_error
        self.backend = backend
        self.template = get_template(template)
        if isinstance(generation, dict):
            generation = GenerationParams().merged(generation)
        self.generation = generation or GenerationParams()
        backend.check_generation(self.generation)  # typos fail here, not on the first call
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not timeout > 0:
            raise ConfigError(f"timeout={timeout!r}: use the seconds a micro-batched call may wait (> 0).")
        self.timeout = float(timeout)
        self.overflow: Overflow = overflow
        # Concurrent single calls on one backend join one batch (one batcher per backend, shared by copies).
        self._batcher = (
            default_batcher(backend, max_batch_size=max_batch_size, max_wait_ms=max_wait_ms) if micro_batching else None
        )

    @classmethod
    def from_pretrained(
        cls,
        model: str | None = None,
        *,
        template: str | Template | None = None,
        device: str = "auto",
        dtype: str = "auto",
        device_map: str | None = None,
        quantization: Quantization | None = None,
        adapter: str | None = None,
        trust_remote_code: bool = False,
        allow_pickle: bool = False,
        revision: str | None = None,
        tokenizer_mode: TokenizerMode = "auto",
        overflow: Overflow = "raise",
        on_error: OnError = "raise",
        strategy: DecodingStrategy | None = None,
        speculative: bool = True,
        micro_batching: bool = True,
        max_batch_size: int = 16,
        max_wait_ms: float = 5.0,
        timeout: float = 600.0,
        **generation: Any,
    ) -> Aligner:
        """Load an Aligner from a local path, ``"demo"`` or a hub id (through the shared model cache).

        ``model=None`` takes the default model: ``$ALIGNER_MODEL`` if set, else the shipped demo
        (see `aligner_chains.core.model_files.default_model`).

        The template comes from ``template=``, else the checkpoint's ``aligner_config.json``, else
        the table of released checkpoints; otherwise a `TemplateError` asks for ``template=``.
        Remaining keyword arguments are generation settings (``max_new_tokens``, ``do_sample``, keys of
        transformers' ``GenerationConfig``); an unknown one raises `ConfigError` naming the closest option.
        ``tokenizer_mode`` chooses how a sentencepiece checkpoint encodes (see `load_tokenizer`).
        A micro-batched call waits at most ``timeout`` seconds for its batch (`BackendTimeoutError`).
        Greedy decoding uses copy-aware speculative decoding on models where it is exact (same tokens
        as plain greedy in fp32, fewer forward passes; others run plain ``generate``, as
        ``Correction.stats["decoder_reason"]`` says); ``speculative=False`` or ``strategy=`` chooses.
        Concurrent ``correct``/``acorrect`` calls arriving within ``max_wait_ms`` share one batch of
        up to ``max_batch_size`` (``micro_batching=False`` runs each call on its own).
        ``on_error="passthrough"`` turns a failed correction into the unchanged answer with
        ``finish_reason="error"`` and the reason in ``Correction.error``.
        """
        from aligner_chains.backends.local import (
            HFGenerate,
            LoadOptions,
            LocalBackend,
            check_generation_keys,
            load_model,
        )

        named = set(inspect.signature(cls.from_pretrained).parameters) - {"generation"}
        check_generation_keys(generation, also=named, where="Aligner.from_pretrained")  # before loading weights
        model = default_model() if model is None else model
        options = LoadOptions(
            device=device,
            dtype=dtype,
            device_map=device_map,
            quantization=quantization,
            adapter=adapter,
            trust_remote_code=trust_remote_code,
            allow_pickle=allow_pickle,
            revision=revision,
            tokenizer_mode=tokenizer_mode,
        )
        loaded = load_model(model, options)
        stored_generation = (loaded.aligner_config or {}).get("generation") or {}
        check_generation_keys(stored_generation, where=f"The 'generation' of {model!r}'s aligner_config.json")
        generation = {**stored_generation, **generation}
        if template is None:
            stored = (loaded.aligner_config or {}).get("template")
            template = stored if stored is not None else template_for_model(model)
        if template is None:
            raise TemplateError(
                f"Model {model!r} has no aligner_config.json naming its prompt template and is not a known "
                f"released checkpoint. Pass template=, e.g. template='aligner-v2' "
                f"(the default for new models, {DEFAULT_TEMPLATE!r}) or a Template(...)."
            )
        return cls(
            LocalBackend(loaded, strategy or (None if speculative else HFGenerate())),
            template,
            generation=generation,
            overflow=overflow,
            on_error=on_error,
            micro_batching=micro_batching,
            max_batch_size=max_batch_size,
            max_wait_ms=max_wait_ms,
            timeout=timeout,
        )

    @classmethod
    def from_server(
        cls,
        base_url: str | Sequence[str],
        *,
        model: str | None = None,
        template: str | Template | None = None,
        api_key: str | None = None,
        tokenizer: Any = None,
        max_context: int | Literal["auto"] | None = "auto",
        timeout: float = 120.0,
        max_retries: int = 3,
        max_concurrency: int = 8,
        overflow: Overflow = "raise",
        on_error: OnError = "raise",
        backend_options: dict[str, Any] | None = None,
        **generation: Any,
    ) -> Aligner:
        """An Aligner whose model runs on an OpenAI-compatible server (vLLM, TGI, SGLang, ``aligner-chains serve``).

        The rendered template goes to ``POST {base_url}/v1/completions`` as a raw prompt, greedy by default;
        results and errors are those of the local backend. ``base_url`` may list several servers of the same
        model: requests go to the least busy, a failing one is set aside, and all are checked at once to
        serve the model. ``model=None`` takes the server's only model;
        ``template=None`` takes it from ``tokenizer``'s ``aligner_config.json``, the server, or the released
        table. ``api_key`` defaults to ``$ALIGNER_API_KEY``. ``tokenizer=`` (a local path) gives exact token
        counts without round trips. ``backend_options`` go to `aligner_chains.backends.remote.RemoteBackend`
        (``stop``, ``headers``, ``token_counting``, ``http_client``, ...); other keyword arguments are
        generation settings. HTTP failures raise `BackendError`.
        """
        from aligner_chains.backends.remote import RemoteBackend

        backend = RemoteBackend(
            base_url,
            model=model,
            api_key=api_key,
            tokenizer=tokenizer,
            max_context=max_context,
            timeout=timeout,
            max_retries=max_retries,
            max_concurrency=max_concurrency,
            **(backend_options or {}),
        )
        if model is None:
            backend.resolve_model()
        if len(backend.fleet.transports) > 1:
            backend.check_servers()
        generation = {**backend.stored_generation(), **generation}
        # No micro-batching here: the server batches (continuously, in vLLM), and requests are independent.
        return cls(
            backend,
            backend.resolve_template(template),
            generation=generation,
            overflow=overflow,
            on_error=on_error,
            micro_batching=False,
        )

    def with_options(self, *, on_error: OnError | None = None, **generation: Any) -> Aligner:
        """A copy sharing this Aligner's backend (and weights) with other defaults."""
        return Aligner(
            self.backend,
            self.template,
            generation=self.generation.merged(generation),
            overflow=self.overflow,
            on_error=on_error or self.on_error,
            micro_batching=self._batcher is not None,
            timeout=self.timeout,
        )

    @property
    def model_name(self) -> str:
        """The model id or path this Aligner was loaded from."""
        return self.backend.name

    # ----------------------------------------------------------------- preparation

    def _settings(self, overrides: dict[str, Any]) -> GenerationParams:
        """This Aligner's generation settings with a call's ``overrides``, checked by the backend."""
        params = self.generation.merged(overrides)
        if overrides:
            self.backend.check_generation(params)
        return params

    def _prepare(self, question: Any, answer: Any, overrides: dict[str, Any]) -> _Prepared:
        """Validate, render and size one request.

        ``max_new_tokens`` left unset means the room left in the context (at most 2048); the input
        is then too long when that room is smaller than the answer itself, since a correction is
        about as long as the answer it rewrites.
        """
        for label, value in (("question", question), ("answer", answer)):
            if not isinstance(value, str):
                raise TypeError(f"{label} must be a str, got {type(value).__name__}: {value!r:.80}")
        params = self._settings(overrides)
        if not answer.strip():
            return _Prepared(question, answer, "", 0, params, skip=True)
        prompt = self.template.render(question, answer)
        n_prompt = self.backend.count_tokens(prompt)
        context = self.backend.max_context
        explicit = params.max_new_tokens
        if context is None:
            max_new = explicit or self.backend.default_max_new_tokens
            return _Prepared(question, answer, prompt, n_prompt, params.with_max_new_tokens(max_new))
        need = explicit if explicit is not None else self.backend.count_tokens(answer)
        if n_prompt + need > context and self.overflow == "truncate_question":
            fitted = self._fit_question(question, answer, context - need)
            if fitted is not None:
                question, prompt = fitted, self.template.render(fitted, answer)
                n_prompt = self.backend.count_tokens(prompt)
        if n_prompt + need <= context:
            max_new = explicit if explicit is not None else min(self.backend.default_max_new_tokens, context - n_prompt)
            return _Prepared(question, answer, prompt, n_prompt, params.with_max_new_tokens(max_new))
        what = f"max_new_tokens={explicit}" if explicit is not None else f"the answer's own length ({need} tokens)"
        # Cutting the question helps only when the prompt without it fits (truncate_question tried that already).
        question_helps = (
            self.overflow == "raise" and self.backend.count_tokens(self.template.render("", answer)) + need <= context
        )
        raise InputTooLongError(
            f"The prompt takes {n_prompt} tokens; with {what} that is {n_prompt + need} tokens, more than "
            f"the model's context of {context}. Shorten the answer"
            + (" or lower max_new_tokens" if explicit is not None else "")
            + (
                ", or pass overflow='truncate_question' to cut the question from the left."
                if question_helps
                else " (the answer alone is too long even with the question removed)."
            ),
            prompt_tokens=n_prompt,
            max_new_tokens=need,
            context=context,
        )

    def _fit_question(self, question: str, answer: str, budget: int) -> str | None:
        """The longest left-truncation of ``question`` whose prompt fits ``budget`` tokens, or None."""
        base = self.backend.count_tokens(self.template.render("", answer))
        if base > budget:
            return None
        q_tokens = self.backend.count_tokens(question) - self.backend.count_tokens("")
        cut = max(0, q_tokens - (budget - base))
        while True:
            candidate = self.backend.truncate_left(question, cut)
            if self.backend.count_tokens(self.template.render(candidate, answer)) <= budget:
                return candidate
            if cut >= q_tokens:
                return ""
            cut += 1

    def _failed(self, question: Any, answer: Any, exc: Exception) -> Correction:
        return Correction.failed(
            question if isinstance(question, str) else str(question),
            answer if isinstance(answer, str) else str(answer),
            exc,
            template=self.template.name,
            model=self.model_name,
        )

    def _policy(self, on_error: OnError | None) -> OnError:
        return self.on_error if on_error is None else _check_on_error(on_error)

    def _result(self, req: _Prepared, out: GenerationOutput | None, latency: float) -> Correction:
        if out is None:
            return Correction(
                question=req.question,
                original=req.answer,
                corrected="",
                changed=False,
                template=self.template.name,
                model=self.model_name,
                finish_reason="skipped",
                latency_s=latency,
            )
        return Correction(
            question=req.question,
            original=req.answer,
            corrected=out.text,
            changed=out.text != req.answer.strip(),
            template=self.template.name,
            model=self.model_name,
            finish_reason=out.finish_reason,
            prompt_tokens=out.prompt_tokens,
            completion_tokens=len(out.token_ids),
            latency_s=latency,
            stats=out.stats,
        )

    # ----------------------------------------------------------------- sync API

    def correct(self, question: str, answer: str, *, on_error: OnError | None = None, **generation: Any) -> Correction:
        """Correct one answer to ``question`` (joining a micro-batch with concurrent calls)."""
        if self._batcher is None:
            return self.correct_batch([(question, answer)], batch_size=1, on_error=on_error, **generation)[0]
        started = time.perf_counter()
        submitted = self._submit(question, answer, on_error, generation)
        if isinstance(submitted, Correction):
            return submitted
        req, future = submitted
        try:
            out = future.result(timeout=self.timeout)
        except FutureTimeout:
            return self._on_failure(question, answer, self._timed_out(future), on_error)
        except Exception as exc:
            return self._on_failure(question, answer, exc, on_error)
        return self._result(req, out, time.perf_counter() - started)

    def _submit(
        self, question: Any, answer: Any, on_error: OnError | None, generation: dict[str, Any]
    ) -> Correction | tuple[_Prepared, RequestFuture]:
        """Prepare one request and queue it on the micro-batcher, or return its final result now."""
        assert self._batcher is not None
        req = self._admit(question, answer, on_error, generation)
        if isinstance(req, Correction):
            return req
        return req, self._batcher.submit(req.prompt, req.params, req.answer, req.prompt_tokens)

    def _admit(
        self, question: Any, answer: Any, on_error: OnError | None, generation: dict[str, Any]
    ) -> Correction | _Prepared:
        """Prepare one request (render, count tokens), or its final result when it needs no generation."""
        try:
            req = self._prepare(question, answer, generation)
        except (TypeError, ConfigError):  # a wrong call, not a failed correction
            raise
        except Exception as exc:
            return self._on_failure(question, answer, exc, on_error)
        if req.skip:
            return self._result(req, None, 0.0)
        return req

    def _timed_out(self, future: RequestFuture) -> BackendTimeoutError:
        future.abandon()
        return BackendTimeoutError(
            f"No correction within timeout={self.timeout:g} s: the model is busy or stuck. Pass a larger "
            "timeout= to Aligner.from_pretrained, or lower max_new_tokens or the load."
        )

    def _on_failure(self, question: Any, answer: Any, exc: Exception, on_error: OnError | None) -> Correction:
        if self._policy(on_error) == "raise":
            raise exc
        return self._failed(question, answer, exc)

    def correct_batch(
        self,
        pairs: Iterable[tuple[str, str]],
        batch_size: int = 16,
        *,
        on_error: OnError | None = None,
        return_exceptions: bool = False,
        stop: StopSignal | None = None,
        **generation: Any,
    ) -> list[Correction]:
        """Correct many pairs: one padded generation per ``batch_size`` pairs, results in input order.

        Once ``stop.is_set()`` (e.g. a `threading.Event` set when the caller has gone), the running
        generation ends early where the backend supports it; later chunks still run, briefly.

        Pairs are grouped by prompt length to waste little padding; each result's ``latency_s`` is
        the wall time of the batch it ran in. With ``on_error="passthrough"`` a pair that fails
        (too long, generation error) comes back unchanged and marked, and the others still run; with
        ``return_exceptions=True`` (and ``on_error="raise"``) its exception takes its place in the list,
        as langchain-core's ``batch`` does. Either way a failing pair fails only itself.
        """
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive int, got {batch_size!r}.")
        policy = self._policy(on_error)
        self._settings(generation)  # a wrong setting fails the call, not each pair
        items = [as_pair(pair, i) for i, pair in enumerate(pairs)]
        results: list[Any] = [None] * len(items)
        prepared: dict[int, _Prepared] = {}

        def fail(i: int, exc: Exception) -> None:
            if policy == "raise" and not return_exceptions:
                raise exc
            results[i] = exc if policy == "raise" else self._failed(*items[i], exc)

        for i, (question, answer) in enumerate(items):
            try:
                prepared[i] = self._prepare(question, answer, generation)
            except Exception as exc:
                if isinstance(exc, (TypeError, ConfigError)) and not return_exceptions:
                    raise  # a wrong call, not a failed correction
                fail(i, exc)
        for i, req in prepared.items():
            if req.skip:
                results[i] = self._result(req, None, 0.0)
        todo = sorted((i for i, p in prepared.items() if not p.skip), key=lambda i: -prepared[i].prompt_tokens)
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            started = time.perf_counter()
            outcomes = run_isolated(  # a failed batch is retried pair by pair, unless the first error is raised
                self.backend,
                [prepared[i] for i in chunk],
                isolate=policy == "passthrough" or return_exceptions,
                stop=stop,
            )
            latency = time.perf_counter() - started
            for i, out in zip(chunk, outcomes, strict=True):
                if isinstance(out, Exception):
                    fail(i, out)
                else:
                    results[i] = self._result(prepared[i], out, latency)
        return results

    def iter_correction(
        self, question: str, answer: str, *, on_error: OnError | None = None, **generation: Any
    ) -> Iterator[str | Correction]:
        """Yield text pieces as they are generated, then the final `Correction`.

        With ``on_error="passthrough"``, a failure before the first piece yields the original
        answer as one piece and a marked `Correction`; a failure mid-stream is raised.
        """
        policy = self._policy(on_error)
        started = time.perf_counter()
        emitted = False
        try:
            req = self._prepare(question, answer, generation)
            if req.skip:
                yield self._result(req, None, 0.0)
                return
            for item in self.backend.stream(req.prompt, req.params, source=req.answer):
                if isinstance(item, str):
                    emitted = True
                    yield item
                else:
                    yield self._result(req, item, time.perf_counter() - started)
        except (TypeError, ConfigError):  # a wrong call, not a failed correction
            raise
        except Exception as exc:
            if policy == "raise" or emitted:
                raise
            if answer:
                yield answer
            yield self._failed(question, answer, exc)

    def stream(self, question: str, answer: str, **generation: Any) -> Iterator[str]:
        """Yield the correction's text pieces as they are generated; they join to ``correct().corrected``."""
        for item in self.iter_correction(question, answer, **generation):
            if isinstance(item, str):
                yield item

    # ----------------------------------------------------------------- async API

    async def acorrect(
        self, question: str, answer: str, *, on_error: OnError | None = None, **generation: Any
    ) -> Correction:
        """Async `correct`: joins the micro-batch; the event loop stays free while the model runs."""
        if self._batcher is None:
            return (await self.acorrect_batch([(question, answer)], 1, on_error=on_error, **generation))[0]
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        req = await loop.run_in_executor(_PREPARER, self._admit, question, answer, on_error, generation)
        if isinstance(req, Correction):
            return req
        future = self._batcher.submit(req.prompt, req.params, req.answer, req.prompt_tokens)
        try:
            out = await asyncio.wait_for(asyncio.wrap_future(future), self.timeout)
        except asyncio.CancelledError:  # the caller has gone (e.g. a client disconnected): give the slot back
            future.abandon()
            raise
        except (FutureTimeout, asyncio.TimeoutError):
            return self._on_failure(question, answer, self._timed_out(future), on_error)
        except Exception as exc:
            return self._on_failure(question, answer, exc, on_error)
        return self._result(req, out, time.perf_counter() - started)

    async def acorrect_batch(
        self,
        pairs: Iterable[tuple[str, str]],
        batch_size: int = 16,
        *,
        on_error: OnError | None = None,
        **generation: Any,
    ) -> list[Correction]:
        """Async `correct_batch`; cancelling it ends the running generation at its next step."""
        pairs, stop = list(pairs), threading.Event()
        try:
            return await asyncio.to_thread(
                self.correct_batch, pairs, batch_size, on_error=on_error, stop=stop, **generation
            )
        except asyncio.CancelledError:
            stop.set()  # the thread cannot be cancelled; the signal ends its generation instead
            raise

    async def aiter_correction(
        self, question: str, answer: str, *, on_error: OnError | None = None, **generation: Any
    ) -> AsyncIterator[str | Correction]:
        """Async `iter_correction`: pieces arrive as a worker thread generates them; leaving stops it."""
        for label, value in (("question", question), ("answer", answer)):
            if not isinstance(value, str):  # raise in the caller's task, not the worker thread
                raise TypeError(f"{label} must be a str, got {type(value).__name__}: {value!r:.80}")
        pieces = iterate_in_thread(lambda: self.iter_correction(question, answer, on_error=on_error, **generation))
        async for item in pieces:
            yield item

    async def astream(self, question: str, answer: str, **generation: Any) -> AsyncIterator[str]:
        """Async `stream`."""
        async for item in self.aiter_correction(question, answer, **generation):
            if isinstance(item, str):
                yield item

    def __repr__(self) -> str:
        return f"Aligner(model={self.model_name!r}, template={self.template.name!r})"


def _check_on_error(on_error: Any) -> OnError:
    if on_error not in ("raise", "passthrough"):
        raise ConfigError(f"on_error={on_error!r}: use 'raise' or 'passthrough'.")
    return on_error
