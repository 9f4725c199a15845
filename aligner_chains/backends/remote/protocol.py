"""The OpenAI-compatible wire format, read: SSE streams, error bodies, context-length refusals.

Shared by the remote backend and the OpenAI proxy (``integrations/openai_proxy``), which both read
replies of vLLM, TGI, SGLang and OpenAI-style servers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from aligner_chains.core.errors import BackendError


def estimate_tokens(text: str) -> int:
    """An upper bound of the tokens ``text`` takes: UTF-8 bytes + 2 (BOS and a SentencePiece prefix)."""
    return len(text.encode("utf-8")) + 2


def sse_events(response: Any) -> Iterator[dict[str, Any]]:
    """JSON payloads of ``data:`` lines until ``data: [DONE]`` (comments and other fields skipped)."""
    data_lines: list[str] = []
    for line in response.iter_lines():
        if line.startswith("data:"):
            data_lines.append(line[5:].lstrip())
            continue
        if line.strip() or not data_lines:
            continue  # comments (":"), "event:"/"id:" fields, blank lines between events
        payload, data_lines = "\n".join(data_lines), []
        if payload == "[DONE]":
            return
        yield json_event(payload)
    if data_lines:
        payload = "\n".join(data_lines)
        if payload != "[DONE]":
            yield json_event(payload)


def json_event(payload: str) -> dict[str, Any]:
    try:
        event = json.loads(payload)
    except json.JSONDecodeError as exc:
        raise BackendError(f"The server sent an event that is not JSON: {payload[:200]!r}") from exc
    if not isinstance(event, dict):
        raise BackendError(f"The server sent an event that is not a JSON object: {payload[:200]!r}")
    return event


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
    if isinstance(error, dict) and all(
        isinstance(error.get(k), int) for k in ("prompt_tokens", "max_tokens", "context")
    ):
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
