"""The OpenAI-compatible wire format, read: SSE streams, error bodies, context-length refusals.

Shared by the remote backend and the OpenAI proxy (``integrations/openai_proxy``), which both read
replies of vLLM, TGI, SGLang and OpenAI-style servers.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterable, Iterator
from typing import Any, Literal

from aligner_chains.core.errors import BackendError


def estimate_tokens(text: str) -> int:
    """An upper bound of the tokens ``text`` takes: UTF-8 bytes + 2 (BOS and a SentencePiece prefix)."""
    return len(text.encode("utf-8")) + 2


class SSEDecoder:
    """Incremental server-sent-events reader: feed it chunks (bytes or text) as they arrive, get JSON events.

    Lines end at CRLF, LF or CR only, as the SSE specification says: never at U+2028, U+2029 or U+0085,
    which JSON strings may hold raw (``str.splitlines`` and ``httpx``'s ``iter_lines`` split on them).
    A line break or a UTF-8 character cut by a chunk boundary is joined back. ``data:`` lines gather into
    one payload until a blank line; ``data: [DONE]`` ends the stream (`done`); comments (``:``) and other
    fields are skipped. Each payload must be a JSON object, else `BackendError`.
    """

    def __init__(self) -> None:
        self.done = False
        self._bytes = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ""
        self._data: list[str] = []
        self._started = False

    def feed(self, chunk: bytes | str) -> list[dict[str, Any]]:
        """The events completed by ``chunk`` (none once `done`)."""
        text = self._bytes.decode(chunk) if isinstance(chunk, (bytes, bytearray)) else chunk
        return self._take(text, final=False)

    def finish(self) -> list[dict[str, Any]]:
        """The end of the stream: a last line without a line break and a last event without a blank line count."""
        events = self._take(self._bytes.decode(b"", final=True), final=True)
        if not self.done and self._data:
            events += self._dispatch()
        return events

    def _take(self, text: str, *, final: bool) -> list[dict[str, Any]]:
        if self.done:
            return []
        if not self._started and text:
            self._started = True
            text = text.removeprefix("\ufeff")  # a byte order mark may start the stream
        buffer = self._buffer + text
        events: list[dict[str, Any]] = []
        start = 0
        for match in _LINE_END.finditer(buffer):
            if match.group() == "\r" and match.end() == len(buffer) and not final:
                break  # CR at the end of a chunk: an LF may follow in the next one
            events += self._line(buffer[start : match.start()])
            start = match.end()
            if self.done:
                self._buffer = ""
                return events
        self._buffer = buffer[start:]
        if final and self._buffer:
            events += self._line(self._buffer)
            self._buffer = ""
        return events

    def _line(self, line: str) -> list[dict[str, Any]]:
        if line.startswith("data:"):
            self._data.append(line[5:].lstrip(" "))
            return []
        if line or not self._data:
            return []  # comments (":"), "event:"/"id:" fields, blank lines between events
        return self._dispatch()

    def _dispatch(self) -> list[dict[str, Any]]:
        payload, self._data = "\n".join(self._data), []
        if payload == "[DONE]":
            self.done = True
            return []
        return [json_event(payload)]


_LINE_END = re.compile(r"\r\n|\r|\n")


def sse_events(source: Any) -> Iterator[dict[str, Any]]:
    """JSON payloads of ``data:`` lines until ``data: [DONE]``, read with `SSEDecoder`.

    ``source``: an ``httpx`` response (its bytes are read, undecoded), or an iterable of byte or text
    chunks (e.g. collected from ``aiter_bytes()``); an object with only ``iter_lines()`` is read as lines
    already split (its line breaks are restored as LF).
    """
    if hasattr(source, "iter_bytes"):
        chunks: Iterable[bytes | str] = source.iter_bytes()
    elif isinstance(source, (bytes, bytearray, str)):
        chunks = [source]
    elif hasattr(source, "iter_lines") and not hasattr(source, "__iter__"):
        chunks = (line + "\n" for line in source.iter_lines())
    else:
        chunks = source
    decoder = SSEDecoder()
    for chunk in chunks:
        yield from decoder.feed(chunk)
        if decoder.done:
            return
    yield from decoder.finish()


def json_event(payload: str) -> dict[str, Any]:
    try:
        event = json.loads(payload)
    except json.JSONDecodeError as exc:
        raise BackendError(f"The server sent an event that is not JSON: {payload[:200]!r}") from exc
    if not isinstance(event, dict):
        raise BackendError(f"The server sent an event that is not a JSON object: {payload[:200]!r}")
    return event


#: Finish reasons of a complete completion, as servers spell them: OpenAI, vLLM and SGLang send "stop" and
#: "length"; Text Generation Inference sends "eos_token" and "stop_sequence" (its own names) for a stop.
FINISH_REASONS: dict[str, Literal["stop", "length"]] = {
    "stop": "stop",
    "length": "length",
    "eos_token": "stop",
    "stop_sequence": "stop",
}


def finish_reason(value: Any, url: str) -> Literal["stop", "length"]:
    """``"stop"`` or ``"length"`` for a server's ``finish_reason``; anything else is a `BackendError`.

    A missing (null) reason, vLLM's and SGLang's ``"abort"`` (the request was cancelled), OpenAI's
    ``"content_filter"`` (text withheld) or an ``"error"`` mean the text is not a whole completion: it
    must not pass as a correction.
    """
    if isinstance(value, str) and value in FINISH_REASONS:
        return FINISH_REASONS[value]
    if value is None:
        why = "no finish_reason: the generation did not finish (the server may have cut it short)"
    elif value == "abort":
        why = "finish_reason 'abort': the server aborted the request (cancelled, preempted or shutting down)"
    else:
        why = f"finish_reason {value!r:.100}, which is neither 'stop' nor 'length'"
    raise BackendError(f"{url} answered with {why}; the text is not a complete correction and is not used.", url=url)


def is_count(value: Any) -> bool:
    """A token count or length: an int >= 0 that is not a bool (``True`` is an int in Python)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def error_message(payload: Any) -> str:
    """The human message of an error body: OpenAI, vLLM, TGI and FastAPI shapes."""
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error["message"][:1000]
        if isinstance(error, str):
            return error[:1000]
        if isinstance(payload.get("message"), str):
            return payload["message"][:1000]
        if "detail" in payload:
            return str(payload["detail"])[:1000]
    return short_text(payload)


def short_text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:300] + ("..." if len(text) > 300 else "")


_CONTEXT_PATTERNS = ("context length", "context_length", "maximum context", "too long", "max_model_len")


def is_context_error(payload: Any, message: str) -> bool:
    code = ""
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        code = str(payload["error"].get("code") or "")
    return code == "context_length_exceeded" or any(p in message.lower() for p in _CONTEXT_PATTERNS)


def context_numbers(payload: Any, message: str) -> dict[str, int]:
    """prompt_tokens / max_new_tokens / context from our structured error, else from vLLM-style text."""
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict) and all(is_count(error.get(k)) for k in ("prompt_tokens", "max_tokens", "context")):
        return {
            "prompt_tokens": error["prompt_tokens"],
            "max_new_tokens": error["max_tokens"],
            "context": error["context"],
        }

    def find(pattern: str) -> int:
        match = re.search(pattern, message)
        return int(match.group(1)) if match else 0

    return {
        "context": find(r"maximum context length is (\d+)"),
        "prompt_tokens": find(r"(\d+) (?:in the messages|in the prompt|input tokens|tokens in the prompt)"),
        "max_new_tokens": find(r"(\d+) (?:in the completion|output tokens)")
        or find(r"'max_tokens' is too large: (\d+)"),
    }
