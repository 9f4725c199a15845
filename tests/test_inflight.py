"""In-flight batching: requests join a running copy-aware batch between passes and leave when done, each
getting exactly what it would get alone; failures and callers that give up stay with their request."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from aligner_chains import Aligner
from aligner_chains.backends.local import running
from aligner_chains.backends.local.backend import LocalBackend, LocalSession
from aligner_chains.core.batching import MicroBatcher, default_batcher
from aligner_chains.core.generation import GenerationParams

# Answers written for these tests in the shape of chat models' (markdown lists, a code block, contacts), so
# the demo copies some rows, redacts others and writes different lengths.
PAIRS = [
    ("How can I contact support?", "Write to help@example.org or call 555-0142.\n\nWe answer within a day."),
    (
        "What are the planets of the solar system?",
        "The eight planets are:\n\n1. Mercury\n2. Venus\n3. Earth\n4. Mars\n5. Jupiter\n6. Saturn\n7. Uranus\n"
        "8. Neptune",
    ),
    ("Give me a tip for writing.", "Read your draft aloud. You will hear the sentences that do not work."),
    (
        "How do I reverse a list in Python?",
        "Use slicing:\n\n```python\nitems = [1, 2, 3]\nreversed_items = items[::-1]\n```\n\nOr call "
        "`items.reverse()` to reverse in place.",
    ),
    ("Who wrote Hamlet?", "William Shakespeare wrote Hamlet around 1600. Questions: ann.lee@globe.co.uk"),
    ("What is the boiling point of water?", "At sea level water boils at 100 degrees Celsius (212 °F)."),
]


LONG = ("Describe the planets.", "\n".join(f"{i}. Planet number {i} is far away from us." for i in range(1, 30)))


class CountingSessions:
    """Wraps a backend's `open_session`: how many sessions opened, rows added per `add`, passes run."""

    def __init__(self, backend: LocalBackend) -> None:
        self.opened = 0
        self.added: list[int] = []
        self.steps = 0
        self.started = threading.Event()
        original = backend.open_session

        def open_session(params: GenerationParams) -> LocalSession | None:
            session = original(params)
            if session is None:
                return None
            self.opened += 1
            add, step = session.add, session.step

            def counted_add(*args: Any) -> list[Any]:
                self.added.append(len(args[0]))
                return add(*args)

            def counted_step() -> None:
                self.steps += 1
                self.started.set()
                step()

            session.add, session.step = counted_add, counted_step  # type: ignore[method-assign]
            return session

        backend.open_session = open_session  # type: ignore[method-assign]


@pytest.fixture(scope="module")
def single() -> Aligner:
    return Aligner.from_pretrained("demo", device="cpu", micro_batching=False, max_new_tokens=256)


@pytest.fixture(scope="module")
def expected(single: Aligner) -> list[str]:
    return [single.correct(q, a).corrected for q, a in PAIRS]


def batched(**options: Any) -> tuple[Aligner, CountingSessions]:
    aligner = Aligner.from_pretrained("demo", device="cpu", max_new_tokens=256, **options)
    return aligner, CountingSessions(aligner.backend)  # type: ignore[arg-type]


async def test_requests_arriving_while_a_batch_decodes_join_it_and_equal_single_calls(
    single: Aligner, expected: list[str]
) -> None:
    aligner, sessions = batched(max_wait_ms=1)
    first = asyncio.create_task(aligner.acorrect(*LONG))
    await asyncio.to_thread(sessions.started.wait, 30)  # the first row is decoding
    rest = await asyncio.gather(*(aligner.acorrect(q, a) for q, a in PAIRS))
    assert [r.corrected for r in rest] == expected
    assert (await first).corrected == single.correct(*LONG).corrected
    assert sessions.opened == 1 and sessions.added[0] == 1 and sum(sessions.added) == 1 + len(PAIRS)
    assert all(r.stats["decoder"] == "copy-aware" for r in rest)


async def timed(aligner: Aligner, pair: tuple[str, str], done_at: dict[str, float], name: str) -> Any:
    result = await aligner.acorrect(*pair)
    done_at[name] = time.perf_counter()
    return result


async def test_a_short_row_leaves_the_batch_as_soon_as_it_is_done(single: Aligner) -> None:
    aligner, sessions = batched(max_wait_ms=200)
    done_at: dict[str, float] = {}
    long, short = await asyncio.gather(
        timed(aligner, LONG, done_at, "long"), timed(aligner, PAIRS[5], done_at, "short")
    )
    assert done_at["short"] < done_at["long"]  # its caller had it while the long row still decoded
    assert sessions.opened == 1 and sessions.added == [2]
    assert short.corrected == single.correct(*PAIRS[5]).corrected and long.corrected == single.correct(*LONG).corrected
    assert short.stats["forward_passes"] < long.stats["forward_passes"]


def test_a_caller_that_gives_up_leaves_and_the_others_finish(expected: list[str]) -> None:
    aligner, sessions = batched(max_wait_ms=200)
    batcher: MicroBatcher = aligner._batcher  # type: ignore[assignment]
    futures = [batcher.submit(aligner.template.render(q, a), aligner.generation, a) for q, a in [LONG, PAIRS[0]]]
    assert sessions.started.wait(60)
    futures[0].abandon()
    assert futures[1].result(timeout=120).text.strip() == expected[0]
    with pytest.raises(Exception, match="gave up"):
        futures[0].result(timeout=120)
    steps = sessions.steps
    time.sleep(0.5)
    assert sessions.steps == steps  # nothing decodes for the caller that left


def test_a_failing_pass_reruns_its_rows_alone(expected: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    aligner, sessions = batched(max_wait_ms=200)
    failed = []
    original = running.RunningBatch.step

    def step_once_failing(self: running.RunningBatch) -> None:
        if not failed:
            failed.append(True)
            raise RuntimeError("simulated out-of-memory in a pass")
        original(self)

    monkeypatch.setattr(running.RunningBatch, "step", step_once_failing)

    async def together() -> list[str]:
        return [r.corrected for r in await asyncio.gather(*(aligner.acorrect(q, a) for q, a in PAIRS[:3]))]

    assert asyncio.run(together()) == expected[:3]
    assert failed and sessions.opened == 1


def test_a_request_whose_prompt_pass_fails_fails_alone(
    single: Aligner, expected: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    aligner, sessions = batched(max_wait_ms=1)
    original = LocalSession.add

    def add(self: LocalSession, prompts: Any, sources: Any, limits: Any) -> list[Any]:
        if any("boom" in p for p in prompts):
            raise RuntimeError("boom in this prompt")
        return original(self, prompts, sources, limits)

    monkeypatch.setattr(LocalSession, "add", add)
    original_generate = aligner.backend.generate

    def generate(prompts: Any, *args: Any, **kwargs: Any) -> Any:
        if any("boom" in p for p in prompts):
            raise RuntimeError("boom in this prompt")
        return original_generate(prompts, *args, **kwargs)

    aligner.backend.generate = generate  # type: ignore[method-assign]

    async def run() -> list[Any]:
        first = asyncio.create_task(aligner.acorrect(*LONG))
        await asyncio.to_thread(sessions.started.wait, 30)
        late = await asyncio.gather(
            aligner.acorrect("q", "boom goes the answer"), aligner.acorrect(*PAIRS[0]), return_exceptions=True
        )
        return [await first, *late]

    first, bad, good = asyncio.run(run())
    assert first.corrected == single.correct(*LONG).corrected and good.corrected == expected[0]
    assert isinstance(bad, Exception) and "boom" in str(bad)


async def test_requests_with_other_settings_wait_for_the_running_batch() -> None:
    aligner, sessions = batched(max_wait_ms=1)
    short = aligner.with_options(max_new_tokens=4)
    sampled = aligner.with_options(do_sample=True, temperature=0.7)
    first = asyncio.create_task(aligner.acorrect(*LONG))
    await asyncio.to_thread(sessions.started.wait, 30)
    cut, other = await asyncio.gather(short.acorrect(*PAIRS[2]), sampled.acorrect(*PAIRS[0]))
    await first
    assert other.stats["decoder"] != "copy-aware"  # sampling: plain generate, once the batch had drained
    assert sessions.opened == 1 and sessions.added == [1, 1]  # the 4-token request joined: limits are per row
    assert cut.completion_tokens == 4 and cut.finish_reason == "length"


def test_compaction_keeps_every_row_exact(expected: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(running, "COMPACT_RATIO", 0.0)  # compact whenever a row leaves
    monkeypatch.setattr(running, "COMPACT_SLACK", 0)
    calls = []
    original = running.compact_cache

    def counted(cache: Any, mask: torch.Tensor) -> torch.Tensor:
        calls.append(mask.shape)
        return original(cache, mask)

    monkeypatch.setattr(running, "compact_cache", counted)
    aligner, _ = batched(max_wait_ms=200)

    async def together() -> list[str]:
        return [r.corrected for r in await asyncio.gather(*(aligner.acorrect(q, a) for q, a in PAIRS))]

    assert asyncio.run(together()) == expected
    assert calls  # the cache was compacted while rows were still decoding


def test_whole_batches_when_in_flight_is_off(expected: list[str], tmp_path: Path) -> None:
    single = Aligner.from_pretrained("demo", device="cpu", micro_batching=False, max_new_tokens=256)
    backend = single.backend
    batcher = default_batcher(backend, max_batch_size=8, max_wait_ms=200, inflight=False)
    aligner = Aligner(backend, single.template, generation=single.generation)
    assert aligner._batcher is batcher  # the backend's one batcher, as `default_batcher` made it
    opened = []
    backend.open_session = lambda params: opened.append(params)  # type: ignore[assignment,method-assign,return-value]

    async def together() -> list[str]:
        return [r.corrected for r in await asyncio.gather(*(aligner.acorrect(q, a) for q, a in PAIRS))]

    assert asyncio.run(together()) == expected
    assert not opened and batcher.batches_run == 1


def test_a_single_row_compacted_every_pass_equals_plain_greedy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(running, "COMPACT_RATIO", 0.0)  # drop rejected drafts after every pass
    monkeypatch.setattr(running, "COMPACT_SLACK", 0)
    plain = Aligner.from_pretrained("demo", device="cpu", micro_batching=False, speculative=False)
    aligner = Aligner.from_pretrained("demo", device="cpu", micro_batching=False)
    for pair in [LONG, *PAIRS[:3]]:
        assert aligner.correct(*pair).corrected == plain.correct(*pair).corrected
