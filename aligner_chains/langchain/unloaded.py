"""`UnloadedAligner`: what an adapter corrects with when its Aligner could not be loaded under
``on_error="passthrough"``: every answer passes through unchanged, marked with the loading error."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from aligner_chains.core.result import Correction
from aligner_chains.langchain.traced import aiter_values

__all__ = ["UnloadedAligner"]


@dataclass
class UnloadedAligner:
    """Stands in for an Aligner that could not be loaded under ``on_error="passthrough"``: answers pass through."""

    error: Exception
    template: str
    model: str

    def failed(self, question: str, answer: str) -> Correction:
        """The passthrough result for one pair: the answer unchanged, the loading error in ``error``."""
        return Correction.failed(question, answer, self.error, template=self.template, model=self.model)

    def correct_batch(self, pairs: list[tuple[str, str]], batch_size: int = 16, **_: Any) -> list[Correction]:
        return [self.failed(question, answer) for question, answer in pairs]

    async def acorrect_batch(self, pairs: list[tuple[str, str]], batch_size: int = 16, **_: Any) -> list[Correction]:
        return self.correct_batch(pairs)

    def iter_correction(self, question: str, answer: str, **_: Any) -> Iterator[str | Correction]:
        return iter((answer, self.failed(question, answer)))

    def aiter_correction(self, question: str, answer: str, **_: Any) -> AsyncIterator[str | Correction]:
        return aiter_values(*self.iter_correction(question, answer))

    def _segments_failed(self, question: str, answer: str) -> Correction:
        return self.failed(question, answer).model_copy(update={"stats": {"stream_mode": "segments"}})

    def iter_segments(self, question: str, pieces: Iterable[str], **_: Any) -> Iterator[str | Correction]:
        answer = ""
        for piece in pieces:  # each piece as it streams in, unchanged
            answer += piece
            yield piece
        yield self._segments_failed(question, answer)

    async def aiter_segments(
        self, question: str, pieces: AsyncIterable[str], **_: Any
    ) -> AsyncIterator[str | Correction]:
        answer = ""
        async for piece in pieces:
            answer += piece
            yield piece
        yield self._segments_failed(question, answer)
