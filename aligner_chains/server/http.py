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
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from aligner_chains.core.errors import AlignerError, InputTooLongError

__all__ = [
    "SSE_DONE",
    "SSE_HEADERS",
    "ApiError",
    "Metrics",
    "ServingMiddleware",
    "api_error_from",
    "chain_items",
    "check_bearer",
    "install_error_handlers",
    "iterate_in_thread",
    "prefetch",
    "read_json_object",
    "sse",
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


async def read_json_object(request: Request, max_bytes: int) -> dict[str, Any]:
    """The request body as a JSON object; 413 beyond ``max_bytes``, 400 for empty or malformed JSON."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(int(declared), max_bytes)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise _too_large(len(body), max_bytes, at_least=True)
    if not body.strip():
        raise ApiError(400, "The request body is empty: send a JSON object (Content-Type: application/json).")
    try:
        data = json.loads(bytes(body).decode("utf-8"))
    except UnicodeDecodeError:
        raise ApiError(400, "The request body is not UTF-8 text: send a JSON object encoded as UTF-8.") from None
    except json.JSONDecodeError as exc:
        raise ApiError(
            400, f"The request body is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})."
        ) from None
    if not isinstance(data, dict):
        raise ApiError(400, f"The request body must be a JSON object, got a JSON {_json_type(data)}.")
    return data


def _too_large(size: int, limit: int, *, at_least: bool = False) -> ApiError:
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
    """One server-sent event carrying ``data`` (JSON, or a literal such as ``[DONE]``)."""
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


SSE_DONE = sse("[DONE]")


async def iterate_in_thread(factory: Callable[[], Iterator[T]]) -> AsyncIterator[T]:
    """Run a blocking iterator in a worker thread and yield its items; closing this stops the iterator."""
    loop = asyncio.get_running_loop()
    items: asyncio.Queue[Any] = asyncio.Queue()
    cancelled = threading.Event()
    done = object()

    def put(item: Any) -> None:
        try:
            loop.call_soon_threadsafe(items.put_nowait, item)
        except RuntimeError:  # the loop is gone: nobody is listening any more
            cancelled.set()

    def work() -> None:
        iterator = factory()
        try:
            for item in iterator:
                if cancelled.is_set():
                    break
                put(item)
        except BaseException as exc:
            put(_Raised(exc))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
            put(done)

    worker = loop.run_in_executor(None, work)
    try:
        while (item := await items.get()) is not done:
            if isinstance(item, _Raised):
                raise item.exc
            yield item
    finally:
        cancelled.set()
        del worker


class _Raised:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


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


class ServingMiddleware:
    """ASGI middleware: API-key check and in-flight limit on protected paths, metrics on every request."""

    def __init__(
        self,
        app: Any,
        *,
        metrics: Metrics,
        routes: set[str],
        protected: Callable[[str], bool],
        api_key: str | None,
        max_in_flight: int,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes
        self.protected = protected
        self.api_key = api_key
        self.max_in_flight = max_in_flight
        self.active = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        route = path if path in self.routes else "other"
        method = scope["method"]
        status = {"code": 500}

        async def send_wrapper(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        started = time.perf_counter()
        self.metrics.in_flight.inc()
        self.active += 1
        try:
            error: ApiError | None = None
            if self.protected(path):
                try:
                    check_bearer(Request(scope), self.api_key)
                except ApiError as exc:
                    error = exc
                if error is None and self.active > self.max_in_flight:
                    error = ApiError(
                        429,
                        f"The server is busy ({self.active - 1} requests in flight, limit {self.max_in_flight}). "
                        "Retry after a moment.",
                        type="rate_limit_error",
                        code="server_busy",
                        headers={"Retry-After": "1"},
                    )
            if error is not None:
                await error.response()(scope, receive, send_wrapper)
            else:
                await self.app(scope, receive, send_wrapper)
        finally:
            self.active -= 1
            self.metrics.in_flight.dec()
            self.metrics.requests.labels(route, method, str(status["code"])).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)


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
