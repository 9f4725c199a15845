"""Run an app with uvicorn: in the foreground (the CLI) or in a background thread (tests, notebooks, benchmarks).

Both close connections that do not finish sending a request's headers within ``header_timeout`` seconds
(uvicorn has no such timeout of its own: a client trickling header bytes would hold its connection forever).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from aligner_chains.core.errors import AlignerError, MissingDependencyError

#: Default seconds a connection may take to send a request's headers.
HEADER_TIMEOUT = 10.0


def _uvicorn() -> Any:
    try:
        import uvicorn
    except ImportError as exc:
        raise MissingDependencyError("Serving needs uvicorn: pip install -e '.[serve]'.") from exc
    return uvicorn


def header_timeout_protocol(header_timeout: float) -> type:
    """uvicorn's HTTP protocol class, closing a connection whose request headers take over ``header_timeout`` s.

    The clock starts when the connection opens and again when a response completes (keep-alive); it
    does not run while a request is being processed.
    """
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    logger = logging.getLogger("aligner_chains.server")

    class HeaderTimeoutProtocol(AutoHTTPProtocol):  # type: ignore[misc,valid-type]
        _header_timer: Any = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm_header_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm_header_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            super().connection_lost(exc)

        def _arm_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            self._header_timer = self.loop.call_later(header_timeout, self._header_time_up)

        def _header_time_up(self) -> None:
            self._header_timer = None
            busy = self.cycle is not None and not self.cycle.response_complete
            if not busy and not self.transport.is_closing():
                logger.info(
                    "closed a connection from %s: no complete request headers in %g s", self.client, header_timeout
                )
                self.transport.close()

    return HeaderTimeoutProtocol


def run_server(
    app: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
    header_timeout: float = HEADER_TIMEOUT,
) -> None:
    """Serve ``app`` until interrupted (Ctrl-C or SIGTERM stop it gracefully)."""
    _uvicorn().run(
        app,
        host=host,
        port=port,
        log_level=log_level,
        timeout_graceful_shutdown=10,
        http=header_timeout_protocol(header_timeout),
    )


class ServerThread:
    """``app`` served by uvicorn in a daemon thread; ``port=0`` picks a free port. A context manager.

    >>> with ServerThread(app) as server:   # doctest: +SKIP
    ...     httpx.get(server.url + "/health")
    """

    def __init__(
        self,
        app: Any,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        log_level: str = "warning",
        header_timeout: float = HEADER_TIMEOUT,
    ) -> None:
        uvicorn = _uvicorn()
        self.host = host
        self.config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level=log_level,
            lifespan="off",
            timeout_graceful_shutdown=5,
            http=header_timeout_protocol(header_timeout),
        )
        self.server = uvicorn.Server(self.config)
        self.thread: threading.Thread | None = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        """``http://host:port`` of the running server."""
        if self.port is None:
            raise AlignerError("The server is not running; call start() or use it as a context manager.")
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> ServerThread:
        self.thread = threading.Thread(target=self.server.run, name="aligner-uvicorn", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise AlignerError(f"uvicorn did not start on {self.host}:{self.config.port} within {timeout} s.")
            time.sleep(0.01)
        sockets = [s for server in self.server.servers for s in server.sockets]
        self.port = int(sockets[0].getsockname()[1])
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout)
        self.port = None

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
