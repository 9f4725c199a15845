"""Preference pairs: load them from JSONL (explicit pairs, correction triples, HH-RLHF transcripts), tokenise, batch.

Three row formats, recognised row by row:

- ``{"prompt", "chosen", "rejected"}``: an explicit pair.
- ``{"question", "answer", "correction"}``: a correction triple; the correction is preferred over the
  answer, for the prompt ``question`` (Aligner bootstrapping: corrections improve the upstream model).
- ``{"chosen", "rejected"}`` (no ``prompt``): Anthropic HH-RLHF style transcripts of
  ``"\\n\\nHuman: ...\\n\\nAssistant: ..."`` turns that share a prefix and differ in the last assistant turn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from aligner_chains.core.errors import DataError
from aligner_chains.finetune.data import IGNORE_INDEX, encode_prompt_completion, read_records

PairFormat = Literal["auto", "pairs", "triples", "hh"]
HUMAN = "\n\nHuman:"
ASSISTANT = "\n\nAssistant:"


@dataclass(frozen=True)
class PreferencePair:
    """A prompt and two responses to it, ``chosen`` preferred over ``rejected``."""

    prompt: str
    chosen: str
    rejected: str


def split_transcripts(chosen: str, rejected: str) -> PreferencePair:
    """Split two HH-RLHF transcripts into the shared prompt (through the last ``"\\n\\nAssistant:"``
    they share) and the two final assistant responses (leading whitespace removed).

    Raises `DataError` when the transcripts do not share a prefix ending in an assistant turn or
    differ before their last assistant turn.
    """
    same = 0
    for x, y in zip(chosen, rejected, strict=False):
        if x != y:
            break
        same += 1
    shared = chosen[:same]
    cut = shared.rfind(ASSISTANT)
    if cut < 0:
        raise DataError(
            f"the transcripts share no prefix ending in {ASSISTANT!r} (shared prefix: {shared[:80]!r}); "
            "HH-RLHF rows must be whole transcripts differing only in the last assistant turn."
        )
    end = cut + len(ASSISTANT)
    prompt, tail_w, tail_l = chosen[:end], chosen[end:], rejected[end:]
    for name, tail in (("chosen", tail_w), ("rejected", tail_l)):
        if HUMAN in tail or ASSISTANT in tail:
            raise DataError(
                f"the {name} transcript has further turns after the last shared assistant turn "
                f"({tail[:80]!r}...); the two transcripts must differ only in their last assistant turn."
            )
    return PreferencePair(prompt=prompt, chosen=tail_w.strip(), rejected=tail_l.strip())


def _row_format(row: dict[str, Any]) -> str | None:
    if "prompt" in row and "chosen" in row and "rejected" in row:
        return "pairs"
    if all(k in row for k in ("question", "answer", "correction")):
        return "triples"
    if "chosen" in row and "rejected" in row:
        return "hh"
    return None


_FIELDS = {"pairs": ("prompt", "chosen", "rejected"), "triples": ("question", "answer", "correction"),
           "hh": ("chosen", "rejected")}  # fmt: skip


def load_pairs(path: str | Path, format: PairFormat = "auto", prompt_format: str = "{prompt}") -> list[PreferencePair]:
    """Read preference pairs from a JSONL file (or a JSON list); errors name the file, line and field.

    ``prompt_format`` wraps every prompt (``"{prompt}"`` keeps it as it is), e.g.
    ``"Question: {prompt}\\nAnswer:"`` for triples fed to a base model. Empty responses are allowed
    (the completion is then EOS alone); empty prompts are not.
    """
    if "{prompt}" not in prompt_format:
        raise DataError(f"prompt_format {prompt_format!r} must contain '{{prompt}}'.")
    pairs: list[PreferencePair] = []
    for number, row in read_records(path):
        where = f"{path}:{number}"
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}.")
        kind = _row_format(row) if format == "auto" else format
        if kind is None:
            raise DataError(
                f"{where}: cannot tell the row's format from its keys {sorted(row)}; expected "
                "prompt/chosen/rejected, question/answer/correction, or chosen/rejected transcripts."
            )
        for field in _FIELDS[kind]:
            value = row.get(field)
            if not isinstance(value, str):
                got = "missing" if field not in row else f"a {type(value).__name__}"
                raise DataError(f"{where}: field {field!r} is {got}; it must be a string ({kind} format).")
        if kind == "pairs":
            pair = PreferencePair(row["prompt"], row["chosen"], row["rejected"])
        elif kind == "triples":
            pair = PreferencePair(row["question"], row["correction"], row["answer"])
        else:
            try:
                pair = split_transcripts(row["chosen"], row["rejected"])
            except DataError as exc:
                raise DataError(f"{where}: {exc}") from exc
        if not pair.prompt.strip():
            raise DataError(f"{where}: the prompt is empty.")
        pairs.append(PreferencePair(prompt_format.replace("{prompt}", pair.prompt), pair.chosen, pair.rejected))
    if not pairs:
        raise DataError(f"{path} holds no preference pairs.")
    return pairs


@dataclass
class PairExample:
    """A tokenised pair: prompt ids, and each completion's ids (EOS included unless truncated)."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]

    @property
    def identical(self) -> bool:
        """The two completions are the same tokens: the pair carries no signal and is masked."""
        return self.chosen_ids == self.rejected_ids

    @property
    def input_ids(self) -> list[int]:
        """The longer of the two full sequences (what batch planning sizes a pair by)."""
        return self.prompt_ids + max(self.chosen_ids, self.rejected_ids, key=len)


def encode_pair(
    tokenizer: Any, pair: PreferencePair, max_length: int, max_prompt_length: int | None = None
) -> tuple[PairExample, bool]:
    """Tokenise a pair as inference would (prompt, then " " + response + EOS) and fit it in ``max_length``.

    A prompt over ``max_prompt_length`` keeps its end; completions are then cut to what is left
    (losing their EOS). Returns the example and whether anything was cut.
    """
    prompt_ids, chosen = encode_prompt_completion(tokenizer, pair.prompt, pair.chosen)
    prompt_l, rejected = encode_prompt_completion(tokenizer, pair.prompt, pair.rejected)
    if prompt_l != prompt_ids:  # cannot happen with the same prompt; kept as a guard
        raise DataError(f"prompt tokenised two ways: {pair.prompt[:80]!r}")
    limit = max_prompt_length if max_prompt_length is not None else max_length // 2
    cut = False
    if len(prompt_ids) > limit:
        prompt_ids, cut = prompt_ids[-limit:], True
    room = max_length - len(prompt_ids)
    if len(chosen) > room or len(rejected) > room:
        chosen, rejected, cut = chosen[:room], rejected[:room], True
    return PairExample(prompt_ids, chosen, rejected), cut


def collate_pairs(examples: Sequence[PairExample], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-padded rows: the chosen sequences of every pair, then the rejected ones (one forward)."""
    sequences = [(e.prompt_ids, e.chosen_ids) for e in examples] + [(e.prompt_ids, e.rejected_ids) for e in examples]
    width = max(len(p) + len(c) for p, c in sequences)
    input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(sequences), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, (prompt, completion) in enumerate(sequences):
        n = len(prompt) + len(completion)
        input_ids[row, :n] = torch.tensor(prompt + completion)
        labels[row, len(prompt) : n] = torch.tensor(completion, dtype=torch.long)
        attention_mask[row, :n] = 1
    return {
        "input_ids": input_ids,
        "labels": labels,
        "attention_mask": attention_mask,
        "valid": torch.tensor([not e.identical for e in examples], dtype=torch.bool),
    }
