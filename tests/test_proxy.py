"""The correcting OpenAI-compatible proxy (`integrations/openai_proxy`), against a fake upstream app.

Replies are corrected (plain and streamed), tool calls pass through, the summary rides in ``choices[i].aligner``;
upstream down/slow answer 502/504; Aligner failures answer 502/504 or, fail-open, the uncorrected reply.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

pytest.importorskip("fastapi")

import httpx
from starlette.testclient import TestClient

from aligner_chains import Aligner
from aligner_chains.server import ServerThread
from aligner_chains.server.testing import SlowBackend, closed_port, sse_payloads
from integrations.openai_proxy import create_proxy_app, last_user_text
from integrations.openai_proxy.testing import create_fake_upstream, default_answer

Q = "How do I bake bread?"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": Q}]


def _proxy(aligner: Aligner, upstream: Any = None, **options: Any) -> tuple[TestClient, Any]:
    upstream = upstream or create_fake_upstream()
    app = create_proxy_app(
        aligner, upstream_base_url="http://upstream/v1", upstream_transport=httpx.ASGITransport(app=upstream), **options
    )
    return TestClient(app), upstream


def _content(events: list[Any], index: int = 0) -> str:
    return "".join(
        c["delta"].get("content") or ""
        for e in events
        if isinstance(e, dict)
        for c in e.get("choices") or []
        if c["index"] == index
    )


def test_reply_is_corrected_with_summary(tiny_aligner: Aligner) -> None:
    client, upstream = _proxy(tiny_aligner)
    reply = client.post("/v1/chat/completions", json={"model": "gpt-x", "messages": MESSAGES})
    assert reply.status_code == 200
    body = reply.json()
    want = tiny_aligner.correct(Q, default_answer(Q))
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": want.corrected}
    assert choice["aligner"]["original"] == default_answer(Q) and choice["aligner"]["changed"] == want.changed
    assert choice["finish_reason"] == "stop" and body["model"] == "gpt-x" and body["object"] == "chat.completion"
    assert body["usage"]["completion_tokens"] == 12  # the upstream's usage is kept
    assert upstream.state.requests == 1


def test_stream_is_corrected(tiny_aligner: Aligner) -> None:
    client, _ = _proxy(tiny_aligner)
    body = {"model": "gpt-x", "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}}
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        events = sse_payloads(response.read().decode())
    want = tiny_aligner.correct(Q, default_answer(Q))
    assert events[-1] == "[DONE]"
    assert all(e["object"] == "chat.completion.chunk" for e in events[:-1])
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert _content(events) == want.corrected
    last = [e for e in events[:-1] if e["choices"]][-1]["choices"][0]
    assert last["finish_reason"] == "stop" and last["aligner"]["original"] == default_answer(Q)
    assert events[-2]["choices"] == [] and events[-2]["usage"]["completion_tokens"] == 12


def test_tool_calls_pass_through_untouched(tiny_aligner: Aligner) -> None:
    client, upstream = _proxy(tiny_aligner)
    direct = TestClient(upstream)
    body = {"model": "gpt-x", "messages": [{"role": "user", "content": "What is the weather in Paris?"}]}
    proxied = client.post("/v1/chat/completions", json=body).json()
    original = direct.post("/v1/chat/completions", json=body).json()
    assert proxied["choices"][0]["message"] == original["choices"][0]["message"]
    assert proxied["choices"][0]["aligner"] == {"skipped": "tool_calls"}
    streamed = sse_payloads(client.post("/v1/chat/completions", json={**body, "stream": True}).text)
    upstream_stream = sse_payloads(direct.post("/v1/chat/completions", json={**body, "stream": True}).text)
    strip = [{k: v for k, v in e.items() if k not in ("id", "created")} if isinstance(e, dict) else e for e in streamed]
    same = [
        {k: v for k, v in e.items() if k not in ("id", "created")} if isinstance(e, dict) else e
        for e in upstream_stream
    ]
    assert strip == same


def test_question_is_the_last_user_message() -> None:
    parts = [
        {"type": "text", "text": "first"},
        {"type": "image_url", "image_url": {"url": "x"}},
        {"type": "text", "text": "second"},
    ]
    assert (
        last_user_text(
            [
                {"role": "user", "content": "old"},
                {"role": "assistant", "content": "a"},
                {"role": "user", "content": parts},
            ]
        )
        == "first\nsecond"
    )
    assert last_user_text([{"role": "system", "content": "s"}]) == ""


def test_authorization_forwarding(tiny_aligner: Aligner) -> None:
    client, upstream = _proxy(tiny_aligner)
    client.post("/v1/chat/completions", json={"messages": MESSAGES}, headers={"Authorization": "Bearer client-key"})
    assert upstream.state.last_headers["authorization"] == "Bearer client-key"
    client, upstream = _proxy(tiny_aligner, upstream_api_key="upstream-key", api_key="proxy-key")
    denied = client.post("/v1/chat/completions", json={"messages": MESSAGES})
    assert denied.status_code == 401 and upstream.state.requests == 0
    ok = client.post("/v1/chat/completions", json={"messages": MESSAGES}, headers={"Authorization": "Bearer proxy-key"})
    assert ok.status_code == 200 and upstream.state.last_headers["authorization"] == "Bearer upstream-key"
    assert client.get("/v1/models", headers={"Authorization": "Bearer proxy-key"}).json()["data"][0]["id"]


# ----------------------------------------------------------------------------- bad input and upstream failures


@pytest.mark.parametrize(
    ("content", "status", "message"),
    [
        (b"{oops", 400, "not valid JSON"),
        (b'{"model": "m"}', 400, "Missing field 'messages'"),
        (b'{"messages": "hi"}', 400, "must be a non-empty list"),
        (b'{"messages": [{"content": "hi"}]}', 400, "string 'role'"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}', 400, "'stream' must be a boolean"),
        (b'{"messages": [{"role": "user", "content": "' + b"x" * 5000 + b'"}]}', 413, "at most 4096 bytes"),
    ],
)
def test_bad_input_is_4xx_and_proxy_keeps_serving(
    tiny_aligner: Aligner, content: bytes, status: int, message: str
) -> None:
    client, upstream = _proxy(tiny_aligner, max_body_bytes=4096)
    response = client.post("/v1/chat/completions", content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == status and message in response.json()["error"]["message"]
    assert upstream.state.requests == 0
    assert client.post("/v1/chat/completions", json={"messages": MESSAGES}).status_code == 200


def test_upstream_errors_are_relayed_or_502(tiny_aligner: Aligner) -> None:
    client, _ = _proxy(tiny_aligner)
    missing = client.post("/v1/chat/completions", json={"model": "missing-model", "messages": MESSAGES})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"  # a 4xx is relayed
    client, _ = _proxy(tiny_aligner, create_fake_upstream(fail_status=500))
    for stream in (False, True):
        failed = client.post("/v1/chat/completions", json={"messages": MESSAGES, "stream": stream})
        assert failed.status_code == 502 and "fake upstream failure 500" in failed.json()["error"]["message"]


def test_upstream_down_is_502_and_slow_is_504(tiny_aligner: Aligner) -> None:
    down = TestClient(create_proxy_app(tiny_aligner, upstream_base_url=f"http://127.0.0.1:{closed_port()}/v1"))
    for stream in (False, True):
        reply = down.post("/v1/chat/completions", json={"messages": MESSAGES, "stream": stream})
        assert reply.status_code == 502 and "Cannot reach the upstream" in reply.json()["error"]["message"]
    with ServerThread(create_fake_upstream(delay_s=1.0)) as slow:
        client = TestClient(create_proxy_app(tiny_aligner, upstream_base_url=slow.url + "/v1", upstream_timeout=0.2))
        started = time.perf_counter()
        reply = client.post("/v1/chat/completions", json={"messages": MESSAGES})
        assert reply.status_code == 504 and "did not answer within 0.2 s" in reply.json()["error"]["message"]
        assert time.perf_counter() - started < 0.9
        assert client.get("/health").json()["status"] == "ok"


def test_aligner_failure_fail_closed_or_open(tiny_aligner: Aligner) -> None:
    broken = Aligner.from_server(
        f"http://127.0.0.1:{closed_port()}",
        model="m",
        template="aligner-v2",
        max_context=None,
        max_retries=0,
        backend_options={"token_counting": "estimate"},
    )
    closed, _ = _proxy(broken)
    for stream in (False, True):
        reply = closed.post("/v1/chat/completions", json={"messages": MESSAGES, "stream": stream})
        assert reply.status_code == 502 and "The Aligner failed" in reply.json()["error"]["message"]
    opened, _ = _proxy(broken, fail_open=True)
    plain = opened.post("/v1/chat/completions", json={"messages": MESSAGES}).json()["choices"][0]
    assert plain["message"]["content"] == default_answer(Q) and "Cannot reach" in plain["aligner"]["error"]
    events = sse_payloads(opened.post("/v1/chat/completions", json={"messages": MESSAGES, "stream": True}).text)
    assert _content(events) == default_answer(Q)
    assert "Cannot reach" in [e for e in events[:-1] if e["choices"]][-1]["choices"][0]["aligner"]["error"]
    assert "aligner_proxy_fail_open_total 2.0" in opened.get("/metrics").text


def test_aligner_timeout_504_or_fail_open(tiny_aligner: Aligner) -> None:
    slow = Aligner(SlowBackend(tiny_aligner.backend, 0.5), tiny_aligner.template, generation={"max_new_tokens": 2})
    closed, _ = _proxy(slow, aligner_timeout=0.1)
    opened, _ = _proxy(slow, aligner_timeout=0.1, fail_open=True)
    with closed, opened:  # one event loop each, kept until the abandoned corrections have finished
        for stream in (False, True):
            reply = closed.post("/v1/chat/completions", json={"messages": MESSAGES, "stream": stream})
            assert reply.status_code == 504 and "did not answer within 0.1 s" in reply.json()["error"]["message"]
        for stream in (False, True):
            reply = opened.post("/v1/chat/completions", json={"messages": MESSAGES, "stream": stream})
            assert reply.status_code == 200
            text = _content(sse_payloads(reply.text)) if stream else reply.json()["choices"][0]["message"]["content"]
            assert text == default_answer(Q)
        time.sleep(1.0)


# ----------------------------------------------------------------------------- load: 200 concurrent over loopback


def test_200_concurrent_requests_no_errors_no_cross_talk(tiny_aligner: Aligner) -> None:
    upstream = create_fake_upstream()
    app = create_proxy_app(
        tiny_aligner, upstream_base_url="http://upstream/v1", upstream_transport=httpx.ASGITransport(app=upstream)
    )
    questions = [f"Question {i}: how do I bake bread?" for i in range(200)]
    sample = set(range(0, 200, 25))
    expected = {i: tiny_aligner.correct(questions[i], default_answer(questions[i])).corrected for i in sample}

    async def one(http: httpx.AsyncClient, i: int) -> tuple[int, str, dict[str, Any]]:
        body = {"model": "m", "messages": [{"role": "user", "content": questions[i]}], "stream": i % 5 == 0}
        r = await http.post("/v1/chat/completions", json=body)
        if body["stream"]:
            events = sse_payloads(r.text)
            summary = [e for e in events[:-1] if e["choices"]][-1]["choices"][0]["aligner"]
            return r.status_code, _content(events), summary
        choice = r.json()["choices"][0]
        return r.status_code, choice["message"]["content"], choice["aligner"]

    async def run(url: str) -> list[tuple[int, str, dict[str, Any]]]:
        async with httpx.AsyncClient(base_url=url, limits=httpx.Limits(max_connections=200), timeout=120) as http:
            return await asyncio.gather(*(one(http, i) for i in range(200)))

    with ServerThread(app) as proxy:
        results = asyncio.run(run(proxy.url))
    assert [status for status, _, _ in results] == [200] * 200
    for i, (_, content, summary) in enumerate(results):
        assert summary["original"] == default_answer(questions[i]) and summary["error"] is None  # no cross-talk
        if i in expected:
            assert content == expected[i]


def test_proxy_command_line_builds_the_app(tiny_model_dir: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from integrations.openai_proxy.__main__ import build_app, build_parser

    monkeypatch.setenv("UPSTREAM_API_KEY", "up-key")
    monkeypatch.delenv("ALIGNER_PROXY_API_KEY", raising=False)
    args = build_parser().parse_args(
        [
            "--upstream",
            "http://127.0.0.1:9/v1",
            "--aligner",
            str(tiny_model_dir),
            "--max-new-tokens",
            "3",
            "--fail-open",
        ]
    )
    app = build_app(args)
    config = app.state.proxy.config
    assert config.upstream_api_key == "up-key" and config.fail_open and config.max_new_tokens == 3
    assert "up-key" not in repr(config)
    assert TestClient(app).get("/health").json()["upstream"] == "http://127.0.0.1:9/v1"
