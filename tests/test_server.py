"""`aligner-chains serve`: OpenAI completions, native corrections, health, metrics, auth, limits, bad input, load."""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")

import httpx
from fastapi import FastAPI
from starlette.testclient import TestClient

from aligner_chains import Aligner
from aligner_chains.server import ServerConfig, ServerThread, create_app
from aligner_chains.server.app import StopFilter, apply_stop
from aligner_chains.server.testing import SlowBackend, sse_payloads

Q, A = "How do I bake bread?", "Mix flour, water, salt and yeast."
KEY = "server-test-key"
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def app(tiny_aligner: Aligner) -> FastAPI:
    return create_app(tiny_aligner, served_model_name="tiny", max_tokens_limit=64, max_body_bytes=20_000)


@pytest.fixture(scope="module")
def client(app: FastAPI) -> TestClient:
    return TestClient(app)


def _greedy(tiny_aligner: Aligner, prompt: str, max_new_tokens: int) -> Any:
    params = tiny_aligner.generation.merged({"max_new_tokens": max_new_tokens})
    return tiny_aligner.backend.generate([prompt], params)[0]


# ----------------------------------------------------------------------------- endpoints


def test_health_models_tokenize(client: TestClient, tiny_aligner: Aligner) -> None:
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["model"] == "tiny" and health["template"] == "aligner-v2"
    card = client.get("/v1/models").json()["data"][0]
    assert card["id"] == "tiny" and card["object"] == "model" and card["max_model_len"] == 512
    assert card["aligner"]["template"]["prompt"] == tiny_aligner.template.prompt
    tokens = client.post("/tokenize", json={"model": "tiny", "prompt": "Hello world"}).json()
    assert tokens["count"] == tiny_aligner.backend.count_tokens("Hello world") == len(tokens["tokens"])
    text = client.post("/detokenize", json={"tokens": tokens["tokens"][1:]}).json()["prompt"]
    assert text == "Hello world"


def test_completions_are_the_backend_generation(client: TestClient, tiny_aligner: Aligner) -> None:
    reply = client.post("/v1/completions", json={"model": "tiny", "prompt": "Hello there", "max_tokens": 6}).json()
    out = _greedy(tiny_aligner, "Hello there", 6)
    assert reply["object"] == "text_completion" and reply["model"] == "tiny" and reply["id"].startswith("cmpl-")
    choice = reply["choices"][0]
    assert choice["text"] == out.text and choice["finish_reason"] == out.finish_reason and choice["index"] == 0
    eos = 1 if out.finish_reason == "stop" else 0
    assert reply["usage"] == {
        "prompt_tokens": out.prompt_tokens,
        "completion_tokens": len(out.token_ids) + eos,
        "total_tokens": out.prompt_tokens + len(out.token_ids) + eos,
    }
    # a list of prompts, token ids on request; temperature 0 is greedy
    many = client.post(
        "/v1/completions",
        json={"prompt": ["Hello there", "Paris is"], "max_tokens": 4, "temperature": 0, "return_token_ids": True},
    ).json()
    assert [c["index"] for c in many["choices"]] == [0, 1]
    assert many["choices"][0]["text"] == _greedy(tiny_aligner, "Hello there", 4).text
    assert many["choices"][1]["token_ids"] == _greedy(tiny_aligner, "Paris is", 4).token_ids


def test_completions_stream_and_stop_strings(client: TestClient, tiny_aligner: Aligner) -> None:
    body = {"prompt": "Hello there", "max_tokens": 12, "stream": True, "stream_options": {"include_usage": True}}
    with client.stream("POST", "/v1/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_payloads(response.read().decode())
    assert events[-1] == "[DONE]"
    full = _greedy(tiny_aligner, "Hello there", 12)
    pieces = [e["choices"][0]["text"] for e in events[:-1] if e["choices"]]
    assert "".join(pieces) == full.text
    assert [e["choices"][0]["finish_reason"] for e in events[:-1] if e["choices"]][-1] == full.finish_reason
    assert events[-2]["usage"]["prompt_tokens"] == full.prompt_tokens
    # stop strings cut the text, streamed or not, at the same place
    stop = full.text[len(full.text) // 2 : len(full.text) // 2 + 2]
    expected, hit = apply_stop(full.text, [stop])
    assert hit == stop
    plain = client.post("/v1/completions", json={**body, "stream": False, "stop": stop}).json()["choices"][0]
    assert plain["text"] == expected and plain["finish_reason"] == "stop" and plain["stop_reason"] == stop
    events = sse_payloads(client.post("/v1/completions", json={**body, "stop": [stop, "\u2603"]}).text)
    streamed = [e["choices"][0] for e in events[:-1] if e["choices"]]
    assert "".join(c["text"] for c in streamed) == expected and streamed[-1]["stop_reason"] == stop


def test_stop_filter_holds_back_partial_stops() -> None:
    stopper = StopFilter(["END", "xy"])
    assert [stopper.push(p) for p in ["ab", "cE", "N", "x", "zE", "ND tail"]] == ["ab", "c", "", "EN", "xz", ""]
    assert stopper.hit == "END"
    assert StopFilter([]).push("anything") == "anything"


def test_corrections_single_batch_stream(client: TestClient, tiny_aligner: Aligner) -> None:
    want = tiny_aligner.correct(Q, A)
    got = client.post("/v1/corrections", json={"question": Q, "answer": A, "include_diff": True}).json()
    for field in ("question", "original", "corrected", "changed", "finish_reason", "completion_tokens", "template"):
        assert got[field] == getattr(want, field)
    assert got["diff"] == [edit.model_dump() for edit in want.diff()]
    items = [{"question": Q, "answer": A}, {"question": "Empty?", "answer": " "}]
    batch = client.post("/v1/corrections", json={"items": items}).json()
    assert batch["object"] == "list" and len(batch["data"]) == 2
    assert batch["data"][1]["finish_reason"] == "skipped"
    events = sse_payloads(client.post("/v1/corrections", json={"question": Q, "answer": A, "stream": True}).text)
    assert events[-1] == "[DONE]" and events[-2]["type"] == "correction"
    assert "".join(e["text"] for e in events if isinstance(e, dict) and e["type"] == "delta") == want.corrected
    assert events[-2]["correction"]["corrected"] == want.corrected
    shorter = client.post("/v1/corrections", json={"question": Q, "answer": A, "max_new_tokens": 2}).json()
    assert shorter["completion_tokens"] <= 2


def test_metrics_count_requests_tokens_and_corrections(client: TestClient) -> None:
    client.post("/v1/corrections", json={"question": Q, "answer": A})
    client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2})
    client.post("/v1/completions", content=b"{not json", headers=JSON)
    text = client.get("/metrics").text
    assert 'aligner_server_http_requests_total{method="POST",route="/v1/corrections",status="200"}' in text
    assert 'aligner_server_http_requests_total{method="POST",route="/v1/completions",status="400"}' in text
    assert "aligner_server_http_request_duration_seconds_bucket" in text
    assert 'aligner_server_tokens_total{kind="completion"}' in text
    assert "aligner_server_corrections_total" in text


# ----------------------------------------------------------------------------- bad input: clear 4xx, still serving

BAD = [
    ("completions", b"{not json", 400, "not valid JSON"),
    ("completions", b"", 400, "body is empty"),
    ("completions", b"[1, 2]", 400, "must be a JSON object, got a JSON array"),
    ("completions", b"\xff\xfe", 400, "not UTF-8"),
    ("completions", {"max_tokens": 3}, 400, "missing field 'prompt'"),
    ("completions", {"prompt": 123}, 400, "field 'prompt"),
    ("completions", {"prompt": "x", "max_tokens": "5"}, 400, "field 'max_tokens': Input should be a valid integer"),
    ("completions", {"prompt": "x", "temperature": "hot"}, 400, "field 'temperature'"),
    ("completions", {"prompt": "x", "stream": "yes"}, 400, "field 'stream'"),
    ("completions", {"prompt": "x", "max_tokens": 0}, 400, "greater than or equal to 1"),
    ("completions", {"prompt": "x", "model": "gpt-9"}, 404, "The model 'gpt-9' does not exist"),
    ("completions", {"prompt": "x", "n": 2}, 400, "n=2 is not supported"),
    ("completions", {"prompt": "x", "echo": True}, 400, "echo=True is not supported"),
    ("completions", {"prompt": "x", "logprobs": 3}, 400, "logprobs=3 is not supported"),
    ("completions", {"prompt": []}, 400, "empty list"),
    ("completions", {"prompt": ["x"] * 65}, 400, "at most 64"),
    ("completions", {"prompt": ["a", "b"], "stream": True}, 400, "single prompt"),
    ("completions", {"prompt": "x", "max_tokens": 65}, 400, "limit of 64 tokens"),
    ("completions", {"prompt": "bread " * 600, "max_tokens": 64}, 400, "maximum context length is 512"),
    ("completions", {"prompt": "x" * 30_000}, 413, "at most 20000 bytes"),
    ("corrections", {"question": Q}, 400, "Missing field 'answer'"),
    ("corrections", {"answer": A, "question": 5}, 400, "field 'question'"),
    ("corrections", {"question": Q, "answer": A, "items": []}, 400, "not both"),
    ("corrections", {"items": [{"question": Q}]}, 400, "missing field 'items.0.answer'"),
    ("corrections", {"question": Q, "answer": A, "on_error": "ignore"}, 400, "field 'on_error'"),
    ("corrections", {"question": Q, "answer": "Paris " * 800}, 400, "context of 512"),
    ("corrections", {"question": Q, "answer": A, "model": "other"}, 404, "does not exist"),
]


@pytest.mark.parametrize(("endpoint", "body", "status", "message"), BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_bad_input_answers_clear_4xx(client: TestClient, endpoint: str, body: Any, status: int, message: str) -> None:
    url = f"/v1/{endpoint}"
    response = client.post(url, content=body, headers=JSON) if isinstance(body, bytes) else client.post(url, json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert message in error["message"], error["message"]
    assert error["type"]
    if status == 400 and "context" in message:
        assert error["code"] == "context_length_exceeded" and error["context"] == 512


def test_unknown_route_method_and_still_serving(client: TestClient) -> None:
    missing = client.get("/v1/completions")
    assert missing.status_code == 405 and "POST /v1/completions" in missing.json()["error"]["message"]
    assert client.post("/v2/anything", json={}).status_code == 404
    assert client.get("/health").status_code == 200
    assert client.post("/v1/completions", json={"prompt": "still", "max_tokens": 2}).status_code == 200


def test_api_key_auth(tiny_aligner: Aligner) -> None:
    client = TestClient(create_app(tiny_aligner, api_key=KEY))
    assert client.get("/health").status_code == 200 and client.get("/metrics").status_code == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        denied = client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2}, headers=headers)
        assert denied.status_code == 401 and KEY not in denied.text
        assert "Authorization: Bearer" in denied.json()["error"]["message"]
    assert client.post("/tokenize", json={"prompt": "x"}).status_code == 401
    ok = client.post(
        "/v1/completions", json={"prompt": "x", "max_tokens": 2}, headers={"Authorization": f"Bearer {KEY}"}
    )
    assert ok.status_code == 200
    assert KEY not in repr(ServerConfig(api_key=KEY))


def test_in_flight_limit_answers_429(tiny_aligner: Aligner) -> None:
    slow = Aligner(SlowBackend(tiny_aligner.backend, 0.4), tiny_aligner.template, generation={"max_new_tokens": 2})
    app = create_app(slow, max_in_flight=1)

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
            return await asyncio.gather(
                *(http.post("/v1/corrections", json={"question": Q, "answer": A}) for _ in range(3))
            )

    statuses = sorted(r.status_code for r in asyncio.run(run()))
    assert statuses == [200, 429, 429]


# ----------------------------------------------------------------------------- load: 200 concurrent over loopback


def test_200_concurrent_requests_no_errors_no_cross_talk(app: FastAPI, tiny_aligner: Aligner) -> None:
    pairs = [(f"Question {i}: how do I bake bread?", f"Answer {i}: mix flour and water.") for i in range(200)]
    sample = [i for i in range(0, 200, 10) if i % 4 != 3]
    expected = {i: tiny_aligner.correct(*pairs[i]).corrected for i in sample}

    async def one(http: httpx.AsyncClient, i: int) -> tuple[int, dict[str, Any], float]:
        started = time.perf_counter()
        if i % 4 == 3:  # a quarter through the OpenAI endpoint
            r = await http.post("/v1/completions", json={"prompt": pairs[i][0], "max_tokens": 4})
        else:
            r = await http.post("/v1/corrections", json={"question": pairs[i][0], "answer": pairs[i][1]})
        return r.status_code, r.json(), time.perf_counter() - started

    async def run(url: str) -> list[tuple[int, dict[str, Any], float]]:
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as http:
            return await asyncio.gather(*(one(http, i) for i in range(200)))

    with ServerThread(app) as server:
        results = asyncio.run(run(server.url))
    assert [status for status, _, _ in results] == [200] * 200
    for i, (_, body, _) in enumerate(results):
        if i % 4 == 3:
            assert body["object"] == "text_completion"
            if i in (3, 103):
                assert body["choices"][0]["text"] == _greedy(tiny_aligner, pairs[i][0], 4).text
            continue
        assert (body["question"], body["original"]) == pairs[i]  # each reply belongs to its request
        if i in expected:
            assert body["corrected"] == expected[i]


# ----------------------------------------------------------------------------- CLI


def test_serve_cli_builds_the_app(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from aligner_chains import cli
    from aligner_chains.cli import serve as server_cli
    from aligner_chains.server import runner

    assert server_cli in cli.COMMANDS
    parser = argparse.ArgumentParser()
    server_cli.add_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["serve", "--model", str(tiny_model_dir), "--port", "0", "--max-new-tokens", "3", "--served-model-name", "t"]
    )
    served: dict[str, Any] = {}
    monkeypatch.setattr(runner, "run_server", lambda app, **kw: served.update(app=app, **kw))
    monkeypatch.setenv("ALIGNER_API_KEY", KEY)
    assert args.func(args) == 0
    assert served["host"] == "127.0.0.1" and served["port"] == 0
    client = TestClient(served["app"])
    assert client.get("/health").json()["model"] == "t"
    headers = {"Authorization": f"Bearer {KEY}"}
    reply = client.post("/v1/corrections", json={"question": Q, "answer": A}, headers=headers).json()
    assert reply["completion_tokens"] <= 3
    assert "serve" in cli.build_parser().format_help()


def test_server_config_rejects_unknown_options(tiny_aligner: Aligner) -> None:
    with pytest.raises(Exception, match="max_body"):
        create_app(tiny_aligner, max_body=1)
    with pytest.raises(TypeError, match="needs an Aligner"):
        create_app("demo")  # type: ignore[arg-type]
