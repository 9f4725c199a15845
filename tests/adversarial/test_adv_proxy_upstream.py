"""Fault regressions of the correcting proxy against misbehaving upstreams on loopback (issue #16, items 1, 4, 5, 11).

A reply cut short must never come back corrected and marked complete: a stream that ends without
``[DONE]`` or a ``finish_reason``, an aborted connection, a non-SSE body and an ``"abort"`` finish reason
are 502s; ``finish_reason`` is relayed as the upstream sent it; events holding U+2028, U+2029 or U+0085
are read and relayed whole; the upstream's ``Retry-After`` reaches the client; a client that leaves
drops its queued correction. With ``stream_mode="segments"`` the same cuts are 502s while nothing has been
sent, and a cut after corrected segments went out ends the stream with an error event, never a finish.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

pytest.importorskip("fastapi")

import httpx
from adversarial_peers import (
    END_CHUNKS,
    RESET,
    TickingBackend,
    chat_reply,
    chunked,
    http_head,
    sse_chunk,
)
from starlette.testclient import TestClient

from aligner_chains import Aligner
from aligner_chains.backends.remote.protocol import sse_events
from aligner_chains.server import ServerThread
from aligner_chains.server.testing import sse_payloads
from integrations.openai_proxy import create_proxy_app

Q = "How can I reach Bob?"
BODY = {"model": "m", "messages": [{"role": "user", "content": Q}]}
STREAM = {**BODY, "stream": True}
CUT = "Mail bob@exa"


def _proxy(aligner: Aligner, url: str, **options: Any) -> TestClient:
    return TestClient(create_proxy_app(aligner, upstream_base_url=url, upstream_timeout=5, **options))


def _first_content(events: list[Any]) -> str:
    return "".join(
        c["delta"].get("content") or "" for e in events if isinstance(e, dict) for c in e.get("choices") or []
    )


@pytest.mark.parametrize(
    ("case", "reply", "message"),
    [
        (
            "closed without finish_reason or [DONE]",
            [
                http_head(),
                *chunked(sse_chunk({"role": "assistant", "content": ""}), sse_chunk({"content": CUT})),
                END_CHUNKS,
            ],
            "ended its stream without [DONE] (no finish_reason for choice(s) [0]",
        ),
        (
            "connection aborted mid-stream",
            [http_head(), *chunked(sse_chunk({"content": CUT})), 0.05, RESET],
            "broke off its stream after",
        ),
        (
            "connection closed mid-chunk",
            [http_head(), b"200\r\n" + sse_chunk({"content": CUT})],
            "broke off its stream after",
        ),
        (
            "200 with a JSON body for stream=true",
            [http_head(content_type="application/json", length=len(chat_reply(CUT))), chat_reply(CUT)],
            "without an event stream (Content-Type 'application/json')",
        ),
        (
            "finish_reason abort",
            [
                http_head(),
                *chunked(sse_chunk({"content": CUT}), sse_chunk({}, "abort"), b"data: [DONE]\n\n"),
                END_CHUNKS,
            ],
            "aborted choice(s) [0] (finish_reason 'abort')",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) and " " in v else "",
)
@pytest.mark.parametrize("stream_mode", ["whole", "segments"])
def test_stream_cut_short_is_502_before_any_byte(
    tiny_aligner: Aligner, raw_upstream: Any, case: str, reply: list[Any], message: str, stream_mode: str
) -> None:
    upstream = raw_upstream(lambda request: reply)
    client = _proxy(tiny_aligner, upstream.url, stream_mode=stream_mode)
    with client.stream("POST", "/v1/chat/completions", json=STREAM) as response:
        body = response.read().decode()
    assert response.status_code == 502, (case, body)
    error = json.loads(body)["error"]
    assert message in error["message"] and error["type"] == "upstream_error", error
    assert "stop" not in body and "[EMAIL]" not in body
    assert client.get("/health").status_code == 200  # the proxy keeps serving


def test_stream_ending_with_done_relays_finish_reason_as_sent(tiny_aligner: Aligner, raw_upstream: Any) -> None:
    # [DONE] without a finish_reason: the stream ended properly, and the reason the upstream gave (none) is kept
    events = [sse_chunk({"role": "assistant", "content": ""}), sse_chunk({"content": "Mail bob@example.com."})]
    upstream = raw_upstream(lambda r: [http_head(), *chunked(*events, b"data: [DONE]\n\n"), END_CHUNKS])
    reply = _proxy(tiny_aligner, upstream.url).post("/v1/chat/completions", json=STREAM)
    assert reply.status_code == 200
    payloads = sse_payloads(reply.text)
    assert payloads[-1] == "[DONE]"
    last = [e for e in payloads[:-1] if e["choices"]][-1]["choices"][0]
    assert last["finish_reason"] is None and last["aligner"]["original"] == "Mail bob@example.com."
    # finish reasons without [DONE] (closed right after them) are a complete stream too, relayed as sent
    events.append(sse_chunk({}, "length"))
    upstream = raw_upstream(lambda r: [http_head(), *chunked(*events), END_CHUNKS])
    reply = _proxy(tiny_aligner, upstream.url).post("/v1/chat/completions", json=STREAM)
    last = [e for e in sse_payloads(reply.text)[:-1] if e["choices"]][-1]["choices"][0]
    assert reply.status_code == 200 and last["finish_reason"] == "length"


@pytest.mark.parametrize("finish", [None, "eos_token", "length"])
def test_plain_reply_finish_reason_is_relayed_never_invented(
    tiny_aligner: Aligner, raw_upstream: Any, finish: Any
) -> None:
    body = chat_reply("Mail bob@example.com.", finish)
    upstream = raw_upstream(lambda r: [http_head(content_type="application/json", length=len(body)), body])
    reply = _proxy(tiny_aligner, upstream.url).post("/v1/chat/completions", json=BODY)
    assert reply.status_code == 200
    choice = reply.json()["choices"][0]
    assert choice["finish_reason"] == finish
    assert choice["message"]["content"] == tiny_aligner.correct(Q, "Mail bob@example.com.").corrected


def test_plain_reply_aborted_is_502(tiny_aligner: Aligner, raw_upstream: Any) -> None:
    body = chat_reply(CUT, "abort")
    upstream = raw_upstream(lambda r: [http_head(content_type="application/json", length=len(body)), body])
    reply = _proxy(tiny_aligner, upstream.url).post("/v1/chat/completions", json=BODY)
    assert reply.status_code == 502 and "finish_reason 'abort'" in reply.json()["error"]["message"]
    assert reply.json()["error"]["code"] == "upstream_incomplete"


@pytest.mark.parametrize("stream", [False, True])
def test_upstream_retry_after_is_relayed(tiny_aligner: Aligner, raw_upstream: Any, stream: bool) -> None:
    error = json.dumps({"error": {"message": "slow down", "type": "rate_limit_error"}}).encode()
    head = http_head(429, "application/json", extra="Retry-After: 7\r\n", length=len(error))
    upstream = raw_upstream(lambda r: [head, error])
    reply = _proxy(tiny_aligner, upstream.url).post("/v1/chat/completions", json={**BODY, "stream": stream})
    assert reply.status_code == 429 and reply.headers["retry-after"] == "7"
    assert reply.json()["error"]["message"] == "slow down"


SEPARATORS = "a\u2028b\u2029c\u0085d"


def test_line_separators_in_upstream_events_are_relayed_whole(tiny_aligner: Aligner, raw_upstream: Any) -> None:
    answer = f"Call Bob {SEPARATORS} today."
    events = [sse_chunk({"role": "assistant", "content": ""}), sse_chunk({"content": answer}), sse_chunk({}, "stop")]
    assert "\u2028".encode() in events[1]  # raw on the wire, as servers that write JSON with ensure_ascii=False send it
    upstream = raw_upstream(lambda r: [http_head(), *chunked(*events, b"data: [DONE]\n\n"), END_CHUNKS])
    client = _proxy(tiny_aligner, upstream.url)
    question = f"Who is {SEPARATORS}?"
    body = {**STREAM, "messages": [{"role": "user", "content": question}]}
    reply = client.post("/v1/chat/completions", json=body)
    assert reply.status_code == 200, reply.text
    # what the proxy writes is whole for every reader: split on \n only, and on every str.splitlines break
    by_newline = list(sse_events(reply.content))
    naive = [json.loads(line[6:]) for line in reply.text.splitlines() if line.startswith("data: {")]
    assert by_newline == naive
    last = [e for e in naive if e["choices"]][-1]["choices"][0]
    assert last["aligner"]["original"] == answer and last["finish_reason"] == "stop"
    assert _first_content(naive) == tiny_aligner.correct(question, answer).corrected
    plain = [sse_chunk({"content": answer}), sse_chunk({}, "stop")]
    upstream = raw_upstream(lambda r: [http_head(), *chunked(*plain, b"data: [DONE]\n\n"), END_CHUNKS])
    assert _proxy(tiny_aligner, upstream.url).post("/v1/chat/completions", json=body).status_code == 200


def test_departed_clients_drop_their_queued_corrections(raw_upstream: Any) -> None:
    backend = TickingBackend(generate_s=0.4)
    aligner = Aligner(backend, "aligner-v2", max_batch_size=1, generation={"max_new_tokens": 4})
    body = chat_reply("Mail bob@example.com.")
    upstream = raw_upstream(lambda r: [http_head(content_type="application/json", length=len(body)), body])
    with ServerThread(create_proxy_app(aligner, upstream_base_url=upstream.url)) as proxy:

        async def abandon(n: int) -> list[Any]:
            async with httpx.AsyncClient(base_url=proxy.url, timeout=0.2) as http:
                calls = (http.post("/v1/chat/completions", json=BODY) for _ in range(n))
                return await asyncio.gather(*calls, return_exceptions=True)

        assert all(isinstance(r, httpx.TimeoutException) for r in asyncio.run(abandon(6)))
        time.sleep(1.0)  # the running correction ends; the queued ones of departed clients must not run
        assert 1 <= backend.rows_generated <= 2
        reply = httpx.post(proxy.url + "/v1/chat/completions", json=BODY, timeout=30)
        assert (
            reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"] == "fixed fixed fixed fixed"
        )


@pytest.fixture(scope="module")
def demo() -> Aligner:
    from aligner_chains.core.model_files import default_model

    return Aligner.from_pretrained(default_model())


@pytest.mark.parametrize("cut", ["reset", "closed"])
def test_segments_stream_cut_after_corrected_text_ends_with_an_error_event(
    demo: Aligner, raw_upstream: Any, cut: str
) -> None:
    from segment_answers import ANSWER, QUESTION, words

    sent = words(ANSWER)[:80]  # the first segment and part of the second
    first, *_ = demo.stream_segments(QUESTION, sent)
    # a pause (the first segment goes out corrected), then the stream breaks off or ends without a finish
    events = [sse_chunk({"role": "assistant", "content": ""}), *(sse_chunk({"content": w}) for w in sent)]
    end = RESET if cut == "reset" else END_CHUNKS
    upstream = raw_upstream(lambda r: [http_head(), *chunked(*events), 2.5, end])
    body = {**STREAM, "messages": [{"role": "user", "content": QUESTION}]}
    reply = _proxy(demo, upstream.url, stream_mode="segments").post("/v1/chat/completions", json=body)
    assert reply.status_code == 200  # the first corrected segment had gone out, and the status with it
    payloads = sse_payloads(reply.text)
    *chunks, last = payloads
    assert _first_content(chunks) == first and "[EMAIL]" in first
    assert "[DONE]" not in payloads and '"aligner"' not in reply.text  # no finish, no summary: not complete
    assert all(c["finish_reason"] is None for e in chunks for c in e["choices"])
    assert last["error"]["code"] == "upstream_incomplete"
    assert ("broke off its stream" if cut == "reset" else "ended its stream without [DONE]") in last["error"]["message"]


def test_segments_stream_cut_before_anything_was_sent_is_502(demo: Aligner, raw_upstream: Any) -> None:
    from segment_answers import ANSWER, QUESTION, words

    events = [sse_chunk({"content": w}) for w in words(ANSWER)[:80]]  # a whole first segment, then the cut at once
    upstream = raw_upstream(lambda r: [http_head(), *chunked(*events), END_CHUNKS])
    body = {**STREAM, "messages": [{"role": "user", "content": QUESTION}]}
    reply = _proxy(demo, upstream.url, stream_mode="segments").post("/v1/chat/completions", json=body)
    assert reply.status_code == 502 and reply.json()["error"]["code"] == "upstream_incomplete"
    assert "ended its stream without [DONE]" in reply.json()["error"]["message"]
