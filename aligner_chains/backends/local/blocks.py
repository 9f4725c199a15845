"""The tensors of copy-aware decoding: the model's forward over prompts and draft blocks, block layout,
tree masks, and KV caches joined across row groups (left-padded with masked positions)."""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache

from aligner_chains.backends.local.drafting import DraftTree
from aligner_chains.backends.local.forward import position_ids_from_mask


class Forward:
    """The model's forward as copy-aware decoding calls it: prompt passes and verification blocks."""

    def __init__(self, model: Any, cache_arg: str, last_only: bool, pad_token_id: int) -> None:
        self.model = model
        self.cache_arg = cache_arg
        self.last_only = last_only  # forward takes logits_to_keep
        self.pad_token_id = pad_token_id
        # Masked padding in a block may sit past the last real position: keep its id in range.
        self.last_position = int(getattr(model.config, "max_position_embeddings", 0) or 0) - 1
        self.tree_mask = "float" if getattr(model.config, "_attn_implementation", None) == "eager" else "bool"

    def prompt(self, ids: torch.Tensor, mask: torch.Tensor, keep: int) -> tuple[Any, torch.Tensor]:
        """A fresh KV cache over left-padded ``ids`` and the greedy choices after each of the last ``keep``."""
        cache = DynamicCache(config=self.model.config)
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=self._clamp(position_ids_from_mask(mask)),
            use_cache=True,
            **({"logits_to_keep": keep} if self.last_only else {}),  # a fraction of the compute on small models
            **{self.cache_arg: cache},
        )
        return cache, out.logits[:, -keep:].argmax(-1)

    def verify(
        self,
        cache: Any,
        mask: torch.Tensor,
        n_real: torch.Tensor,
        roots: list[list[int]],
        trees: list[DraftTree],
        width: int,
    ) -> tuple[torch.Tensor, list[list[int]]]:
        """One verification pass of ``[root, tree...]`` per row: the extended mask and the greedy choices.

        Chains need only the 2-D mask; a branching tree gets a 4-D mask in which each node sees the
        cache and its own ancestors.
        """
        ids, valid, offsets = draft_block(trees, width, self.pad_token_id, mask.device, mask.dtype, roots)
        positions = self._clamp(n_real.unsqueeze(1) + offsets)
        past = mask.shape[1]
        mask = torch.cat([mask, valid], dim=1)
        attention = mask
        if not all(tree.is_chain() for tree in trees):
            attention = self._tree_mask(mask, past, trees, width)
        logits = self.model(
            input_ids=ids, attention_mask=attention, position_ids=positions, use_cache=True, **{self.cache_arg: cache}
        ).logits
        return mask, logits.argmax(-1).tolist()

    def _tree_mask(self, mask: torch.Tensor, past: int, trees: list[DraftTree], width: int) -> torch.Tensor:
        """(rows, 1, width, past + width): every query sees the visible cache and its ancestors in the block."""
        rows = mask.shape[0]
        allowed = torch.zeros((rows, 1, width, past + width), dtype=torch.bool, device=mask.device)
        allowed[:, 0, :, :past] = mask[:, None, :past].bool()
        for k, tree in enumerate(trees):
            allowed[k, 0, :, past:] = tree_ancestry(tree, width, mask.device)
        if self.tree_mask == "bool":
            return allowed
        dtype = getattr(self.model, "dtype", torch.float32)
        return torch.zeros(allowed.shape, dtype=dtype, device=mask.device).masked_fill(~allowed, torch.finfo(dtype).min)

    def _clamp(self, positions: torch.Tensor) -> torch.Tensor:
        return positions.clamp(max=self.last_position) if self.last_position > 0 else positions


def draft_block(
    trees: list[DraftTree],
    width: int,
    pad_token_id: int,
    device: torch.device,
    dtype: torch.dtype,
    roots: list[list[int]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token ids, validity and position offsets (depth) of ``[*root, *tree.tokens]`` per row, padded to ``width``."""
    ids = torch.full((len(trees), width), pad_token_id, dtype=torch.long)
    valid = torch.zeros((len(trees), width), dtype=dtype)
    offsets = torch.arange(width).repeat(len(trees), 1)
    for k, tree in enumerate(trees):
        root = roots[k] if roots is not None else []
        tokens = [*root, *tree.tokens]
        ids[k, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        valid[k, : len(tokens)] = 1
        offsets[k, len(root) : len(tokens)] = torch.tensor(tree.depths, dtype=torch.long) - 1 + len(root)
    return ids.to(device), valid.to(device), offsets.to(device)


def tree_ancestry(tree: DraftTree, width: int, device: torch.device) -> torch.Tensor:
    """(width, width) bool: block position i sees block position j (the root is position 0).

    Each candidate adds its new nodes as one run hanging off an earlier node (`DraftTree.build`), so
    a run sees what its attachment point sees plus itself, causally.
    """
    seen = torch.zeros((width, width), dtype=torch.bool)
    seen[0, 0] = True
    start = 0
    while start < len(tree):
        end = start + 1
        while end < len(tree) and tree.parents[end] == end - 1:
            end += 1
        run = slice(start + 1, end + 1)
        seen[run] = seen[tree.parents[start] + 1]
        seen[run, run] = torch.ones((end - start, end - start), dtype=torch.bool).tril()
        start = end
    padding = torch.arange(len(tree) + 1, width)  # the root and itself, so no attention row is empty
    seen[padding, 0] = seen[padding, padding] = True
    return seen.to(device)


def keep_path(mask: torch.Tensor, row: int, start: int, positions: list[int]) -> None:
    """Leave only ``positions`` (offsets from ``start``) of the last block visible in ``row`` of ``mask``."""
    mask[row, start:] = 0
    if positions:
        mask[row, torch.tensor(positions, device=mask.device) + start] = 1


def joinable(cache: Any) -> bool:
    """Plain growing per-layer caches (keys and values of shape batch x heads x length x dim) can be joined."""
    layers = getattr(cache, "layers", None)  # transformers >= 4.54
    return bool(layers) and all(type(layer).__name__ == "DynamicLayer" for layer in layers)


def join_left_padded(caches: list[Any], length: int) -> Any:
    """Stack caches of row groups into one (in group order), left-padding each to ``length`` positions."""
    joined = caches[0]
    for number, layer in enumerate(joined.layers):
        for name in ("keys", "values"):
            parts = [getattr(cache.layers[number], name) for cache in caches]
            padded = [torch.nn.functional.pad(t, (0, 0, length - t.shape[-2], 0)) for t in parts]
            setattr(layer, name, torch.cat(padded, dim=0))
    return joined


def length_groups(lengths: list[int], pass_cost: int) -> list[list[int]]:
    """Split rows into passes by length so that total cost, ``pass_cost`` per pass plus rows x
    longest length per pass, is least (exact: dynamic programming over rows sorted by length)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    n = len(order)
    best = [0.0] + [float("inf")] * n  # best[j]: least cost of the first j sorted rows
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j):  # rows i..j-1 in one pass, padded to the longest, lengths[order[i]]
            cost = best[i] + pass_cost + (j - i) * lengths[order[i]]
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups: list[list[int]] = []
    j = n
    while j > 0:
        groups.append(order[cut[j] : j])
        j = cut[j]
    return groups[::-1]


def compact_cache(cache: Any, mask: torch.Tensor) -> torch.Tensor:
    """Drop the masked positions (rejected drafts, padding) of a joinable cache in place; the new mask.

    Each row keeps its visible positions in order, right-aligned and left-padded with masked copies.
    Keys carry their rotary positions already and position ids count real tokens, so what every
    query sees is unchanged.
    """
    visible = [row.nonzero().squeeze(-1) for row in mask]
    length = max(len(v) for v in visible)
    index = torch.zeros((mask.shape[0], length), dtype=torch.long, device=mask.device)
    compacted = torch.zeros((mask.shape[0], length), dtype=mask.dtype, device=mask.device)
    for r, kept in enumerate(visible):
        index[r, length - len(kept) :] = kept
        compacted[r, length - len(kept) :] = 1
    for layer in cache.layers:
        for name in ("keys", "values"):
            tensor = getattr(layer, name)
            rows, heads, _, dim = tensor.shape
            gather = index[:, None, :, None].expand(rows, heads, length, dim).to(tensor.device)
            setattr(layer, name, tensor.gather(2, gather))
    return compacted
