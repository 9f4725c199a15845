"""The Aligner server app: OpenAI-compatible completions plus native corrections over one `Aligner`.

Generation is never re-implemented here: ``/v1/completions`` calls ``aligner.backend.generate`` /
``aligner.backend.stream`` on the raw prompt, ``/v1/corrections`` calls ``aligner.acorrect``,
``acorrect_batch`` and ``aiter_correction`` (``aiter_segments`` for ``stream_mode="segments"``), so whatever
batching the core does applies.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from aligner_chains.backends.tokenizers import LockedTokenizer, locked
from aligner_chains.core.aligner import Aligner
from aligner_chains.core.errors import BackendError, ConfigError
from aligner_chains.core.generation import DEFAULT_MAX_NEW_TOKENS, GenerationOutput
from aligner_chains.core.result import Correction
from aligner_chains.core.segmented import StreamMode, check_stream_mode
from aligner_chains.server.config import ServerConfig
from aligner_chains.server.http import (
    SSE_DONE,
    SSE_HEADERS,
    ApiError,
    Metrics,
    ServingMiddleware,
    api_error_from,
    chain_items,
    install_error_handlers,
    iterate_in_thread,
    prefetch,
    read_json_object,
    sse,
    validate,
)
from aligner_chains.server.playground import PLAYGROUND_ROUTES, add_playground
from aligner_chains.server.schemas import CompletionRequest, CorrectionRequest, DetokenizeRequest, TokenizeRequest

MAX_STOP_STRINGS = 16
ROUTES = (
    "POST /v1/completions, POST /v1/corrections, GET /v1/models, POST /tokenize, POST /detokenize, "
    "GET /health, GET /metrics"
)


class StopFilter:
    """Cuts streamed text at the first stop string, holding back what could be the start of one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = list(stops)
        self.buffer = ""
        self.hit: str | None = None

    def push(self, piece: str) -> str:
        self.buffer += piece
        if not self.stops:
            out, self.buffer = self.buffer, ""
            return out
        found = [(self.buffer.find(s), s) for s in self.stops if s in self.buffer]
        if found:
            index, stop = min(found)
            self.hit = stop
            out, self.buffer = self.buffer[:index], ""
            return out
        keep = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(self.buffer)), 0, -1):
                if self.buffer.endswith(stop[:k]):
                    keep = max(keep, k)
                    break
        out, self.buffer = self.buffer[: len(self.buffer) - keep], self.buffer[len(self.buffer) - keep :]
        return out

    def flush(self) -> str:
        out, self.buffer = self.buffer, ""
        return out


def apply_stop(text: str, stops: Sequence[str]) -> tuple[str, str | None]:
    """``text`` cut before its first stop string, and that stop string (or None)."""
    found = [(text.find(s), s) for s in stops if s in text]
    if not found:
        return text, None
    index, stop = min(found)
    return text[:index], stop


def completion_tokens(out: GenerationOutput) -> int:
    """Generated tokens as OpenAI servers count them: the end-of-sequence token included (as vLLM does)."""
    return len(out.token_ids) + (1 if out.finish_reason == "stop" else 0)


def sampling_overrides(
    temperature: float | None, top_p: float | None, top_k: int | None = None, repetition_penalty: float | None = None
) -> dict[str, Any]:
    """Generation settings from OpenAI-style fields: ``temperature=0`` is greedy, unset keeps the Aligner's."""
    overrides: dict[str, Any] = {}
    if temperature is not None:
        overrides.update({"do_sample": False} if temperature == 0 else {"do_sample": True, "temperature": temperature})
    if top_p is not None:
        overrides["top_p"] = top_p
    if top_k is not None and top_k > 0:
        overrides["top_k"] = top_k
    if repetition_penalty is not None:
        overrides["repetition_penalty"] = repetition_penalty
    return overrides


class _Server:
    """What the route functions share: the Aligner, the config and the metrics."""

    def __init__(self, aligner: Aligner, config: ServerConfig) -> None:
        self.aligner = aligner
        self.config = config
        self.model_name = config.served_model_name or aligner.model_name
        self.aliases = {self.model_name, aligner.model_name}
        self.metrics = Metrics("aligner_server")
        self.started = int(time.time())

    @property
    def backend(self) -> Any:
        return self.aligner.backend

    @property
    def tokenizer(self) -> LockedTokenizer | None:
        """The backend's local tokenizer behind its lock (None for a backend without one)."""
        return locked(getattr(self.backend, "tokenizer", None))

    def check_model(self, model: str | None) -> None:
        if model is not None and model not in self.aliases:
            raise ApiError(
                404,
                f"The model {model!r} does not exist on this server; it serves {self.model_name!r}. "
                "Send that name (or leave 'model' out).",
                param="model",
                code="model_not_found",
            )

    def check_max_tokens(self, value: int | None, field: str) -> None:
        limit = self.config.max_tokens_limit
        if value is not None and limit is not None and value > limit:
            raise ApiError(
                400,
                f"{field}={value} is more than this server's limit of {limit} tokens; ask for at most {limit}.",
                param=field,
                code="max_tokens_too_large",
            )

    def max_tokens_for(self, prompt_tokens: int, requested: int | None) -> int:
        """The completion budget of one prompt; 400 when prompt + budget do not fit the context."""
        context = self.backend.max_context
        limit = self.config.max_prompt_tokens
        if limit is not None and prompt_tokens > limit:
            raise ApiError(
                400,
                f"The prompt takes {prompt_tokens} tokens; this server accepts at most {limit}. Shorten the prompt.",
                param="prompt",
                code="prompt_too_long",
            )
        if requested is None:
            requested_text = "the default max_tokens"
            wanted = self.aligner.generation.max_new_tokens or DEFAULT_MAX_NEW_TOKENS
            if self.config.max_tokens_limit is not None:
                wanted = min(wanted, self.config.max_tokens_limit)
            if context is not None:
                wanted = min(wanted, context - prompt_tokens)
        else:
            requested_text = f"max_tokens={requested}"
            wanted = requested
        if context is not None and (wanted < 1 or prompt_tokens + wanted > context):
            raise ApiError(
                400,
                f"This model's maximum context length is {context} tokens. However, you requested "
                f"{prompt_tokens + max(wanted, 1)} tokens ({prompt_tokens} in the prompt, {max(wanted, 1)} in the "
                f"completion, from {requested_text}). Shorten the prompt or lower max_tokens.",
                param="prompt",
                code="context_length_exceeded",
                extra={"prompt_tokens": prompt_tokens, "max_tokens": max(wanted, 1), "context": context},
            )
        return wanted

    def model_card(self) -> dict[str, Any]:
        template = self.aligner.template
        return {
            "id": self.model_name,
            "object": "model",
            "created": self.started,
            "owned_by": "aligner-chains",
            "max_model_len": self.backend.max_context,
            "aligner": {
                "template": {"name": template.name, "prompt": template.prompt},
                "backend": type(self.backend).__name__,
            },
        }


def create_app(aligner: Aligner, config: ServerConfig | None = None, **options: Any) -> FastAPI:
    """A FastAPI app serving ``aligner``; ``options`` override fields of ``config`` (a `ServerConfig`)."""
    if not isinstance(aligner, Aligner):
        raise TypeError(f"create_app needs an Aligner, got {type(aligner).__name__}")
    config = ServerConfig.model_validate({**(config.model_dump() if config else {}), **options})
    server = _Server(aligner, config)
    app = FastAPI(title="aligner-chains server", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server
    install_error_handlers(app, ROUTES + (", GET /playground" if config.playground else ""))
    routes = {"/v1/completions", "/v1/corrections", "/v1/models", "/tokenize", "/detokenize", "/health", "/metrics"}
    if config.playground:
        routes |= PLAYGROUND_ROUTES
        add_playground(app, model=server.model_name, config=config)
    app.add_middleware(
        ServingMiddleware,
        metrics=server.metrics,
        routes=routes,
        protected=lambda path: path.startswith("/v1/") or path in ("/tokenize", "/detokenize"),
        api_key=config.api_key,
        max_in_flight=config.max_in_flight,
        max_body_bytes=config.max_body_bytes,
        body_timeout=config.body_timeout,
        allowed_hosts=config.allowed_hosts,
    )
    if config.cors_allow_origins:  # outermost: preflight requests are answered before the API-key check
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=config.cors_allow_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
            max_age=600,
        )

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "model": server.model_name,
            "template": aligner.template.name,
            "uptime_s": round(time.time() - server.started, 3),
        }

    @app.get("/metrics")
    async def metrics() -> Response:
        return server.metrics.response()

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [server.model_card()]}

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        try:
            return await _completions(server, request)
        except Exception as exc:
            return api_error_from(exc, what="completion").response()

    @app.post("/v1/corrections")
    async def corrections(request: Request) -> Response:
        try:
            return await _corrections(server, request)
        except Exception as exc:
            return api_error_from(exc, what="correction").response()

    @app.post("/tokenize")
    async def tokenize(request: Request) -> Response:
        try:
            req = validate(TokenizeRequest, await read_json_object(request, config.max_body_bytes))
            server.check_model(req.model)
            tokenizer = server.tokenizer
            if tokenizer is not None:  # tokenizing in a worker thread keeps the event loop free
                tokens = await run_in_threadpool(tokenizer.ids, req.prompt, add_special_tokens=req.add_special_tokens)
                count = len(tokens)
            else:
                tokens, count = [], await run_in_threadpool(server.backend.count_tokens, req.prompt)
            return JSONResponse({"count": count, "max_model_len": server.backend.max_context, "tokens": tokens})
        except Exception as exc:
            return api_error_from(exc, what="tokenization").response()

    @app.post("/detokenize")
    async def detokenize(request: Request) -> Response:
        try:
            req = validate(DetokenizeRequest, await read_json_object(request, config.max_body_bytes))
            server.check_model(req.model)
            tokenizer = server.tokenizer
            if tokenizer is None:
                raise ApiError(404, "This server's backend has no local tokenizer to detokenize with.")
            vocab = len(tokenizer)
            bad = [t for t in req.tokens if not 0 <= t < vocab]
            if bad:
                raise ApiError(400, f"Token ids {bad[:5]} are outside the vocabulary (0..{vocab - 1}).", param="tokens")
            text = await run_in_threadpool(tokenizer.decode, req.tokens, clean_up_tokenization_spaces=False)
            return JSONResponse({"prompt": text})
        except Exception as exc:
            return api_error_from(exc, what="detokenization").response()

    return app


# ----------------------------------------------------------------------------- /v1/completions


async def _completions(server: _Server, request: Request) -> Response:
    req = validate(CompletionRequest, await read_json_object(request, server.config.max_body_bytes))
    server.check_model(req.model)
    for field, value, ok in (
        ("n", req.n, req.n == 1),
        ("best_of", req.best_of, req.best_of in (None, 1)),
        ("echo", req.echo, not req.echo),
        ("logprobs", req.logprobs, req.logprobs is None),
        ("suffix", req.suffix, req.suffix is None),
        ("presence_penalty", req.presence_penalty, not req.presence_penalty),
        ("frequency_penalty", req.frequency_penalty, not req.frequency_penalty),
    ):
        if not ok:
            raise ApiError(
                400,
                f"{field}={value!r} is not supported by this server; leave it out.",
                param=field,
                code="unsupported",
            )
    prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
    if not prompts:
        raise ApiError(400, "prompt is an empty list: send a string or a list of strings.", param="prompt")
    if len(prompts) > server.config.max_batch_items:
        raise ApiError(
            400,
            f"prompt holds {len(prompts)} prompts; this server takes at most {server.config.max_batch_items} per "
            "request. Split the list.",
            param="prompt",
        )
    if req.stream and len(prompts) != 1:
        raise ApiError(400, "stream=true takes a single prompt; send one request per prompt.", param="stream")
    stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stops) > MAX_STOP_STRINGS or any(not s for s in stops):
        raise ApiError(400, f"stop takes 1 to {MAX_STOP_STRINGS} non-empty strings.", param="stop")
    server.check_max_tokens(req.max_tokens, "max_tokens")
    counts = await run_in_threadpool(lambda: [server.backend.count_tokens(p) for p in prompts])
    max_tokens = min(server.max_tokens_for(n, req.max_tokens) for n in counts)
    overrides = sampling_overrides(req.temperature, req.top_p, req.top_k, req.repetition_penalty)
    params = server.aligner.generation.merged({**overrides, "max_new_tokens": max_tokens})
    completion_id = f"cmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        items = iterate_in_thread(lambda: server.backend.stream(prompts[0], params))
        head, rest = await prefetch(items)
        return StreamingResponse(
            _completion_events(
                server, completion_id, created, chain_items(head, rest), stops, include_usage, counts[0]
            ),
            media_type="text/event-stream",
            headers=SSE_HEADERS,
        )
    outputs = await _generate(server, prompts, params)
    choices = []
    for index, out in enumerate(outputs):
        text, stop = apply_stop(out.text, stops)
        choice: dict[str, Any] = {
            "index": index,
            "text": text,
            "logprobs": None,
            "finish_reason": "stop" if stop else out.finish_reason,
            "stop_reason": stop,
        }
        if req.return_token_ids:
            choice["token_ids"] = out.token_ids
        choices.append(choice)
    prompt_tokens = sum(out.prompt_tokens for out in outputs)
    generated = sum(completion_tokens(out) for out in outputs)
    server.metrics.tokens.labels("prompt").inc(prompt_tokens)
    server.metrics.tokens.labels("completion").inc(generated)
    return JSONResponse(
        {
            "id": completion_id,
            "object": "text_completion",
            "created": created,
            "model": server.model_name,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": generated,
                "total_tokens": prompt_tokens + generated,
            },
        }
    )


async def _generate(server: _Server, prompts: list[str], params: Any) -> list[GenerationOutput]:
    """Complete ``prompts`` in a worker thread.

    One prompt runs through the backend's stream, so that a client that leaves (the request is then
    cancelled, which closes the stream) stops its generation at the next token; a list runs as one batch,
    which a client that leaves stops through the backend's ``stop`` signal.
    """
    if len(prompts) > 1:
        stop = threading.Event()
        options = {"stop": stop} if server.backend.supports_stop else {}
        try:
            return await asyncio.to_thread(server.backend.generate, prompts, params, **options)
        except asyncio.CancelledError:
            stop.set()
            raise
    items = iterate_in_thread(lambda: server.backend.stream(prompts[0], params))
    final: GenerationOutput | None = None
    try:
        async for item in items:
            if isinstance(item, GenerationOutput):
                final = item
    finally:
        await items.aclose()  # type: ignore[attr-defined]
    if final is None:
        raise BackendError(f"{type(server.backend).__name__}.stream ended without its final output.")
    return [final]


async def _completion_events(
    server: _Server,
    completion_id: str,
    created: int,
    items: AsyncIterator[str | GenerationOutput],
    stops: list[str],
    include_usage: bool,
    prompt_tokens: int,
) -> AsyncIterator[str]:
    def chunk(text: str, finish: str | None = None, stop_reason: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        if finish is not None:
            choice["stop_reason"] = stop_reason
        return {
            "id": completion_id,
            "object": "text_completion",
            "created": created,
            "model": server.model_name,
            "choices": [choice],
        }

    stopper = StopFilter(stops)
    final: GenerationOutput | None = None
    emitted = ""
    try:
        async for item in items:
            if isinstance(item, GenerationOutput):
                final = item
                continue
            piece = stopper.push(item)
            if piece:
                emitted += piece
                yield sse(chunk(piece))
            if stopper.hit is not None:
                break  # closing the stream stops generation
        if stopper.hit is None:
            tail = stopper.flush()
            if tail:
                emitted += tail
                yield sse(chunk(tail))
        finish = "stop" if stopper.hit is not None or final is None else final.finish_reason
        yield sse(chunk("", finish, stopper.hit))
        if final is not None:
            n_prompt, n_completion = final.prompt_tokens, completion_tokens(final)
        else:  # stopped early by a stop string: count what was generated
            tokenizer = server.tokenizer
            n_prompt = prompt_tokens
            n_completion = (
                len(await run_in_threadpool(tokenizer.ids, emitted, add_special_tokens=False)) if tokenizer else 0
            )
        server.metrics.tokens.labels("prompt").inc(n_prompt)
        server.metrics.tokens.labels("completion").inc(n_completion)
        if include_usage:
            usage = {
                "prompt_tokens": n_prompt,
                "completion_tokens": n_completion,
                "total_tokens": n_prompt + n_completion,
            }
            yield sse({**chunk(""), "choices": [], "usage": usage})
    except Exception as exc:
        yield sse(api_error_from(exc, what="completion").body())
    finally:
        await items.aclose()  # type: ignore[attr-defined]
    yield SSE_DONE


# ----------------------------------------------------------------------------- /v1/corrections


def _correction_json(correction: Correction, include_diff: bool) -> dict[str, Any]:
    data = correction.model_dump()
    if include_diff:
        data["diff"] = [edit.model_dump() for edit in correction.diff()]
    return data


async def _corrections(server: _Server, request: Request) -> Response:
    req = validate(CorrectionRequest, await read_json_object(request, server.config.max_body_bytes))
    server.check_model(req.model)
    if req.max_new_tokens is not None and req.max_tokens is not None and req.max_new_tokens != req.max_tokens:
        raise ApiError(400, "max_new_tokens and max_tokens differ; send one of them.", param="max_new_tokens")
    max_new = req.max_new_tokens if req.max_new_tokens is not None else req.max_tokens
    server.check_max_tokens(max_new, "max_new_tokens")
    stream_mode = server.config.stream_mode if req.stream_mode is None else _stream_mode(req.stream_mode)
    generation = sampling_overrides(req.temperature, req.top_p)
    if max_new is not None:
        generation["max_new_tokens"] = max_new
    elif server.config.max_tokens_limit is not None:
        configured = server.aligner.generation.max_new_tokens
        generation["max_new_tokens"] = min(configured or server.config.max_tokens_limit, server.config.max_tokens_limit)
    aligner = server.aligner
    if req.items is not None:
        if req.question is not None or req.answer is not None:
            raise ApiError(400, "Send either 'question' and 'answer', or 'items', not both.", param="items")
        if req.stream:
            raise ApiError(400, "stream=true takes one question and answer, not 'items'.", param="stream")
        if not req.items or len(req.items) > server.config.max_batch_items:
            raise ApiError(
                400, f"items must hold 1 to {server.config.max_batch_items} pairs, got {len(req.items)}.", param="items"
            )
        results = await aligner.acorrect_batch(
            [(item.question, item.answer) for item in req.items],
            server.config.batch_size,
            on_error=req.on_error,
            **generation,
        )
        for result in results:
            server.metrics.count_correction(result)
        return JSONResponse(
            {
                "object": "list",
                "model": server.model_name,
                "data": [_correction_json(c, req.include_diff) for c in results],
            }
        )
    missing = [name for name in ("question", "answer") if getattr(req, name) is None]
    if missing:
        raise ApiError(
            400,
            f'Missing field {missing[0]!r}: send {{"question": ..., "answer": ...}} or {{"items": [...]}}.',
            param=missing[0],
        )
    assert req.question is not None and req.answer is not None
    if req.stream:
        if stream_mode == "segments":  # each segment's correction is sent once it is generated
            items = aligner.aiter_segments(req.question, _pieces([req.answer]), on_error=req.on_error, **generation)
        else:
            items = aligner.aiter_correction(req.question, req.answer, on_error=req.on_error, **generation)
        head, rest = await prefetch(items)
        return StreamingResponse(
            _correction_events(server, chain_items(head, rest), req.include_diff),
            media_type="text/event-stream",
            headers=SSE_HEADERS,
        )
    result = await aligner.acorrect(req.question, req.answer, on_error=req.on_error, **generation)
    server.metrics.count_correction(result)
    return JSONResponse(_correction_json(result, req.include_diff))


def _stream_mode(value: str) -> StreamMode:
    """A request's ``stream_mode``, or a 400 naming it."""
    try:
        return check_stream_mode(value)
    except ConfigError as exc:
        raise ApiError(400, str(exc), param="stream_mode") from None


async def _pieces(pieces: list[str]) -> AsyncIterator[str]:
    """``pieces`` as the async stream `Aligner.aiter_segments` reads (the segments are cut by the core)."""
    for piece in pieces:
        yield piece


async def _correction_events(
    server: _Server, items: AsyncIterator[str | Correction], include_diff: bool
) -> AsyncIterator[str]:
    try:
        async for item in items:
            if isinstance(item, Correction):
                server.metrics.count_correction(item)
                yield sse({"type": "correction", "correction": _correction_json(item, include_diff)})
            else:
                yield sse({"type": "delta", "text": item})
    except Exception as exc:
        yield sse({"type": "error", **api_error_from(exc, what="correction").body()})
    finally:
        await items.aclose()  # type: ignore[attr-defined]
    yield SSE_DONE
