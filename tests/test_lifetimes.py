"""Lifetimes: models are freed when their Aligners go, batcher threads end, and no wait is unbounded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from aligner_chains import Aligner, BackendError, BackendTimeoutError
from aligner_chains.core.batching import MicroBatcher
from aligner_chains.core.generation import Backend, GenerationOutput, GenerationParams
from aligner_chains.server.testing import SlowBackend
from aligner_chains.testing import build_tiny_llama

ROOT = Path(__file__).resolve().parents[1]

# Run in a fresh interpreter: clearing the process-wide model cache here would unshare the weights other
# tests' fixtures rely on.
_FREED = """
import gc, json, sys, weakref
from aligner_chains import Aligner
from aligner_chains.backends.local import clear_model_cache

aligner = Aligner.from_pretrained(sys.argv[1], max_new_tokens=2)  # micro-batching on (the default)
copy = aligner.with_options(max_new_tokens=3)  # shares the backend and its batcher
aligner.correct("Q?", "An answer.")
copy.correct("Q?", "Another answer.")
worker = aligner._batcher.worker
model = weakref.ref(aligner.backend.loaded.model)
started_alive = worker is not None and worker.is_alive()
del aligner, copy
clear_model_cache()
gc.collect()
freed = model() is None
worker.join(timeout=10)
print(json.dumps({"started_alive": started_alive, "freed": freed, "worker_ended": not worker.is_alive()}))
"""


def test_dropping_the_aligner_and_the_cache_frees_the_model_with_micro_batching(tmp_path: Path) -> None:
    model_dir = build_tiny_llama(tmp_path / "model")
    out = subprocess.run(
        [sys.executable, "-c", _FREED, str(model_dir)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {
        "started_alive": True,
        "freed": True,
        "worker_ended": True,
    }


class _EchoBackend(Backend):
    """A backend without a model: returns each prompt's length as its completion, after ``delay_s``."""

    name = "echo"

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.calls = 0

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def truncate_left(self, text: str, n_tokens: int) -> str:
        return " ".join(text.split()[n_tokens:])

    def generate(
        self,
        prompts: Sequence[str],
        params: GenerationParams,
        sources: Sequence[str] | None = None,
        limits: Sequence[int] | None = None,
    ) -> list[GenerationOutput]:
        self.calls += 1
        time.sleep(self.delay_s)
        return [GenerationOutput([1], f"{len(p)}", "stop", len(p.split())) for p in prompts]

    def stream(self, prompt: str, params: GenerationParams, source: str | None = None) -> Iterator[Any]:
        yield self.generate([prompt], params)[0]


def _wait_until(condition: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def test_an_idle_worker_ends_and_the_next_request_starts_another() -> None:
    backend = _EchoBackend()  # a batcher holds its backend weakly: the caller keeps it
    batcher = MicroBatcher(backend, idle_s=0.2)
    params = GenerationParams(max_new_tokens=1)
    assert batcher.submit("a b c", params).result(timeout=10).text == "5"
    first = batcher.worker
    assert first is not None
    first.join(timeout=10)
    assert not first.is_alive() and batcher.worker is None
    assert batcher.submit("a b", params).result(timeout=10).text == "3"
    assert batcher.worker is not first


def test_the_worker_ends_once_its_backend_is_gone() -> None:
    backend = _EchoBackend()
    batcher = MicroBatcher(backend, idle_s=600)  # idle for long: only the backend's end stops it
    assert batcher.submit("x", GenerationParams(max_new_tokens=1)).result(timeout=10).text == "1"
    worker = batcher.worker
    assert worker is not None and worker.is_alive()
    del backend
    worker.join(timeout=10)
    assert not worker.is_alive()
    with pytest.raises(BackendError, match="freed"):
        _ = batcher.backend


def test_a_dead_worker_fails_every_waiter_instead_of_hanging(monkeypatch: pytest.MonkeyPatch) -> None:
    backend = _EchoBackend()
    batcher = MicroBatcher(backend, max_wait_ms=200)
    started = threading.Event()

    def die(batch: list[Any]) -> None:
        started.set()
        raise RuntimeError("worker bug")

    monkeypatch.setattr(batcher, "_run_batch", die)
    params = GenerationParams(max_new_tokens=1)
    futures = [batcher.submit(f"prompt {i}", params) for i in range(3)]
    for future in futures:
        with pytest.raises(BackendError, match="micro-batching worker died: RuntimeError: worker bug"):
            future.result(timeout=10)
    assert started.is_set()
    monkeypatch.undo()
    assert batcher.submit("a", params).result(timeout=10).text == "1"  # a new worker serves again


def test_a_micro_batched_wait_is_bounded(tiny_aligner: Aligner) -> None:
    """The backend takes 3 s; with timeout=0.3 the caller gets an error instead of waiting for it."""
    slow = Aligner(SlowBackend(tiny_aligner.backend, 3.0), "aligner-v2", generation={"max_new_tokens": 2}, timeout=0.3)
    with pytest.raises(BackendTimeoutError, match=r"timeout=0.3 s"):
        slow.correct("Q?", "An answer.")
    failed = slow.correct("Q?", "An answer.", on_error="passthrough")
    assert failed.finish_reason == "error" and "timeout=0.3" in (failed.error or "")
    with pytest.raises(Exception, match="timeout=0"):
        Aligner(tiny_aligner.backend, "aligner-v2", timeout=0)


async def test_an_async_micro_batched_wait_is_bounded(tiny_aligner: Aligner) -> None:
    slow = Aligner(SlowBackend(tiny_aligner.backend, 3.0), "aligner-v2", generation={"max_new_tokens": 2}, timeout=0.3)
    with pytest.raises(BackendTimeoutError):
        await slow.acorrect("Q?", "An answer.")
