"""Summed completion log-probs under a policy and its frozen reference, and batched on-policy sampling."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from aligner_chains.backends.local.forward import forward_parameters, position_ids_from_mask
from aligner_chains.finetune.data import IGNORE_INDEX


def label_logits(model: Any, batch: dict[str, torch.Tensor], **forward: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token logits at the columns where some row has a label, and the labels they predict.

    Only those columns go through the LM head (``logits_to_keep``), so the largest activation of
    training, batch x length x vocabulary, shrinks to the completion's span when prompts are masked.
    Returns ``(logits [batch, k, vocab], labels [batch, k])``; labels are ``IGNORE_INDEX`` where a
    row has none. Models without ``logits_to_keep`` compute every column and are sliced after.
    """
    labels = batch["labels"][:, 1:]
    columns = (labels != IGNORE_INDEX).any(0).nonzero().squeeze(-1)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], **forward}
    if "logits_to_keep" in forward_parameters(model):
        logits = model(**inputs, logits_to_keep=columns).logits
    else:
        logits = model(**inputs).logits[:, :-1][:, columns]
    return logits, labels[:, columns]


def sequence_logps(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-prob of the label tokens of every row, and how many label tokens each row has.

    ``batch`` holds ``input_ids``, ``attention_mask`` and ``labels`` (``IGNORE_INDEX`` outside the
    completion); padding may be on either side.
    """
    logits, labels = label_logits(
        model, batch, position_ids=position_ids_from_mask(batch["attention_mask"]), use_cache=False
    )
    mask = labels != IGNORE_INDEX
    safe = labels.masked_fill(~mask, 0)
    token_logps = torch.gather(logits.float().log_softmax(-1), 2, safe.unsqueeze(-1)).squeeze(-1)
    return (token_logps * mask).sum(-1), mask.sum(-1)


class Reference:
    """The frozen reference policy of a preference loss.

    With LoRA the reference is the policy itself with its adapters disabled (no second copy in
    memory); otherwise a frozen copy of the initial weights, made before training starts.
    """

    def __init__(self, policy: Any, *, uses_adapters: bool) -> None:
        self.uses_adapters = uses_adapters
        self.frozen: Any = None
        if not uses_adapters:
            self.frozen = copy.deepcopy(policy)
            self.frozen.requires_grad_(False)
            self.frozen.eval()

    def to(self, device: Any) -> Reference:
        if self.frozen is not None:
            self.frozen.to(device)
        return self

    @contextmanager
    def _model(self, policy: Any) -> Iterator[Any]:
        if self.frozen is not None:
            yield self.frozen
            return
        with policy.disable_adapter():
            yield policy

    @torch.no_grad()
    def logps(self, policy: Any, batch: dict[str, torch.Tensor], autocast: Any = None) -> torch.Tensor:
        """Summed completion log-probs under the reference (``policy`` is the unwrapped policy)."""
        with self._model(policy) as model, autocast or nullcontext():
            return sequence_logps(model, batch)[0]


@dataclass
class Samples:
    """Sampled completions of left-padded prompts, ready for one log-prob forward.

    Row ``2*i + k`` is completion ``k`` of prompt ``i`` when two were drawn per prompt.
    """

    input_ids: torch.Tensor  # prompt (left-padded) + completion (right-padded)
    attention_mask: torch.Tensor
    labels: torch.Tensor  # completion tokens (EOS included when it was sampled)
    completion_ids: list[list[int]]  # tokens before EOS
    ended: list[bool]  # whether EOS was sampled
    texts: list[str]

    @property
    def lengths(self) -> list[int]:
        """Response length in tokens: the tokens before EOS."""
        return [len(ids) for ids in self.completion_ids]

    def batch(self, rows: Sequence[int]) -> dict[str, torch.Tensor]:
        index = torch.tensor(list(rows), dtype=torch.long)
        return {
            "input_ids": self.input_ids[index],
            "attention_mask": self.attention_mask[index],
            "labels": self.labels[index],
        }


def eos_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """EOS ids from the model's generation config and the tokenizer."""
    ids: list[int] = []
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.append(configured)
    elif isinstance(configured, (list, tuple)):
        ids.extend(int(i) for i in configured)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(int(tokenizer.eos_token_id))
    return ids


@torch.no_grad()
def sample_completions(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    num_return_sequences: int = 2,
    max_new_tokens: int = 64,
    max_prompt_length: int | None = None,
    do_sample: bool = True,
    temperature: float = 1.0,
    top_p: float | None = None,
    top_k: int | None = None,
    device: Any = None,
) -> Samples:
    """One batched ``generate`` over left-padded ``prompts``; prompts longer than ``max_prompt_length``
    tokens keep their end. Completions are cut after their first EOS; the model's train/eval mode is
    restored afterwards.
    """
    device = device or next(model.parameters()).device
    encoded = [tokenizer(p, add_special_tokens=True)["input_ids"] for p in prompts]
    if max_prompt_length is not None:
        encoded = [ids[-max_prompt_length:] for ids in encoded]
    pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
    width = max(len(ids) for ids in encoded)
    input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, ids in enumerate(encoded):
        input_ids[row, width - len(ids) :] = torch.tensor(ids)
        prompt_mask[row, width - len(ids) :] = 1
    stops = eos_token_ids(model, tokenizer)
    kwargs: dict[str, Any] = {"do_sample": do_sample, "max_new_tokens": max_new_tokens}
    if do_sample:
        kwargs.update(temperature=temperature, top_p=top_p, top_k=top_k if top_k is not None else 0)
    was_training = model.training
    model.eval()
    try:
        # Rows repeated here rather than with num_return_sequences, which greedy decoding refuses.
        out = model.generate(
            input_ids=input_ids.repeat_interleave(num_return_sequences, dim=0).to(device),
            attention_mask=prompt_mask.repeat_interleave(num_return_sequences, dim=0).to(device),
            eos_token_id=stops,
            pad_token_id=pad_id,
            use_cache=True,
            **kwargs,
        ).cpu()
    finally:
        model.train(was_training)
    new = out[:, width:]
    prompt_mask = prompt_mask.repeat_interleave(num_return_sequences, dim=0)
    completion_mask = torch.zeros_like(new)
    labels_new = torch.full_like(new, IGNORE_INDEX)
    completion_ids: list[list[int]] = []
    ended: list[bool] = []
    stop_set = set(stops)
    for row, tokens in enumerate(new.tolist()):
        n, stopped = len(tokens), False
        for j, token in enumerate(tokens):
            if token in stop_set:
                n, stopped = j, True
                break
        keep = n + 1 if stopped else n
        completion_mask[row, :keep] = 1
        labels_new[row, :keep] = new[row, :keep]
        completion_ids.append(tokens[:n])
        ended.append(stopped)
    texts = [
        tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False).strip()
        for ids in completion_ids
    ]
    return Samples(
        input_ids=out,
        attention_mask=torch.cat([prompt_mask, completion_mask], dim=1),
        labels=torch.cat([torch.full_like(prompt_mask, IGNORE_INDEX), labels_new], dim=1),
        completion_ids=completion_ids,
        ended=ended,
        texts=texts,
    )
