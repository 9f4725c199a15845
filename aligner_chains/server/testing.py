"""Helpers for testing apps that use the Aligner server, the remote backend or the proxy (offline, loopback)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator, Sequence
from typing import Any

from aligner_chains.core.generation import Backend, GenerationOutput, GenerationParams


class SlowBackend(Backend):
    """Wraps a backend and sleeps ``delay_s`` before each generation (to test timeouts and limits)."""

    def __init__(self, inner: Backend, delay_s: float) -> None:
        self.inner = inner
        self.delay_s = delay_s
        self.name = inner.name
        self.max_context = inner.max_context
        self.tokenizer = getattr(inner, "tokenizer", None)

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    def truncate_left(self, text: str, n_tokens: int) -> str:
        return self.inner.truncate_left(text, n_tokens)

    def generate(
        self, prompts: Sequence[str], params: GenerationParams, *args: Any, **kwargs: Any
    ) -> list[GenerationOutput]:
        time.sleep(self.delay_s)
        return self.inner.generate(prompts, params)

    def stream(
        self, prompt: str, params: GenerationParams, *args: Any, **kwargs: Any
    ) -> Iterator[str | GenerationOutput]:
        time.sleep(self.delay_s)
        yield from self.inner.stream(prompt, params)


def closed_port() -> int:
    """A loopback TCP port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def sse_payloads(text: str) -> list[Any]:
    """The ``data:`` payloads of a server-sent-events body, JSON-decoded (``"[DONE]"`` kept as a string).

    Lines end at ``\n`` only (a ``\r`` before it dropped), never at U+2028 or U+0085 as with ``str.splitlines``.
    """
    out: list[Any] = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        data = "\n".join(line[5:].lstrip() for line in block.split("\n") if line.startswith("data:"))
        if data:
            out.append(data if data == "[DONE]" else json.loads(data))
    return out
