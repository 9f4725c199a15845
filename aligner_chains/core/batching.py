"""Micro-batching: concurrent single requests share one batched generation.

Where the backend runs an in-flight batch (`Backend.open_session`: the local backend with copy-aware
decoding), requests that arrive while it decodes join it at its next forward pass and each leaves as
soon as it is done; elsewhere requests that arrive close together run as one `generate` call.
"""

from __future__ import annotations

import queue
import threading
import time
import weakref
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from aligner_chains.core.errors import BackendError
from aligner_chains.core.generation import Backend, DecodeSession, GenerationOutput, GenerationParams, StopSignal

# A request joins a running batch only if it has more passes than this to go (see `MicroBatcher._admit_now`).
JOIN_MIN_PASSES = 8


class RequestFuture(Future):  # type: ignore[type-arg]
    """The future of one micro-batched request; `abandon` it when its caller has gone."""

    def __init__(self) -> None:
        super().__init__()
        self.abandoned = threading.Event()

    def abandon(self) -> None:
        """Drop the request if still queued; if its batch runs, mark it so the batch can stop early."""
        if not self.cancel():
            self.abandoned.set()


class _AllAbandoned:
    """A stop signal for a running batch: set once every request in it has been abandoned."""

    def __init__(self, requests: Sequence[_Request]) -> None:
        self.requests = requests

    def is_set(self) -> bool:
        return all(request.future.abandoned.is_set() for request in self.requests)


@dataclass
class _Request:
    prompt: str
    params: GenerationParams
    source: str | None
    prompt_tokens: int
    future: RequestFuture = field(default_factory=RequestFuture)
    queued_at: float = field(default_factory=time.monotonic)

    def key(self) -> str:
        """Requests with equal settings (apart from their token limit) can share a batch."""
        return self.params.with_max_new_tokens(None).model_dump_json()

    def limit(self) -> int:
        return int(self.params.max_new_tokens or 1)


class MicroBatcher:
    """Collects requests for up to ``max_wait_ms`` (or ``max_batch_size`` of them) and runs them as one batch.

    Each caller gets its own result through a future; when a batch fails, its requests are retried
    one by one, so one bad request does not fail the others.

    With ``inflight`` (default) and a backend that opens a `DecodeSession` for the batch's settings, the
    batch keeps running while requests come: new ones with the same settings join at the next pass (up
    to ``max_batch_size`` rows), a finished row's caller gets its result at once, and a row whose caller
    has gone leaves. Requests with other settings wait until it drains (first come, first served).

    The batcher holds its backend weakly and its worker thread ends after ``idle_s`` without requests
    (the next request starts a new one), at once when the backend is gone: dropping every Aligner of a
    model frees the model. A worker that dies fails every request it holds or that waits in the queue.
    """

    def __init__(
        self,
        backend: Backend,
        max_batch_size: int = 16,
        max_wait_ms: float = 5.0,
        idle_s: float = 30.0,
        inflight: bool = True,
    ) -> None:
        self._backend = weakref.ref(backend)
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000
        self.idle_s = idle_s
        self.inflight = inflight
        self._queue: queue.Queue[_Request] = queue.Queue()
        self._held: list[_Request] = []  # taken off the queue by the worker, not yet resolved
        self._worker: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.batches_run = 0

    @property
    def backend(self) -> Backend:
        """The backend batches run on (`BackendError` once it has been freed)."""
        backend = self._backend()
        if backend is None:
            raise BackendError("The backend of this micro-batcher was freed: build the Aligner again.")
        return backend

    @property
    def worker(self) -> threading.Thread | None:
        """The worker thread, while one runs."""
        return self._worker

    def submit(
        self, prompt: str, params: GenerationParams, source: str | None = None, prompt_tokens: int = 0
    ) -> RequestFuture:
        """Queue one prompt; the returned future resolves to its `GenerationOutput` (`abandon` it to give up)."""
        request = _Request(prompt, params, source, prompt_tokens)
        with self._start_lock:  # a worker about to end checks the queue under this lock: nothing is stranded
            self._queue.put(request)
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._serve, name="aligner-micro-batcher", daemon=True)
                self._worker.start()
        return request.future

    def _serve(self) -> None:
        """The worker: run batches until idle (or the backend is gone); if it dies, fail every waiter."""
        try:
            while (batch := self._collect()) is not None:
                self._held = batch
                self._run_batch(deque(batch))
                self._held = []
        except BaseException as exc:
            error = BackendError(f"The micro-batching worker died: {type(exc).__name__}: {exc}")
            error.__cause__ = exc
            with self._start_lock:
                self._worker = None
                for request in [*self._held, *_drain(self._queue)]:
                    if not request.future.done():
                        request.future.set_exception(error)
            if not isinstance(exc, Exception):
                raise

    def _collect(self) -> list[_Request] | None:
        """The next batch, or None when the worker should end (idle, or its backend is gone)."""
        idle_since = time.monotonic()
        while True:
            try:
                first = self._queue.get(timeout=min(1.0, self.idle_s))
                break
            except queue.Empty:
                gone = self._backend() is None
                if gone or time.monotonic() - idle_since >= self.idle_s:
                    with self._start_lock:
                        if self._queue.empty():
                            self._worker = None
                            return None
        batch = [first]
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch_size:
            remaining = deadline - time.monotonic()
            try:
                batch.append(self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _run_batch(self, pending: deque[_Request]) -> None:
        """Run the queued requests, oldest first: each run takes the oldest one's settings and every
        request with the same settings (in-flight, also those that arrive while it runs)."""
        while pending:
            key = pending[0].key()
            group = [request for request in pending if request.key() == key][: self.max_batch_size]
            for request in group:
                pending.remove(request)
            session = self._open_session(group[0].params) if self.inflight else None
            if session is None:
                self._run([request for request in group if request.future.set_running_or_notify_cancel()])
            else:
                self._drive(session, group, pending)
                del session  # the session holds the backend: let it go before waiting for more

    def _open_session(self, params: GenerationParams) -> DecodeSession | None:
        backend = self._backend()
        return None if backend is None else backend.open_session(params)

    def _drive(self, session: DecodeSession, group: list[_Request], pending: deque[_Request]) -> None:
        """Run ``group`` as one in-flight batch until its last row is done.

        Between passes: requests queued since, with the same settings and at the head of the line, join
        (their prompt pass runs then); finished rows resolve; rows whose callers gave up leave. If a pass
        fails, every row still in the batch is run again alone, so the failure stays with its request.
        """
        key = group[0].key()
        live: dict[int, tuple[Any, _Request]] = {}
        joining = group
        while True:
            self._admit(session, joining, live)
            for handle, output in session.finished():
                live.pop(id(handle))[1].future.set_result(output)
            gone = [handle for handle, request in live.values() if request.future.abandoned.is_set()]
            if gone:
                session.remove(gone)
                for handle in gone:
                    live.pop(id(handle))[1].future.set_exception(BackendError("The caller gave up on this request."))
            arrived = _drain(self._queue)
            self._held += arrived
            pending.extend(arrived)
            joining = []
            if self._admit_now(pending, key, len(live), session):
                while pending and pending[0].key() == key and len(live) + len(joining) < self.max_batch_size:
                    joining.append(pending.popleft())
            if not live and not joining:
                self.batches_run += 1
                self._held = [request for request in self._held if not request.future.done()]
                return
            if not live:
                continue
            try:
                session.step()
            except Exception:  # the batch's state is suspect now: its rows run alone, the next run opens anew
                self._run([request for _, request in live.values()])
                return

    def _admit_now(self, pending: deque[_Request], key: str, live: int, session: DecodeSession) -> bool:
        """Whether the requests waiting at the head of the line (with the batch's settings) join now.

        Into an empty batch, at once. Into a running one, once the first has waited ``max_wait_ms`` (so late
        arrivals join together) and only while the batch has more than `JOIN_MIN_PASSES` passes to go: a
        join costs a prompt pass of its own and a copy of the batch's cache, which waiting a few passes for
        the batch to end (then starting together) does not.
        """
        if not pending or pending[0].key() != key:
            return False
        if live == 0:
            return True
        waited = time.monotonic() - pending[0].queued_at
        return waited >= self.max_wait_s and session.passes_left() > JOIN_MIN_PASSES

    def _admit(self, session: DecodeSession, requests: list[_Request], live: dict[int, tuple[Any, _Request]]) -> None:
        """Start ``requests`` in ``session`` (callers that gave up are skipped); if their prompt pass fails,
        they run alone instead and the session goes on without them."""
        started = [request for request in requests if request.future.set_running_or_notify_cancel()]
        if not started:
            return
        try:
            handles = session.add(
                [r.prompt for r in started], [r.source for r in started], [r.limit() for r in started]
            )
        except Exception:
            self._run(started)
            return
        for handle, request in zip(handles, started, strict=True):
            live[id(handle)] = (handle, request)

    def _run(self, group: list[_Request]) -> None:
        """Generate for ``group`` and resolve each future exactly once (a failure fails only its request)."""
        if not group:
            return
        try:
            backend = self.backend
        except BackendError as exc:
            outcomes: list[GenerationOutput | Exception] = [exc] * len(group)
        else:
            outcomes = run_isolated(backend, group, stop=_AllAbandoned(group))
            del backend  # the worker must not keep the backend alive while it waits
        if all(not isinstance(o, Exception) for o in outcomes):
            self.batches_run += 1
        for request, outcome in zip(group, outcomes, strict=True):
            if isinstance(outcome, Exception):
                request.future.set_exception(outcome)
            else:
                request.future.set_result(outcome)


def _drain(requests: queue.Queue[_Request]) -> list[_Request]:
    drained = []
    while True:
        try:
            drained.append(requests.get_nowait())
        except queue.Empty:
            return drained


def run_isolated(
    backend: Backend, rows: Sequence[Any], *, isolate: bool = True, stop: StopSignal | None = None
) -> list[GenerationOutput | Exception]:
    """`run_batch` over ``rows`` (each with ``prompt``, ``params``, ``source``, ``prompt_tokens``), with each
    row's output or exception in input order: when the batch fails, each row is run alone, so a failing row
    fails only itself. With ``isolate=False`` the batch's error is every row's (no retries)."""
    try:
        return list(
            run_batch(
                backend,
                [r.prompt for r in rows],
                [r.params for r in rows],
                [r.source for r in rows],
                [r.prompt_tokens for r in rows],
                stop=stop,
            )
        )
    except Exception as exc:
        if len(rows) == 1 or not isolate:
            return [exc] * len(rows)
    return [run_isolated(backend, [row], stop=stop)[0] for row in rows]


def run_batch(
    backend: Backend,
    prompts: list[str],
    params: list[GenerationParams],
    sources: list[str | None],
    prompt_tokens: list[int],
    *,
    stop: StopSignal | None = None,
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
        if stop is not None and backend.supports_stop:
            options["stop"] = stop
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
