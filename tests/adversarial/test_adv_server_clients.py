"""Fault regressions of ``aligner-chains serve`` for slow, departed and hostile clients (issue #16, items 5-8).

Header and body read timeouts close trickling connections; a slow upload does not hold an in-flight
slot; a client that leaves cancels its generation (streamed or not, queued in a micro-batch or running);
a disconnect mid-upload is not logged as an unexpected error; ``/metrics`` labels stay bounded whatever
methods and paths clients make up; tokenizing runs off the event loop. Real uvicorn servers on loopback.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Any

import pytest

pytest.importorskip("fastapi")

import httpx
from adversarial_peers import TickingBackend
from starlette.testclient import TestClient

from aligner_chains import Aligner
from aligner_chains.server import ServerThread, create_app
from benchmarks.soak import closed_by_peer

Q, A = "How do I bake bread?", "Mix flour, water, salt and yeast."


def _wait_for(condition: Any, within_s: float = 5.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def _raw_request(port: int, head: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(head)
    return sock


def _upload_head(length: int) -> bytes:
    return (
        "POST /v1/corrections HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


# ----------------------------------------------------------------------------- read timeouts


def test_trickled_headers_are_cut_off_but_busy_requests_are_not(tiny_aligner: Aligner) -> None:
    backend = TickingBackend(tick_s=0.05)
    app = create_app(Aligner(backend, "aligner-v2", generation={"max_new_tokens": 20}))
    with ServerThread(app, header_timeout=0.5) as server:
        trickler = _raw_request(server.port, b"GET /health HTTP/1.1\r\n")
        closed = False
        for byte in b"Host: 127.0.0.1\r\nX-Slow: " + b"a" * 40:  # one byte per 0.1 s: at most ~6 s
            try:
                trickler.sendall(bytes([byte]))
            except OSError:
                closed = True
                break
            if closed_by_peer(trickler, 0.1):
                closed = True
                break
        trickler.close()
        assert closed, "a connection that never finished its headers was left open"
        # a request whose headers arrived in time is not cut off while it is processed (20 x 0.05 s > 0.5 s)
        reply = httpx.post(server.url + "/v1/completions", json={"prompt": "p", "max_tokens": 20}, timeout=30)
        assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] == 20


def test_slow_body_is_408_and_does_not_hold_an_in_flight_slot(tiny_aligner: Aligner) -> None:
    app = create_app(tiny_aligner, max_in_flight=1, body_timeout=1.0)
    with ServerThread(app) as server:
        slow = [_raw_request(server.port, _upload_head(100) + b'{"question": "') for _ in range(3)]
        # three uploads stall mid-body with a limit of one request in flight: others are still served
        reply = httpx.post(server.url + "/v1/corrections", json={"question": Q, "answer": A}, timeout=30)
        assert reply.status_code == 200, reply.text
        for sock in slow:
            sock.settimeout(5)
            answer = b""
            while piece := sock.recv(4096):  # the server answers, then closes
                answer += piece
            assert answer.startswith(b"HTTP/1.1 408"), answer[:80]
            assert b"did not arrive within 1 s" in answer
            sock.close()


# ----------------------------------------------------------------------------- departed clients


def test_departed_client_stops_a_non_streamed_completion() -> None:
    backend = TickingBackend(tick_s=0.02)
    with ServerThread(create_app(Aligner(backend, "aligner-v2"))) as server:
        with pytest.raises(httpx.TimeoutException):
            httpx.post(server.url + "/v1/completions", json={"prompt": "p", "max_tokens": 250}, timeout=0.3)
        assert _wait_for(backend.stream_closed.is_set)
        assert backend.words_streamed < 250  # 250 x 0.02 s would take 5 s: it stopped when the client left


def test_departed_clients_drop_their_queued_corrections() -> None:
    backend = TickingBackend(generate_s=0.4)
    aligner = Aligner(backend, "aligner-v2", max_batch_size=1, generation={"max_new_tokens": 4})
    with ServerThread(create_app(aligner)) as server:

        async def abandon(n: int) -> None:
            async with httpx.AsyncClient(base_url=server.url, timeout=0.15) as http:
                body = {"question": Q, "answer": A}
                results = await asyncio.gather(
                    *(http.post("/v1/corrections", json=body) for _ in range(n)), return_exceptions=True
                )
            assert all(isinstance(r, httpx.TimeoutException) for r in results)

        asyncio.run(abandon(6))
        time.sleep(1.0)  # let the running batch end; queued requests of departed clients must not run after it
        assert 1 <= backend.rows_generated <= 2
        reply = httpx.post(server.url + "/v1/corrections", json={"question": Q, "answer": A}, timeout=30)
        assert reply.status_code == 200 and reply.json()["corrected"] == "fixed fixed fixed fixed"


def test_departed_client_stops_a_streamed_correction() -> None:
    backend = TickingBackend(tick_s=0.02)
    aligner = Aligner(backend, "aligner-v2", generation={"max_new_tokens": 250})
    with ServerThread(create_app(aligner)) as server:
        body = {"question": Q, "answer": A, "stream": True}
        with httpx.stream("POST", server.url + "/v1/corrections", json=body, timeout=30) as response:
            for _ in response.iter_bytes():
                break  # leave after the first event
        assert _wait_for(backend.stream_closed.is_set)
        assert backend.words_streamed < 250


def test_disconnect_mid_upload_is_not_an_unexpected_error(
    tiny_aligner: Aligner, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(tiny_aligner)
    with caplog.at_level(logging.DEBUG), ServerThread(app) as server:
        sock = _raw_request(server.port, _upload_head(1000) + b'{"question": "half')
        time.sleep(0.1)
        sock.close()
        assert _wait_for(lambda: 'status="499"' in httpx.get(server.url + "/metrics").text)
    problems = [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert not problems, [r.getMessage() for r in problems]


# ----------------------------------------------------------------------------- metrics and the event loop


def _label_sets(text: str) -> set[str]:
    return {line.split(" ")[0] for line in text.splitlines() if line.startswith("aligner_server_http_requests_total{")}


def test_metrics_labels_stay_bounded(tiny_aligner: Aligner) -> None:
    client = TestClient(create_app(tiny_aligner, api_key="k"))

    def made_up(start: int, n: int) -> None:
        for i in range(start, start + n):
            assert client.request(f"M{i}X", f"/v1/made-up-{i}").status_code in (401, 404, 405)  # unauthenticated
            client.request(f"Z{i}", f"/nowhere/{i}")
            client.get(f"/metrics{i}")

    made_up(0, 30)
    client.get("/metrics")  # its own request is recorded after it answers
    first = _label_sets(client.get("/metrics").text)
    made_up(30, 120)
    text = client.get("/metrics").text
    assert _label_sets(text) == first
    assert 'method="other"' in text and 'route="other"' in text
    assert "M31X" not in text and "made-up" not in text


def test_tokenizing_runs_off_the_event_loop() -> None:
    backend = TickingBackend()
    client = TestClient(create_app(Aligner(backend, "aligner-v2", generation={"max_new_tokens": 2})))
    big = "word " * 50_000  # a 250 KB question
    assert client.post("/v1/corrections", json={"question": big, "answer": A}).status_code == 200
    assert client.post("/v1/completions", json={"prompt": big, "max_tokens": 2}).status_code == 200
    assert client.post("/tokenize", json={"prompt": big}).status_code == 200
    assert backend.tokenized_on_loop and not any(backend.tokenized_on_loop)
