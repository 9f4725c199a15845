"""Fault regressions of ``aligner-chains serve`` for hostile input (issue #16, items 4, 8, 11).

Bodies that used to be 500s (5,000 nested ``[``, a 5,000-digit number, a lone surrogate in any text
field, ``temperature`` 1e-300, ``NaN``) are 400s naming the field; a body not declared as JSON is 415;
U+2028, U+2029 and U+0085 do not split server-sent events; the opt-in CORS and Host allow-list hold.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

pytest.importorskip("fastapi")

import httpx
from fastapi import FastAPI
from starlette.testclient import TestClient

from aligner_chains import Aligner
from aligner_chains.backends.remote.protocol import sse_events
from aligner_chains.server import ServerThread, create_app
from integrations.openai_proxy import create_proxy_app

Q, A = "How do I bake bread?", "Mix flour, water, salt and yeast."
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def app(tiny_aligner: Aligner) -> FastAPI:
    return create_app(tiny_aligner, max_tokens_limit=64)


@pytest.fixture(scope="module")
def client(app: FastAPI) -> TestClient:
    return TestClient(app)


def _post(client: TestClient, url: str, body: dict[str, Any] | bytes) -> httpx.Response:
    # json.dumps escapes a lone surrogate as \ud800 (valid JSON text), which httpx's own encoder cannot send
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post(url, content=content, headers=JSON)


NESTED = "[" * 5000 + "]" * 5000
BIG = "9" * 5000
LONE = "a\ud800b"

HOSTILE = [
    ("/v1/completions", b'{"prompt": ' + NESTED.encode() + b"}", "prompt", "nested more than 64 levels"),
    ("/v1/corrections", b'{"question": "q", "answer": ' + NESTED.encode() + b"}", "answer", "nested more than"),
    ("/tokenize", b'{"prompt": "x", "extra": {"deep": ' + NESTED.encode() + b"}}", "extra", "nested more than"),
    ("/v1/completions", b'{"prompt": "x", "max_tokens": ' + BIG.encode() + b"}", "max_tokens", "5000 digits"),
    (
        "/v1/corrections",
        b'{"question": "q", "answer": "a", "max_new_tokens": -' + BIG.encode() + b"}",
        "max_new_tokens",
        "",
    ),
    ("/v1/completions", {"prompt": LONE, "max_tokens": 2}, "prompt", "lone surrogate"),
    ("/v1/completions", {"prompt": ["fine", LONE], "max_tokens": 2}, "prompt.1", "lone surrogate"),
    ("/v1/completions", {"prompt": "x", "stop": [LONE]}, "stop.0", "lone surrogate"),
    ("/v1/completions", {"prompt": "x", "user": LONE}, "user", "lone surrogate"),
    ("/v1/completions", {"prompt": "x", "model": "\udfff"}, "model", "lone surrogate"),
    ("/v1/corrections", {"question": LONE, "answer": A}, "question", "lone surrogate"),
    ("/v1/corrections", {"question": Q, "answer": LONE, "stream": True}, "answer", "lone surrogate"),
    (
        "/v1/corrections",
        {"items": [{"question": Q, "answer": A}, {"question": Q, "answer": LONE}]},
        "items.1.answer",
        "",
    ),
    ("/tokenize", {"prompt": LONE}, "prompt", "lone surrogate"),
    ("/detokenize", {"tokens": [1], "model": LONE}, "model", "lone surrogate"),
    ("/v1/completions", {"prompt": "x", LONE: 1}, "body", "the key"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 2, "temperature": 1e-300}, "temperature", "too small to sample"),
    ("/v1/corrections", {"question": Q, "answer": A, "temperature": 1e-300}, "temperature", "use 0 for greedy"),
    ("/v1/completions", b'{"prompt": "x", "temperature": NaN}', "temperature", "NaN is not a JSON number"),
    ("/v1/completions", b'{"prompt": "x", "repetition_penalty": Infinity}', "repetition_penalty", "not a JSON number"),
]


@pytest.mark.parametrize(("url", "body", "field", "message"), HOSTILE, ids=[f"{h[0]}-{h[2]}" for h in HOSTILE])
def test_hostile_body_is_400_naming_the_field(
    client: TestClient, url: str, body: Any, field: str, message: str
) -> None:
    response = _post(client, url, body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == field, error
    assert f"'{field}'" in error["message"] and message in error["message"], error["message"]
    assert client.post("/v1/completions", json={"prompt": "still", "max_tokens": 2}).status_code == 200


def test_valid_temperatures_and_unicode_still_work(client: TestClient) -> None:
    for temperature in (0, 0.01, 1.0):
        reply = client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2, "temperature": temperature})
        assert reply.status_code == 200, reply.text
    paired = _post(client, "/tokenize", {"prompt": "emoji \ud83d\ude00 ok"})  # a surrogate pair is one character
    assert paired.status_code == 200 and paired.json()["count"] > 0


def test_proxy_refuses_hostile_bodies_too(tiny_aligner: Aligner) -> None:
    proxy = TestClient(create_proxy_app(tiny_aligner, upstream_base_url="http://127.0.0.1:9/v1"))
    messages = [{"role": "user", "content": LONE}]
    reply = _post(proxy, "/v1/chat/completions", {"messages": messages})
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "messages.0.content"
    deep = _post(proxy, "/v1/chat/completions", b'{"messages": [], "tools": ' + NESTED.encode() + b"}")
    assert deep.status_code == 400 and deep.json()["error"]["param"] == "tools"


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
)
def test_body_not_declared_json_is_415(client: TestClient, content_type: str | None) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    body = json.dumps({"question": Q, "answer": A}).encode()
    response = client.post("/v1/corrections", content=body, headers=headers)
    assert response.status_code == 415, response.text
    error = response.json()["error"]
    assert error["code"] == "unsupported_media_type" and "Content-Type: application/json" in error["message"]
    for accepted in ("application/json; charset=utf-8", "application/vnd.api+json"):
        ok = client.post("/tokenize", content=b'{"prompt": "x"}', headers={"Content-Type": accepted})
        assert ok.status_code == 200, ok.text


SEPARATORS = "line\u2028para\u2029next\u0085end"


def test_line_separators_do_not_split_correction_events(app: FastAPI, tiny_aligner: Aligner) -> None:
    question = f"Why {SEPARATORS}?"
    body = {"question": question, "answer": A, "stream": True}
    want = tiny_aligner.correct(question, A)
    with ServerThread(app) as server:
        with httpx.stream("POST", server.url + "/v1/corrections", json=body, timeout=30) as response:
            raw = response.read()
            assert response.status_code == 200
        # every reader gets whole events: httpx's iter_lines/str.splitlines (split on U+2028) and a \n-only reader
        lines = [line for line in raw.decode().splitlines() if line.startswith("data: ")]
        naive = [json.loads(line[6:]) for line in lines if line != "data: [DONE]"]
        assert naive == list(sse_events(raw))
        assert naive[-1]["type"] == "correction" and naive[-1]["correction"]["question"] == question
        assert "".join(e["text"] for e in naive if e["type"] == "delta") == want.corrected
        # end to end through the remote backend (which reads with httpx)
        remote = Aligner.from_server(server.url, template=tiny_aligner.template.name, max_new_tokens=8)
        try:
            assert "".join(remote.stream(question, A)) == remote.correct(question, A).corrected
        finally:
            remote.backend.close()


def test_cors_is_off_by_default_and_opt_in(tiny_aligner: Aligner, client: TestClient) -> None:
    origin = {"Origin": "https://app.example.com"}
    assert "access-control-allow-origin" not in client.get("/health", headers=origin).headers
    allowed = TestClient(create_app(tiny_aligner, api_key="k", cors_allow_origins=["https://app.example.com"]))
    preflight = allowed.options(
        "/v1/corrections",
        headers={**origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"},
    )
    assert preflight.status_code == 200  # answered before the API-key check
    assert preflight.headers["access-control-allow-origin"] == "https://app.example.com"
    reply = allowed.post(
        "/v1/corrections", json={"question": Q, "answer": A}, headers={**origin, "Authorization": "Bearer k"}
    )
    assert reply.status_code == 200 and reply.headers["access-control-allow-origin"] == "https://app.example.com"
    other = allowed.get("/health", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers


def test_host_allow_list(tiny_aligner: Aligner) -> None:
    client = TestClient(create_app(tiny_aligner, allowed_hosts=["localhost", "*.example.com"]))
    for host in ("localhost", "localhost:8000", "api.example.com"):
        assert client.get("/health", headers={"Host": host}).status_code == 200, host
    for host in ("evil.test", "example.com.evil.test", "127.0.0.1:8000"):
        refused = client.get("/health", headers={"Host": host})
        assert refused.status_code == 400, host
        assert refused.json()["error"]["code"] == "host_not_allowed" and host in refused.json()["error"]["message"]


def test_serve_flags_reach_the_config_and_uvicorn(tiny_model_dir: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    from aligner_chains.cli import serve as server_cli
    from aligner_chains.server import runner

    parser = argparse.ArgumentParser()
    server_cli.add_cli(parser.add_subparsers(dest="command"))
    flags = ["--header-timeout", "3", "--body-timeout", "5", "--cors-origin", "https://a.example"]
    flags += ["--allowed-host", "localhost", "--allowed-host", "*.example.com"]
    args = parser.parse_args(["serve", "--model", str(tiny_model_dir), *flags])
    served: dict[str, Any] = {}
    monkeypatch.setattr(runner, "run_server", lambda app, **kw: served.update(app=app, **kw))
    monkeypatch.delenv("ALIGNER_API_KEY", raising=False)
    assert args.func(args) == 0
    config = served["app"].state.server.config
    assert (config.header_timeout, config.body_timeout) == (3.0, 5.0) and served["header_timeout"] == 3.0
    assert config.cors_allow_origins == ["https://a.example"]
    assert config.allowed_hosts == ["localhost", "*.example.com"]
