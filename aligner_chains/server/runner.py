"""Run an app with uvicorn: in the foreground (the CLI) or in a background thread (tests, notebooks, benchmarks)."""

from __future__ import annotations

import threading
import time
from typing import Any

from aligner_chains.core.errors import AlignerError, MissingDependencyError


def _uvicorn() -> Any:
    try:
        import uvicorn
    except ImportError as exc:
        raise MissingDependencyError("Serving needs uvicorn: pip install 'aligner-chains[serve]'.") from exc
    return uvicorn


def run_server(app: Any, *, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Serve ``app`` until interrupted (Ctrl-C or SIGTERM stop it gracefully)."""
    _uvicorn().run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=10)


class ServerThread:
    """``app`` served by uvicorn in a daemon thread; ``port=0`` picks a free port. A context manager.

    >>> with ServerThread(app) as server:   # doctest: +SKIP
    ...     httpx.get(server.url + "/health")
    """

    def __init__(self, app: Any, *, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> None:
        uvicorn = _uvicorn()
        self.host = host
        self.config = uvicorn.Config(
            app, host=host, port=port, log_level=log_level, lifespan="off", timeout_graceful_shutdown=5
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
