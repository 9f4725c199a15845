"""The one thread of this process that runs local models' forward passes, whichever threads call them.

PyTorch's CPU build gives every thread that runs an operator its own OpenMP team of worker threads.
Once two live threads have one (a server's request threads, a micro-batcher's worker and the caller,
LangChain's thread pool), libgomp manages more threads than there are cores and stops spin-waiting
between parallel regions, and the many small operators of a decoding step run about 1.6x slower
(benchmarks/RESULTS.md, section "Speed"). Funnelling every pass through one long-lived thread keeps a
single team, and it also serializes passes as the model locks do.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from typing import TypeVar

import torch

T = TypeVar("T")

_pool: ThreadPoolExecutor | None = None
_pool_thread: int | None = None
_pool_lock = threading.Lock()


def _mark_thread() -> None:
    global _pool_thread
    _pool_thread = threading.get_ident()


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(1, thread_name_prefix="aligner-inference", initializer=_mark_thread)
        return _pool


def _forget_after_fork() -> None:
    """A forked child has no copy of the thread: it starts its own on first use."""
    global _pool, _pool_thread, _pool_lock
    _pool, _pool_thread, _pool_lock = None, None, threading.Lock()


if hasattr(os, "register_at_fork"):  # POSIX only; Windows has no fork
    os.register_at_fork(after_in_child=_forget_after_fork)


def on_inference_thread() -> bool:
    """True on the inference thread itself (calls made there run inline)."""
    return threading.get_ident() == _pool_thread


def run_inference(lock: AbstractContextManager[object], fn: Callable[..., T], /, *args: object, **kwargs: object) -> T:
    """``fn(*args, **kwargs)`` on the inference thread, holding ``lock`` (the model's), in inference mode.

    Blocks until it returns and re-raises what it raises; a call made on the inference thread runs inline.
    It runs with the caller's ``torch.get_num_threads()``: PyTorch keeps that count per thread once a
    thread has run an operator, so a later ``torch.set_num_threads`` would not reach this thread otherwise.
    """
    threads = torch.get_num_threads()

    def call() -> T:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        with lock, torch.inference_mode():
            return fn(*args, **kwargs)

    if on_inference_thread():
        return call()
    return _executor().submit(call).result()
