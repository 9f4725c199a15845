"""A fake OpenAI-compatible chat upstream for tests, demos and the load benchmark (no model, no network).

Its reply quotes the last user message, so a test can tell which request a reply belongs to; questions
mentioning "weather" get a tool call instead of text. Streamed replies go word by word, and each stream is
logged (how many words were sent, whether it reached its end), so a test can tell when a proxy closed it.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from integrations.openai_proxy.app import last_user_text


def default_answer(question: str) -> str:
    """The fake upstream's reply to ``question`` (mentions a contact address, as real answers sometimes do)."""
    return f"About '{question}': mix flour, water, salt and yeast. Mail jane.doe@example.com for details."


def create_fake_upstream(
    *,
    answer: Callable[[str], str] = default_answer,
    delay_s: float = 0.0,
    fail_status: int | None = None,
    model: str = "fake-upstream",
    word_delay_s: float = 0.0,
    hold: threading.Event | None = None,
    hold_after: int = 0,
) -> Any:
    """A FastAPI app with ``POST /v1/chat/completions`` (plain and streamed) and ``GET /v1/models``.

    ``delay_s`` delays every reply (to test timeouts); ``fail_status`` answers every request with that
    HTTP status and an OpenAI-shaped error. ``app.state.requests`` counts the chat requests received.
    A streamed reply waits ``word_delay_s`` before each word; with ``hold``, it stops after ``hold_after``
    words until ``hold`` is set (at most 30 s). ``app.state.streams`` logs each streamed reply as
    ``{"words": total, "sent": sent so far, "finished": reached [DONE], "closed": its generator ended}``.
    """
    from fastapi import FastAPI

    app = FastAPI()
    app.state.requests = 0
    app.state.last_headers = {}
    app.state.streams = []

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model, "object": "model", "owned_by": "test"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        app.state.requests += 1
        app.state.last_headers = dict(request.headers)
        body = await request.json()
        if delay_s:
            await asyncio.sleep(delay_s)
        if fail_status is not None:
            return JSONResponse(
                {"error": {"message": f"fake upstream failure {fail_status}", "type": "server_error"}},
                status_code=fail_status,
            )
        if body.get("model") == "missing-model":
            return JSONResponse(
                {"error": {"message": "The model 'missing-model' does not exist", "code": "model_not_found"}},
                status_code=404,
            )
        question = last_user_text(body.get("messages") or [])
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:12]}"
        created = int(time.time())
        wants_tool = "weather" in question.lower()
        if wants_tool:
            message = {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": json.dumps({"city": "Paris"})},
                    }
                ],
            }
            finish = "tool_calls"
        else:
            message = {"role": "assistant", "content": answer(question)}
            finish = "stop"
        usage = {"prompt_tokens": len(question.split()), "completion_tokens": 12, "total_tokens": 12}
        if not body.get("stream"):
            return JSONResponse(
                {
                    "id": completion_id,
                    "object": "chat.completion",
                    "created": created,
                    "model": body.get("model") or model,
                    "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
                    "usage": usage,
                }
            )

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> str:
            data = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": body.get("model") or model,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
            }
            return f"data: {json.dumps(data)}\n\n"

        words = [] if wants_tool else message["content"].split(" ")
        log = {"words": len(words), "sent": 0, "finished": False, "closed": False}
        app.state.streams.append(log)

        async def events() -> AsyncIterator[str]:
            try:
                yield chunk({"role": "assistant", "content": ""})
                if wants_tool:
                    call = message["tool_calls"][0]
                    yield chunk(
                        {"tool_calls": [{"index": 0, **call, "function": {**call["function"], "arguments": ""}}]}
                    )
                    yield chunk(
                        {"tool_calls": [{"index": 0, "function": {"arguments": call["function"]["arguments"]}}]}
                    )
                for i, word in enumerate(words):
                    if hold is not None and i == hold_after:
                        await asyncio.to_thread(hold.wait, 30)
                    if word_delay_s:
                        await asyncio.sleep(word_delay_s)
                    yield chunk({"content": word if i == 0 else " " + word})
                    log["sent"] = i + 1
                yield chunk({}, finish)
                if (body.get("stream_options") or {}).get("include_usage"):
                    data = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "choices": []}
                    yield f"data: {json.dumps({**data, 'usage': usage})}\n\n"
                yield "data: [DONE]\n\n"
                log["finished"] = True
            finally:
                log["closed"] = True

        return StreamingResponse(events(), media_type="text/event-stream")

    return app
