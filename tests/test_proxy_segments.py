"""The correcting proxy with ``stream_mode="segments"``: the upstream's deltas are corrected segment by segment
while they arrive, with the shipped demo Aligner and the fake upstream on loopback.

Corrected segments reach the client while the upstream is still writing; a refusal ends the reply and closes
the upstream stream; a client that leaves closes it too; ``n>1`` streams whole; tool calls pass through;
Aligner failures and timeouts before the first byte answer as in "whole" mode.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("fastapi")

import httpx
from pydantic import ValidationError
from segment_answers import ANSWER, HARMFUL_ANSWER, HARMFUL_LATER, HARMFUL_QUESTION, QUESTION, words
from starlette.testclient import TestClient

from aligner_chains import Aligner
from aligner_chains.core.model_files import default_model
from aligner_chains.core.segmented import DEFAULT_STREAM_MODE
from aligner_chains.server import ServerThread
from aligner_chains.server.testing import SlowBackend, closed_port, sse_payloads
from integrations.openai_proxy import create_proxy_app
from integrations.openai_proxy.testing import create_fake_upstream

#: Words the fake upstream sends before it waits: past the first segment of both answers, far from their end.
HOLD = 70


@pytest.fixture(scope="module")
def demo() -> Aligner:
    return Aligner.from_pretrained(default_model())


def _answer(question: str) -> str:
    return HARMFUL_ANSWER if "poison" in question else ANSWER


def _body(question: str, **extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": question}], "stream": True, **extra}


@contextlib.contextmanager
def _live(aligner: Aligner, **options: Any) -> Iterator[tuple[str, Any, threading.Event]]:
    """The proxy (segments) and a fake upstream that holds after `HOLD` words, both on loopback."""
    hold = threading.Event()
    upstream = create_fake_upstream(answer=_answer, hold=hold, hold_after=HOLD)
    try:
        with ServerThread(upstream) as up:
            app = create_proxy_app(aligner, upstream_base_url=up.url + "/v1", stream_mode="segments", **options)
            with ServerThread(app) as proxy:
                yield proxy.url, upstream, hold
                hold.set()
    finally:
        hold.set()  # never leave the upstream waiting


def _proxy(aligner: Aligner, **options: Any) -> TestClient:
    upstream = httpx.ASGITransport(app=create_fake_upstream(answer=_answer))
    app = create_proxy_app(
        aligner, upstream_base_url="http://upstream/v1", upstream_transport=upstream, stream_mode="segments", **options
    )
    return TestClient(app)


def _content(events: list[Any]) -> str:
    return "".join(c["delta"].get("content") or "" for e in events if isinstance(e, dict) for c in e["choices"])


def _last_choice(events: list[Any]) -> dict[str, Any]:
    return [e for e in events if isinstance(e, dict) and e["choices"]][-1]["choices"][0]


def _wait(condition: Any, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    return bool(condition())


def test_segments_reach_the_client_while_the_upstream_writes(demo: Aligner) -> None:
    *_, expected = demo.iter_segments(QUESTION, words(ANSWER))
    with _live(demo) as (url, upstream, hold):
        lines, sent_at_first = [], None
        body = _body(QUESTION, stream_options={"include_usage": True})
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=30) as reply:
            assert reply.status_code == 200
            for line in reply.iter_lines():
                lines.append(line)
                if sent_at_first is None and '"content": "' in line and '"content": ""' not in line:
                    sent_at_first = upstream.state.streams[-1]["sent"]
                    hold.set()
    events = sse_payloads("\n\n".join(lines))
    assert sent_at_first == HOLD < upstream.state.streams[-1]["words"]  # corrected before the upstream went on
    assert upstream.state.streams[-1]["finished"]
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""} and events[-1] == "[DONE]"
    assert _content(events) == expected.corrected and "[EMAIL]" in expected.corrected
    deltas = [e for e in events[1:-1] if e["choices"] and e["choices"][0]["delta"].get("content")]
    assert len(deltas) == 3  # one per segment
    last = _last_choice(events)
    assert last["finish_reason"] == "stop" and last["aligner"]["original"] == ANSWER
    assert last["aligner"]["stats"]["stream_mode"] == "segments"
    assert events[-2]["choices"] == [] and events[-2]["usage"]["completion_tokens"] == 12


def test_refusal_ends_the_reply_and_closes_the_upstream(demo: Aligner) -> None:
    with _live(demo) as (url, upstream, _):
        reply = httpx.post(url + "/v1/chat/completions", json=_body(HARMFUL_QUESTION), timeout=30)
        log = upstream.state.streams[-1]
        assert _wait(lambda: log["closed"])  # closed by the proxy while it was held
        assert not log["finished"] and log["sent"] == HOLD < log["words"]
    events = sse_payloads(reply.text)
    text = _content(events)
    assert text.startswith("I can't help") and not any(phrase in text for phrase in HARMFUL_LATER)
    last = _last_choice(events)
    assert last["finish_reason"] == "content_filter" and last["aligner"]["stats"]["ended_by"] == "replacement"
    assert events[-1] == "[DONE]"


def test_a_client_that_leaves_closes_the_upstream(demo: Aligner) -> None:
    with _live(demo) as (url, upstream, _):
        with httpx.stream("POST", url + "/v1/chat/completions", json=_body(QUESTION), timeout=30) as reply:
            for line in reply.iter_lines():
                if '"content": "' in line and '"content": ""' not in line:
                    break  # leave after the first corrected segment
        log = upstream.state.streams[-1]
        assert _wait(lambda: log["closed"])
        assert not log["finished"] and log["sent"] < log["words"]


def test_n_above_1_streams_whole_and_tool_calls_pass_through(demo: Aligner) -> None:
    client = _proxy(demo)
    events = sse_payloads(client.post("/v1/chat/completions", json=_body(QUESTION, n=2)).text)
    assert _content(events) == demo.correct(QUESTION, ANSWER).corrected
    assert "stream_mode" not in _last_choice(events)["aligner"]["stats"]
    weather = _body("What is the weather in Paris?")
    proxied = sse_payloads(client.post("/v1/chat/completions", json=weather).text)
    direct = sse_payloads(TestClient(create_fake_upstream()).post("/v1/chat/completions", json=weather).text)

    def strip(events: list[Any]) -> list[Any]:
        return [{k: v for k, v in e.items() if k not in ("id", "created")} if e != "[DONE]" else e for e in events]

    assert strip(proxied) == strip(direct)


def test_aligner_failure_before_the_first_byte_answers_as_whole_mode() -> None:
    broken = Aligner.from_server(
        f"http://127.0.0.1:{closed_port()}",
        model="m",
        template="aligner-v2",
        max_context=None,
        max_retries=0,
        backend_options={"token_counting": "estimate"},
    )
    failed = _proxy(broken).post("/v1/chat/completions", json=_body(QUESTION))
    assert failed.status_code == 502 and "The Aligner failed" in failed.json()["error"]["message"]
    events = sse_payloads(_proxy(broken, fail_open=True).post("/v1/chat/completions", json=_body(QUESTION)).text)
    assert _content(events) == ANSWER and "Cannot reach" in _last_choice(events)["aligner"]["error"]
    assert events[-1] == "[DONE]"


def test_aligner_timeout_is_504_or_fail_open(demo: Aligner) -> None:
    slow = Aligner(SlowBackend(demo.backend, 0.5), demo.template, generation={"max_new_tokens": 4})
    closed, opened = _proxy(slow, aligner_timeout=0.1), _proxy(slow, aligner_timeout=0.1, fail_open=True)
    with closed, opened:  # one event loop each, kept until the abandoned corrections have finished
        reply = closed.post("/v1/chat/completions", json=_body(QUESTION))
        assert reply.status_code == 504 and "did not answer within 0.1 s" in reply.json()["error"]["message"]
        events = sse_payloads(opened.post("/v1/chat/completions", json=_body(QUESTION)).text)
        assert _content(events) == ANSWER and "did not answer within" in _last_choice(events)["aligner"]["error"]
        assert _last_choice(events)["finish_reason"] == "stop" and events[-1] == "[DONE]"
        time.sleep(1.0)


def test_stream_mode_option_and_command_line(demo: Aligner) -> None:
    from integrations.openai_proxy.__main__ import build_parser

    assert build_parser().parse_args(["--upstream", "http://x/v1"]).stream_mode == DEFAULT_STREAM_MODE
    args = build_parser().parse_args(["--upstream", "http://x/v1", "--stream-mode", "segments"])
    assert args.stream_mode == "segments"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--upstream", "http://x/v1", "--stream-mode", "tokens"])
    with pytest.raises(ValidationError, match="stream_mode"):
        create_proxy_app(demo, upstream_base_url="http://x/v1", stream_mode="tokens")
