"""Micro-batching: concurrent calls share batches, results reach their callers, failures stay local."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from aligner_chains import Aligner
from aligner_chains.core.batching import MicroBatcher
from aligner_chains.core.generation import Backend, GenerationOutput, GenerationParams


class EchoBackend(Backend):
    """Corrects an answer to its upper-case form; fails any batch holding an answer with ``boom``."""

    name = "echo"

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.lock = threading.Lock()

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def truncate_left(self, text: str, n_tokens: int) -> str:
        return " ".join(text.split()[n_tokens:])

    def generate(
        self, prompts: Sequence[str], params: GenerationParams, sources: Sequence[str] | None = None
    ) -> list[GenerationOutput]:
        answers = [re.search(r"##Answer: (.*)\n##Correction:", p, re.S).group(1) for p in prompts]
        with self.lock:
            self.batches.append(answers)
        if any("boom" in a for a in answers):
            raise RuntimeError("boom in this batch")
        return [GenerationOutput(token_ids=[0], text=a.upper(), finish_reason="stop", prompt_tokens=1) for a in answers]

    def stream(self, prompt: str, params: GenerationParams, source: str | None = None) -> Iterator[Any]:
        yield from self.generate([prompt], params)


def make(backend: Backend, **options: Any) -> Aligner:
    return Aligner(backend, "aligner-v2", **options)


async def test_concurrent_calls_share_one_batch_and_get_their_own_results() -> None:
    backend = EchoBackend()
    # The batch closes when its 20th request arrives; the long wait only covers a slow machine (a
    # garbage-collection pause between two arrivals once split this batch under a loaded CI run).
    aligner = make(backend, max_batch_size=20, max_wait_ms=10_000)
    answers = [f"answer number {i}" for i in range(20)]
    results = await asyncio.gather(*(aligner.acorrect("q", a) for a in answers))
    assert [r.corrected for r in results] == [a.upper() for a in answers]
    assert [r.original for r in results] == answers
    assert [len(b) for b in backend.batches] == [20]


def test_threads_share_batches_up_to_max_batch_size() -> None:
    backend = EchoBackend()
    aligner = make(backend, max_batch_size=4, max_wait_ms=200)
    answers = [f"answer {i}" for i in range(12)]
    with ThreadPoolExecutor(max_workers=12) as pool:
        results = list(pool.map(lambda a: aligner.correct("q", a), answers))
    assert [r.corrected for r in results] == [a.upper() for a in answers]
    assert max(len(b) for b in backend.batches) == 4 and len(backend.batches) < 12


async def test_a_failing_request_does_not_fail_its_batch_mates() -> None:
    backend = EchoBackend()
    aligner = make(backend, max_batch_size=3, max_wait_ms=2_000)  # the three close their batch; a lone call waits 2 s
    answers = ["fine one", "this goes boom", "fine two"]
    results = await asyncio.gather(
        *(aligner.acorrect("q", a) for a in answers[:2]),
        aligner.acorrect("q", answers[2], on_error="passthrough"),
        return_exceptions=True,
    )
    assert results[0].corrected == "FINE ONE" and results[2].corrected == "FINE TWO"
    assert isinstance(results[1], RuntimeError)
    assert [len(b) for b in backend.batches] == [3, 1, 1, 1]  # the batch, then each request alone
    kept = await aligner.acorrect("q", "boom again", on_error="passthrough")
    assert kept.corrected == "boom again" and kept.finish_reason == "error"


async def test_different_settings_run_in_different_batches() -> None:
    backend = EchoBackend()
    aligner = make(backend, max_batch_size=3, max_wait_ms=10_000)  # collected together, then split by settings
    await asyncio.gather(
        aligner.acorrect("q", "a1"), aligner.acorrect("q", "a2", do_sample=True), aligner.acorrect("q", "a3")
    )
    assert sorted(len(b) for b in backend.batches) == [1, 2]


def test_micro_batching_off_runs_each_call_alone() -> None:
    backend = EchoBackend()
    aligner = make(backend, micro_batching=False)
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda a: aligner.correct("q", a), ["a", "b", "c", "d"]))
    assert [len(b) for b in backend.batches] == [1, 1, 1, 1]


def test_from_pretrained_passes_the_batching_options(tiny_model_dir: Path) -> None:
    off = Aligner.from_pretrained(str(tiny_model_dir), micro_batching=False)
    assert off._batcher is None
    on = Aligner.from_pretrained(str(tiny_model_dir), max_batch_size=3, max_wait_ms=7)
    assert isinstance(on._batcher, MicroBatcher)
    assert on._batcher.max_batch_size == 3 and on._batcher.max_wait_s == pytest.approx(0.007)
    assert on.with_options(max_new_tokens=4)._batcher is on._batcher  # copies share the batcher


async def test_local_micro_batch_equals_single_calls(tiny_model_dir: Path) -> None:
    """On a real model, concurrent calls with prompts of different lengths batch and match single calls."""
    single = Aligner.from_pretrained(str(tiny_model_dir), micro_batching=False, max_new_tokens=12)
    batched = Aligner.from_pretrained(str(tiny_model_dir), max_batch_size=8, max_wait_ms=200, max_new_tokens=12)
    pairs = [("Q?", "Short."), ("A much longer question here?", "A longer answer with more words in it."), ("x", "y")]
    expected = [single.correct(q, a).corrected for q, a in pairs]
    sizes: list[int] = []
    original = batched.backend.generate

    def spy(prompts: Sequence[str], params: GenerationParams, **kwargs: Any) -> list[GenerationOutput]:
        sizes.append(len(prompts))
        return original(prompts, params, **kwargs)

    batched.backend.generate = spy  # type: ignore[method-assign]
    batched.backend.open_session = lambda params: None  # type: ignore[method-assign]  # whole batches only
    results = await asyncio.gather(*(batched.acorrect(q, a) for q, a in pairs))
    assert [r.corrected for r in results] == expected
    assert sizes == [3]


class SlowBackend(EchoBackend):
    """Takes up to ``steps`` decoding steps of 10 ms, stopping early once its ``stop`` signal is set."""

    supports_stop = True

    def __init__(self, steps: int = 300) -> None:
        super().__init__()
        self.steps = steps
        self.started = threading.Event()
        self.steps_run: list[int] = []

    def generate(
        self, prompts: Sequence[str], params: GenerationParams, sources: Sequence[str] | None = None, stop: Any = None
    ) -> list[GenerationOutput]:
        self.started.set()
        step = 0
        while step < self.steps and not (stop is not None and stop.is_set()):
            threading.Event().wait(0.01)
            step += 1
        self.steps_run.append(step)
        out = GenerationOutput(token_ids=[0] * step, text="x", finish_reason="length", prompt_tokens=1)
        return [out for _ in prompts]


@pytest.mark.parametrize("abandon", [["a", "b"], ["a"]])
def test_running_batch_stops_once_every_caller_has_gone(abandon: list[str]) -> None:
    backend = SlowBackend()
    batcher = MicroBatcher(backend, max_batch_size=2, max_wait_ms=100)
    params = GenerationParams(max_new_tokens=1000)
    futures = {name: batcher.submit(f"##Answer: {name}\n##Correction:", params) for name in "ab"}
    assert backend.started.wait(5)
    for name in abandon:
        futures[name].abandon()  # already running: it cannot be cancelled, only marked
    for future in futures.values():
        future.result(timeout=10)
    stopped_early = backend.steps_run[0] < backend.steps
    assert stopped_early == (len(abandon) == 2)  # a batch with one caller left runs to its end


async def test_cancelled_acorrect_abandons_its_running_request() -> None:
    backend = SlowBackend()
    aligner = make(backend, max_wait_ms=1)
    task = asyncio.create_task(aligner.acorrect("q", "an answer"))
    await asyncio.to_thread(backend.started.wait, 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.to_thread(lambda: [threading.Event().wait(0.05) for _ in range(40) if not backend.steps_run])
    assert backend.steps_run and backend.steps_run[0] < backend.steps


async def test_cancelled_acorrect_batch_stops_its_generation() -> None:
    backend = SlowBackend()
    aligner = make(backend, micro_batching=False, generation={"max_new_tokens": 1000})
    task = asyncio.create_task(aligner.acorrect_batch([("q", "one"), ("q", "two")]))
    await asyncio.to_thread(backend.started.wait, 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.to_thread(lambda: [threading.Event().wait(0.05) for _ in range(40) if not backend.steps_run])
    assert backend.steps_run and backend.steps_run[0] < backend.steps  # ended at the next step, not after 300
