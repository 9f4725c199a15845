"""The annotator interface and its simple judges: `Annotator`, `Judgement`, rates, length and callable rules."""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from aligner_chains.core.errors import ConfigError

logger = logging.getLogger(__name__)

Label = int | None
Item = tuple[str, str, str]
Status = Literal["labelled", "tie", "failed"]


@dataclass(frozen=True)
class Judgement:
    """An annotator's verdict on one pair.

    ``votes`` are the labels of each query (already mapped back to the original order; None where a
    reply failed or could not be parsed); ``consistent`` says whether both orders agreed (None when
    the pair was not asked in both orders or a reply failed).
    """

    label: Label
    status: Status
    votes: tuple[Label, ...] = ()
    consistent: bool | None = None
    reason: str | None = None

    @classmethod
    def of(cls, label: Label, reason: str | None = None) -> Judgement:
        return cls(label, "labelled" if label is not None else "tie", (label,), None, reason)

    @classmethod
    def failed(cls, reason: str, votes: tuple[Label, ...] = ()) -> Judgement:
        return cls(None, "failed", votes, None, reason)


@dataclass
class AnnotatorStats:
    """Running counts over an annotator's life (thread-safe updates)."""

    pairs: int = 0
    labelled: int = 0
    ties: int = 0
    failures: int = 0
    consistent: int = 0
    inconsistent: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, judgements: Sequence[Judgement]) -> None:
        with self._lock:
            for j in judgements:
                self.pairs += 1
                self.labelled += j.status == "labelled"
                self.ties += j.status == "tie"
                self.failures += j.status == "failed"
                self.consistent += j.consistent is True
                self.inconsistent += j.consistent is False

    def as_dict(self) -> dict[str, Any]:
        names = ("pairs", "labelled", "ties", "failures", "consistent", "inconsistent")
        counts = {k: getattr(self, k) for k in names}
        return {**counts, **judgement_rates_from_counts(**counts)}


def judgement_rates_from_counts(
    pairs: int, labelled: int, ties: int, failures: int, consistent: int, inconsistent: int
) -> dict[str, float | None]:
    both = consistent + inconsistent
    return {
        "labelled_rate": labelled / pairs if pairs else None,
        "tie_rate": ties / pairs if pairs else None,
        "failure_rate": failures / pairs if pairs else None,
        "position_consistency": consistent / both if both else None,
    }


def judgement_rates(judgements: Sequence[Judgement]) -> dict[str, float | None]:
    """Labelled, tie and failure rates, and position consistency (share of both-order queries that agreed)."""
    stats = AnnotatorStats()
    stats.add(judgements)
    return {k: v for k, v in stats.as_dict().items() if k.endswith(("_rate", "consistency"))}


class Annotator(ABC):
    """Judges pairs of responses; subclasses implement `judge_batch` (and `ajudge_batch` when natively async)."""

    def __init__(self) -> None:
        self.stats = AnnotatorStats()

    @abstractmethod
    def _judge(self, items: Sequence[Item]) -> list[Judgement]:
        """Judge every ``(prompt, response_a, response_b)``."""

    async def _ajudge(self, items: Sequence[Item]) -> list[Judgement]:
        return await asyncio.to_thread(self._judge, items)

    def judge_batch(self, items: Sequence[Item]) -> list[Judgement]:
        """The `Judgement` of every ``(prompt, response_a, response_b)``, in order."""
        items = check_items(items)
        judgements = self._judge(items) if items else []
        self.stats.add(judgements)
        return judgements

    async def ajudge_batch(self, items: Sequence[Item]) -> list[Judgement]:
        items = check_items(items)
        judgements = await self._ajudge(items) if items else []
        self.stats.add(judgements)
        return judgements

    def annotate(self, prompt: str, response_a: str, response_b: str) -> Label:
        """0 if ``response_a`` is better, 1 if ``response_b`` is, None for a tie or no usable verdict."""
        return self.judge_batch([(prompt, response_a, response_b)])[0].label

    def annotate_batch(self, items: Sequence[Item]) -> list[Label]:
        return [j.label for j in self.judge_batch(items)]

    async def aannotate(self, prompt: str, response_a: str, response_b: str) -> Label:
        return (await self.ajudge_batch([(prompt, response_a, response_b)]))[0].label

    async def aannotate_batch(self, items: Sequence[Item]) -> list[Label]:
        return [j.label for j in await self.ajudge_batch(items)]

    def __call__(self, prompt: str, response_a: str, response_b: str) -> Label:
        return self.annotate(prompt, response_a, response_b)


def check_items(items: Sequence[Item]) -> list[Item]:
    checked = []
    for i, item in enumerate(items):
        if not (isinstance(item, (tuple, list)) and len(item) == 3 and all(isinstance(x, str) for x in item)):
            raise TypeError(f"Item {i} must be a (prompt, response_a, response_b) tuple of str, got {item!r:.120}")
        checked.append((item[0], item[1], item[2]))
    return checked


# --------------------------------------------------------------------------- rules and callables


class LengthAnnotator(Annotator):
    """Prefers the ``shorter`` (or ``longer``) response, in characters or words; equal lengths tie."""

    def __init__(self, prefer: Literal["shorter", "longer"] = "shorter", unit: Literal["chars", "words"] = "chars"):
        super().__init__()
        if prefer not in ("shorter", "longer") or unit not in ("chars", "words"):
            raise ConfigError(
                f"LengthAnnotator(prefer={prefer!r}, unit={unit!r}): prefer is shorter|longer, unit chars|words."
            )
        self.prefer, self.unit = prefer, unit

    def _size(self, text: str) -> int:
        return len(text) if self.unit == "chars" else len(text.split())

    def _judge(self, items: Sequence[Item]) -> list[Judgement]:
        out = []
        for _, a, b in items:
            la, lb = self._size(a), self._size(b)
            if la == lb:
                out.append(Judgement.of(None, "same length"))
            else:
                a_wins = la < lb if self.prefer == "shorter" else la > lb
                out.append(Judgement.of(0 if a_wins else 1))
        return out


class CallableAnnotator(Annotator):
    """Wraps ``fn(prompt, response_a, response_b) -> 0 | 1 | None`` (sync or async).

    Anything else returned, or an exception, is a failure (counted and logged), never a label.
    """

    def __init__(self, fn: Callable[[str, str, str], Any], max_concurrency: int = 8) -> None:
        super().__init__()
        if not callable(fn):
            raise TypeError(f"CallableAnnotator needs a callable, got {type(fn).__name__}")
        self.fn = fn
        self.max_concurrency = max_concurrency
        self.is_async = inspect.iscoroutinefunction(fn)

    @staticmethod
    def _judgement(value: Any) -> Judgement:
        if isinstance(value, BaseException):
            logger.warning("annotator callable failed: %s: %s", type(value).__name__, value)
            return Judgement.failed(f"{type(value).__name__}: {value}")
        if value is None:
            return Judgement.of(None)
        if isinstance(value, bool) or value not in (0, 1):
            logger.warning("annotator callable returned %r; expected 0, 1 or None", value)
            return Judgement.failed(f"returned {value!r}; expected 0, 1 or None")
        return Judgement.of(int(value))

    def _judge(self, items: Sequence[Item]) -> list[Judgement]:
        if self.is_async:
            return asyncio.run(self._ajudge(items))
        out = []
        for item in items:
            try:
                value = self.fn(*item)
            except Exception as exc:
                value = exc
            out.append(self._judgement(value))
        return out

    async def _ajudge(self, items: Sequence[Item]) -> list[Judgement]:
        if not self.is_async:
            return await super()._ajudge(items)
        gate = asyncio.Semaphore(self.max_concurrency)

        async def one(item: Item) -> Any:
            async with gate:
                return await self.fn(*item)

        values = await asyncio.gather(*(one(item) for item in items), return_exceptions=True)
        return [self._judgement(v) for v in values]


# --------------------------------------------------------------------------- LLM judge
