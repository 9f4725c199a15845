"""`ServerFleet`: several OpenAI-compatible servers of one model, used as one.

Each request goes to the server with the fewest requests in flight (ties in turn), so a slow replica
gets less work without a load balancer in front. A server that cannot be reached, drops the
connection or answers 5xx (after its transport's own retries) is set aside for ``cooldown_s`` and the
request goes to the next server: a replica that dies mid-job costs time, not rows. Timeouts and 4xx
answers are the request's own fault (too long, refused) and are raised as they are. With one server
the fleet is a thin wrapper around its transport.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from aligner_chains.backends.remote.transport import HTTPTransport
from aligner_chains.core.errors import BackendError, BackendTimeoutError, ConfigError

T = TypeVar("T")

__all__ = ["ServerFleet", "is_server_failure", "server_root"]


def server_root(url: str) -> str:
    """A server URL without trailing slashes and ``/v1``: the root the API paths are appended to."""
    root = url.strip().rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root


def is_server_failure(exc: BaseException) -> bool:
    """Whether ``exc`` says the server failed (unreachable, dropped, 5xx), so another one may succeed."""
    if not isinstance(exc, BackendError) or isinstance(exc, BackendTimeoutError):
        return False
    return exc.status_code is None or exc.status_code >= 500


class ServerFleet:
    """Spreads requests over ``transports`` (least busy first); fails over when a server fails."""

    def __init__(self, transports: Sequence[HTTPTransport], *, cooldown_s: float = 30.0) -> None:
        if not transports:
            raise ConfigError("A server fleet needs at least one server URL.")
        urls = [t.base_url for t in transports]
        repeated = sorted({u for u in urls if urls.count(u) > 1})
        if repeated:
            raise ConfigError(f"Server URL(s) given more than once: {', '.join(repeated)}; give each server once.")
        self.transports = list(transports)
        self.cooldown_s = float(cooldown_s)
        self._in_flight = [0] * len(self.transports)
        self._down_until = [0.0] * len(self.transports)
        self._served = [0] * len(self.transports)
        self._turn = itertools.count()
        self._lock = threading.Lock()

    @property
    def primary(self) -> HTTPTransport:
        """The first server: the one asked about the model (``/v1/models``) and for error messages."""
        return self.transports[0]

    @property
    def urls(self) -> list[str]:
        return [t.base_url for t in self.transports]

    def served(self) -> dict[str, int]:
        """Requests each server has answered so far (by URL): how the load was spread."""
        with self._lock:
            return dict(zip(self.urls, self._served, strict=True))

    def _pick(self, exclude: set[int]) -> int:
        """The least busy server not in ``exclude`` and not set aside; if all are set aside, the one back soonest."""
        now = time.monotonic()
        with self._lock:
            candidates = [i for i in range(len(self.transports)) if i not in exclude]
            up = [i for i in candidates if self._down_until[i] <= now] or sorted(
                candidates, key=lambda i: self._down_until[i]
            )[:1]
            turn = next(self._turn)
            n = len(self.transports)
            # fewest in flight; among equals, the next in turn, so idle servers share the first requests
            chosen = min(up, key=lambda i: (self._in_flight[i], (i - turn) % n))
            self._in_flight[chosen] += 1
            return chosen

    def _release(self, index: int, *, ok: bool) -> None:
        with self._lock:
            self._in_flight[index] -= 1
            if ok:
                self._served[index] += 1
                self._down_until[index] = 0.0
            else:
                self._down_until[index] = time.monotonic() + self.cooldown_s

    @contextmanager
    def lease(self) -> Iterator[HTTPTransport]:
        """One server for a request that cannot move once begun (a stream), counted as in flight meanwhile."""
        index = self._pick(set())
        ok = False
        try:
            yield self.transports[index]
            ok = True
        except BaseException as exc:
            ok = not is_server_failure(exc)
            raise
        finally:
            self._release(index, ok=ok)

    def call(self, request: Callable[[HTTPTransport], T]) -> T:
        """``request(transport)`` on the least busy server; on a server failure, on the next one, until each
        server has been tried once. The last failure is raised, saying how many servers were tried."""
        tried: set[int] = set()
        while True:
            index = self._pick(tried)
            try:
                result = request(self.transports[index])
            except BaseException as exc:
                failed = is_server_failure(exc)
                self._release(index, ok=not failed)
                tried.add(index)
                if not failed or len(tried) == len(self.transports):
                    if failed and len(self.transports) > 1:
                        raise BackendError(
                            f"Every server of the fleet failed this request; the last: {exc}",
                            status_code=getattr(exc, "status_code", None),
                            url=getattr(exc, "url", None),
                        ) from exc
                    raise
                continue
            self._release(index, ok=True)
            return result

    def request_json(self, method: str, path: str, body: Any = None, *, retry: bool = True) -> Any:
        """`HTTPTransport.request_json` on the least busy server, failing over as `call` does."""
        return self.call(lambda transport: transport.request_json(method, path, body, retry=retry))

    def check_model(self, name: str) -> None:
        """Check that every server is up and lists model ``name`` (when it lists models at all).

        Raises `BackendError` naming a server that cannot be reached and `ConfigError` naming one that
        serves other models: a typo in one of many URLs fails at start, not a quarter into a job.
        """
        for transport in self.transports:
            try:
                data = transport.request_json("GET", "/v1/models")
            except BackendError as exc:
                if exc.status_code in (404, 405):
                    continue  # a server without /v1/models: only its answers can tell
                raise
            entries = data.get("data") if isinstance(data, dict) else None
            ids = [e.get("id") for e in entries or [] if isinstance(e, dict) and isinstance(e.get("id"), str)]
            if ids and name not in ids:
                raise ConfigError(
                    f"The server at {transport.base_url} does not serve model {name!r} (it lists {', '.join(ids)}); "
                    "every server given must serve the same model."
                )

    def close(self) -> None:
        for transport in self.transports:
            transport.close()
