"""The one job runner under `evaluate` and `synthesize`: many slow, flaky model calls run as resumable jobs.

Both call chat model APIs (judges, upstream models, teachers) many times: at most ``max_concurrency``
jobs are in flight, a failed call is retried ``retries`` times with exponential backoff, and every
finished job's record is appended to a JSONL log at once, so an interrupted run resumes where it
stopped (`JobLog` reads the log back; the caller skips jobs whose record says they are done, and
`run_jobs` runs the rest). The loop is written once, async; sync entry points wrap it with `run_sync`,
which also works inside a running event loop (Jupyter).

Also here, because every job calls a model the same way: `ainvoke` (a LangChain runnable or a plain
function), `output_text` (the text of whatever it returned), and `check_format` for user prompt templates.
And the file helpers of every resumable output (here, the CLI, training): `repair_torn_tail` (a kill
mid-write costs at most the torn line), `jsonl_lines` (records split at LF only) and `write_atomic`.
This layer sits above ``core`` and below ``finetune``/``evaluate``/``synthesize``; it imports no adapter.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import json
import os
import random
import uuid
from collections.abc import Awaitable, Callable, Hashable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

from aligner_chains.core.errors import AlignerError, ConfigError, DataError

T = TypeVar("T")

#: A job's record: one JSON object of the log. A job returns one record, or a list of them (a batch).
Record = dict[str, Any]
Job = Callable[[], Awaitable[Record | list[Record]]]

__all__ = [
    "NOT_RETRIED",
    "Job",
    "JobFailed",
    "JobLog",
    "Record",
    "RetryPolicy",
    "ainvoke",
    "call_with_retries",
    "check_format",
    "content_text",
    "is_async_callable",
    "jsonl_lines",
    "output_text",
    "progress_bar",
    "read_log",
    "repair_torn_tail",
    "run_bounded",
    "run_jobs",
    "run_sync",
    "stable_key",
    "write_atomic",
]

# ------------------------------------------------------------------------- retries and concurrency

# Errors that say the code or the input is wrong, not the service: retrying cannot help.
NOT_RETRIED: tuple[type[BaseException], ...] = (AlignerError, TypeError, AttributeError, NameError, NotImplementedError)


@dataclass(frozen=True)
class RetryPolicy:
    """``retries`` more attempts after the first, waiting ``backoff * 2**k`` seconds (capped, jittered)."""

    retries: int = 3
    backoff: float = 1.0
    max_backoff: float = 30.0

    def __post_init__(self) -> None:
        if not isinstance(self.retries, int) or self.retries < 0:
            raise ConfigError(f"retries={self.retries!r}: use a whole number >= 0.")
        if self.backoff < 0 or self.max_backoff < 0:
            raise ConfigError(f"backoff={self.backoff!r}, max_backoff={self.max_backoff!r}: use seconds >= 0.")

    def delay(self, attempt: int) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (``attempt`` counts from 0), with 50-100% jitter."""
        base = min(self.max_backoff, self.backoff * 2**attempt)
        return base * (0.5 + random.random() / 2) if base > 0 else 0.0


class JobFailed(Exception):
    """A job that failed on every attempt (or with an error that is not retried)."""

    def __init__(self, cause: BaseException, attempts: int) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.cause = cause
        self.attempts = attempts


async def call_with_retries(fn: Callable[[], Awaitable[T]], policy: RetryPolicy) -> tuple[T, int]:
    """``(result, attempts)`` of ``await fn()``, retried per ``policy``; raises `JobFailed` when all fail.

    Errors in ``NOT_RETRIED`` (library errors, TypeError, ...) mean the call itself is wrong and fail at
    once. Cancellation (Ctrl-C) is never swallowed.
    """
    attempt = 0
    while True:
        try:
            return await fn(), attempt + 1
        except NOT_RETRIED as exc:
            raise JobFailed(exc, attempt + 1) from exc
        except Exception as exc:
            if attempt >= policy.retries:
                raise JobFailed(exc, attempt + 1) from exc
            await asyncio.sleep(policy.delay(attempt))
            attempt += 1


async def run_bounded(
    jobs: Iterable[Callable[[], Awaitable[T]]],
    max_concurrency: int,
    on_done: Callable[[T], None],
) -> None:
    """Run every job with at most ``max_concurrency`` in flight; ``on_done(result)`` as each one finishes.

    Jobs start in the given order (so ``max_concurrency=1`` runs them one after another, in order).
    ``on_done`` runs on the event loop thread, one call at a time, so it may append to a file safely.
    """
    if not isinstance(max_concurrency, int) or max_concurrency < 1:
        raise ConfigError(f"max_concurrency={max_concurrency!r}: use a positive whole number.")
    gate = asyncio.Semaphore(max_concurrency)

    async def one(job: Callable[[], Awaitable[T]]) -> None:
        async with gate:
            result = await job()
        on_done(result)

    tasks = [asyncio.ensure_future(one(job)) for job in jobs]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()


def run_sync(make_coroutine: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion from sync code, also where an event loop already runs (Jupyter).

    With a running loop in this thread the coroutine runs on a fresh loop in a worker thread.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make_coroutine())  # type: ignore[arg-type]
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(make_coroutine())).result()  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the resumable job loop


def stable_key(*parts: Any) -> str:
    """A short content hash of ``parts`` (JSON-able): the identity of a job across runs."""
    blob = json.dumps(parts, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:20]


# ------------------------------------------------------------------------ files that survive a kill


def repair_torn_tail(path: str | Path) -> int:
    """Cut a torn last line (a write cut short by a kill) off ``path`` in place; return the size kept.

    One ``truncate`` at the byte after the last LF, so a kill at any moment leaves either the file as
    it was or the file without its torn tail: never less (the file is not rewritten).
    """
    with open(path, "r+b") as handle:
        end = handle.seek(0, os.SEEK_END)
        if end == 0:
            return 0
        handle.seek(end - 1)
        if handle.read(1) == b"\n":
            return end
        keep, position = 0, end
        while position > 0:
            start = max(0, position - _BLOCK)
            handle.seek(start)
            found = handle.read(position - start).rfind(b"\n")
            if found >= 0:
                keep = start + found + 1
                break
            position = start
        handle.truncate(keep)
        return keep


_BLOCK = 1 << 20


def jsonl_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) of the non-blank lines of a JSONL text.

    Lines end at LF only (a CR before it is JSON whitespace): never at U+2028, U+2029 or U+0085, which
    ``json.dumps(..., ensure_ascii=False)`` writes raw inside strings and ``str.splitlines`` would split on.
    """
    for number, line in enumerate(text.split("\n"), start=1):
        if line.strip(" \t\r"):
            yield number, line


def write_atomic(path: str | Path, text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8) all at once: a kill leaves the old file or the new, never half.

    Written to a temporary file in the same directory, flushed to disk, then renamed over ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A fresh name, created exclusively ("x") with the usual permissions (mkstemp's would be 0600).
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(temporary, "x", encoding="utf-8", newline="") as sink:
            sink.write(text)
            sink.flush()
            os.fsync(sink.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def read_log(path: str | Path) -> list[Record]:
    """The records of a JSONL log (none if it does not exist yet).

    A torn last line (a write cut short by an interruption) is cut off the file in place
    (`repair_torn_tail`), as in the ``aligner-chains correct`` output; any other line that is not a
    JSON object raises `DataError`.
    """
    path = Path(path)
    if not path.exists():
        return []
    repair_torn_tail(path)
    records = []
    for number, line in jsonl_lines(path.read_text(encoding="utf-8")):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{path}:{number}: not valid JSON ({exc.msg}); this log is written by aligner-chains, "
                "so it was edited or mixed with another file: delete the line or the file to start over."
            ) from exc
        if not isinstance(record, dict):
            raise DataError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}.")
        records.append(record)
    return records


class JobLog:
    """The records of finished jobs by id: read back from a JSONL log on entry, appended to it by `add`.

    ``with JobLog(path, id_of) as log:`` reads the log (see `read_log`) and opens it for appending;
    ``id_of(record)`` names the job a record belongs to (None: not a job record, ignored), a later record
    of a job replacing an earlier one. ``path=None`` keeps the records in memory only (no file).
    """

    def __init__(self, path: str | Path | None, id_of: Callable[[Record], Hashable | None]) -> None:
        self.path = None if path is None else Path(path)
        self.id_of = id_of
        self.records: dict[Hashable, Record] = {}
        self._handle: IO[str] | None = None

    def __enter__(self) -> JobLog:
        if self.path is not None:
            for record in read_log(self.path):
                job_id = self.id_of(record)
                if job_id is not None:
                    self.records[job_id] = record
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = self.path.open("a", encoding="utf-8")
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def get(self, job_id: Hashable) -> Record | None:
        """The latest record of job ``job_id``, or None."""
        return self.records.get(job_id)

    def add(self, record: Record) -> None:
        """Keep ``record`` as its job's latest and append it to the log file at once (flushed)."""
        self.records[self.id_of(record)] = record
        if self._handle is not None:
            self._handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            self._handle.flush()


def progress_bar(total: int, done: int, *, unit: str, desc: str, enabled: bool) -> Any:
    """A tqdm bar on stderr that starts at ``done`` of ``total`` (the resumed part)."""
    from tqdm import tqdm

    return tqdm(total=total, initial=done, unit=unit, desc=desc, disable=not enabled)


async def run_jobs(
    jobs: Iterable[Job],
    log: JobLog,
    *,
    max_concurrency: int,
    total: int,
    done: int,
    unit: str,
    desc: str,
    progress: bool = True,
) -> None:
    """Run the jobs still to do (at most ``max_concurrency`` at once) and `JobLog.add` each record as it comes.

    The progress bar counts records (``unit``), starting at ``done`` of ``total``: what an earlier run
    finished. A job that raises stops the run (the others are cancelled); what finished is in the log.
    """
    with progress_bar(total, done, unit=unit, desc=desc, enabled=progress) as bar:

        def finished(result: Record | list[Record]) -> None:
            records = result if isinstance(result, list) else [result]
            for record in records:
                log.add(record)
            bar.update(len(records))

        await run_bounded(jobs, max_concurrency, finished)


# ----------------------------------------------------------------------------------- calling a model


def content_text(content: Any) -> str:
    """The text of a message content: the string itself, or the text blocks of a block list, joined.

    (The LangChain adapter has the same helper; this layer sits below the adapters and does not import them.)
    """
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            block if isinstance(block, str) else block["text"]
            for block in content
            if isinstance(block, str)
            or (isinstance(block, dict) and block.get("type") == "text" and isinstance(block.get("text"), str))
        )
    return ""


def output_text(value: Any, *, what: str = "the model") -> str:
    """The text a runnable returned: a string, a message (its text content), or a dict's answer/output/text."""
    if isinstance(value, str):
        return value
    content = getattr(value, "content", None)
    if content is not None:
        return content_text(content)
    if isinstance(value, dict):
        for key in ("answer", "output", "text", "content"):
            if isinstance(value.get(key), str):
                return value[key]
    raise TypeError(
        f"{what} returned a {type(value).__name__} ({value!r:.80}); expected a string, a message, or a dict "
        "with an 'answer', 'output' or 'text' string: end the chain with StrOutputParser() or a chat model."
    )


def is_async_callable(fn: Any) -> bool:
    """True for an ``async def`` function or an object whose ``__call__`` is one."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(type(fn), "__call__", None))  # noqa: B004


async def ainvoke(target: Any, value: Any, *, config: dict[str, Any] | None = None) -> Any:
    """Invoke a LangChain runnable (``ainvoke``) or call a plain function (awaited when async)."""
    if hasattr(target, "ainvoke"):
        return await target.ainvoke(value, config=config)
    if is_async_callable(target):
        return await target(value)
    if callable(target):
        return await asyncio.to_thread(target, value)  # a sync function must not block the event loop
    raise TypeError(f"{type(target).__name__} is neither a LangChain runnable nor a callable.")


def check_format(label: str, template: str, allowed: set[str], required: set[str]) -> None:
    """Fail with `ConfigError` unless ``template`` is a format string over ``allowed`` holding ``required``.

    Checked when a prompt is built, so a typo in a user's template fails before any model call.
    """
    import string

    if not isinstance(template, str):
        raise ConfigError(f"{label} must be a string, got {type(template).__name__}.")
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        raise ConfigError(f"{label} is not a valid format string ({exc}); write literal braces as {{{{ }}}}.") from exc
    unknown = names - allowed
    if unknown:
        raise ConfigError(
            f"{label} uses unknown placeholder(s) {sorted(unknown)}; available: {sorted(allowed)} "
            "(write literal braces as {{ }})."
        )
    missing = required - names
    if missing:
        raise ConfigError(f"{label} lacks placeholder(s) {sorted('{' + m + '}' for m in missing)}.")
