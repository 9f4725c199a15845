"""Every forward pass of a local model runs on the process's one inference thread, whichever thread calls:
so PyTorch keeps one OpenMP team (two live teams throttle each other's small operators on CPU)."""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import torch

from aligner_chains import Aligner
from aligner_chains.backends.local.inference_thread import on_inference_thread, run_inference

PAIRS = [
    ("How can I contact support?", "Write to help@example.org or call 555-0142.\n\nWe answer within a day."),
    ("Who wrote Hamlet?", "William Shakespeare wrote Hamlet around 1600."),
    ("Give me a tip for writing.", "Read your draft aloud. You will hear the sentences that do not work."),
]


@pytest.fixture(scope="module")
def demo() -> Aligner:
    return Aligner.from_pretrained("demo", device="cpu")


def record_forward_threads(aligner: Aligner) -> tuple[set[int], Any]:
    """The idents of the threads the model's forward ran on, and the hook's handle (remove it after)."""
    seen: set[int] = set()
    handle = aligner.backend.loaded.model.register_forward_pre_hook(lambda *_: seen.add(threading.get_ident()))
    return seen, handle


def test_forward_passes_run_on_one_thread_whichever_thread_calls(demo: Aligner) -> None:
    alone = Aligner(demo.backend, demo.template, micro_batching=False)
    seen, handle = record_forward_threads(demo)
    try:
        expected = [alone.correct(q, a).corrected for q, a in PAIRS]
        with ThreadPoolExecutor(3) as pool:  # LangChain's batch runs calls on a pool like this
            pooled = list(pool.map(lambda pair: alone.correct(*pair).corrected, PAIRS))

        async def concurrent() -> list[str]:  # through the micro-batcher's worker
            return [c.corrected for c in await asyncio.gather(*(demo.acorrect(q, a) for q, a in PAIRS))]

        batched = asyncio.run(concurrent())
        streamed = "".join(piece for piece in alone.stream(*PAIRS[0]) if isinstance(piece, str))
    finally:
        handle.remove()
    assert pooled == expected and batched == expected
    assert streamed == expected[0]
    assert len(seen) == 1, f"forward ran on {len(seen)} threads"
    assert threading.get_ident() not in seen


def test_a_call_made_on_the_inference_thread_runs_inline() -> None:
    outer, inner = threading.Lock(), threading.Lock()

    def nested() -> tuple[bool, bool]:
        return on_inference_thread(), run_inference(inner, on_inference_thread)

    assert run_inference(outer, nested) == (True, True)
    assert not on_inference_thread()


def test_runs_in_inference_mode_and_under_the_lock() -> None:
    lock = threading.Lock()
    assert run_inference(lock, lambda: (torch.is_inference_mode_enabled(), lock.locked())) == (True, True)
    assert not lock.locked()


def test_it_runs_with_the_callers_thread_count_set_after_it_started() -> None:
    lock, before = threading.Lock(), torch.get_num_threads()
    x = torch.randn(64, 64)
    run_inference(lock, lambda: x @ x)  # the thread has run an operator: PyTorch fixed its count
    try:
        torch.set_num_threads(before + 1)
        assert run_inference(lock, torch.get_num_threads) == before + 1
    finally:
        torch.set_num_threads(before)
    assert run_inference(lock, torch.get_num_threads) == before


def test_an_error_reaches_the_caller_and_the_thread_goes_on() -> None:
    def fail() -> None:
        raise ValueError("bad row 3")

    with pytest.raises(ValueError, match="bad row 3"):
        run_inference(threading.Lock(), fail)
    assert run_inference(threading.Lock(), lambda: 2 + 2) == 4


def _child(conn: Any) -> None:
    conn.send(run_inference(threading.Lock(), lambda: (on_inference_thread(), int(torch.ones(3).sum()))))


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
def test_a_forked_child_starts_its_own_thread() -> None:
    run_inference(threading.Lock(), lambda: None)  # the parent's thread exists before the fork
    context = multiprocessing.get_context("fork")
    parent, child = context.Pipe()
    process = context.Process(target=_child, args=(child,))
    process.start()
    assert parent.poll(60), "the child's call never returned"
    assert parent.recv() == (True, 3)
    process.join(60)
    assert process.exitcode == 0
