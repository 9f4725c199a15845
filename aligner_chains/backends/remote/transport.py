"""HTTP to one OpenAI-compatible server: bearer auth, bounded concurrency, retries with backoff, errors that say why.

The API key is held privately and never logged, printed or put into error messages.
"""

from __future__ import annotations

import json
import logging
import math
import random
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import timezone
from email.utils import parsedate_to_datetime
from typing import Any

from aligner_chains.backends.remote.protocol import context_numbers, error_message, is_context_error
from aligner_chains.core.errors import (
    AlignerError,
    BackendError,
    BackendTimeoutError,
    InputTooLongError,
    MissingDependencyError,
)

logger = logging.getLogger("aligner_chains.backends.remote")

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


def import_httpx() -> Any:
    """``httpx``, or a `MissingDependencyError` naming the extra that brings it."""
    try:
        import httpx
    except ImportError as exc:  # pragma: no cover - httpx comes with llama-index-core
        raise MissingDependencyError("The remote backend needs httpx: pip install -e '.[remote]'.") from exc
    return httpx


def retry_after_seconds(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait: delay-seconds (``"120"``) or an HTTP date
    (``"Wed, 21 Oct 2015 07:28:00 GMT"``, RFC 9110); None when absent or unreadable. A past date is 0."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # HTTP dates are GMT
            when = when.replace(tzinfo=timezone.utc)
        seconds = when.timestamp() - (time.time() if now is None else now)
    return max(0.0, seconds) if math.isfinite(seconds) else None


class HTTPTransport:
    """Sends requests to ``base_url`` for a `RemoteBackend`; retries 408/429/5xx and connection failures.

    Backoff is ``backoff * 2**attempt`` with jitter, at most ``max_backoff``; ``Retry-After`` is honoured.
    A timed-out request is not retried. ``http_client`` (e.g. Starlette's ``TestClient``) is used as
    given and not closed by `close`.
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None,
        api_key_env: str,
        timeout: float,
        connect_timeout: float,
        max_retries: int,
        backoff: float,
        max_backoff: float,
        max_concurrency: int,
        headers: Mapping[str, str] | None = None,
        http_client: Any = None,
    ) -> None:
        self.httpx = import_httpx()
        self.base_url = base_url
        self._api_key = api_key
        self.api_key_env = api_key_env
        self.timeout = float(timeout)
        self.connect_timeout = float(connect_timeout)
        self.max_retries = max_retries
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.max_concurrency = max_concurrency
        self.extra_headers = dict(headers or {})
        self._slots = threading.BoundedSemaphore(max_concurrency)
        self._lock = threading.Lock()
        self._owns_client = http_client is None
        self._client = http_client

    @property
    def has_api_key(self) -> bool:
        """Whether a bearer token is sent (the token itself is never exposed)."""
        return bool(self._api_key)

    def headers(self) -> dict[str, str]:
        headers = dict(self.extra_headers)
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

    def client(self) -> Any:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    httpx = self.httpx
                    self._client = httpx.Client(
                        timeout=httpx.Timeout(self.timeout, connect=self.connect_timeout),
                        limits=httpx.Limits(
                            max_connections=self.max_concurrency + 2, max_keepalive_connections=self.max_concurrency
                        ),
                    )
        return self._client

    @contextmanager
    def slot(self) -> Iterator[None]:
        with self._slots:
            yield

    def request_json(self, method: str, path: str, body: Any = None, *, retry: bool = True) -> Any:
        with self.slot():
            response = self.send(method, path, body, retry=retry)
            try:
                return response.json()
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise BackendError(
                    f"{method} {self.base_url}{path} answered HTTP {response.status_code} with a body that is not "
                    f"JSON: {response.text[:200]!r}",
                    status_code=response.status_code,
                    url=self.base_url + path,
                ) from exc
            finally:
                response.close()

    def send(self, method: str, path: str, body: Any = None, *, stream: bool = False, retry: bool = True) -> Any:
        """Send with retries on 408/429/5xx and connection failures; raise `BackendError` on failure."""
        httpx = self.httpx
        client = self.client()
        url = self.base_url + path
        retries = self.max_retries if retry else 0
        attempt = 0
        while True:
            try:
                request = client.build_request(
                    method,
                    url,
                    json=body,
                    headers=self.headers(),
                    timeout=httpx.Timeout(self.timeout, connect=self.connect_timeout),
                )
                response = client.send(request, stream=stream)
            except (httpx.ConnectTimeout, httpx.ConnectError) as exc:
                if attempt < retries:
                    self._sleep(attempt, None, f"{type(exc).__name__}", method, url)
                    attempt += 1
                    continue
                raise BackendError(
                    f"Cannot reach {url} ({type(exc).__name__}: {exc}) after {attempt + 1} attempt(s). "
                    "Is the server running at that address?",
                    url=url,
                ) from exc
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
                # Connected, then the connection dropped: not an unreachable server.
                if attempt < retries:
                    self._sleep(attempt, None, f"{type(exc).__name__}", method, url)
                    attempt += 1
                    continue
                when = (
                    "while the request was being sent"
                    if isinstance(exc, httpx.WriteError)
                    else "after the request was sent, before a complete reply"
                )
                raise BackendError(
                    f"{method} {url}: the server accepted the connection but it was closed {when} "
                    f"({type(exc).__name__}: {exc}), {attempt + 1} attempt(s). The server may have crashed or "
                    "restarted mid-request (check its log, e.g. for running out of memory), or a proxy in between "
                    "cut the request (check its timeout and body-size limits).",
                    url=url,
                ) from exc
            except httpx.TimeoutException as exc:
                raise BackendTimeoutError(
                    f"{method} {url} got no answer within {self.timeout} s ({type(exc).__name__}). The server may be "
                    "overloaded: raise timeout=, lower max_new_tokens, or add capacity.",
                    url=url,
                ) from exc
            except httpx.TransportError as exc:
                raise BackendError(f"{method} {url} failed: {type(exc).__name__}: {exc}", url=url) from exc
            if response.status_code < 400:
                return response
            if response.status_code in RETRY_STATUSES and attempt < retries:
                retry_after = response.headers.get("retry-after")
                response.read()
                response.close()
                self._sleep(attempt, retry_after, f"HTTP {response.status_code}", method, url)
                attempt += 1
                continue
            try:
                response.read()
                raise self._http_error(method, url, response, attempt, body)
            finally:
                response.close()

    def _sleep(self, attempt: int, retry_after: str | None, why: str, method: str, url: str) -> None:
        delay = min(self.max_backoff, self.backoff * (2**attempt)) * (0.5 + random.random() / 2)
        wanted = retry_after_seconds(retry_after)
        if wanted is not None:
            delay = min(self.max_backoff, max(delay, wanted))
        logger.info(
            "%s %s: %s, retrying in %.2f s (attempt %d of %d)",
            method,
            url,
            why,
            delay,
            attempt + 2,
            self.max_retries + 1,
        )
        time.sleep(delay)

    def _http_error(self, method: str, url: str, response: Any, attempt: int, body: Any) -> AlignerError:
        status = response.status_code
        try:
            payload = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            payload = response.text
        message = error_message(payload)
        tries = f" after {attempt + 1} attempts" if attempt else ""
        if status in (400, 413, 422) and is_context_error(payload, message):
            numbers = context_numbers(payload, message)
            return InputTooLongError(
                f"The server at {self.base_url} refused the prompt as too long for the model's context (HTTP {status}: "
                f"{message}). Shorten the answer or lower max_new_tokens; pass tokenizer= so lengths are checked "
                "before sending, and overflow='truncate_question' to cut the question instead.",
                **numbers,
            )
        if status in (401, 403):
            hint = (
                "The API key was refused"
                if self._api_key
                else f"No API key was sent: pass api_key= or set ${self.api_key_env}"
            )
            return BackendError(
                f"{method} {url} was refused (HTTP {status}: {message}). {hint}.", status_code=status, url=url
            )
        if status == 404 and "model" in message.lower():
            model = body.get("model") if isinstance(body, dict) else None
            return BackendError(
                f"The server at {self.base_url} does not serve model {model!r} (HTTP 404: {message}). "
                "Pass model= one of the names GET /v1/models lists.",
                status_code=status,
                url=url,
            )
        return BackendError(f"{method} {url} failed with HTTP {status}{tries}: {message}", status_code=status, url=url)

    def close(self) -> None:
        """Close the connections (not those of a client passed as ``http_client``)."""
        if self._owns_client and self._client is not None:
            self._client.close()
            self._client = None
