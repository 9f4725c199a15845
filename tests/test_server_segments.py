"""``stream_mode="segments"`` of the server's streamed ``/v1/corrections``, with the shipped demo Aligner.

The answer is corrected segment by segment: one ``delta`` event per corrected segment, the first after only
its own generation; the final ``correction`` event has ``stats.stream_mode``; a refusal ends the stream; a
client that leaves stops the generation; a bad ``stream_mode`` is a 400 naming it.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest

pytest.importorskip("fastapi")

import httpx
from pydantic import ValidationError
from segment_answers import ANSWER, HARMFUL_ANSWER, HARMFUL_LATER, HARMFUL_QUESTION, QUESTION
from starlette.testclient import TestClient

from aligner_chains import Aligner
from aligner_chains.core.generation import Backend, GenerationParams
from aligner_chains.core.model_files import default_model
from aligner_chains.core.result import Correction
from aligner_chains.core.segmented import DEFAULT_STREAM_MODE
from aligner_chains.server import ServerThread, create_app
from aligner_chains.server.testing import sse_payloads


@pytest.fixture(scope="module")
def demo() -> Aligner:
    return Aligner.from_pretrained(default_model())


class CountingBackend(Backend):
    """Wraps a backend: waits ``delay_s`` before each generation and counts the generations begun and ended."""

    def __init__(self, inner: Backend, delay_s: float) -> None:
        self.inner = inner
        self.delay_s = delay_s
        self.name = inner.name
        self.max_context = inner.max_context
        self.supports_stop = inner.supports_stop
        self.tokenizer = getattr(inner, "tokenizer", None)
        self.begun = 0
        self.ended = 0

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    def truncate_left(self, text: str, n_tokens: int) -> str:
        return self.inner.truncate_left(text, n_tokens)

    def generate(self, prompts: Sequence[str], params: GenerationParams, *args: Any, **kwargs: Any) -> Any:
        self.begun += 1
        time.sleep(self.delay_s)
        try:
            return self.inner.generate(prompts, params, *args, **kwargs)
        finally:
            self.ended += 1

    def stream(self, prompt: str, params: GenerationParams, *args: Any, **kwargs: Any) -> Any:
        yield from self.inner.stream(prompt, params, *args, **kwargs)


def _events(client: TestClient, **body: Any) -> list[Any]:
    reply = client.post("/v1/corrections", json={"question": QUESTION, "answer": ANSWER, "stream": True, **body})
    assert reply.status_code == 200, reply.text
    return sse_payloads(reply.text)


def test_segments_stream_one_delta_per_corrected_segment(demo: Aligner) -> None:
    *pieces, expected = demo.iter_segments(QUESTION, [ANSWER])
    assert isinstance(expected, Correction)
    client = TestClient(create_app(demo))
    events = _events(client, stream_mode="segments", include_diff=True)
    assert events[-1] == "[DONE]" and [e["type"] for e in events[:-1]] == ["delta"] * 3 + ["correction"]
    assert [e["text"] for e in events[:-2]] == pieces
    correction = events[-2]["correction"]
    assert correction["corrected"] == "".join(pieces) == expected.corrected and correction["original"] == ANSWER
    assert correction["stats"]["stream_mode"] == "segments" and correction["stats"]["segments"] == 3
    assert "diff" in correction
    whole = _events(client, stream_mode="whole")  # the request's mode wins over the server's
    assert len(whole) > 5 and "stream_mode" not in whole[-2]["correction"]["stats"]
    assert "".join(e["text"] for e in whole[:-2]) == demo.correct(QUESTION, ANSWER).corrected


def test_server_default_and_refusal(demo: Aligner) -> None:
    client = TestClient(create_app(demo, stream_mode="segments"))
    events = _events(client, question=HARMFUL_QUESTION, answer=HARMFUL_ANSWER)  # no stream_mode: the server's
    text = "".join(e["text"] for e in events[:-1] if e["type"] == "delta")
    assert text.startswith("I can't help") and not any(phrase in text for phrase in HARMFUL_LATER)
    stats = events[-2]["correction"]["stats"]
    assert stats["stream_mode"] == "segments" and stats["ended_by"] == "replacement" and stats["segments"] == 1
    plain = client.post("/v1/corrections", json={"question": QUESTION, "answer": ANSWER}).json()
    assert plain["corrected"] == demo.correct(QUESTION, ANSWER).corrected  # stream=false: corrected whole
    assert create_app(demo).state.server.config.stream_mode == DEFAULT_STREAM_MODE
    with pytest.raises(ValidationError, match="stream_mode"):
        create_app(demo, stream_mode="tokens")


def test_first_segment_arrives_after_its_own_generation_and_leaving_stops(demo: Aligner) -> None:
    backend = CountingBackend(demo.backend, 0.3)
    slow = Aligner(backend, demo.template)
    body = {"question": QUESTION, "answer": ANSWER, "stream": True, "stream_mode": "segments"}
    with ServerThread(create_app(slow)) as server:
        with httpx.stream("POST", server.url + "/v1/corrections", json=body, timeout=30) as reply:
            assert reply.status_code == 200
            for line in reply.iter_lines():
                if line.startswith("data:") and '"delta"' in line:
                    ended_at_first = backend.ended
                    break
        # the client has left after the first segment: the server does not go on to the third
        time.sleep(1.0)
        assert ended_at_first == 1 and backend.begun <= 2
        done = threading.Event()
        events = []

        def full() -> None:
            events.extend(sse_payloads(httpx.post(server.url + "/v1/corrections", json=body, timeout=30).text))
            done.set()

        threading.Thread(target=full, daemon=True).start()
        assert done.wait(30) and events[-2]["correction"]["stats"]["segments"] == 3


@pytest.mark.parametrize("value", ["tokens", "", 3, ["segments"]])
def test_bad_stream_mode_is_400_naming_it(demo: Aligner, value: Any) -> None:
    client = TestClient(create_app(demo))
    for stream in (True, False):
        reply = client.post(
            "/v1/corrections", json={"question": QUESTION, "answer": "x", "stream": stream, "stream_mode": value}
        )
        error = reply.json()["error"]
        assert reply.status_code == 400 and error["param"] == "stream_mode", error
        assert "stream_mode" in error["message"]
        if isinstance(value, str):
            assert "'whole'" in error["message"] and "'segments'" in error["message"]


def test_serve_command_line_sets_the_stream_mode() -> None:
    from aligner_chains.cli import serve as server_cli

    parser = argparse.ArgumentParser()
    server_cli.add_cli(parser.add_subparsers(dest="command"))
    assert parser.parse_args(["serve", "--model", "demo"]).stream_mode == DEFAULT_STREAM_MODE
    args = parser.parse_args(["serve", "--model", "demo", "--stream-mode", "segments"])
    assert server_cli.build_app(args).state.server.config.stream_mode == "segments"
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--model", "demo", "--stream-mode", "tokens"])
