"""Correcting an answer while it streams: each segment as soon as it is complete, in order.

How a segment's prompt is built, and why: the Aligner sees what it was trained on, a (question, answer)
prompt whose answer is the upstream text so far (cut at the segment's end, so it reads as a complete
answer), followed by its own correction so far, as if it had generated that text itself. It then writes
the correction of the new segment as the continuation. Nothing new for the model: the prompt is a normal
prompt, the continuation a normal correction, so a copy stays a copy and a redaction a redaction. Two
details keep the tokens what the model saw in training: the correction follows the prompt after one space
(as ``finetune.data`` joins them), and a separator of spaces between segments is left for the model to
generate (a prompt ending in a space token would be a tokenization it never saw); newlines stay in.

Each corrected segment is shown only once the Aligner has finished it, so the stream trails the upstream
by at most one segment plus the Aligner's time for it, and no uncorrected text is ever shown.

Refusals and rewrites: when the correction of a segment is not an edit of it but a replacement (less than
half of it kept: a refusal, typically), ``replacement="end"`` (the default) shows the replacement and ends
the stream there, and stops reading the upstream: text the Aligner would have replaced is never shown,
and a refusal is not followed by more of the answer it refused. Segments already shown were corrected
with everything before them, and judged fine then. ``replacement="continue"`` goes on instead.
"""

from __future__ import annotations

import asyncio
import difflib
import functools
import queue
import re
import threading
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Literal

from aligner_chains.core.errors import ConfigError, InputTooLongError
from aligner_chains.core.result import Correction
from aligner_chains.core.segments import Segmenter

if TYPE_CHECKING:
    from aligner_chains.core.aligner import Aligner, OnError

__all__ = [
    "DEFAULT_MIN_CHARS",
    "DEFAULT_STREAM_MODE",
    "STREAM_MODES",
    "Replacement",
    "SegmentCorrector",
    "StreamMode",
    "aiter_segmented",
    "check_stream_mode",
    "iter_segmented",
    "stream_segmenter",
]

Replacement = Literal["end", "continue"]
StreamMode = Literal["whole", "segments"]
#: What the adapters' ``stream_mode`` defaults to, chosen from ``benchmarks.streaming`` (RESULTS.md, "Streaming"):
#: segments start far sooner, but agree with the whole-answer correction on only ~63 % of the demo's held-out
#: answers, and switching modes should not change the corrections; the README says so.
DEFAULT_STREAM_MODE: StreamMode = "whole"
STREAM_MODES: tuple[str, ...] = ("whole", "segments")


def check_stream_mode(mode: Any) -> StreamMode:
    """``mode`` if it is a stream mode, else a `ConfigError` naming the choices."""
    if mode not in STREAM_MODES:
        raise ConfigError(
            f"stream_mode={mode!r}: use 'whole' (read the whole upstream answer, then stream its correction) or "
            "'segments' (correct each segment as soon as the upstream has written it)."
        )
    return mode


#: Segments end at the first boundary after this many characters: measured on real answers (RESULTS.md,
#: "Streaming"), longer segments agree more often with the whole-answer correction, shorter ones start sooner.
DEFAULT_MIN_CHARS = 300
#: The first segment ends sooner (at most this many characters before its boundary), so the stream starts early.
FIRST_MIN_CHARS = 150
#: Below this share of the segment kept (difflib ratio), a segment's correction is a replacement.
KEPT_RATIO = 0.5


class SegmentCorrector:
    """The state of one segment-wise correction: the upstream text so far and what has been shown."""

    def __init__(self, aligner: Aligner, question: str, generation: dict[str, Any], replacement: Replacement) -> None:
        if not isinstance(question, str):
            raise TypeError(f"question must be a str, got {type(question).__name__}: {question!r:.80}")
        if replacement not in ("end", "continue"):
            raise ConfigError(f"replacement={replacement!r}: use 'end' or 'continue'.")
        aligner._settings(generation)  # a wrong setting fails the call, before any upstream text is read
        self.aligner = aligner
        self.question = question
        self.generation = generation
        self.replacement = replacement
        self.answer = ""  # upstream text so far
        self.shown = ""  # corrected text shown so far
        self.separator = ""  # whitespace that ended the last segment: goes before the next correction
        self.segments = 0
        self.ended = False  # a replacement ended the stream
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.finish_reason = "stop"
        self.errors: list[str] = []
        self.started = time.perf_counter()

    def correct(self, segment: str, stop: threading.Event | None = None, *, passthrough: bool = False) -> str:
        """Correct the next ``segment`` (blocking); return the text to show for it ("" for none)."""
        self.answer += segment
        self.segments += 1
        text = segment.strip()
        content_end = len(segment.rstrip())
        separator = self._separator(fallback=self.separator)
        self.separator = segment[content_end:]
        if not text:
            return ""
        try:
            corrected, kept = self._generate(text, separator, stop)
        except (TypeError, ConfigError):
            raise
        except Exception as exc:
            if not passthrough:
                raise
            self.errors.append(f"segment {self.segments}: {type(exc).__name__}: {exc}")
            corrected, kept = text, True
        if not corrected:
            return ""
        piece = (separator if self.shown else "") + corrected
        self.shown += piece
        if not kept and self.replacement == "end":
            self.ended = True
        return piece

    def _separator(self, fallback: str) -> str:
        """The whitespace the next correction starts after: the upstream's, where the text shown so far ends.

        Found by aligning what was shown with the upstream text (the end of the last run they share), so a
        correction that stopped short of its segment (at a line end, say) resumes after the right newline;
        when they do not line up at the end (a rewrite), the whitespace that ended the last segment.
        """
        if not self.shown:
            return ""
        blocks = difflib.SequenceMatcher(None, self.answer, self.shown, autojunk=False).get_matching_blocks()
        ends = [a + size for a, b, size in blocks if size and b + size == len(self.shown)]
        if not ends:
            return fallback
        return re.match(r"\s*", self.answer[ends[-1] :]).group(0)  # type: ignore[union-attr]

    def _generate(self, text: str, separator: str, stop: threading.Event | None) -> tuple[str, bool]:
        """The correction of the segment ``text`` and whether it kept most of it (an edit, not a replacement)."""
        aligner, backend = self.aligner, self.aligner.backend
        answer = self.answer.rstrip()
        prepared = aligner._prepare(self.question, answer, self.generation)
        prompt = prepared.prompt
        if self.shown:  # the correction so far, as if the model had written it; spaces left for it to write
            prompt += " " + (self.shown + separator).rstrip(" \t")
        params = prepared.params
        n_prompt = backend.count_tokens(prompt) if self.shown else prepared.prompt_tokens
        want = 2 * backend.count_tokens(text) + 16
        explicit = self.generation.get("max_new_tokens") or aligner.generation.max_new_tokens
        if explicit is not None:
            want = min(want, max(1, explicit - self.completion_tokens))
        context = backend.max_context
        if context is not None and n_prompt + want > context:
            room = context - n_prompt
            if room < backend.count_tokens(text):
                raise InputTooLongError(
                    f"Segment {self.segments}: the answer so far and its correction take {n_prompt} tokens, leaving "
                    f"{max(room, 0)} of the model's context of {context} for a segment of "
                    f"{backend.count_tokens(text)} tokens. Use stream_mode='whole' for answers this long.",
                    prompt_tokens=n_prompt,
                    max_new_tokens=want,
                    context=context,
                )
            want = room
        out = backend.generate([prompt], params.with_max_new_tokens(want), sources=[answer], stop=stop)[0]
        self.prompt_tokens = max(self.prompt_tokens, n_prompt)
        self.completion_tokens += len(out.token_ids)
        self.finish_reason = out.finish_reason
        corrected = self._without_scaffolding(out.text, answer)
        kept = difflib.SequenceMatcher(None, corrected, text, autojunk=False).ratio() >= KEPT_RATIO
        return corrected, kept

    def _without_scaffolding(self, text: str, answer: str) -> str:
        """``text`` cut where the prompt's own markers begin (``##Correction:``, ...), unless the answer has them.

        A continuation that writes the template's scaffolding has run past the end of its correction (a small
        model's habit when its answer ends mid-stream); what follows is not a correction of anything.
        """
        cut = len(text)
        for marker in self._markers:
            if marker not in answer and (found := text.find(marker)) >= 0:
                cut = min(cut, found)
        return text[:cut].rstrip()

    @functools.cached_property
    def _markers(self) -> list[str]:
        """Words of the template around the placeholders that look like markers (``##Answer:``, ``USER:``)."""
        _, _, middle, _, tail = self.aligner.template.render_split("", "")
        words = (middle + " " + tail).split()
        return [w for w in words if len(w) >= 4 and (w.endswith(":") or w.startswith("#"))]

    def result(self) -> Correction:
        """The whole segment-wise correction, as `Aligner.correct` would report it."""
        aligner = self.aligner
        stats: dict[str, Any] = {"stream_mode": "segments", "segments": self.segments}
        if self.ended:
            stats["ended_by"] = "replacement"
        if not self.answer.strip():
            return Correction(
                question=self.question,
                original=self.answer,
                corrected="",
                changed=False,
                template=aligner.template.name,
                model=aligner.model_name,
                finish_reason="skipped",
                stats=stats,
            )
        return Correction(
            question=self.question,
            original=self.answer,
            corrected=self.shown,
            changed=self.shown != self.answer.strip(),
            template=aligner.template.name,
            model=aligner.model_name,
            finish_reason="error" if self.errors else self.finish_reason,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            latency_s=time.perf_counter() - self.started,
            error="; ".join(self.errors) or None,
            stats=stats,
        )


_DONE = object()


def stream_segmenter(min_chars: int = DEFAULT_MIN_CHARS) -> Segmenter:
    """The `Segmenter` segment-wise correction cuts a stream with: ``min_chars``, the first segment sooner."""
    return Segmenter(min_chars, min(min_chars, FIRST_MIN_CHARS))


def iter_segmented(
    aligner: Aligner,
    question: str,
    pieces: Iterable[str],
    *,
    min_chars: int = DEFAULT_MIN_CHARS,
    replacement: Replacement = "end",
    passthrough: bool = False,
    generation: dict[str, Any] | None = None,
) -> Iterator[str | Correction]:
    """Corrected pieces of a streamed answer as each segment completes, then the `Correction`.

    The upstream is read in a worker thread, so it keeps streaming while the Aligner corrects; when the
    consumer stops (or a replacement ends the stream) reading stops and the upstream iterator is closed.
    """
    corrector = SegmentCorrector(aligner, question, dict(generation or {}), replacement)
    segments: queue.Queue[Any] = queue.Queue()
    stop = threading.Event()

    def read() -> None:
        segmenter = stream_segmenter(min_chars)
        iterator = iter(pieces)
        try:
            for piece in iterator:
                if stop.is_set():
                    return
                for segment in segmenter.feed(piece):
                    segments.put(segment)
            if rest := segmenter.finish():
                segments.put(rest)
        except BaseException as exc:  # raised in the consumer
            segments.put(_Raised(exc))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None and stop.is_set():
                close()
            segments.put(_DONE)

    reader = threading.Thread(target=read, name="aligner-upstream", daemon=True)
    reader.start()
    try:
        while (segment := segments.get()) is not _DONE:
            if isinstance(segment, _Raised):
                raise segment.exc
            piece = corrector.correct(segment, stop, passthrough=passthrough)
            if piece:
                yield piece
            if corrector.ended:
                break
        yield corrector.result()
    finally:
        stop.set()


async def aiter_segmented(
    aligner: Aligner,
    question: str,
    pieces: AsyncIterable[str],
    *,
    min_chars: int = DEFAULT_MIN_CHARS,
    replacement: Replacement = "end",
    passthrough: bool = False,
    generation: dict[str, Any] | None = None,
) -> AsyncIterator[str | Correction]:
    """Async `iter_segmented`: the upstream is read by a task on this loop, each segment corrected in a
    worker thread; leaving (or a replacement) cancels the reading task, which closes the upstream."""
    corrector = SegmentCorrector(aligner, question, dict(generation or {}), replacement)
    segments: asyncio.Queue[Any] = asyncio.Queue()
    stop = threading.Event()

    async def read() -> None:
        segmenter = stream_segmenter(min_chars)
        try:
            async for piece in pieces:
                for segment in segmenter.feed(piece):
                    segments.put_nowait(segment)
            if rest := segmenter.finish():
                segments.put_nowait(rest)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            segments.put_nowait(_Raised(exc))
        finally:
            close = getattr(pieces, "aclose", None)
            if close is not None and stop.is_set():
                await close()
            segments.put_nowait(_DONE)

    reader = asyncio.ensure_future(read())
    try:
        while (segment := await segments.get()) is not _DONE:
            if isinstance(segment, _Raised):
                raise segment.exc
            piece = await asyncio.to_thread(corrector.correct, segment, stop, passthrough=passthrough)
            if piece:
                yield piece
            if corrector.ended:
                break
        yield corrector.result()
    finally:
        stop.set()
        if not reader.done():
            reader.cancel()
            try:
                await reader
            except (asyncio.CancelledError, Exception):
                pass


class SegmentedCorrections:
    """The segment-wise methods of `Aligner` (``iter_segments`` and its kin), kept with the code they run."""

    def iter_segments(
        self,
        question: str,
        pieces: Iterable[str],
        *,
        min_chars: int = DEFAULT_MIN_CHARS,
        replacement: Replacement = "end",
        on_error: OnError | None = None,
        **generation: Any,
    ) -> Iterator[str | Correction]:
        """Correct an answer while it streams in (``pieces``): yield each segment's correction as soon as the
        segment is complete and corrected, then the `Correction` (``stats["stream_mode"] == "segments"``).

        Segments end at paragraph, line and sentence boundaries after ``min_chars`` characters (never inside
        code blocks, URLs, e-mail addresses or numbers); see `aligner_chains.core.segmented` for how a
        segment's prompt is built and the ``replacement`` policy (a refusal ends the stream). With
        ``on_error="passthrough"`` a segment that fails is shown as it came and marked in the result.
        """
        yield from iter_segmented(
            self,
            question,
            pieces,
            min_chars=min_chars,
            replacement=replacement,
            passthrough=self._policy(on_error) == "passthrough",
            generation=generation,
        )

    def stream_segments(self, question: str, pieces: Iterable[str], **options: Any) -> Iterator[str]:
        """The text pieces of `iter_segments`: the corrected answer, segment by segment."""
        for item in self.iter_segments(question, pieces, **options):
            if isinstance(item, str):
                yield item

    async def aiter_segments(
        self,
        question: str,
        pieces: AsyncIterable[str],
        *,
        min_chars: int = DEFAULT_MIN_CHARS,
        replacement: Replacement = "end",
        on_error: OnError | None = None,
        **generation: Any,
    ) -> AsyncIterator[str | Correction]:
        """Async `iter_segments` over an async stream of pieces (e.g. a chat model's ``astream``)."""
        async for item in aiter_segmented(
            self,
            question,
            pieces,
            min_chars=min_chars,
            replacement=replacement,
            passthrough=self._policy(on_error) == "passthrough",
            generation=generation,
        ):
            yield item

    async def astream_segments(self, question: str, pieces: AsyncIterable[str], **options: Any) -> AsyncIterator[str]:
        """The text pieces of `aiter_segments`."""
        async for item in self.aiter_segments(question, pieces, **options):
            if isinstance(item, str):
                yield item


class _Raised:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc
