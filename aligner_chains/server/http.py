"""HTTP plumbing shared by the Aligner server and the correcting proxy: errors, bodies, auth, SSE, metrics.

Public, for apps that serve an Aligner next to `aligner_chains.server.app` (such as
``integrations/openai_proxy``). Needs the ``serve`` extra (Starlette, Prometheus client).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from aligner_chains.core.errors import AlignerError, InputTooLongError
from aligner_chains.core.threads import iterate_in_thread
from aligner_chains.server.json_input import JSONInputError, parse_json

__all__ = [
    "CLIENT_CLOSED",
    "KNOWN_METHODS",
    "SSE_DONE",
    "SSE_HEADERS",
    "ApiError",
    "Metrics",
    "ServingMiddleware",
    "api_error_from",
    "chain_items",
    "check_bearer",
    "check_json_content_type",
    "install_error_handlers",
    "iterate_in_thread",
    "prefetch",
    "read_json_object",
    "sse",
    "too_large",
    "validate",
]

logger = logging.getLogger("aligner_chains.server")

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class ApiError(Exception):
    """An error answered to the client in the OpenAI shape ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers
        self.extra = extra or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code, **self.extra}
        }

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def api_error_from(exc: BaseException, *, what: str = "generation") -> ApiError:
    """The `ApiError` for an exception raised while serving (library errors are 4xx/5xx with their message)."""
    from aligner_chains.core.errors import BackendError, BackendTimeoutError

    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, InputTooLongError):
        return ApiError(
            400,
            str(exc),
            code="context_length_exceeded",
            param="prompt",
            extra={"prompt_tokens": exc.prompt_tokens, "max_tokens": exc.max_new_tokens, "context": exc.context},
        )
    if isinstance(exc, BackendTimeoutError):
        return ApiError(504, f"The model server timed out: {exc}", type="upstream_timeout", code="timeout")
    if isinstance(exc, BackendError):
        return ApiError(502, f"The model server failed: {exc}", type="upstream_error", code="bad_gateway")
    if isinstance(exc, AlignerError) and isinstance(exc, ValueError):  # ConfigError, TemplateError, ...
        return ApiError(400, str(exc))
    if isinstance(exc, AlignerError):
        return ApiError(500, f"{what} failed: {type(exc).__name__}: {exc}", type="server_error")
    logger.exception("unexpected error during %s", what)
    return ApiError(500, f"{what} failed: {type(exc).__name__}: {exc}", type="server_error")


#: Bodies larger than this are parsed in a worker thread, so a big request does not stall the event loop.
PARSE_IN_THREAD_BYTES = 64 * 1024
#: Status recorded for a request whose client left before the answer (nginx's "client closed request").
CLIENT_CLOSED = 499


async def read_json_object(request: Request, max_bytes: int) -> dict[str, Any]:
    """The request body as a JSON object.

    415 unless ``Content-Type: application/json``; 413 beyond ``max_bytes``; 400 for empty or malformed
    JSON, and for JSON that is unsafe to use (too deeply nested, huge numbers, ``NaN``, lone surrogates),
    naming the field. A client that leaves mid-upload is answered 499 (nobody reads it) and not logged.
    """
    check_json_content_type(request)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise too_large(int(declared), max_bytes)
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_bytes:
                raise too_large(len(body), max_bytes, at_least=True)
    except ClientDisconnect:
        raise ApiError(CLIENT_CLOSED, "The client disconnected before sending the whole body.") from None
    if not body.strip():
        raise ApiError(400, "The request body is empty: send a JSON object (Content-Type: application/json).")
    if len(body) > PARSE_IN_THREAD_BYTES:
        return await run_in_threadpool(_json_object, bytes(body))
    return _json_object(bytes(body))


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        data = parse_json(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise ApiError(400, "The request body is not UTF-8 text: send a JSON object encoded as UTF-8.") from None
    except json.JSONDecodeError as exc:
        raise ApiError(
            400, f"The request body is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})."
        ) from None
    except JSONInputError as exc:
        raise ApiError(400, f"Invalid request: {exc}.", param=exc.field) from None
    if not isinstance(data, dict):
        raise ApiError(400, f"The request body must be a JSON object, got a JSON {_json_type(data)}.")
    return data


def check_json_content_type(request: Request) -> None:
    """415 unless the body is declared as JSON (``application/json`` or a ``+json`` type).

    Browsers send cross-site form posts without a preflight only as form or text types, so this also
    keeps other web pages from posting to a server on localhost.
    """
    declared = request.headers.get("content-type", "")
    media = declared.split(";", 1)[0].strip().lower()
    if media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
        raise ApiError(
            415,
            f"Content-Type {declared or '(none)'!r} is not JSON: send the body as JSON with the header "
            "'Content-Type: application/json'.",
            code="unsupported_media_type",
        )


def too_large(size: int, limit: int, *, at_least: bool = False) -> ApiError:
    """The 413 for a body of ``size`` bytes over ``limit``."""
    size_text = f"more than {limit}" if at_least else str(size)
    return ApiError(
        413,
        f"The request body is {size_text} bytes; this server accepts at most {limit} bytes. Send a smaller request.",
        code="request_too_large",
    )


def _json_type(value: Any) -> str:
    return {list: "array", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}.get(
        type(value), type(value).__name__
    )


def validate(model: type[M], data: dict[str, Any]) -> M:
    """``model`` validated from ``data``; 400 naming every wrong field, what it should be and what it got."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems: dict[str, list[str]] = {}
        got: dict[str, Any] = {}
        for error in exc.errors(include_url=False):
            # union members show up as type tags in the location ('prompt', 'str'): fold them into the field
            where = ".".join(str(p) for p in error["loc"] if not _TYPE_TAG.match(str(p))) or "body"
            if error["type"] == "missing":
                problems.setdefault(where, []).append("missing")
            else:
                problems.setdefault(where, []).append(error["msg"])
                got[where] = error.get("input")
        parts = []
        for where, messages in problems.items():
            if messages == ["missing"]:
                parts.append(f"missing field {where!r}")
            else:
                parts.append(f"field {where!r}: {', or '.join(dict.fromkeys(messages))} (got {_describe(got[where])})")
        raise ApiError(400, "Invalid request: " + "; ".join(parts) + ".", param=next(iter(problems))) from None


_TYPE_TAG = re.compile(r"^(str|int|float|bool|none|list\[.*\]|dict\[.*\]|literal\[.*\]|[A-Z]\w*)$")


def _describe(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{_json_type(value)} {text}"


def check_bearer(request: Request, expected: str | None) -> None:
    """401 unless ``Authorization: Bearer <expected>`` (constant-time comparison; the key is never echoed)."""
    if not expected:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected.encode()):
        raise ApiError(
            401,
            "Missing or invalid API key: send the header 'Authorization: Bearer <key>'.",
            type="authentication_error",
            code="invalid_api_key",
        )


def sse(data: Any) -> str:
    """One server-sent event carrying ``data`` (JSON, or a literal such as ``[DONE]``).

    U+2028, U+2029 and U+0085 are written as JSON escapes: readers that split lines with
    ``str.splitlines`` (``httpx``'s ``iter_lines`` among them) would otherwise cut the event in two.
    """
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False).translate(_SSE_ESCAPES)
    return f"data: {text}\n\n"


_SSE_ESCAPES = {0x2028: "\\u2028", 0x2029: "\\u2029", 0x85: "\\u0085"}


SSE_DONE = sse("[DONE]")


async def prefetch(agen: AsyncIterator[T]) -> tuple[list[T], AsyncIterator[T]]:
    """The first item of ``agen`` (so errors before it become HTTP statuses) and an iterator of all items."""
    try:
        first = await agen.__anext__()
    except StopAsyncIteration:
        return [], agen
    except BaseException:
        await agen.aclose()  # type: ignore[attr-defined]
        raise
    return [first], agen


async def chain_items(head: Iterable[T], rest: AsyncIterator[T]) -> AsyncIterator[T]:
    """``head`` then ``rest``; closing this closes ``rest`` (so a worker behind it stops)."""
    try:
        for item in head:
            yield item
        async for item in rest:
            yield item
    finally:
        await rest.aclose()  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------- metrics and limits


class Metrics:
    """Prometheus metrics of one app, in their own registry (several apps can live in one process)."""

    def __init__(self, prefix: str) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.prefix = prefix
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            f"{prefix}_http_requests",
            "HTTP requests by route, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            f"{prefix}_http_request_duration_seconds",
            "Time from request to the end of the response body, by route",
            ["route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=self.registry,
        )
        self.in_flight = Gauge(f"{prefix}_http_requests_in_flight", "Requests being processed", registry=self.registry)
        self.tokens = Counter(f"{prefix}_tokens", "Tokens processed, by kind", ["kind"], registry=self.registry)
        self.corrections = Counter(
            f"{prefix}_corrections",
            "Corrections by outcome (changed, unchanged, skipped, error)",
            ["outcome"],
            registry=self.registry,
        )

    def count_correction(self, correction: Any) -> None:
        if correction.error:
            outcome = "error"
        elif correction.finish_reason == "skipped":
            outcome = "skipped"
        else:
            outcome = "changed" if correction.changed else "unchanged"
        self.corrections.labels(outcome).inc()
        if correction.prompt_tokens:
            self.tokens.labels("prompt").inc(correction.prompt_tokens)
        if correction.completion_tokens:
            self.tokens.labels("completion").inc(correction.completion_tokens)

    def response(self) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


#: HTTP methods recorded as themselves in metrics; any other is recorded as "other" (labels stay bounded).
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class ServingMiddleware:
    """ASGI middleware in front of an app: Host allow-list, API key, body limits, in-flight limit, metrics.

    The body is read here first (413 beyond ``max_body_bytes``, 408 when it takes longer than
    ``body_timeout`` seconds), so a slow upload does not count against ``max_in_flight``: a request
    holds a slot only while it is processed. A client that leaves before its answer is complete
    cancels the app's work for it (a queued generation is dropped, a streamed one stops). Metric
    labels take known values only: the route or "other", a method of `KNOWN_METHODS` or "other".
    """

    def __init__(
        self,
        app: Any,
        *,
        metrics: Metrics,
        routes: set[str],
        protected: Callable[[str], bool],
        api_key: str | None,
        max_in_flight: int,
        max_body_bytes: int | None = None,
        body_timeout: float | None = None,
        allowed_hosts: Iterable[str] | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes
        self.protected = protected
        self.api_key = api_key
        self.max_in_flight = max_in_flight
        self.max_body_bytes = max_body_bytes
        self.body_timeout = body_timeout
        self.allowed_hosts = [h.lower() for h in allowed_hosts] if allowed_hosts else None
        self.active = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        route = path if path in self.routes else "other"
        method = scope["method"] if scope["method"] in KNOWN_METHODS else "other"
        state = {"status": 500, "finished": False}

        async def send_wrapper(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                state["finished"] = True
            await send(message)

        started = time.perf_counter()
        admitted = False
        try:
            try:
                self.check_host(scope)
                if self.protected(path):
                    check_bearer(Request(scope), self.api_key)
                body = await self.read_body(scope, receive)
                if body is None:  # the client left mid-upload: nobody to answer
                    state["status"] = CLIENT_CLOSED
                    return
                if self.protected(path) and self.active >= self.max_in_flight:
                    raise ApiError(
                        429,
                        f"The server is busy ({self.active} requests in flight, limit {self.max_in_flight}). "
                        "Retry after a moment.",
                        type="rate_limit_error",
                        code="server_busy",
                        headers={"Retry-After": "1"},
                    )
            except ApiError as error:
                await error.response()(scope, receive, send_wrapper)
                return
            admitted = True
            self.active += 1
            self.metrics.in_flight.inc()
            if not await self.run_app(scope, body, receive, send_wrapper, state):
                state["status"] = CLIENT_CLOSED
        finally:
            if admitted:
                self.active -= 1
                self.metrics.in_flight.dec()
            self.metrics.requests.labels(route, method, str(state["status"])).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)

    def check_host(self, scope: dict[str, Any]) -> None:
        """400 when an allow-list is set and the ``Host`` header is not on it (``*.example.com`` matches subdomains)."""
        if self.allowed_hosts is None:
            return
        header = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), "")
        host = header.lower()
        host = host[1 : host.index("]")] if host.startswith("[") and "]" in host else host.rsplit(":", 1)[0]
        for allowed in self.allowed_hosts:
            if allowed == "*" or host == allowed or (allowed.startswith("*.") and host.endswith(allowed[1:])):
                return
        raise ApiError(
            400,
            f"Host {header!r} is not allowed on this server (it answers for {', '.join(self.allowed_hosts)}). "
            "Use one of those names, or add this one to the server's allowed hosts.",
            code="host_not_allowed",
        )

    async def read_body(self, scope: dict[str, Any], receive: Any) -> bytes | None:
        """The whole body (None when the client disconnected); 413 over the size limit, 408 past the timeout."""
        limit = self.max_body_bytes
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length", b"").decode("latin-1")
        if limit is not None and declared.isdigit() and int(declared) > limit:
            raise too_large(int(declared), limit)

        async def collect() -> bytes | None:
            body = bytearray()
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return None
                body += message.get("body", b"")
                if limit is not None and len(body) > limit:
                    raise too_large(len(body), limit, at_least=True)
                if not message.get("more_body", False):
                    return bytes(body)

        if self.body_timeout is None:
            return await collect()
        try:
            return await asyncio.wait_for(collect(), self.body_timeout)
        except asyncio.TimeoutError:
            raise ApiError(
                408,
                f"The request body did not arrive within {self.body_timeout:g} s; send it at once "
                "(this server closes slow uploads).",
                code="request_timeout",
                headers={"Connection": "close"},
            ) from None

    async def run_app(self, scope: dict[str, Any], body: bytes, receive: Any, send: Any, state: dict[str, Any]) -> bool:
        """Run the app on the read ``body``; False when the client left first (its work was cancelled)."""
        gone = asyncio.Event()
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def watch() -> None:
            try:
                while (await receive())["type"] != "http.disconnect":
                    pass
            except Exception:  # a server that cannot tell: keep serving
                return
            gone.set()

        task = asyncio.ensure_future(self.app(scope, replay, send))
        watcher = asyncio.ensure_future(watch())
        try:
            await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if gone.is_set() and not task.done() and not state["finished"]:  # the client left before its answer
                task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                if not gone.is_set():
                    raise
                logger.debug("client left %s %s; its request was cancelled", scope["method"], scope["path"])
                return False
            return True
        finally:
            watcher.cancel()
            if not task.done():
                task.cancel()


def install_error_handlers(app: Any, describe_routes: str) -> None:
    """OpenAI-shaped errors for `ApiError`, unknown routes (404) and wrong methods (405)."""

    async def on_api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return exc.response()

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 404:
            message = f"No route {request.method} {request.url.path}. This server serves: {describe_routes}."
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}. This server serves: {describe_routes}."
        else:
            message = str(exc.detail)
        return ApiError(exc.status_code, message, code="not_found" if exc.status_code == 404 else None).response()

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
