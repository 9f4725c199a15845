"""The remote backend against misbehaving servers (issue #16): no half answer passes as a whole one.

Every server here is a scripted raw HTTP server on 127.0.0.1 (`RawUpstream`), so a test can send what no
well-behaved framework would: a stream cut anywhere, a connection dropped after the request, odd finish
reasons, JSON holding U+2028/U+2029/U+0085 raw, a ``Retry-After`` date.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from email.utils import formatdate
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("httpx")

from adversarial_peers import RawUpstream, Reply

from aligner_chains import Aligner
from aligner_chains.backends.remote import transport as transport_module
from aligner_chains.backends.remote.client import RemoteBackend
from aligner_chains.backends.remote.protocol import SSEDecoder, estimate_tokens, finish_reason, sse_events
from aligner_chains.backends.remote.transport import retry_after_seconds
from aligner_chains.core.errors import BackendError, ConfigError


@contextmanager
def serving(*replies: Reply) -> Iterator[RawUpstream]:
    """A `RawUpstream` answering its n-th request with ``replies[n]`` (the last one repeats); stopped after."""
    upstream = RawUpstream(lambda request: replies[min(len(upstream.requests), len(replies)) - 1])
    try:
        yield upstream
    finally:
        upstream.close()


def http(status: int, body: Any, headers: dict[str, str] | None = None) -> Reply:
    payload = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode("utf-8")
    lines = [f"HTTP/1.1 {status} X", "Content-Type: application/json", f"Content-Length: {len(payload)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()] + ["Connection: close", "", ""]
    return ["\r\n".join(lines).encode("ascii") + payload]


def sse(*pieces: bytes) -> Reply:
    """A streamed reply: headers, then ``pieces`` sent apart, then the connection closes (no length, no chunks)."""
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
    reply: Reply = [head]
    for piece in pieces:
        reply += [0.005, piece]  # a pause, so the client reads the pieces apart
    return reply


def event(text: Any = "", finish: Any = None, **extra: Any) -> dict[str, Any]:
    choice = {"index": 0, "logprobs": None, "finish_reason": finish, **extra}
    if text is not None:
        choice["text"] = text
    return {"id": "c", "object": "text_completion", "choices": [choice]}


def data(value: dict[str, Any] | str, end: bytes = b"\n\n") -> bytes:
    payload = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return b"data: " + payload.encode("utf-8") + end


def remote(url: str, **options: Any) -> Aligner:
    """An Aligner on ``url`` that asks the server nothing but completions (model, template, counting given)."""
    return Aligner.from_server(
        url,
        model="fake",
        template="aligner-v2",
        max_context=None,
        max_retries=options.pop("max_retries", 0),
        on_error=options.pop("on_error", "raise"),
        backend_options={"token_counting": "estimate", "backoff": 0.01, **options},
    )


def completion(text: Any, finish: Any, **extra: Any) -> dict[str, Any]:
    choice = {"index": 0, "logprobs": None, "finish_reason": finish, **extra}
    if text is not None:
        choice["text"] = text
    return {"choices": [choice], "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}}


# --------------------------------------------------------------------------------------- finish reasons


@pytest.mark.parametrize(
    ("reply", "match"),
    [
        (completion("Mail bob@exa", None), "no finish_reason"),
        (completion("Mail bob@exa", "abort"), "aborted"),
        (completion("Mail [EMAIL]", "content_filter"), "content_filter"),
        (completion("Mail [EMAIL]", "error"), "'error'"),
        (completion("Mail [EMAIL]", 1), "neither 'stop' nor 'length'"),
        (completion(None, "stop"), "without a 'text'"),
        (completion(None, "length"), "without a 'text'"),
        ({"choices": [{"index": 0, "text": None, "finish_reason": "stop"}]}, "without a 'text'"),
        ({"choices": [{"index": 0, "text": 7, "finish_reason": "stop"}]}, "without a 'text'"),
    ],
)
def test_a_half_answer_is_an_error_never_a_correction(reply: dict[str, Any], match: str) -> None:
    answer = "Mail bob@example.com for access."
    with serving(http(200, reply)) as server:
        with pytest.raises(BackendError, match=match):
            remote(server.url).correct("Contact?", answer)
        # passthrough keeps the answer whole and says why, in correct and correct_batch alike
        aligner = remote(server.url, on_error="passthrough")
        for result in [aligner.correct("Contact?", answer), *aligner.correct_batch([("Q?", answer)] * 2)]:
            assert result.finish_reason == "error" and result.corrected == answer and not result.changed
            assert "BackendError" in result.error


@pytest.mark.parametrize(
    ("finish", "extra", "reason", "completion_tokens"),
    [
        ("stop", {"stop_reason": None}, "stop", 3),  # vLLM, EOS: the server counted the EOS token
        ("stop", {"stop_reason": 2}, "stop", 3),  # vLLM, a stop token id: a token too
        ("stop", {"stop_reason": "\n\n"}, "stop", 4),  # vLLM, a stop string: no token of its own
        ("stop", {"matched_stop": "END"}, "stop", 4),  # SGLang's name for it
        ("eos_token", {}, "stop", 3),  # Text Generation Inference's names
        ("stop_sequence", {}, "stop", 4),
        ("length", {}, "length", 4),
    ],
)
def test_server_finish_reasons_map_exactly(
    finish: str, extra: dict[str, Any], reason: str, completion_tokens: int
) -> None:
    with serving(http(200, completion(" Mail [EMAIL].", finish, **extra))) as server:
        result = remote(server.url).correct("Contact?", "Mail bob@example.com.")
    assert result.finish_reason == reason and result.corrected == "Mail [EMAIL]."
    assert result.completion_tokens == completion_tokens and result.stats["server_finish_reason"] == finish


def test_finish_reason_function_names_the_value() -> None:
    assert finish_reason("eos_token", "u") == "stop" and finish_reason("length", "u") == "length"
    for bad in (None, "abort", "", "STOP", True, {"x": 1}):
        with pytest.raises(BackendError):
            finish_reason(bad, "http://x/v1/completions")


def test_a_stream_that_aborts_or_loses_its_text_is_an_error() -> None:
    head = [data(event(" Mail")), data(event(" bob@exa"))]
    aborted = [*head, data(event("", "abort")), b"data: [DONE]\n\n"]
    textless = [*head, data(event(None, "stop")), b"data: [DONE]\n\n"]
    cut = head  # no finish_reason, no [DONE]: the connection just closes
    for pieces, match in ((aborted, "aborted"), (textless, "without a 'text'"), (cut, "without a finish_reason")):
        with serving(sse(*pieces)) as server:
            aligner = remote(server.url, on_error="passthrough")
            items = []
            with pytest.raises(BackendError, match=match):  # pieces were shown already: raised, even so
                for item in aligner.iter_correction("Contact?", "Mail bob@example.com."):
                    items.append(item)
            assert items == ["Mail", " bob@exa"]  # no Correction claims the half answer is whole
    # nothing shown yet: passthrough gives the answer back whole, marked
    with serving(sse(data(event("", "abort")), b"data: [DONE]\n\n")) as server:
        items = list(remote(server.url, on_error="passthrough").iter_correction("Q?", "Mail bob@example.com."))
    assert items[0] == "Mail bob@example.com." and items[-1].finish_reason == "error"
    assert "abort" in items[-1].error


# ----------------------------------------------------------------------- SSE: only CR/LF end a line

SEPARATORS = "A\u2028B\u2029C\u0085D"


def test_sse_with_unicode_line_separators_streams_whole() -> None:
    """JSON may hold U+2028, U+2029 and U+0085 raw; CRLF line ends; chunks cut inside characters and CRLFs."""
    body = b"".join(
        [
            b": keep-alive comment\r\n\r\n",
            data(event(" Mail\u2028bob"), b"\r\n\r\n"),
            data(event("\u2029and\u0085"), b"\r\n\r\n"),
            data(event(" more" + SEPARATORS), b"\r\n\r\n"),
            data(event(".", "stop", stop_reason=None), b"\r\n\r\n"),
            b"data: [DONE]\r\n\r\n",
        ]
    )
    cuts = sorted({body.index("\u2028".encode()) + 1, body.index(b"\r\n") + 1, body.index("\u0085".encode()) + 1})
    pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    with serving(sse(*pieces)) as server:
        aligner = remote(server.url)
        streamed = list(aligner.stream("Contact?", "Mail bob@example.com."))
        items = list(aligner.iter_correction("Contact?", "Mail bob@example.com."))
    expected = "Mail\u2028bob\u2029and\u0085 more" + SEPARATORS + "."
    assert "".join(streamed) == expected
    assert items[-1].corrected == expected and items[-1].finish_reason == "stop"


def test_sse_decoder_gives_the_same_events_for_every_chunking() -> None:
    body = (
        "\ufeff"  # a byte order mark may open the stream
        + ": comment with \u2028 in it\n"
        + 'event: message\nid: 1\ndata: {"t": "a\u2028b",\r\ndata: "u": "c\u0085d\u2029"}\r\n\r\n'
        + 'data: {"t": "cr only"}\r\r'
        + 'data: {"t": "last"}\n\n'
        + "data: [DONE]\n\n"
        + 'data: {"t": "after done"}\n\n'
    ).encode("utf-8")
    want = [{"t": "a\u2028b", "u": "c\u0085d\u2029"}, {"t": "cr only"}, {"t": "last"}]
    assert list(sse_events(body)) == want
    for cut in range(len(body) + 1):
        assert list(sse_events([body[:cut], body[cut:]])) == want, cut
    assert list(sse_events([body[i : i + 1] for i in range(len(body))])) == want
    assert list(sse_events([body.decode("utf-8")])) == want  # text chunks too
    # a last event without its blank line still counts; a cut JSON is an error, not a shorter answer
    assert list(sse_events([b'data: {"t": 1}'])) == [{"t": 1}]
    with pytest.raises(BackendError, match="not JSON"):
        list(sse_events([b'data: {"t": "Mail bob@exa']))
    decoder = SSEDecoder()
    assert decoder.feed(b'data: {"a": 1}\r') == []  # a CR may be the first half of CRLF: wait
    assert decoder.feed(b"\n\n") == [{"a": 1}] and not decoder.done


# ------------------------------------------------------------------------------- retries and hang-ups


def test_retry_after_http_date_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    now = 1_700_000_000.0
    assert retry_after_seconds(formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30.0)
    assert retry_after_seconds(formatdate(now - 30, usegmt=True), now=now) == 0.0  # a past date: no wait
    assert retry_after_seconds("7", now=now) == 7.0
    for junk in (None, "", "soon", "nan", "inf", "Wed, 99 Foo 2015"):
        assert retry_after_seconds(junk, now=now) is None

    slept: list[float] = []
    monkeypatch.setattr(transport_module, "time", SimpleNamespace(sleep=slept.append, time=time.time))
    date = formatdate(time.time() + 20, usegmt=True)
    ok = completion(" Fixed.", "stop")
    with serving(http(429, {"error": "busy"}, {"Retry-After": date}), http(200, ok)) as server:
        result = remote(server.url, max_retries=2, max_backoff=60.0).correct("Q?", "Broken.")
    assert result.corrected == "Fixed." and len(slept) == 1
    assert 15.0 <= slept[0] <= 20.0  # the date's distance, not the 0.01 s backoff
    slept.clear()
    with serving(http(503, {"error": "down"}, {"Retry-After": date}), http(200, ok)) as server:
        remote(server.url, max_retries=2, max_backoff=5.0).correct("Q?", "Broken.")
    assert slept == [5.0]  # capped by max_backoff


HANG_UP: Reply = []  # the request is read, then the connection closes without a word
CUT_BODY: Reply = [b"HTTP/1.1 200 OK\r\nContent-Length: 400\r\n\r\n", b'{"choices": [{"te']  # 17 of 400 bytes


@pytest.mark.parametrize("reply", [HANG_UP, CUT_BODY], ids=["no-reply", "body-cut-off"])
def test_a_dropped_connection_is_not_called_unreachable(reply: Reply) -> None:
    with serving(reply) as server:
        with pytest.raises(BackendError) as info:
            remote(server.url, max_retries=1).correct("Q?", "Broken.")
        assert len(server.requests) == 2 and "prompt" in server.requests[0]  # the POST arrived, and was retried
    message = str(info.value)
    assert "Cannot reach" not in message and "Is the server running" not in message
    assert "accepted the connection but it was closed after the request was sent" in message
    assert "2 attempt(s)" in message and "RemoteProtocolError" in message


def test_a_closed_port_is_still_unreachable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(BackendError, match="Cannot reach"):
        remote(f"http://127.0.0.1:{port}").correct("Q?", "Broken.")


# ------------------------------------------------------------------------------------ bools as numbers


def test_a_bool_is_not_a_context_length_or_a_count(caplog: pytest.LogCaptureFixture) -> None:
    models = {"object": "list", "data": [{"id": "fake", "max_model_len": True}]}
    with serving(http(200, models)) as server:
        backend = RemoteBackend(server.url, model="fake", token_counting="estimate")
        with caplog.at_level("WARNING", logger="aligner_chains.backends.remote"):
            assert backend.max_context is None  # not a context of 1 token
        assert "max_model_len=true" in caplog.text
    for bad in (True, False, 0, -5, 2.5):
        with pytest.raises(ConfigError, match="max_context"):
            RemoteBackend("http://127.0.0.1:9", max_context=bad)  # type: ignore[arg-type]
    with serving(http(200, {"count": True})) as server:
        backend = RemoteBackend(server.url, model="fake", token_counting="server", max_context=None)
        with pytest.raises(BackendError, match="integer 'count'"):
            backend.count_tokens("hello")
    # usage counts that are bools are ignored, not taken as 1 or 0
    reply = completion(" Fixed.", "stop")
    reply["usage"] = {"prompt_tokens": True, "completion_tokens": False}
    with serving(http(200, reply)) as server:
        aligner = remote(server.url)
        result = aligner.correct("Q?", "Broken.")
    assert result.prompt_tokens == estimate_tokens(aligner.template.render("Q?", "Broken."))
    assert result.completion_tokens == 0 and result.corrected == "Fixed."
