"""Bulk jobs on servers: ``correct | eval | synthesize --server URL [--server URL ...]`` and `ServerFleet`.

Two ``aligner-chains serve`` apps with the shipped demo Aligner run on loopback; every job must give what
the single-process job gives for the same input (greedy), spread its requests over both servers, go on
when one of them dies, and resume after a kill without losing or repeating a row.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from aligner_chains.backends.remote.fleet import ServerFleet, is_server_failure
from aligner_chains.cli import main
from aligner_chains.core.aligner import Aligner
from aligner_chains.core.errors import BackendError, BackendTimeoutError, ConfigError
from aligner_chains.core.model_files import default_model
from aligner_chains.server import ServerThread, create_app

pytestmark = pytest.mark.slow

FIXTURES = Path(__file__).parent / "fixtures"
MAX_NEW = "128"  # most answers whole; keeps the demo's CPU time small


def real_rows(n: int = 16) -> list[dict[str, Any]]:
    """Short real answers of chat models (AlpacaEval), a third of them with a contact sentence added."""
    items = json.loads((FIXTURES / "alpaca_eval_aligner2b_slice.json").read_text(encoding="utf-8"))
    short = [item for item in items if len(item["original_output"]) < 500][:n]
    rows = []
    for i, item in enumerate(short):
        answer = item["original_output"]
        if i % 3 == 0:
            answer += f"\n\nQuestions? Write to help{i}@example.com or call 555-01{i:02d}."
        rows.append({"id": f"r{i}", "question": item["instruction"], "answer": answer})
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def counting(app: Any, counts: Counter[str], name: str, *, fail_after: int | None = None) -> Any:
    """``app`` counting its ``/v1/completions`` requests; after ``fail_after`` of them it answers 503 (dead)."""

    async def wrapper(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/v1/completions":
            counts[name] += 1
            if fail_after is not None and counts[name] > fail_after:
                await send(
                    {"type": "http.response.start", "status": 503, "headers": [(b"content-type", b"text/plain")]}
                )
                await send({"type": "http.response.body", "body": b"replica down"})
                return
        await app(scope, receive, send)

    return wrapper


@pytest.fixture(scope="module")
def demo() -> Aligner:
    return Aligner.from_pretrained(default_model())


@pytest.fixture(scope="module")
def servers(demo: Aligner) -> Iterator[tuple[list[str], Counter[str]]]:
    counts: Counter[str] = Counter()
    with (
        ServerThread(counting(create_app(demo), counts, "a")) as a,
        ServerThread(counting(create_app(demo), counts, "b")) as b,
    ):
        yield [a.url, b.url], counts


@pytest.fixture(scope="module")
def local_output(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    """The rows and the single-process ``correct`` output for them: what every other path must equal."""
    folder = tmp_path_factory.mktemp("local")
    pairs = write_jsonl(folder / "pairs.jsonl", real_rows())
    out = folder / "out.jsonl"
    assert main(["correct", "--input", str(pairs), "--output", str(out), "--max-new-tokens", MAX_NEW, "--quiet"]) == 0
    return pairs, out.read_bytes()


def corrections(output: bytes | Path) -> list[dict[str, Any]]:
    """The rows of a ``correct`` output without what depends on where it ran (wall time, decoder stats)."""
    text = output.read_bytes() if isinstance(output, Path) else output
    return [
        {k: v for k, v in json.loads(line).items() if k not in ("latency_s", "stats")} for line in text.splitlines()
    ]


def server_flags(urls: list[str]) -> list[str]:
    return [flag for url in urls for flag in ("--server", url)]


def test_correct_on_two_servers_equals_the_single_process(
    servers: tuple[list[str], Counter[str]], local_output: tuple[Path, bytes], tmp_path: Path
) -> None:
    urls, counts = servers
    pairs, expected = local_output
    before = Counter(counts)
    out = tmp_path / "out.jsonl"
    argv = ["correct", "--input", str(pairs), "--output", str(out), "--max-new-tokens", MAX_NEW, "--quiet"]
    assert main([*argv, *server_flags(urls), "--concurrency", "4"]) == 0
    assert corrections(out) == corrections(expected)
    spread = counts - before
    assert spread["a"] > 0 and spread["b"] > 0, spread  # both replicas did work
    assert spread["a"] + spread["b"] == len(real_rows())


def test_a_replica_that_dies_mid_job_costs_no_row(
    demo: Aligner, local_output: tuple[Path, bytes], tmp_path: Path
) -> None:
    pairs, expected = local_output
    counts: Counter[str] = Counter()
    with (
        ServerThread(counting(create_app(demo), counts, "up")) as up,
        ServerThread(counting(create_app(demo), counts, "dying", fail_after=3)) as dying,
    ):
        out = tmp_path / "out.jsonl"
        argv = ["correct", "--input", str(pairs), "--output", str(out), "--max-new-tokens", MAX_NEW, "--quiet"]
        assert main([*argv, "--server", up.url, "--server", dying.url, "--concurrency", "2"]) == 0
    assert corrections(out) == corrections(expected)
    assert counts["dying"] > 3  # it was asked again after it began failing, then set aside


def test_a_killed_server_job_resumes_without_losing_or_repeating_a_row(
    servers: tuple[list[str], Counter[str]], local_output: tuple[Path, bytes], tmp_path: Path
) -> None:
    urls, _ = servers
    pairs, expected = local_output
    out = tmp_path / "out.jsonl"
    argv = ["correct", "--input", str(pairs), "--output", str(out), "--max-new-tokens", MAX_NEW, "--quiet"]
    argv += [*server_flags(urls), "--concurrency", "1", "--batch-size", "1"]  # chunks of 4 rows
    job = subprocess.Popen([sys.executable, "-m", "aligner_chains.cli", *argv], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (out.exists() and out.read_bytes().count(b"\n") >= 4):
        assert job.poll() is None, job.stderr.read().decode() if job.stderr else ""
        assert time.monotonic() < deadline, "the job wrote nothing in 120 s"
        time.sleep(0.05)
    job.kill()
    job.wait()
    written = out.read_bytes().count(b"\n")
    assert 4 <= written < len(real_rows())  # killed mid-job
    assert main(argv) == 0  # the same command resumes
    assert corrections(out) == corrections(expected)


EVAL_JUDGE = """
def rule(question, original, corrected):
    return "win" if corrected != original else "tie"
"""


def test_eval_and_synthesize_on_servers_equal_the_local_aligner(
    servers: tuple[list[str], Counter[str]], tmp_path: Path
) -> None:
    urls, _ = servers
    rows = real_rows(6)
    items = write_jsonl(tmp_path / "items.jsonl", [{"question": r["question"], "original": r["answer"]} for r in rows])
    judge = tmp_path / "judges.py"
    judge.write_text(EVAL_JUDGE)
    common = ["--input", str(items), "--judge", f"{judge}:rule", "--no-plot", "--quiet", "--max-new-tokens", MAX_NEW]
    assert main(["eval", *common, "--aligner", default_model(), "--out", str(tmp_path / "local")]) == 0
    assert main(["eval", *common, *server_flags(urls), "--out", str(tmp_path / "served")]) == 0

    def corrected(folder: str) -> list[str]:
        log = [json.loads(line) for line in (tmp_path / folder / "judgments.jsonl").read_text().splitlines()]
        return sorted(r["corrected"] for r in log if r.get("type") == "correction")

    assert corrected("local") == corrected("served") and len(corrected("local")) == len(rows)

    questions = write_jsonl(
        tmp_path / "questions.jsonl", [{"question": r["question"], "answer": r["answer"]} for r in rows]
    )
    common = ["--questions", str(questions), "--quiet", "--max-new-tokens", MAX_NEW]
    assert main(["synthesize", *common, "--aligner", default_model(), "--out", str(tmp_path / "local.jsonl")]) == 0
    assert main(["synthesize", *common, *server_flags(urls), "--out", str(tmp_path / "served.jsonl")]) == 0
    local = (tmp_path / "local.jsonl").read_text()
    assert local == (tmp_path / "served.jsonl").read_text() and local.count("\n") > 0


def test_server_option_errors_name_the_value_and_the_fix(
    servers: tuple[list[str], Counter[str]], demo: Aligner, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    urls, _ = servers
    pairs = write_jsonl(tmp_path / "pairs.jsonl", real_rows(1))
    argv = ["correct", "--input", str(pairs), "--output", str(tmp_path / "o.jsonl"), "--quiet"]
    with pytest.raises(SystemExit, match="--device set how a local model loads"):
        main([*argv, "--server", urls[0], "--device", "cpu"])
    with ServerThread(create_app(demo, served_model_name="other")) as other:
        assert main([*argv, "--server", urls[0], "--server", other.url, "--model", demo.model_name]) == 2
        assert f"{other.url} does not serve model 'demo' (it lists other)" in capsys.readouterr().err
    assert main([*argv, "--server", urls[0], "--server", "http://127.0.0.1:9"]) == 2
    assert "Cannot reach http://127.0.0.1:9" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="give one teacher"):
        main(["synthesize", "--questions", str(pairs), "--out", "x.jsonl", "--teacher", "m:f", "--server", urls[0]])
    with pytest.raises(ConfigError, match="more than once"):
        Aligner.from_server([urls[0], urls[0] + "/v1"])


# ----------------------------------------------------------------------------------- ServerFleet alone


class FakeTransport:
    """A transport whose requests run ``behaviour(self)``: enough of `HTTPTransport` for the fleet."""

    def __init__(self, name: str, behaviour: Callable[[FakeTransport], Any]) -> None:
        self.base_url = name
        self.behaviour = behaviour
        self.calls = 0

    def request_json(self, method: str, path: str, body: Any = None, *, retry: bool = True) -> Any:
        self.calls += 1
        return self.behaviour(self)

    def close(self) -> None:
        pass


def test_fleet_spreads_by_load_and_fails_over() -> None:
    ok = [FakeTransport(f"http://s{i}", lambda t: t.base_url) for i in range(3)]
    fleet = ServerFleet(ok)  # type: ignore[arg-type]
    assert [fleet.request_json("GET", "/x") for _ in range(6)] == ["http://s0", "http://s1", "http://s2"] * 2
    with fleet.lease() as busy:  # a long stream on one server: the others take the next requests
        assert busy.base_url not in {fleet.request_json("GET", "/x") for _ in range(4)}

    def down(t: FakeTransport) -> Any:
        raise BackendError(f"Cannot reach {t.base_url}", url=t.base_url)

    dead, alive = FakeTransport("http://dead", down), FakeTransport("http://alive", lambda t: "ok")
    fleet = ServerFleet([dead, alive], cooldown_s=60)  # type: ignore[arg-type]
    assert [fleet.request_json("GET", "/x") for _ in range(4)] == ["ok"] * 4
    assert dead.calls == 1  # set aside after its failure
    assert fleet.served() == {"http://dead": 0, "http://alive": 4}

    fleet = ServerFleet([FakeTransport("http://x", down), FakeTransport("http://y", down)])  # type: ignore[arg-type]
    with pytest.raises(BackendError, match="Every server of the fleet failed"):
        fleet.request_json("GET", "/x")

    def refused(t: FakeTransport) -> Any:
        raise BackendError("too long", status_code=400)

    first, second = FakeTransport("http://a", refused), FakeTransport("http://b", refused)
    with pytest.raises(BackendError, match="too long"):  # the request's own fault: not sent elsewhere
        ServerFleet([first, second]).request_json("GET", "/x")  # type: ignore[arg-type]
    assert first.calls + second.calls == 1
    assert not is_server_failure(BackendTimeoutError("slow")) and is_server_failure(BackendError("x", status_code=502))
