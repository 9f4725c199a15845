"""Cutting a streamed answer into segments the Aligner can correct one by one, while the rest still streams.

A segment ends at a natural boundary: a blank line (paragraph), a line end (list items, headings, table
rows), or a sentence end (``.``, ``!`` or ``?`` followed by whitespace). Never inside a code block
(between ``` fences), and never inside a URL, an e-mail address or a number: their dots are not followed
by whitespace, and a list marker (``1. ``) or a common abbreviation (``e.g. ``) is not a sentence end.
A boundary is taken only once the segment holds ``min_chars`` characters (``first_min_chars`` for the
first one, so a stream can start early), so short sentences travel together. Segments keep every
character: joined, they give the answer back exactly.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

__all__ = ["Segmenter", "iter_segments", "split_segments"]

_FENCE = re.compile(r"^\s{0,3}(`{3,}|~{3,})")
# A sentence end: a word (or closing bracket/quote) then . ! ? or : and whitespace. The word must not be a
# lone number (a list marker "1. " or a decimal split across pieces) or a known abbreviation.
_SENTENCE_END = re.compile(r"(?<=[^\s\d])([.!?]['\")\]]*)(?=\s)")
_ABBREVIATIONS = frozenset(
    "e.g i.e etc vs mr mrs ms dr prof sr jr st no fig eq approx cf al inc ltd co corp dept est min max".split()
)


class Segmenter:
    """Incremental: `feed` text pieces as they stream in, get back the segments they complete; `finish`
    returns the rest. A boundary is only decided once the whitespace after it has arrived."""

    def __init__(self, min_chars: int = 80, first_min_chars: int | None = None) -> None:
        for label, value in (("min_chars", min_chars), ("first_min_chars", first_min_chars)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{label}={value!r}: use a whole number of characters >= 1.")
        self.min_chars = first_min_chars if first_min_chars is not None else min_chars
        self._later_min_chars = min_chars
        self._pending = ""  # text not yet cut into a segment; never starts inside a code block

    def feed(self, piece: str) -> list[str]:
        """Add ``piece``; return the segments it completes (possibly none)."""
        if not isinstance(piece, str):
            raise TypeError(f"a streamed piece must be a str, got {type(piece).__name__}: {piece!r:.80}")
        self._pending += piece
        out = []
        while (cut := self._boundary()) is not None:
            out.append(self._pending[:cut])
            self._pending = self._pending[cut:]
            self.min_chars = self._later_min_chars
        return out

    def finish(self) -> str:
        """The text after the last boundary (the last segment; empty if there is none)."""
        rest, self._pending = self._pending, ""
        return rest

    def _boundary(self) -> int | None:
        """Where the first segment of ``_pending`` ends (after its trailing whitespace), or None yet."""
        text = self._pending
        if len(text.rstrip()) < self.min_chars:
            return None
        # Fences: track code blocks line by line; a boundary may follow a closing fence's line end.
        in_code = False  # a cut is never inside a block, so the pending text starts outside one
        position = 0
        for line in text.splitlines(keepends=True):
            end = position + len(line)
            complete = line.endswith(("\n", "\r"))
            if _FENCE.match(line):
                in_code = not in_code if complete else in_code
            if not in_code:
                cut = self._cut_in_line(text, position, end, complete)
                if cut is not None:
                    return cut
            if not complete:
                break
            position = end
        return None

    def _cut_in_line(self, text: str, start: int, end: int, complete: bool) -> int | None:
        """The first boundary within line ``text[start:end]`` that leaves at least ``min_chars`` before it."""
        line = text[start:end]
        for match in _SENTENCE_END.finditer(line):
            stop = start + match.end()
            if len(text[:stop].lstrip()) < self.min_chars or _is_abbreviation(line[: match.start()]):
                continue
            after = _whitespace_end(text, stop)
            if after is None:  # the whitespace may go on: wait for more
                return None
            return after
        if complete and len(text[:end].strip()) >= self.min_chars:
            return _whitespace_end(text, end)
        return None


def _is_abbreviation(before: str) -> bool:
    word = re.search(r"([A-Za-z.]+)$", before)
    return bool(word) and word.group(1).lower().rstrip(".") in _ABBREVIATIONS


def _whitespace_end(text: str, index: int) -> int | None:
    """The end of the whitespace run starting at ``index``, or None while it may still grow (text ends in it)."""
    end = index
    while end < len(text) and text[end].isspace():
        end += 1
    return None if end == len(text) else end


def split_segments(text: str, min_chars: int = 80, first_min_chars: int | None = None) -> list[str]:
    """``text`` cut as `Segmenter` cuts it when it arrives in one piece (the pieces join back to ``text``)."""
    segmenter = Segmenter(min_chars, first_min_chars)
    segments = segmenter.feed(text)
    rest = segmenter.finish()
    return [*segments, rest] if rest else segments


def iter_segments(pieces: Iterable[str], min_chars: int = 80, first_min_chars: int | None = None) -> Iterator[str]:
    """The segments of a stream of pieces, each as soon as it is complete."""
    segmenter = Segmenter(min_chars, first_min_chars)
    for piece in pieces:
        yield from segmenter.feed(piece)
    rest = segmenter.finish()
    if rest:
        yield rest
