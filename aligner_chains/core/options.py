"""Unknown keyword options: one error everywhere, naming the option and the closest valid one."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from pydantic import BaseModel

from aligner_chains.core.errors import ConfigError


def closest_option(name: str, valid: Iterable[str]) -> str | None:
    """The valid option ``name`` was most likely meant to be (None when nothing is close)."""
    matches = difflib.get_close_matches(name, sorted(set(valid)), n=1, cutoff=0.6)
    return matches[0] if matches else None


def unknown_option_error(name: str, valid: Iterable[str], where: str, hint: str = "") -> ConfigError:
    """A `ConfigError` for option ``name`` that ``where`` does not take, suggesting the closest of ``valid``."""
    close = closest_option(name, valid)
    suggestion = f" Did you mean {close!r}?" if close else ""
    return ConfigError(f"{where} got an unknown option {name!r}.{suggestion}{(' ' + hint) if hint else ''}")


def check_options(
    given: Iterable[str], valid: Iterable[str], where: str, hint: str = "", *, also: Iterable[str] = ()
) -> None:
    """Raise `unknown_option_error` for the first of ``given`` not in ``valid`` (``also``: other names the
    suggestion may point to, such as options taken elsewhere in the same call)."""
    allowed = set(valid)
    for name in given:
        if name not in allowed:
            raise unknown_option_error(name, allowed | set(also), where, hint)


#: How a checkpoint's tokenizer encodes (see `aligner_chains.backends.tokenizers.load_tokenizer`).
TokenizerMode = Literal["auto", "sentencepiece", "transformers"]

#: Keyword arguments of ``Aligner.from_pretrained`` that choose and place the weights (not generation).
LOADING_OPTIONS = frozenset(
    {
        "template",
        "device",
        "dtype",
        "device_map",
        "quantization",
        "adapter",
        "trust_remote_code",
        "allow_pickle",
        "revision",
        "tokenizer_mode",
        "overflow",
        "strategy",
    }
)


def field_names(model_class: type[BaseModel]) -> set[str]:
    """The keyword options a pydantic model takes: its field names and their aliases."""
    fields = model_class.model_fields
    return set(fields) | {f.alias for f in fields.values() if f.alias}


def as_pair(pair: Any, index: int) -> tuple[Any, Any]:
    """Item ``index`` of a ``pairs`` argument as (question, answer): a 2-sequence or a dict with both keys."""
    if isinstance(pair, Sequence) and not isinstance(pair, str) and len(pair) == 2:
        return pair[0], pair[1]
    if isinstance(pair, dict) and "question" in pair and "answer" in pair:
        return pair["question"], pair["answer"]
    raise TypeError(
        f"Item {index} of pairs must be a (question, answer) tuple or a dict with 'question' and 'answer', "
        f"got {type(pair).__name__}: {pair!r:.80}"
    )
