"""Misbehaving peers on loopback for the fault regressions (``tests/adversarial``): a raw HTTP upstream that can
send anything (cut streams, aborted connections, wrong bodies), and the bytes it sends.

Every loop here is bounded (accept and read timeouts, a stop flag), so a failing test cannot hang.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from aligner_chains.core.generation import Backend, GenerationOutput, GenerationParams

Reply = list[bytes | float]
"""What the raw upstream sends: byte strings, with floats as pauses (seconds) between them."""

RESET = b"<reset>"
"""A reply item that aborts the connection with a TCP reset instead of closing it."""


def sse_chunk(delta: dict[str, Any], finish: str | None = None, index: int = 0) -> bytes:
    """One chat.completion.chunk event, as OpenAI-style servers send it (raw UTF-8: U+2028 stays raw)."""
    data = {
        "id": "chatcmpl-raw",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "raw-upstream",
        "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(data, ensure_ascii=False).encode() + b"\n\n"


def chat_reply(content: str, finish: Any = "stop") -> bytes:
    """A whole non-streamed chat.completion body."""
    return json.dumps(
        {
            "id": "chatcmpl-raw",
            "object": "chat.completion",
            "created": 1,
            "model": "raw-upstream",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
        },
        ensure_ascii=False,
    ).encode()


def http_head(status: int = 200, content_type: str = "text/event-stream", extra: str = "", length: int | None = None):
    """Response headers: chunked unless ``length`` is given."""
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (
        f"HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\n{framing}\r\n{extra}Connection: close\r\n\r\n"
    ).encode()


def chunked(*parts: bytes) -> list[bytes]:
    """``parts`` as HTTP/1.1 chunks (without the terminating zero chunk)."""
    return [f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in parts]


END_CHUNKS = b"0\r\n\r\n"


class RawUpstream:
    """A loopback HTTP server whose every reply is scripted bytes: ``script(request_json) -> Reply``.

    It reads one request per connection (headers and a Content-Length body), sends the script's items,
    then closes the connection (or resets it at `RESET`). ``requests`` holds the request bodies.
    """

    def __init__(self, script: Callable[[dict[str, Any]], Reply]) -> None:
        self.script = script
        self.requests: list[dict[str, Any]] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, name="raw-upstream", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        try:
            data = b""
            while b"\r\n\r\n" not in data:
                piece = conn.recv(65536)
                if not piece:
                    return
                data += piece
            head, _, body = data.partition(b"\r\n\r\n")
            length = next(
                (
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                ),
                0,
            )
            while len(body) < length:
                piece = conn.recv(65536)
                if not piece:
                    return
                body += piece
            request = json.loads(body or b"{}")
            self.requests.append(request)
            for item in self.script(request):
                if isinstance(item, float):
                    time.sleep(item)
                elif item == RESET:
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                else:
                    conn.sendall(item)
        except OSError:
            return
        finally:
            conn.close()

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.sock.close()


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class TickingBackend(Backend):
    """A model-free backend: one word per ``tick_s``; it records what ran, where, and when a stream was closed."""

    name = "ticking"
    max_context = None

    def __init__(self, tick_s: float = 0.02, generate_s: float = 0.0) -> None:
        self.tick_s = tick_s
        self.generate_s = generate_s
        self.rows_generated = 0
        self.words_streamed = 0
        self.stream_closed = threading.Event()
        self.tokenized_on_loop: list[bool] = []

    def count_tokens(self, text: str) -> int:
        self.tokenized_on_loop.append(_on_event_loop())
        return len(text.split()) + 1

    def truncate_left(self, text: str, n_tokens: int) -> str:
        return " ".join(text.split()[n_tokens:])

    def generate(self, prompts: Sequence[str], params: GenerationParams, *args: Any, **kwargs: Any) -> list[Any]:
        time.sleep(self.generate_s)
        self.rows_generated += len(prompts)
        n = params.max_new_tokens or 4
        return [GenerationOutput(list(range(n)), " ".join(["fixed"] * n), "length", len(p.split())) for p in prompts]

    def stream(self, prompt: str, params: GenerationParams, *args: Any, **kwargs: Any) -> Iterator[Any]:
        n = params.max_new_tokens or 4
        try:
            for _ in range(n):
                time.sleep(self.tick_s)
                self.words_streamed += 1
                yield "word "
            yield GenerationOutput(list(range(n)), "word " * n, "length", len(prompt.split()))
        finally:
            self.stream_closed.set()
