"""Correction data: read and validate rows, render with the core template, mask the prompt, plan batches."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from aligner_chains.core.errors import DataError
from aligner_chains.core.templates import Template
from aligner_chains.jobs import jsonl_lines

IGNORE_INDEX = -100
CORRECTION_FIELDS = ("question", "answer", "correction")


def read_records(path: str | Path) -> list[tuple[int, Any]]:
    """(line or item number, parsed value) for a JSONL file or a JSON list; bad JSON names the line."""
    file = Path(path)
    if not file.is_file():
        raise DataError(f"Data file {str(file)!r} does not exist.")
    return parse_records(file.read_text(encoding="utf-8"), str(file))


def parse_records(text: str, where: str) -> list[tuple[int, Any]]:
    """`read_records` on text already read (e.g. decompressed); ``where`` names the source in errors."""
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}:{exc.lineno}: not valid JSON ({exc.msg}).") from exc
        return list(enumerate(items, start=1))
    records = []
    for number, line in jsonl_lines(text):  # split at LF only: U+2028 & co. may stand raw in JSON strings
        try:
            records.append((number, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}:{number}: not valid JSON ({exc.msg}).") from exc
    return records


def load_rows(path: str | Path, fields: Sequence[str] = CORRECTION_FIELDS) -> list[dict[str, str]]:
    """Rows with every field a non-empty string; the first bad row raises `DataError` (file, line, field)."""
    rows = []
    records = read_records(path)
    where = "item" if Path(path).read_text(encoding="utf-8").lstrip().startswith("[") else "line"
    for number, row in records:
        if not isinstance(row, dict):
            raise DataError(f"{path}:{number}: {where} {number} must be a JSON object, got {type(row).__name__}.")
        for field in fields:
            value = row.get(field)
            if not isinstance(value, str):
                got = "missing" if field not in row else f"a {type(value).__name__}"
                raise DataError(f"{path}:{number}: field {field!r} is {got}; it must be a string.")
            if not value.strip():
                raise DataError(f"{path}:{number}: field {field!r} is empty.")
        rows.append({field: row[field] for field in fields})
    if not rows:
        raise DataError(f"{path} holds no rows.")
    return rows


@dataclass
class Example:
    """One tokenised example: prompt and completion ids; labels mask the prompt."""

    input_ids: list[int]
    labels: list[int]

    @property
    def n_loss_tokens(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE_INDEX)


def encode_prompt_completion(tokenizer: Any, prompt: str, completion: str) -> tuple[list[int], list[int]]:
    """Token ids of ``prompt`` (as inference encodes it) and of the completion that follows it + EOS.

    The completion is what the model must generate after the prompt: a space, the text, then EOS.
    Joint tokenisation is used when it splits cleanly at the prompt boundary, so training sees the
    same ids inference would produce.
    """
    prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    joint = tokenizer(prompt + " " + completion, add_special_tokens=True)["input_ids"]
    if joint[: len(prompt_ids)] == prompt_ids:
        completion_ids = joint[len(prompt_ids) :]
    else:
        completion_ids = tokenizer(" " + completion, add_special_tokens=False)["input_ids"]
    return prompt_ids, [*completion_ids, tokenizer.eos_token_id]


def encode_example(tokenizer: Any, template: Template, question: str, answer: str, correction: str) -> Example:
    """Render with the core template; loss on the correction tokens and EOS only."""
    prompt_ids, completion_ids = encode_prompt_completion(tokenizer, template.render(question, answer), correction)
    return Example(
        input_ids=prompt_ids + completion_ids,
        labels=[IGNORE_INDEX] * len(prompt_ids) + completion_ids,
    )


def identity_rows(rows: list[dict[str, str]], fraction: float, seed: int) -> list[dict[str, str]]:
    """Q-A-A rows (the correction is the answer itself) from a ``fraction`` of ``rows``: the warm-up stage."""
    if fraction <= 0:
        return []
    rng = random.Random(seed)
    picked = rng.sample(range(len(rows)), max(1, round(len(rows) * fraction)))
    return [{**rows[i], "correction": rows[i]["answer"]} for i in sorted(picked)]


def split_eval(
    rows: list[dict[str, str]], fraction: float, seed: int
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Hold out a deterministic ``fraction`` of rows for eval loss (at least one when fraction > 0)."""
    if fraction <= 0 or len(rows) < 2:
        return rows, []
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, round(len(rows) * fraction))
    held = set(order[:n_eval])
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


def plan_micro_batches(
    lengths: Sequence[int],
    batch_size: int,
    seed: int,
    epoch: int,
    *,
    group_by_length: bool = True,
) -> list[list[int]]:
    """Deterministic micro-batches of example indices for one epoch (shuffled; similar lengths grouped)."""
    rng = random.Random(f"{seed}-{epoch}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if group_by_length:
        window = batch_size * 50
        order = [
            i
            for start in range(0, len(order), window)
            for i in sorted(order[start : start + window], key=lengths.__getitem__)
        ]
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(examples: Sequence[Example], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a micro-batch; padded label positions carry no loss."""
    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        input_ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
