"""A running copy-aware batch: rows join between passes (their prompt pass run apart, its KV cache joined)
and leave as soon as they finish, so one batch serves requests that arrive while it decodes.

`CopyAwareSpeculative.decode` is the case where every row joins at once; in-flight batching
(`aligner_chains.core.batching.MicroBatcher` through `LocalBackend.open_session`) adds rows to a batch
that is already decoding. A row's tokens do not depend on when it joined or who else is in the batch:
joined caches are left-padded with masked positions and position ids count real tokens only, as for
the prompt groups of one prompt pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

import torch
from transformers import DynamicCache

from aligner_chains.backends.local.blocks import (
    Forward,
    compact_cache,
    draft_block,
    join_left_padded,
    joinable,
    keep_path,
    length_groups,
)
from aligner_chains.backends.local.drafting import Row, plan_trees
from aligner_chains.backends.local.forward import forward_parameters

if TYPE_CHECKING:
    from aligner_chains.backends.local.speculative import CopyAwareSpeculative

# Compact the cache (drop rejected drafts and padding) once its length passes this multiple of the
# longest row's real tokens, plus `COMPACT_SLACK`: attention over holes costs as much as over tokens.
COMPACT_RATIO = 1.5
COMPACT_SLACK = 64


class RunningBatch:
    """The rows of one copy-aware batch on one model, their KV cache, attention mask and real-token counts.

    `add` runs the new rows' prompt pass (which verifies the start of each answer) and joins their
    cache to the running one; `step` runs one verification pass over every row; `remove` takes rows
    (finished, or given up by their caller) out of the tensors at once. Callers hold the model's lock
    and ``torch.inference_mode`` around each call.
    """

    def __init__(
        self, strategy: CopyAwareSpeculative, model: Any, pad_token_id: int, eos: set[int], device: Any
    ) -> None:
        self.strategy = strategy
        self.drafter = strategy.drafter
        forward_args = forward_parameters(model)
        self.run = Forward(
            model,
            "cache" if "cache" in forward_args else "past_key_values",  # renamed in transformers 5.x
            "logits_to_keep" in forward_args,
            pad_token_id,
        )
        self.cost = strategy.pass_cost(device)
        self.branches = strategy.tree_masks(model)
        self.memory = strategy.memory(model)
        self.eos = eos
        self.rows: list[Row] = []  # live rows, in tensor order
        self.cache: Any = None
        self.mask: torch.Tensor | None = None
        self.n_real: torch.Tensor | None = None
        self.model_config = model.config

    @cached_property
    def can_join(self) -> bool:
        """Whether this model's KV caches can be joined (rows joining a running batch, prompt groups), decided
        on first need so that a plain batch of one prompt group pays nothing for it."""
        return joinable(DynamicCache(config=self.model_config))

    def __len__(self) -> int:
        return len(self.rows)

    def add(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        sources: Sequence[Sequence[int] | None] | None,
        limits: Sequence[int],
    ) -> list[Row]:
        """New rows (left-padded prompts, each drafting from its source, or its prompt where it has none,
        and writing at most its limit).

        Their prompt pass runs before anything changes, so a failing one leaves the batch as it was.
        """
        if self.rows and not self.can_join:
            raise RuntimeError("this model's KV cache cannot be joined: rows must all start together")
        prompts = [ids[mask.bool()].tolist() for ids, mask in zip(input_ids, attention_mask, strict=True)]
        sources = sources or [None] * len(prompts)
        rows = [
            self.drafter.row(list(src) if src is not None else prompt, limit, self.memory)
            for src, prompt, limit in zip(sources, prompts, limits, strict=True)
        ]
        cache, mask, n_real = self._prefill(input_ids, attention_mask, rows)
        if self.cache is None:
            self.cache, self.mask, self.n_real = cache, mask, n_real
        else:
            assert self.mask is not None and self.n_real is not None
            length = max(self.mask.shape[1], mask.shape[1])
            self.cache = join_left_padded([self.cache, cache], length)
            masks = [torch.nn.functional.pad(m, (length - m.shape[1], 0)) for m in (self.mask, mask)]
            self.mask = torch.cat(masks)
            self.n_real = torch.cat([self.n_real, n_real])
        self.rows += rows
        return rows

    def step(self) -> None:
        """One verification pass over every row (remove finished rows first)."""
        assert self.mask is not None and self.n_real is not None
        rows = self.rows
        cap = max(1, max(self.strategy.block_tokens, self.cost.free) // len(rows))
        trees, width = plan_trees(self.drafter, rows, self.cost, cap, self.branches)
        roots = [[row.generated[-1]] for row in rows]
        self.mask, choices = self.run.verify(self.cache, self.mask, self.n_real, roots, trees, width)
        for k, row in enumerate(rows):
            path, token = trees[k].walk(choices[k].__getitem__)
            self.drafter.accept(row, trees[k], path, token, self.eos)
            keep_path(self.mask, k, self.mask.shape[1] - width, [0, *(node + 1 for node in path)])
            self.n_real[k] += 1 + len(path)
        self._compact_if_holey()

    def passes_left(self) -> float:
        """A rough count of the passes until the last row is done: each row's tokens still to come
        (`Row.remaining`) over the tokens per pass it has had so far."""
        return max(
            (row.remaining() / max(1.0, len(row.generated) / max(1, row.passes)) for row in self.rows), default=0.0
        )

    def finished(self) -> list[Row]:
        """The rows that have written their EOS or reached their limit (still in the batch until removed)."""
        return [row for row in self.rows if row.done]

    def remove(self, rows: Sequence[Row]) -> None:
        """Take ``rows`` out of the batch and its cache; finished ones go to the phrase memory (if on)."""
        gone = {id(row) for row in rows}
        for row in self.rows:
            if id(row) in gone and row.done and self.memory is not None and self.memory.learns:
                self.memory.add(row.generated)
        keep = [k for k, row in enumerate(self.rows) if id(row) not in gone]
        if len(keep) == len(self.rows):
            return
        self.rows = [self.rows[k] for k in keep]
        if not keep:
            self.cache = self.mask = self.n_real = None
            return
        assert self.mask is not None and self.n_real is not None
        index = torch.tensor(keep, device=self.mask.device)
        self.cache.batch_select_indices(index)
        self.mask, self.n_real = self.mask[index], self.n_real[index]
        self._compact_if_holey()

    def _compact_if_holey(self) -> None:
        """Drop rejected drafts and padding from the cache once they outweigh the longest row's real tokens
        (`COMPACT_RATIO`): attention over a hole costs as much as over a token, in every later pass."""
        assert self.mask is not None and self.n_real is not None
        if self.mask.shape[1] > COMPACT_RATIO * int(self.n_real.max()) + COMPACT_SLACK and self.can_join:
            self.mask = compact_cache(self.cache, self.mask)

    def _prefill(
        self, input_ids: torch.Tensor, mask: torch.Tensor, rows: list[Row]
    ) -> tuple[Any, torch.Tensor, torch.Tensor]:
        """The prompt pass, which also verifies each row's first draft (the start of its answer).

        Returns the KV cache, its attention mask and each row's real-token count. Prompts of very
        different lengths run in separate passes, each trimmed to its own longest prompt, and their
        caches are joined, padded on the left with masked zeros; so short prompts do not pay for the
        padding of long ones when that costs more than the extra passes. Every group appends the
        same draft block, as wide as the cost model finds worth it beyond the prompts: on an
        accelerator the whole answer, so an unchanged answer is written in this one pass.
        """
        run, cost = self.run, self.cost
        lengths = mask.sum(-1).tolist()
        groups = length_groups(lengths, cost.overhead)
        if len(groups) > 1 and not self.can_join:
            groups = [list(range(len(rows)))]
        prompt_positions = sum(len(group) * max(lengths[i] for i in group) for group in groups)
        cap = max(1, max(self.strategy.block_tokens, cost.free) // len(rows))
        trees, width = plan_trees(self.drafter, rows, cost, cap, branches=False, fixed=prompt_positions)
        ids, valid, _ = draft_block(trees, width - 1, run.pad_token_id, input_ids.device, mask.dtype)
        ids, full = torch.cat([input_ids, ids], dim=1), torch.cat([mask, valid], dim=1)
        if len(groups) == 1:
            cache, choices = run.prompt(ids, full, width)
        else:
            caches, parts = [], []
            for group in groups:
                index = torch.tensor(group, device=input_ids.device)
                span = max(lengths[i] for i in group) + width - 1
                cache, choice = run.prompt(ids[index, -span:], full[index, -span:], width)
                caches.append(cache)
                parts.append(choice)
            order = torch.tensor([i for group in groups for i in group], device=input_ids.device).argsort()
            cache = join_left_padded(caches, ids.shape[1])
            cache.batch_select_indices(order)
            choices = torch.cat(parts)[order]
        picks = choices.tolist()
        n_real = mask.sum(-1)
        for k, row in enumerate(rows):
            path, token = trees[k].walk(picks[k].__getitem__)
            self.drafter.accept(row, trees[k], path, token, self.eos)
            keep_path(full, k, mask.shape[1], path)
            n_real[k] += len(path)
        return cache, full, n_real


def row_stats(row: Row, decoder: str, reason: str) -> dict[str, Any]:
    """What `Correction.stats` reports of a copy-aware row: passes, drafts, accepted drafts, tokens per pass."""
    return {
        "decoder": decoder,
        "decoder_reason": reason,
        "forward_passes": row.passes,
        "draft_tokens": row.drafted,
        "accepted_draft_tokens": row.accepted,
        "tokens_per_pass": round(len(row.generated) / max(1, row.passes), 3),
    }
