"""Micro-batching: concurrent single requests that arrive close together share one batched generation."""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from aligner_chains.core.generation import Backend, GenerationOutput, GenerationParams


@dataclass
class _Request:
    prompt: str
    params: GenerationParams
    source: str | None
    prompt_tokens: int
    future: Future[GenerationOutput] = field(default_factory=Future)

    def key(self) -> str:
        """Requests with equal settings (apart from their token limit) can share a batch."""
        return self.params.with_max_new_tokens(None).model_dump_json()


class MicroBatcher:
    """Collects requests for up to ``max_wait_ms`` (or ``max_batch_size`` of them) and runs them as one batch.

    Each caller gets its own result through a future; when a batch fails, its requests are retried
    one by one, so one bad request does not fail the others.
    """

    def __init__(self, backend: Backend, max_batch_size: int = 16, max_wait_ms: float = 5.0) -> None:
        self.backend = backend
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000
        self._queue: queue.Queue[_Request] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.batches_run = 0

    def submit(
        self, prompt: str, params: GenerationParams, source: str | None = None, prompt_tokens: int = 0
    ) -> Future[GenerationOutput]:
        """Queue one prompt; the returned future resolves to its `GenerationOutput`."""
        request = _Request(prompt, params, source, prompt_tokens)
        self._ensure_worker()
        self._queue.put(request)
        return request.future

    def _ensure_worker(self) -> None:
        if self._worker is not None and self._worker.is_alive():
            return
        with self._start_lock:
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._loop, name="aligner-micro-batcher", daemon=True)
                self._worker.start()

    def _loop(self) -> None:
        while True:
            batch = [self._queue.get()]
            deadline = time.monotonic() + self.max_wait_s
            while len(batch) < self.max_batch_size:
                remaining = deadline - time.monotonic()
                try:
                    batch.append(self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait())
                except queue.Empty:
                    break
            groups: dict[str, list[_Request]] = {}
            for request in batch:
                if request.future.set_running_or_notify_cancel():  # skip callers that gave up
                    groups.setdefault(request.key(), []).append(request)
            for group in groups.values():
                self._run(group)

    def _run(self, group: list[_Request]) -> None:
        """Generate for ``group`` and resolve each future exactly once."""
        try:
            outputs = run_batch(
                self.backend,
                [r.prompt for r in group],
                [r.params for r in group],
                [r.source for r in group],
                [r.prompt_tokens for r in group],
            )
        except Exception as exc:
            if len(group) == 1:
                group[0].future.set_exception(exc)
                return
            for request in group:  # isolate the failure
                self._run([request])
            return
        self.batches_run += 1
        for request, output in zip(group, outputs, strict=True):
            request.future.set_result(output)


def run_batch(
    backend: Backend,
    prompts: list[str],
    params: list[GenerationParams],
    sources: list[str | None],
    prompt_tokens: list[int],
) -> list[GenerationOutput]:
    """Generate for prompts whose settings differ only in ``max_new_tokens``; results in input order.

    Where the backend can stop each row at its own limit, all rows run as one batch. Otherwise the
    batch shares its largest limit, so rows are split into as few generations as keep every row's
    prompt plus that limit inside the context, and each row is cut to its own limit. Either way a
    row's result does not depend on its batch-mates.
    """
    limits = [int(p.max_new_tokens or 1) for p in params]
    mixed = backend.can_mix_limits(params[0])
    parts = [list(range(len(prompts)))] if mixed else _partition(limits, prompt_tokens, backend.max_context)
    outputs: list[GenerationOutput | None] = [None] * len(prompts)
    for part in parts:
        shared = params[part[0]].with_max_new_tokens(max(limits[i] for i in part))
        part_sources = [sources[i] for i in part]
        options: dict[str, Any] = {"limits": [limits[i] for i in part]} if mixed else {}
        if all(s is not None for s in part_sources):
            options["sources"] = part_sources
        generated = backend.generate([prompts[i] for i in part], shared, **options)
        for i, out in zip(part, generated, strict=True):
            outputs[i] = _cut(backend, out, limits[i])
    return [out for out in outputs if out is not None]


def _partition(limits: list[int], prompt_tokens: list[int], context: int | None) -> list[list[int]]:
    """Groups of row indices such that (longest prompt + largest limit) fits ``context`` in each."""
    order = sorted(range(len(limits)), key=lambda i: -prompt_tokens[i])
    if context is None:
        return [order]
    parts: list[list[int]] = []
    for i in order:
        # Longest prompts come first, so a part's first row has its longest prompt.
        if parts and prompt_tokens[parts[-1][0]] + max(limits[i], *(limits[j] for j in parts[-1])) <= context:
            parts[-1].append(i)
        else:
            parts.append([i])
    return parts


def _cut(backend: Backend, output: GenerationOutput, limit: int) -> GenerationOutput:
    if len(output.token_ids) <= limit:
        return output
    ids = output.token_ids[:limit]
    return GenerationOutput(
        token_ids=ids,
        text=backend.decode(ids),
        finish_reason="length",
        prompt_tokens=output.prompt_tokens,
        stats=output.stats,
    )


def default_batcher(backend: Backend, **options: Any) -> MicroBatcher:
    """The one micro-batcher of a backend, shared by every Aligner built on it."""
    batcher = getattr(backend, "_micro_batcher", None)
    if batcher is None:
        batcher = MicroBatcher(backend, **options)
        backend._micro_batcher = batcher  # type: ignore[attr-defined]
    return batcher
