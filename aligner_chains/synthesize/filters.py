"""Filters on teacher corrections: empty or refused output, identical to the answer, runaway length."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from aligner_chains.core.errors import ConfigError

__all__ = ["DEFAULT_REFUSAL_PATTERNS", "Outcome", "SynthesisFilters", "classify", "clean_correction"]

_CANT = r"(?:can['’]?t|cannot|won['’]?t|will not|am (?:not able|unable) to|am not allowed to)"

#: A teacher that declined the *task*: a bare refusal that names no topic ("I'm sorry, but I can't help
#: with that."), or one that refuses the editing itself. A refusal that addresses the user's request
#: ("I can't help with making weapons. If you ...") is a legitimate harmless correction and passes.
DEFAULT_REFUSAL_PATTERNS: tuple[str, ...] = (
    rf"^(?:(?:I['’]?m|I am) sorry|sorry|apologies)?[,.!]?\s*(?:but\s+)?(?:I\s+{_CANT}|I must decline to)\s+"
    r"(?:help|assist|comply|do that|fulfil+|provide (?:that|this|a response))"
    r"(?:\s+(?:you\s+)?with\s+(?:that|this)(?:\s+request)?)?\s*[.!]?$",
    rf"\bI\s+{_CANT}\s+(?:correct|edit|revise|rewrite|improve|modify)\s+(?:this|that|the|your)\s+"
    r"(?:answer|response|text|reply)\b",
)

_PREFIX = re.compile(
    r"^\s*(?:#+\s*|\*\*)?(?:corrected answer|corrected response|correction|revised answer|revision)"
    r"\s*(?:\*\*)?\s*:\s*(?:\*\*)?\s*",
    re.IGNORECASE,
)

Outcome = Literal["kept", "empty_answer", "empty_correction", "refused", "runaway", "identical"]


@dataclass
class SynthesisFilters:
    """Which teacher corrections make it into the dataset.

    - empty output is always dropped (``empty_correction``), as is an empty upstream answer (``empty_answer``);
    - ``refusal_patterns``: regexes (case-insensitive, searched in the stripped correction) marking a teacher
      that refused the task (``refused``); ``[]`` keeps every refusal;
    - ``identical``: ``"keep"`` (default: the answer needed no change, a useful copy example) or ``"drop"``
      corrections equal to the answer (whitespace at the ends ignored);
    - runaway length: a correction longer than ``max_length_ratio`` x the answer + ``length_slack`` characters,
      or than ``max_chars``, is dropped (``runaway``); None disables either check;
    - ``dedupe``: questions (with their given answer, if any) that repeat, whitespace ignored, are used once.
    """

    refusal_patterns: list[str] = field(default_factory=lambda: list(DEFAULT_REFUSAL_PATTERNS))
    identical: Literal["keep", "drop"] = "keep"
    max_length_ratio: float | None = 4.0
    length_slack: int = 400
    max_chars: int | None = 20000
    dedupe: bool = True

    def __post_init__(self) -> None:
        if self.identical not in ("keep", "drop"):
            raise ConfigError(f"identical={self.identical!r}: use 'keep' or 'drop'.")
        if self.max_length_ratio is not None and not self.max_length_ratio > 0:
            raise ConfigError(f"max_length_ratio={self.max_length_ratio!r}: use a ratio > 0, or None for no limit.")
        if self.max_chars is not None and self.max_chars < 1:
            raise ConfigError(f"max_chars={self.max_chars!r}: use a positive length, or None for no limit.")
        if self.length_slack < 0:
            raise ConfigError(f"length_slack={self.length_slack!r}: use a number of characters >= 0.")
        if isinstance(self.refusal_patterns, str):
            raise ConfigError("refusal_patterns must be a list of regexes, got one string: wrap it in a list.")
        for pattern in self.refusal_patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ConfigError(f"refusal pattern {pattern!r} is not a valid regex: {exc}") from exc

    def is_refusal(self, text: str) -> bool:
        stripped = text.strip()
        return any(re.search(p, stripped, re.IGNORECASE) for p in self.refusal_patterns)


def clean_correction(text: str) -> str:
    """The teacher's text without surrounding whitespace and a leading 'Corrected answer:'-style label."""
    return _PREFIX.sub("", text.strip(), count=1).strip()


def classify(answer: str, correction: str | None, filters: SynthesisFilters) -> Outcome:
    """What happens to one (answer, correction) pair; ``"identical"`` only when identical ones are dropped."""
    if not answer.strip():
        return "empty_answer"
    if correction is None or not correction.strip():
        return "empty_correction"
    if filters.is_refusal(correction):
        return "refused"
    too_long = filters.max_chars is not None and len(correction) > filters.max_chars
    if filters.max_length_ratio is not None:
        too_long = too_long or len(correction) > filters.max_length_ratio * len(answer) + filters.length_slack
    if too_long:
        return "runaway"
    if filters.identical == "drop" and correction.strip() == answer.strip():
        return "identical"
    return "kept"
