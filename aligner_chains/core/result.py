"""`Correction`: the one result type every backend and adapter reports."""

from __future__ import annotations

import difflib
import re
from typing import Any, Literal

from pydantic import BaseModel, Field

FinishReason = Literal["stop", "length", "skipped", "error"]

_WORDS = re.compile(r"\s+|[^\s]+")


class Edit(BaseModel):
    """One changed span: ``original[orig_start:orig_end]`` became ``corrected[corr_start:corr_end]``."""

    op: Literal["replace", "insert", "delete"]
    original: str
    corrected: str
    orig_start: int
    orig_end: int
    corr_start: int
    corr_end: int


class Correction(BaseModel):
    """An Aligner's correction of one upstream answer, with what it cost."""

    question: str
    original: str
    corrected: str
    changed: bool
    template: str
    model: str = ""
    finish_reason: FinishReason = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    error: str | None = None
    stats: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def failed(cls, question: str, answer: str, error: BaseException | str, *, template: str, model: str) -> Correction:
        """The passthrough result of a failed correction: the answer unchanged, the reason in ``error``."""
        reason = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        return cls(
            question=question,
            original=answer,
            corrected=answer,
            changed=False,
            template=template,
            model=model,
            finish_reason="error",
            error=reason,
        )

    def diff(self) -> Diff:
        """The spans that differ between original and corrected, at word granularity: a list of `Edit`
        that prints as an inline diff (``Mail [-bob@example.com-]{+[EMAIL]+}.``)."""
        return Diff(self.original, self.corrected)

    def summary(self) -> dict[str, Any]:
        """A JSON-able digest for metadata fields (what adapters attach to messages and responses)."""
        data = self.model_dump(exclude={"question", "corrected"})
        return data


class Diff(list[Edit]):
    """The `Edit` list of `Correction.diff`, which also knows both texts, so it prints as an inline diff.

    ``str(diff)`` (what ``print`` shows) is the corrected text with each change inline, git's word-diff
    style: ``[-removed-]`` then ``{+added+}``; ``render(color=True)`` marks them with ANSI red and green
    instead. As a list it holds the structured edits, with offsets into both texts.
    """

    def __init__(self, original: str, corrected: str) -> None:
        super().__init__(diff_spans(original, corrected))
        self.original = original
        self.corrected = corrected

    def render(self, *, color: bool = False) -> str:
        """The inline diff: unchanged text as it is, each edit as its removed then its added span."""
        removed, added = ((_RED, _RESET), (_GREEN, _RESET)) if color else (("[-", "-]"), ("{+", "+}"))
        parts: list[str] = []
        position = 0
        for edit in self:
            parts.append(self.original[position : edit.orig_start])
            if edit.original:
                parts.append(removed[0] + edit.original + removed[1])
            if edit.corrected:
                parts.append(added[0] + edit.corrected + added[1])
            position = edit.orig_end
        parts.append(self.original[position:])
        return "".join(parts)

    def __str__(self) -> str:
        return self.render()


_RED, _GREEN, _RESET = "\x1b[31m", "\x1b[32m", "\x1b[0m"


def diff_spans(original: str, corrected: str) -> list[Edit]:
    """Word-level edits turning ``original`` into ``corrected`` (whitespace runs count as words)."""
    a = _WORDS.findall(original)
    b = _WORDS.findall(corrected)
    a_off = _offsets(a)
    b_off = _offsets(b)
    edits: list[Edit] = []
    matcher = difflib.SequenceMatcher(a=a, b=b, autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            continue
        edits.append(
            Edit(
                op=op,  # type: ignore[arg-type]
                original="".join(a[i1:i2]),
                corrected="".join(b[j1:j2]),
                orig_start=a_off[i1],
                orig_end=a_off[i2],
                corr_start=b_off[j1],
                corr_end=b_off[j2],
            )
        )
    return edits


def _offsets(tokens: list[str]) -> list[int]:
    out = [0]
    for tok in tokens:
        out.append(out[-1] + len(tok))
    return out
