"""A correcting OpenAI-compatible proxy: ``POST /v1/chat/completions`` goes upstream, the reply through an Aligner.

Any app that speaks the OpenAI chat API gets corrected answers by pointing its base URL at this proxy:

- the request is forwarded unchanged to ``{upstream}/chat/completions`` (the client's ``Authorization``
  header too, unless the proxy has its own ``upstream_api_key`` or guards itself with ``api_key``);
- each choice's assistant text is corrected against the conversation's last user message; choices with
  tool calls (or no text) pass through untouched;
- ``choices[i].aligner`` (a field standard clients ignore) holds `Correction.summary()`: the original
  text, ``changed``, token counts, latency and ``error``;
- ``stream=true``: as ``stream_mode`` says. ``"whole"``: the upstream stream is read in full, then the
  correction streams as ``chat.completion.chunk`` deltas; the last chunk of a choice carries ``aligner``.
  ``"segments"`` (one choice, ``n=1``; ``n>1`` streams as ``"whole"``): the upstream's deltas go to
  `Aligner.aiter_segments` while they arrive, and each segment's correction goes out as a delta as soon as it
  is ready, so the reply trails the upstream by about one segment. A reply whose first delta is a tool call
  (or that has no text) is relayed as it arrives; tool calls after text follow the corrected text. When a
  refusal replaces the answer, the upstream stream is closed at once and the last chunk has
  ``finish_reason: "content_filter"`` (the proxy cut the upstream short; ``aligner.stats.ended_by`` says why).
- A client that leaves stops everything: the upstream HTTP stream is closed and the Aligner stops.

Failures: upstream unreachable, 502; upstream too slow, 504; upstream 4xx, relayed as is (with its
``Retry-After``); upstream 5xx, 502 with its message. A reply cut short is a 502, never a corrected half
answer: a stream that ends without ``[DONE]`` or a ``finish_reason`` for every choice (closed, broken, or
not an event stream at all), or a choice the upstream reports aborted (``finish_reason: "abort"``). The
``finish_reason`` is relayed as the upstream sent it, ``null`` included; the proxy never invents one.
The Aligner failing or taking longer than ``aligner_timeout``: 502/504, or with ``fail_open=True`` the
uncorrected answer, with the reason in ``aligner.error``.

``stream_mode="segments"`` keeps these answers while nothing has been sent: the response starts with the
first corrected segment, so a failure before it is still a 4xx/5xx status (or, fail-open, the uncorrected
reply). Once corrected text has gone out, the status cannot change; a failure then (the upstream breaking
off, cut short, aborted, an error event, a timeout) ends the stream with an ``{"error": {...}}`` event and
nothing else: no chunk with a ``finish_reason``, no ``aligner`` summary and no ``data: [DONE]``, so a client
(the OpenAI SDKs raise on such an event) never takes the text received as a complete answer. Fail-open does
not apply then: the rest cannot be passed on uncorrected without repeating or dropping text. (With
fail-open, a segment the Aligner fails on is passed on as the upstream wrote it, marked in ``aligner.error``.)
There ``aligner_timeout`` bounds the wait for each corrected segment once the upstream has finished.
"""

from __future__ import annotations

import asyncio
import json
import time
import weakref
from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from aligner_chains.core.aligner import Aligner
from aligner_chains.core.result import Correction
from aligner_chains.core.segmented import DEFAULT_STREAM_MODE, StreamMode
from aligner_chains.server.http import (
    SSE_DONE,
    SSE_HEADERS,
    ApiError,
    Metrics,
    ServingMiddleware,
    api_error_from,
    chain_items,
    install_error_handlers,
    prefetch,
    read_json_object,
    sse,
)

SUMMARY_FIELD = "aligner"
#: The ``finish_reason`` vLLM and SGLang send for a generation they cancelled.
ABORTED = "abort"
ROUTES = "POST /v1/chat/completions, GET /v1/models, GET /health, GET /metrics"


class ProxyConfig(BaseModel):
    """Options of the correcting proxy."""

    model_config = ConfigDict(extra="forbid")

    upstream_base_url: str
    """The upstream OpenAI-compatible API, including its ``/v1`` (e.g. ``https://api.openai.com/v1``)."""
    upstream_api_key: str | None = Field(default=None, repr=False)
    """Key sent upstream; None forwards the client's ``Authorization`` header (when ``api_key`` is unset)."""
    api_key: str | None = Field(default=None, repr=False)
    """Key clients must send to this proxy (then their header is not forwarded upstream)."""
    upstream_timeout: float = Field(default=120.0, gt=0)
    """Seconds to wait for the upstream (per read for streams); 504 beyond."""
    upstream_connect_timeout: float = Field(default=10.0, gt=0)
    aligner_timeout: float | None = Field(default=120.0, gt=0)
    """Seconds to wait for a correction (for streams: for its first piece; segment-wise: for each segment once
    the upstream has finished); 504 or fail-open beyond."""
    fail_open: bool = False
    """On an Aligner failure or timeout, answer the uncorrected reply (marked) instead of 502/504."""
    max_body_bytes: int = Field(default=4 * 1_048_576, ge=1)
    body_timeout: float = Field(default=30.0, gt=0)
    """Seconds a client may take to send its whole request body (408 beyond)."""
    max_in_flight: int = Field(default=1024, ge=1)
    """Requests processed at once (counted once their body is read); beyond, 429 with ``Retry-After``."""
    max_new_tokens: int | None = Field(default=None, ge=1)
    """Generation budget of each correction (None: the Aligner's default)."""
    stream_mode: StreamMode = DEFAULT_STREAM_MODE
    """``stream=true`` replies: ``whole`` (read the upstream in full, then stream the correction) or ``segments``
    (correct each segment while the upstream streams; one choice only, ``n>1`` streams whole)."""


class _Proxy:
    def __init__(self, aligner: Aligner, config: ProxyConfig, transport: Any) -> None:
        self.aligner = aligner
        self.config = config
        self.transport = transport
        self.upstream = config.upstream_base_url.rstrip("/")
        self.metrics = Metrics("aligner_proxy")
        from prometheus_client import Counter, Histogram

        self.upstream_seconds = Histogram(
            "aligner_proxy_upstream_duration_seconds",
            "Time the upstream took to answer (streams: to finish)",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=self.metrics.registry,
        )
        self.fail_open_count = Counter(
            "aligner_proxy_fail_open",
            "Replies returned uncorrected because the Aligner failed",
            registry=self.metrics.registry,
        )
        self._clients: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()

    def client(self) -> Any:
        """One ``httpx.AsyncClient`` per event loop (connection pools belong to a loop)."""
        import httpx

        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None or client.is_closed:
            client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.config.upstream_timeout, connect=self.config.upstream_connect_timeout),
                limits=httpx.Limits(max_connections=512, max_keepalive_connections=64),
                transport=self.transport,
            )
            self._clients[loop] = client
        return client

    def upstream_headers(self, request: Request) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.config.upstream_api_key:
            headers["Authorization"] = f"Bearer {self.config.upstream_api_key}"
        elif self.config.api_key is None and request.headers.get("authorization"):
            headers["Authorization"] = request.headers["authorization"]
        for name in ("openai-organization", "openai-project"):
            if request.headers.get(name):
                headers[name] = request.headers[name]
        return headers

    # ----------------------------------------------------------------- upstream calls

    def _transport_error(self, exc: Exception) -> ApiError:
        import httpx

        url = f"{self.upstream}/chat/completions"
        if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
            return ApiError(
                504,
                f"The upstream at {url} did not answer within {self.config.upstream_timeout} s ({type(exc).__name__}).",
                type="upstream_timeout",
                code="upstream_timeout",
            )
        return ApiError(
            502,
            f"Cannot reach the upstream at {url} ({type(exc).__name__}: {exc}). Is it running?",
            type="upstream_error",
            code="upstream_unreachable",
        )

    @staticmethod
    def _upstream_failure(response: Any, body: bytes, url: str) -> ApiError | JSONResponse:
        """Upstream 4xx are the client's to see (relayed as is); 5xx become 502 with the upstream's message.

        The upstream's ``Retry-After`` (on a 429 or 503) goes to the client with either.
        """
        status = response.status_code
        retry_after = response.headers.get("retry-after")
        headers = {"Retry-After": retry_after} if retry_after else None
        try:
            payload = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            payload = None
        if 400 <= status < 500 and isinstance(payload, dict):
            return JSONResponse(payload, status_code=status, headers=headers)
        from aligner_chains.backends.remote.protocol import error_message

        message = error_message(payload) if payload is not None else body[:300].decode("utf-8", "replace")
        if 400 <= status < 500:
            return ApiError(status, f"The upstream refused the request (HTTP {status}): {message}", headers=headers)
        return ApiError(
            502,
            f"The upstream at {url} failed (HTTP {status}): {message}",
            type="upstream_error",
            code="upstream_error",
            headers=headers,
        )

    @staticmethod
    def _incomplete(url: str, why: str) -> ApiError:
        return ApiError(
            502,
            f"The upstream at {url} {why}; its answer may be incomplete, so it is neither corrected nor passed on.",
            type="upstream_error",
            code="upstream_incomplete",
        )

    def refuse_aborted(self, finish: dict[int, Any], url: str) -> None:
        """502 when the upstream reports a choice aborted (vLLM's and SGLang's ``finish_reason: "abort"``)."""
        aborted = sorted(index for index, reason in finish.items() if reason == ABORTED)
        if aborted:
            raise self._incomplete(url, f"aborted choice(s) {aborted} (finish_reason {ABORTED!r})")

    async def post(self, request: Request, body: dict[str, Any]) -> dict[str, Any] | JSONResponse:
        import httpx

        url = f"{self.upstream}/chat/completions"
        started = time.perf_counter()
        try:
            response = await self.client().post(url, json=body, headers=self.upstream_headers(request))
        except httpx.TransportError as exc:
            raise self._transport_error(exc) from None
        finally:
            self.upstream_seconds.observe(time.perf_counter() - started)
        if response.status_code >= 400:
            failure = self._upstream_failure(response, response.content, url)
            if isinstance(failure, ApiError):
                raise failure
            return failure
        try:
            data = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ApiError(
                502, f"The upstream at {url} answered with a body that is not JSON.", type="upstream_error"
            ) from None
        if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
            raise ApiError(502, f"The upstream at {url} answered without a 'choices' list.", type="upstream_error")
        choices = [c for c in data["choices"] if isinstance(c, dict)]
        self.refuse_aborted({c.get("index", i): c.get("finish_reason") for i, c in enumerate(choices)}, url)
        return data

    async def post_stream(self, request: Request, body: dict[str, Any]) -> list[dict[str, Any]] | JSONResponse:
        """All chunks of the upstream's stream (read in full: the Aligner needs the whole answer).

        The stream must end properly, with ``data: [DONE]`` or a ``finish_reason`` for every choice; one
        that stops short (closed or broken connection, a body that is not an event stream) is a 502.
        """
        try:
            return [event async for event in self.stream_events(request, body)]
        except UpstreamRefused as refused:
            return refused.response

    async def stream_events(self, request: Request, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """The upstream's stream events as they arrive, each checked; at the end, a check that it ended properly.

        Raises `ApiError` (502/504): the upstream unreachable, failing, too slow, sending an error event or a
        malformed stream, aborting a choice, or stopping short (see `post_stream`); `UpstreamRefused` for its
        4xx, to relay. Closing this generator closes the upstream response, which stops its generation.
        """
        import httpx

        from aligner_chains.backends.remote.protocol import SSEDecoder
        from aligner_chains.core.errors import BackendError

        url = f"{self.upstream}/chat/completions"
        started = time.perf_counter()
        decoder = SSEDecoder()
        plan = _StreamPlan([])
        content_type = ""
        try:
            async with self.client().stream("POST", url, json=body, headers=self.upstream_headers(request)) as response:
                if response.status_code >= 400:
                    failure = self._upstream_failure(response, await response.aread(), url)
                    if isinstance(failure, ApiError):
                        raise failure
                    raise UpstreamRefused(failure)
                content_type = response.headers.get("content-type", "")
                try:
                    async for data in response.aiter_bytes():
                        for event in decoder.feed(data):
                            yield self._checked(plan, event, url)
                        if decoder.done:
                            break
                    else:
                        for event in decoder.finish():
                            yield self._checked(plan, event, url)
                except httpx.TimeoutException:
                    raise
                except httpx.TransportError as exc:  # the response had begun: the stream broke off
                    raise self._incomplete(
                        url, f"broke off its stream after {len(plan.chunks)} events ({type(exc).__name__}: {exc})"
                    ) from None
        except httpx.TransportError as exc:
            raise self._transport_error(exc) from None
        except BackendError as exc:
            raise ApiError(
                502, f"The upstream at {url} sent a malformed stream: {exc}", type="upstream_error"
            ) from None
        finally:
            self.upstream_seconds.observe(time.perf_counter() - started)
        if not plan.chunks and not decoder.done:
            raise self._incomplete(
                url, f"answered stream=true without an event stream (Content-Type {content_type or '(none)'!r})"
            )
        unfinished = [index for index in plan.order if index not in plan.finish]
        if not decoder.done and (unfinished or not plan.order):
            which = f"no finish_reason for choice(s) {unfinished}" if unfinished else "no choices"
            raise self._incomplete(url, f"ended its stream without [DONE] ({which}, after {len(plan.chunks)} events)")

    def _checked(self, plan: _StreamPlan, event: dict[str, Any], url: str) -> dict[str, Any]:
        """``event``, added to ``plan``; an error event or an aborted choice raises its 502."""
        if "error" in event and not event.get("choices"):
            message = f"The upstream stream failed: {json.dumps(event['error'])[:300]}"
            raise ApiError(502, message, type="upstream_error")
        plan.add(event)
        self.refuse_aborted(plan.finish, url)
        return event

    # ----------------------------------------------------------------- correction

    def policy(self) -> str:
        return "passthrough" if self.config.fail_open else "raise"

    def generation(self) -> dict[str, Any]:
        return {"max_new_tokens": self.config.max_new_tokens} if self.config.max_new_tokens else {}

    def aligner_failed(self, question: str, answer: str, exc: BaseException) -> Correction:
        """Fail-open result, or the 502/504 to answer instead."""
        reason, error = self.aligner_error(exc)
        if not self.config.fail_open:
            raise error
        return Correction.failed(
            question, answer, reason, template=self.aligner.template.name, model=self.aligner.model_name
        )

    def aligner_error(self, exc: BaseException) -> tuple[str, ApiError]:
        """Why the Aligner failed (for ``aligner.error``), and the 502/504 that says so."""
        from aligner_chains.core.errors import BackendError

        hint = "Start the proxy with --fail-open to return uncorrected replies instead."
        if isinstance(exc, TimeoutError) and not isinstance(exc, BackendError):
            reason = f"the Aligner did not answer within {self.config.aligner_timeout} s"
            error = ApiError(
                504,
                f"The Aligner did not answer within {self.config.aligner_timeout} s; the reply was not corrected. "
                + hint,
                type="aligner_timeout",
                code="aligner_timeout",
            )
        else:
            reason = f"{type(exc).__name__}: {exc}"
            error = ApiError(
                504 if isinstance(exc, TimeoutError) else 502,
                f"The Aligner failed ({reason}); the reply was not corrected. {hint}",
                type="aligner_error",
                code="aligner_error",
            )
        return reason, error

    def record(self, correction: Correction) -> None:
        self.metrics.count_correction(correction)
        if correction.error and self.config.fail_open:
            self.fail_open_count.inc()

    async def correct(self, pairs: list[tuple[str, str]]) -> list[Correction]:
        if not pairs:
            return []
        if len(pairs) == 1:
            call = self.aligner.acorrect(*pairs[0], on_error=self.policy(), **self.generation())
        else:
            call = self.aligner.acorrect_batch(pairs, len(pairs), on_error=self.policy(), **self.generation())
        try:
            # shielded: a timeout abandons the correction (it finishes unobserved) instead of cancelling it mid-core
            task = asyncio.ensure_future(call)
            task.add_done_callback(_consume)
            result = await asyncio.wait_for(asyncio.shield(task), self.config.aligner_timeout)
        except asyncio.CancelledError:  # the client left: a correction still queued is dropped
            task.cancel()
            raise
        except Exception as exc:
            results = [self.aligner_failed(q, a, exc) for q, a in pairs]
        else:
            results = [result] if isinstance(result, Correction) else list(result)
        for correction in results:
            self.record(correction)
        return results


class UpstreamRefused(Exception):
    """The upstream answered a stream request with a 4xx: its ``response`` goes to the client as it is."""

    def __init__(self, response: JSONResponse) -> None:
        super().__init__(f"upstream answered {response.status_code}")
        self.response = response


def _consume(task: asyncio.Future[Any]) -> None:
    """Retrieve an abandoned task's outcome, so a late failure is not reported as never retrieved."""
    if not task.cancelled():
        task.exception()


def last_user_text(messages: list[Any]) -> str:
    """The conversation's last user message as text (text parts of a multi-part message joined)."""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return "\n".join(
                    part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text"
                )
            return ""
    return ""


def _skip_reason(message: Any) -> str | None:
    if not isinstance(message, dict):
        return "no message"
    if message.get("tool_calls") or message.get("function_call"):
        return "tool_calls"
    content = message.get("content")
    if not isinstance(content, str) or not content.strip():
        return "no text"
    return None


def create_proxy_app(
    aligner: Aligner,
    config: ProxyConfig | None = None,
    *,
    upstream_transport: Any = None,
    **options: Any,
) -> Any:
    """The proxy app. ``upstream_transport``: an ``httpx`` async transport (e.g. ``httpx.ASGITransport`` of
    an in-process app, for tests); ``options`` set fields of `ProxyConfig`."""
    from fastapi import FastAPI

    if not isinstance(aligner, Aligner):
        raise TypeError(
            f"create_proxy_app needs an Aligner (local or Aligner.from_server), got {type(aligner).__name__}"
        )
    data = {**(config.model_dump() if config else {}), **options}
    config = ProxyConfig.model_validate(data)
    proxy = _Proxy(aligner, config, upstream_transport)
    app = FastAPI(title="aligner-chains correcting proxy", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.proxy = proxy
    install_error_handlers(app, ROUTES)
    app.add_middleware(
        ServingMiddleware,
        metrics=proxy.metrics,
        routes={"/v1/chat/completions", "/v1/models", "/health", "/metrics"},
        protected=lambda path: path.startswith("/v1/"),
        api_key=config.api_key,
        max_in_flight=config.max_in_flight,
        max_body_bytes=config.max_body_bytes,
        body_timeout=config.body_timeout,
    )

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "upstream": proxy.upstream, "aligner": aligner.model_name}

    @app.get("/metrics")
    async def metrics() -> Response:
        return proxy.metrics.response()

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        import httpx

        try:
            response = await proxy.client().get(f"{proxy.upstream}/models", headers=proxy.upstream_headers(request))
        except httpx.TransportError as exc:
            return proxy._transport_error(exc).response()
        return Response(response.content, status_code=response.status_code, media_type="application/json")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        try:
            return await _chat(proxy, request)
        except Exception as exc:
            return api_error_from(exc, what="proxying").response()

    return app


async def _chat(proxy: _Proxy, request: Request) -> Response:
    body = await read_json_object(request, proxy.config.max_body_bytes)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(
            400,
            'Missing field \'messages\': send a non-empty list of {"role": ..., "content": ...} objects.'
            if messages is None
            else f"Field 'messages' must be a non-empty list, got {type(messages).__name__}.",
            param="messages",
        )
    if not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages):
        raise ApiError(400, "Every item of 'messages' must be an object with a string 'role'.", param="messages")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, f"Field 'stream' must be a boolean, got {json.dumps(stream)[:40]}.", param="stream")
    question = last_user_text(messages)
    if not stream:
        data = await proxy.post(request, body)
        if isinstance(data, JSONResponse):
            return data
        todo = []
        for choice in data["choices"]:
            reason = _skip_reason(choice.get("message")) if isinstance(choice, dict) else "no message"
            if reason is None:
                todo.append(choice)
            elif isinstance(choice, dict):
                choice[SUMMARY_FIELD] = {"skipped": reason}
        results = await proxy.correct([(question, c["message"]["content"]) for c in todo])
        for choice, correction in zip(todo, results, strict=True):
            choice["message"]["content"] = correction.corrected
            choice[SUMMARY_FIELD] = correction.summary()
        return JSONResponse(data)
    if proxy.config.stream_mode == "segments" and body.get("n") in (None, 1):
        return await _stream_segments(proxy, request, body, question)
    chunks = await proxy.post_stream(request, body)
    if isinstance(chunks, JSONResponse):
        return chunks
    plan = _StreamPlan(chunks)
    if not plan.to_correct:
        return StreamingResponse(_replay(chunks), media_type="text/event-stream", headers=SSE_HEADERS)
    first = plan.to_correct[0]
    head = await _first_piece(proxy, question, plan.content[first])
    return StreamingResponse(
        _corrected_stream(proxy, plan, question, head), media_type="text/event-stream", headers=SSE_HEADERS
    )


class _StreamPlan:
    """The upstream chunks grouped per choice: the text, whether it has tool calls, how it finished."""

    def __init__(self, chunks: list[dict[str, Any]]) -> None:
        self.chunks: list[dict[str, Any]] = []
        self.template: dict[str, Any] = {}  # the first chunk with choices (else the first chunk): ids for ours
        self.content: dict[int, str] = {}
        self.tools: set[int] = set()
        self.finish: dict[int, Any] = {}
        self.order: list[int] = []
        for chunk in chunks:
            self.add(chunk)

    def add(self, chunk: dict[str, Any]) -> None:
        """Take in the next chunk."""
        self.chunks.append(chunk)
        if not self.template.get("choices") and (chunk.get("choices") or not self.template):
            self.template = chunk
        for choice in chunk.get("choices") or []:
            index = choice.get("index", 0)
            if index not in self.order:
                self.order.append(index)
            delta = choice.get("delta") or {}
            if isinstance(delta.get("content"), str):
                self.content[index] = self.content.get(index, "") + delta["content"]
            if delta.get("tool_calls") or delta.get("function_call"):
                self.tools.add(index)
            if choice.get("finish_reason") is not None:
                self.finish[index] = choice["finish_reason"]

    @property
    def to_correct(self) -> list[int]:
        """The choices with text and no tool calls, in order."""
        return [i for i in self.order if i not in self.tools and self.content.get(i, "").strip()]

    def chunk(self, index: int, delta: dict[str, Any], finish: Any = None, **extra: Any) -> dict[str, Any]:
        base = {k: v for k, v in self.template.items() if k not in ("choices", "usage")}
        return {
            **base,
            "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish, **extra}],
        }

    def passthrough(self, index: int) -> list[dict[str, Any]]:
        """The upstream chunks of choice ``index`` as they were."""
        out = []
        for chunk in self.chunks:
            mine = [c for c in chunk.get("choices") or [] if c.get("index", 0) == index]
            if mine:
                out.append({**chunk, "choices": mine})
        return out

    def trailers(self) -> list[dict[str, Any]]:
        """Chunks without choices (the usage chunk)."""
        return [c for c in self.chunks if not c.get("choices")]


async def _replay(chunks: list[dict[str, Any]]) -> AsyncIterator[str]:
    for chunk in chunks:
        yield sse(chunk)
    yield SSE_DONE


class _Head:
    """The first correction of a stream, started before the response (so its failure can be an HTTP status)."""

    def __init__(self, items: list[Any], rest: AsyncIterator[Any] | None) -> None:
        self.items = items
        self.rest = rest


async def _first_piece(proxy: _Proxy, question: str, answer: str) -> _Head:
    agen = proxy.aligner.aiter_correction(question, answer, on_error=proxy.policy(), **proxy.generation())
    try:
        first = await asyncio.wait_for(agen.__anext__(), proxy.config.aligner_timeout)
    except StopAsyncIteration:
        return _Head([], None)
    except Exception as exc:
        await agen.aclose()
        failed = proxy.aligner_failed(question, answer, exc)  # raises the 502/504 unless fail-open
        return _Head([answer, failed], None)  # fail-open: the uncorrected answer streams out
    return _Head([first], agen)


async def _correction_items(proxy: _Proxy, question: str, answer: str, head: _Head | None) -> AsyncIterator[Any]:
    if head is None:
        head = await _first_piece(proxy, question, answer)
    try:
        for item in head.items:
            yield item
        if head.rest is not None:
            async for item in head.rest:
                yield item
    finally:
        if head.rest is not None:
            await head.rest.aclose()  # type: ignore[attr-defined]


async def _corrected_stream(proxy: _Proxy, plan: _StreamPlan, question: str, head: _Head) -> AsyncIterator[str]:
    first = plan.to_correct[0]
    try:
        for index in plan.order:
            if index not in plan.to_correct:
                for chunk in plan.passthrough(index):
                    yield sse(chunk)
                continue
            answer = plan.content[index]
            yield sse(plan.chunk(index, {"role": "assistant", "content": ""}))
            correction: Correction | None = None
            async for item in _correction_items(proxy, question, answer, head if index == first else None):
                if isinstance(item, Correction):
                    correction = item
                elif item:
                    yield sse(plan.chunk(index, {"content": item}))
            summary = correction.summary() if correction is not None else {"error": "no correction produced"}
            if correction is not None:
                proxy.record(correction)
            yield sse(plan.chunk(index, {}, plan.finish.get(index), **{SUMMARY_FIELD: summary}))
        for chunk in plan.trailers():
            yield sse(chunk)
    except Exception as exc:
        yield sse(api_error_from(exc, what="correction").body())
    yield SSE_DONE


# ----------------------------------------------------------------------------- stream_mode="segments"

_END = object()


class _Failed:
    """The upstream reader's failure, queued after the events read before it."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


async def _aclose(agen: AsyncIterator[Any]) -> None:
    """Close an async generator, unless a task is still in it (that task's cancellation ends it)."""
    if not getattr(agen, "ag_running", False):
        await agen.aclose()  # type: ignore[attr-defined]


async def _stream_segments(proxy: _Proxy, request: Request, body: dict[str, Any], question: str) -> Response:
    """The reply of one choice corrected segment by segment as the upstream streams it (see the module doc).

    The response starts with the first corrected segment: a failure before it is an HTTP status.
    """
    reply = _LiveReply(proxy, question, proxy.stream_events(request, body))
    try:
        head, rest = await prefetch(_live_events(reply))
    except UpstreamRefused as refused:
        return refused.response
    return StreamingResponse(chain_items(head, rest), media_type="text/event-stream", headers=SSE_HEADERS)


async def _live_events(reply: _LiveReply) -> AsyncIterator[str]:
    """The SSE lines of ``reply``. A failure after the first one ends the stream with an error event and
    nothing else (no finish_reason, no ``[DONE]``), so the client cannot take it as complete."""
    chunks = reply.chunks()
    sent = False
    try:
        async for chunk in chunks:
            yield sse(chunk)
            sent = True
    except Exception as exc:
        if not sent:
            raise  # nothing sent yet: answered as an HTTP error
        yield sse(api_error_from(exc, what="correction").body())
        return
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]
    yield SSE_DONE


class _LiveReply:
    """One streamed upstream choice, its text corrected by `Aligner.aiter_segments` while it arrives.

    A task reads the upstream's events into a queue (so the upstream is never held back by the Aligner);
    the choice's text deltas feed the Aligner, tool-call chunks are held and relayed after the corrected
    text. Leaving `chunks` (a client gone, a refusal, a failure) closes the Aligner's stream and the upstream.
    """

    def __init__(self, proxy: _Proxy, question: str, events: AsyncIterator[dict[str, Any]]) -> None:
        self.proxy = proxy
        self.question = question
        self.events = events
        self.plan = _StreamPlan([])
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.reader: asyncio.Task[None] | None = None
        self.index = 0  # the choice (the first one the upstream names)
        self.held: list[dict[str, Any]] = []  # tool-call chunks that came after text
        self.upstream_failure: BaseException | None = None
        self.ended_at: float | None = None  # loop time the upstream finished (the Aligner's clock starts then)
        self.last_piece = 0.0  # loop time of the latest corrected piece

    # ----------------------------------------------------------------- the upstream side

    async def _read(self) -> None:
        try:
            async for event in self.events:
                self.queue.put_nowait(event)
        except Exception as exc:
            self.queue.put_nowait(_Failed(exc))
        finally:
            self.ended_at = asyncio.get_running_loop().time()
            self.queue.put_nowait(_END)

    async def _next(self) -> dict[str, Any] | None:
        """The next upstream event (None at the end); the upstream's failure is raised, once."""
        item = await self.queue.get()
        if item is _END:
            self.queue.put_nowait(_END)
            return None
        if isinstance(item, _Failed):
            self.upstream_failure = item.exc
            raise item.exc
        self.plan.add(item)
        return item

    def _delta(self, event: dict[str, Any]) -> dict[str, Any]:
        for choice in event.get("choices") or []:
            if choice.get("index", 0) == self.index:
                return choice.get("delta") or {}
        return {}

    def _mine(self, event: dict[str, Any]) -> dict[str, Any]:
        """``event`` with only this choice (as the upstream sent it)."""
        return {**event, "choices": [c for c in event.get("choices") or [] if c.get("index", 0) == self.index]}

    async def _texts(self, first: str) -> AsyncIterator[str]:
        """The choice's text as it arrives (what the Aligner reads); tool-call chunks are held."""
        yield first
        while (event := await self._next()) is not None:
            delta = self._delta(event)
            if delta.get("tool_calls") or delta.get("function_call"):
                self.held.append(self._mine(event))
            text = delta.get("content")
            if isinstance(text, str) and text:
                yield text

    async def close(self) -> None:
        """Stop reading the upstream: cancelled, the reader's task closes the upstream stream (waited for here,
        unless this task is being cancelled itself)."""
        if self.reader is not None and not self.reader.done():
            self.reader.cancel()
            await asyncio.wait({self.reader})

    # ----------------------------------------------------------------- the client side

    async def chunks(self) -> AsyncIterator[dict[str, Any]]:
        """The ``chat.completion.chunk`` objects to send; raises `ApiError` (or `UpstreamRefused`) on a failure."""
        self.reader = asyncio.ensure_future(self._read())
        try:
            first = await self._start()
            if first is None:  # a tool call first, or no text: relayed as it comes
                for event in self.plan.chunks:
                    yield event
                while (event := await self._next()) is not None:
                    yield event
                return
            corrected = self._corrected(first)
            try:
                async for chunk in corrected:
                    yield chunk
            finally:
                await _aclose(corrected)  # the Aligner's stream is closed with it
        finally:
            await self.close()

    async def _start(self) -> str | None:
        """Read up to the choice's first text (returned, with any whitespace before it) or first tool call (None)."""
        while (event := await self._next()) is not None:
            if event.get("choices") and len(self.plan.order) == 1:
                self.index = self.plan.order[0]
            delta = self._delta(event)
            if delta.get("tool_calls") or delta.get("function_call"):
                return None
            text = self.plan.content.get(self.index, "")
            if text.strip():
                return text
        return None

    async def _corrected(self, first: str) -> AsyncIterator[dict[str, Any]]:
        proxy, plan, index = self.proxy, self.plan, self.index
        items = proxy.aligner.aiter_segments(
            self.question, self._texts(first), on_error=proxy.policy(), **proxy.generation()
        )
        role = plan.chunk(index, {"role": "assistant", "content": ""})
        sent = False
        correction: Correction | None = None
        try:
            while True:
                try:
                    item = await self._next_item(items)
                except StopAsyncIteration:
                    break
                except Exception as exc:
                    if exc is self.upstream_failure:
                        raise
                    reason, error = proxy.aligner_error(exc)
                    if sent or not proxy.config.fail_open:
                        raise error from None
                    await _aclose(items)
                    async for chunk in self._uncorrected(reason):  # fail-open, nothing sent yet
                        yield chunk
                    return
                if isinstance(item, Correction):
                    correction = item
                    continue
                if self.upstream_failure is not None:  # known already: the answer is cut short, say so now
                    raise self.upstream_failure
                if not sent:
                    yield role
                    sent = True
                yield plan.chunk(index, {"content": item})
        finally:
            await _aclose(items)
        if correction is None:  # aiter_segments always ends with its Correction
            raise ApiError(500, "The Aligner's segment stream ended without its result.", type="server_error")
        proxy.record(correction)
        replaced = correction.stats.get("ended_by") == "replacement"
        if replaced:
            await self.close()  # the rest of the upstream answer is never shown: stop it now
        if not sent:
            yield role
        finish = "content_filter" if replaced else plan.finish.get(index)
        if not replaced:
            for chunk in self.held:
                yield chunk
        yield plan.chunk(index, {}, finish, **{SUMMARY_FIELD: correction.summary()})
        if not replaced:
            for chunk in plan.trailers():
                yield chunk

    async def _next_item(self, items: AsyncIterator[Any]) -> Any:
        """The Aligner's next item. Once the upstream has finished, each may take ``aligner_timeout`` at most
        (before that, the wait is the upstream's as much as the Aligner's)."""
        timeout = self.proxy.config.aligner_timeout
        if timeout is None:
            return await items.__anext__()
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(items.__anext__())
        assert self.reader is not None
        try:
            while True:
                if self.ended_at is None:
                    await asyncio.wait({task, self.reader}, return_when=asyncio.FIRST_COMPLETED)
                else:
                    left = max(self.ended_at, self.last_piece) + timeout - loop.time()
                    await asyncio.wait({task}, timeout=max(left, 0))
                    if not task.done():
                        raise TimeoutError(f"no corrected segment within {timeout} s")
                if task.done():
                    self.last_piece = loop.time()
                    return task.result()
        finally:
            if not task.done():
                task.cancel()  # ends the Aligner's stream (its worker stops at the next token)
                task.add_done_callback(_consume)
                await asyncio.wait({task})

    async def _uncorrected(self, reason: str) -> AsyncIterator[dict[str, Any]]:
        """Fail-open before anything was sent: the choice as the upstream writes it, marked with ``reason``."""
        plan, index = self.plan, self.index
        yield plan.chunk(index, {"role": "assistant", "content": ""})
        yield plan.chunk(index, {"content": plan.content.get(index, "")})
        for chunk in self.held:
            yield chunk
        while (event := await self._next()) is not None:
            delta = self._delta(event)
            if delta.get("tool_calls") or delta.get("function_call"):
                yield self._mine(event)
            elif isinstance(delta.get("content"), str) and delta["content"]:
                yield plan.chunk(index, {"content": delta["content"]})
        text = plan.content.get(index, "")
        failed = Correction.failed(
            self.question, text, reason, template=self.proxy.aligner.template.name, model=self.proxy.aligner.model_name
        )
        self.proxy.record(failed)
        yield plan.chunk(index, {}, plan.finish.get(index), **{SUMMARY_FIELD: failed.summary()})
        for chunk in plan.trailers():
            yield chunk
