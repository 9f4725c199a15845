"""What `AlignerRunnable` reads and writes: LangChain values <-> (question, answer) pairs and back.

Pure step functions shared by the runnable's sync and async paths:

- `parse_input` reads a ``str``, an ``AIMessage``/``AIMessageChunk`` or a dict into a `ParsedInput`;
- `build_output` gives the corrected value back in the type of the input;
- `StreamOutput` turns the pieces and the final `Correction` of a streamed correction into chunks;
- `add_chunk` / `collect_chunks` add up a stream of inputs the way LangChain does;
- `diff_payload` is the payload of the diff event sent after each correction.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.runnables.utils import AddableDict

from aligner_chains.core.errors import DataError
from aligner_chains.core.result import Correction
from aligner_chains.langchain.messages import final_chunk, is_tool_call_only, message_text, piece_chunk, with_text
from aligner_chains.langchain.question import extract_question

__all__ = [
    "ParsedInput",
    "StreamOutput",
    "acollect_chunks",
    "add_chunk",
    "build_output",
    "collect_chunks",
    "diff_payload",
    "parse_input",
]


@dataclass
class ParsedInput:
    """One input, parsed: what kind it is, the answer value (str or AIMessage) and its text."""

    kind: Literal["str", "message", "dict"]
    value: Any
    answer_value: Any
    answer: str
    question: str | None = None
    passthrough: bool = False
    """A tool-call-only message: nothing to correct, the input is the output."""


def parse_input(value: Any, *, question_key: str, answer_key: str) -> ParsedInput:
    """Read one runnable input; a dict's question (if any) is read too, recovery is left to the caller."""
    if isinstance(value, str):
        return ParsedInput("str", value, value, value)
    if isinstance(value, AIMessage):
        return ParsedInput("message", value, value, message_text(value), passthrough=is_tool_call_only(value))
    if isinstance(value, dict):
        if answer_key not in value:
            raise DataError(
                f"The dict given to AlignerRunnable has no {answer_key!r} key (keys: {sorted(value)}). "
                f"Put the answer under {answer_key!r} or set answer_key=."
            )
        answer = value[answer_key]
        if isinstance(answer, str):
            item = ParsedInput("dict", value, answer, answer)
        elif isinstance(answer, AIMessage):
            item = ParsedInput("dict", value, answer, message_text(answer), passthrough=is_tool_call_only(answer))
        else:
            raise TypeError(
                f"The answer under {answer_key!r} must be a str or an AIMessage, "
                f"got {type(answer).__name__}: {answer!r:.80}"
            )
        question = value.get(question_key)
        if question is not None:
            item.question = question if isinstance(question, str) else extract_question(question)
        return item
    raise TypeError(
        "AlignerRunnable takes a str, an AIMessage/AIMessageChunk, or a dict with "
        f"{question_key!r} and {answer_key!r}; got {type(value).__name__}: {value!r:.80}"
    )


def build_output(item: ParsedInput, correction: Correction, answer_key: str) -> Any:
    """The corrected value, of the input's type (a message keeps everything but its text)."""
    text = item.answer if correction.finish_reason == "skipped" else correction.corrected
    meta = correction.summary()
    if item.kind == "str":
        return text
    if item.kind == "message":
        return with_text(item.answer_value, text, meta)
    answer = text if isinstance(item.answer_value, str) else with_text(item.answer_value, text, meta)
    return {**item.value, answer_key: answer, "aligner": meta}


class StreamOutput:
    """The output chunks of one streamed correction.

    Built from the parsed input (None when the input stream was empty). `feed` takes what
    ``Aligner.iter_correction`` / ``aiter_correction`` yield (text pieces, then the final `Correction`)
    and returns the chunks to send; `close` returns the closing chunks. A string or dict stream always
    carries the answer; a message stream ends with a chunk holding everything of the message but its
    text (id, metadata, usage, tool calls), so that adding up the stream gives the message back. An
    input with nothing to correct (tool calls only) is the whole output.
    """

    def __init__(self, item: ParsedInput | None, answer_key: str) -> None:
        self.item = item
        self.answer_key = answer_key
        self.correction: Correction | None = None
        self._emitted = False

    @property
    def correcting(self) -> bool:
        """Whether there is an answer to correct (else `close` alone gives the output)."""
        return self.item is not None and not self.item.passthrough

    @property
    def pair(self) -> tuple[str, str]:
        """The (question, answer) to correct."""
        assert self.item is not None
        return self.item.question or "", self.item.answer

    def _piece(self, piece: str) -> Any:
        item = self.item
        assert item is not None
        if item.kind == "str":
            return piece
        chunk = piece if isinstance(item.answer_value, str) else piece_chunk(item.answer_value, piece)
        return chunk if item.kind == "message" else AddableDict({self.answer_key: chunk})

    def _tail(self, item: ParsedInput, correction: Correction) -> Any:
        meta = correction.summary()
        if item.kind == "message":
            return final_chunk(item.answer_value, meta)
        if item.kind == "dict":
            tail = AddableDict({k: v for k, v in item.value.items() if k != self.answer_key})
            if isinstance(item.answer_value, AIMessage):
                tail[self.answer_key] = final_chunk(item.answer_value, meta)
            tail["aligner"] = meta
            return tail
        return None

    def feed(self, piece: str | Correction) -> list[Any]:
        """The chunks for one yielded piece of text (none for an empty piece or the final `Correction`)."""
        if not isinstance(piece, str):
            self.correction = piece
            return []
        if not piece:
            return []
        self._emitted = True
        return [self._piece(piece)]

    def close(self) -> list[Any]:
        """The closing chunks, once the final `Correction` has been fed (the input itself if not correcting)."""
        item = self.item
        if item is None:
            return []
        if item.passthrough:
            return [item.value]
        correction = self.correction
        assert correction is not None, "the correction stream ended without a Correction"
        out: list[Any] = []
        if correction.finish_reason == "skipped" and item.answer:
            out.append(self._piece(item.answer))
        elif not self._emitted and item.kind != "message":
            out.append(self._piece(""))  # a string or dict stream always carries the answer
        tail = self._tail(item, correction)
        if tail is not None:
            out.append(tail)
        return out


def add_chunk(final: Any, chunk: Any) -> Any:
    """``final + chunk`` for streamed inputs (str, message chunks, dict chunks); otherwise the latest chunk."""
    if final is None:
        return chunk
    if isinstance(final, str) and isinstance(chunk, str):
        return final + chunk
    if isinstance(final, AIMessageChunk) and isinstance(chunk, AIMessageChunk):
        return final + chunk
    if isinstance(final, dict) and isinstance(chunk, dict):
        try:
            return AddableDict(final) + AddableDict(chunk)
        except TypeError:
            return {**final, **chunk}
    return chunk


def collect_chunks(chunks: Iterable[Any]) -> Any:
    """Add up a stream of inputs the way LangChain does (None for an empty stream)."""
    final: Any = None
    for chunk in chunks:
        final = add_chunk(final, chunk)
    return final


async def acollect_chunks(chunks: AsyncIterable[Any]) -> Any:
    """Async `collect_chunks`."""
    final: Any = None
    async for chunk in chunks:
        final = add_chunk(final, chunk)
    return final


def diff_payload(correction: Correction) -> dict[str, Any]:
    """The data of the diff event (``on_custom_event`` in ``astream_events``) sent after a correction."""
    return {
        "question": correction.question,
        "original": correction.original,
        "corrected": correction.corrected,
        "changed": correction.changed,
        "diff": [edit.model_dump() for edit in correction.diff()],
        "summary": correction.summary(),
    }
