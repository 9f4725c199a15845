"""Plumbing shared by evaluation and synthesis: bounded concurrency, retries with backoff, a resumable
JSONL log, a sync face over async jobs, and reading the text out of whatever a LangChain runnable returns.

Both ``evaluate`` and ``synthesize`` call slow, flaky services (chat model APIs) many times: at most
``max_concurrency`` calls are in flight, a failed call is retried ``retries`` times with exponential
backoff, and every finished job is appended to a JSONL log at once, so an interrupted run resumes
where it stopped (the log is read back and finished jobs are skipped).
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import random
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from aligner_chains.core.errors import AlignerError, ConfigError, DataError

T = TypeVar("T")

__all__ = [
    "JobFailed",
    "JsonlLog",
    "RetryPolicy",
    "ainvoke",
    "call_with_retries",
    "check_format",
    "content_text",
    "is_async_callable",
    "output_text",
    "progress_bar",
    "run_bounded",
    "run_sync",
    "stable_key",
]

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


class JsonlLog:
    """An append-only JSONL file of finished jobs, read back on resume.

    A torn last line (a write cut short by an interruption) is removed on `read`, as in the
    ``aligner-chains correct`` output; any other line that is not a JSON object raises `DataError`.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            data = data[: data.rfind(b"\n") + 1]
            self.path.write_bytes(data)
        records = []
        for number, line in enumerate(data.decode("utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"{self.path}:{number}: not valid JSON ({exc.msg}); this log is written by aligner-chains, "
                    "so it was edited or mixed with another file: delete the line or the file to start over."
                ) from exc
            if not isinstance(record, dict):
                raise DataError(f"{self.path}:{number}: expected a JSON object, got {type(record).__name__}.")
            records.append(record)
        return records

    def append(self, handle: Any, record: dict[str, Any]) -> None:
        handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        handle.flush()

    def open(self) -> Any:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return self.path.open("a", encoding="utf-8")


def check_format(label: str, template: str, allowed: set[str], required: set[str]) -> None:
    """Fail with `ConfigError` unless ``template`` is a format string over ``allowed`` holding ``required``."""
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


def stable_key(*parts: Any) -> str:
    """A short content hash of ``parts`` (JSON-able): the identity of a job across runs."""
    blob = json.dumps(parts, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:20]


def content_text(content: Any) -> str:
    """The text of a message content: the string itself, or the text blocks of a block list, joined.

    (The LangChain adapter has the same helper; the evaluation layer sits below the adapters and does
    not import them.)
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


def progress_bar(total: int, done: int, *, unit: str, desc: str, enabled: bool) -> Any:
    """A tqdm bar on stderr that starts at ``done`` of ``total`` (the resumed part)."""
    from tqdm import tqdm

    return tqdm(total=total, initial=done, unit=unit, desc=desc, disable=not enabled)


async def ainvoke(target: Any, value: Any, *, config: dict[str, Any] | None = None) -> Any:
    """Invoke a LangChain runnable (``ainvoke``) or call a plain function (awaited when async)."""
    if hasattr(target, "ainvoke"):
        return await target.ainvoke(value, config=config)
    if is_async_callable(target):
        return await target(value)
    if callable(target):
        return await asyncio.to_thread(target, value)  # a sync function must not block the event loop
    raise TypeError(f"{type(target).__name__} is neither a LangChain runnable nor a callable.")
