"""Untrusted JSON request bodies parsed safely: every problem names the field it is in.

``json.loads`` alone turns hostile bodies into 500s: 5,000 nested ``[`` raise `RecursionError`, a
5,000-digit number raises `ValueError`, ``"\\ud800"`` decodes to a lone surrogate that tokenizers and
UTF-8 encoders reject later, and ``NaN`` / ``Infinity`` are not JSON at all. `parse_json` refuses each
with a `JSONInputError` that says which field (``messages.0.content``) and why.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

#: Deepest nesting accepted (OpenAI tool schemas need a dozen levels; Python's parser fails near 1,000).
MAX_DEPTH = 64
#: Longest integer accepted, in digits (Python's own limit for str -> int).
MAX_DIGITS = getattr(sys, "get_int_max_str_digits", lambda: 4300)() or 4300

_SURROGATE = re.compile("[\ud800-\udfff]")
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{},:]', re.DOTALL)


class JSONInputError(ValueError):
    """A body that is JSON-shaped but unsafe to use; ``field`` is the dotted path (``body`` for the top)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"field {field!r}: {message}")
        self.field = field
        self.message = message


class _Refused:
    """Stands in for a value the parser must not build (a huge integer, NaN), so its field can be found."""

    def __init__(self, why: str) -> None:
        self.why = why


def _parse_int(text: str) -> int | _Refused:
    digits = len(text.lstrip("-"))
    if digits > MAX_DIGITS:
        return _Refused(f"a number with {digits} digits; send at most {MAX_DIGITS} digits")
    return int(text)


def _parse_constant(name: str) -> _Refused:
    return _Refused(f"{name} is not a JSON number; send a finite number")


def parse_json(text: str) -> Any:
    """``text`` parsed; `JSONInputError` for nesting deeper than `MAX_DEPTH`, huge integers, ``NaN``/``Infinity``
    and lone surrogates (in keys or strings). `json.JSONDecodeError` for text that is not JSON."""
    try:
        data = json.loads(text, parse_int=_parse_int, parse_constant=_parse_constant)
    except RecursionError:
        raise JSONInputError(_deep_field(text), f"nested more than {MAX_DEPTH} levels deep") from None
    check_json_value(data)
    return data


def check_json_value(data: Any) -> None:
    """Walk a parsed body (iteratively: no recursion) and raise `JSONInputError` at the first unsafe value."""
    stack: list[tuple[Any, tuple[str, ...]]] = [(data, ())]
    while stack:
        value, path = stack.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                raise JSONInputError(_dotted(path), _surrogate_message(value))
        elif isinstance(value, _Refused):
            raise JSONInputError(_dotted(path), value.why)
        elif isinstance(value, (dict, list)):
            if len(path) >= MAX_DEPTH:
                raise JSONInputError(_dotted(path[:1]), f"nested more than {MAX_DEPTH} levels deep")
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                if isinstance(key, str) and _SURROGATE.search(key):
                    raise JSONInputError(_dotted(path), f"the key {key!a} " + _surrogate_message(key))
                stack.append((item, (*path, str(key))))


def _surrogate_message(text: str) -> str:
    at = _SURROGATE.search(text)
    assert at is not None
    return (
        f"holds a lone surrogate {at.group()!r} at character {at.start()}, which is not text (it has no UTF-8 "
        "encoding); send valid Unicode (pair surrogates, or drop the character)"
    )


def _dotted(path: tuple[str, ...]) -> str:
    return ".".join(path) or "body"


def _deep_field(text: str) -> str:
    """The top-level field holding the first point nested deeper than `MAX_DEPTH` (error path only)."""
    depth = 0
    key: str | None = None
    pending: str | None = None
    for token in _TOKEN.finditer(text):
        t = token.group()
        if t in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return key or "body"
        elif t in "]}":
            depth -= 1
        elif t.startswith('"') and depth == 1:
            pending = t
        elif t == ":" and depth == 1 and pending is not None:
            try:
                key = json.loads(pending)
            except ValueError:
                key = pending.strip('"')
    return key or "body"
