"""Copy-aware speculative decoding: draft from the answer being corrected, verify a block per forward pass.

Most of a correction copies the answer it corrects. The prompt pass already verifies the start of
each row's answer as its draft; then each step every row drafts what followed its last generated
n-gram in its answer (or in its own output so far), as a tree of candidate continuations
(`aligner_chains.backends.local.drafting`), the model scores ``[last token, tree...]`` in one
forward pass with the KV cache, and the row keeps the longest path of the tree the model agrees
with plus the model's own next token. Greedy output is therefore the model's greedy output, token
for token in exact arithmetic (in half precision a block's sums round differently from one
token's: see the README); rows accept different numbers of tokens.

Rows advance unevenly, so rejected drafts stay in the cache as masked holes: the 2-D attention
mask marks them invisible and position ids count only real tokens, which keeps the arithmetic
that of an unbroken sequence. That holds only for full attention over a dynamic KV cache through
an attention implementation that honours such a mask: models with a sliding window, recurrent or
convolution state, or another attention kernel take plain ``generate`` (decided once per model by
`aligner_chains.backends.local.forward.copy_aware_blocker`; ``Correction.stats`` says which decoder
ran and why). A branching tree needs a 4-D mask (each node sees its ancestors only); models that
do not take one (`aligner_chains.backends.local.forward.tree_mask_blocker`) verify the primary
draft alone. Each row stops at its own token limit, and finished rows leave the batch (and its
cache), so a long correction does not keep its short batch-mates computing.

The cost model (`aligner_chains.backends.local.drafting.PassCost`) weighs compute against passes:
the prompt pass runs prompts of very different lengths apart and joins their caches, each block
is only as wide as the expected accepted tokens pay for, so one eager row does not pad the whole
batch on a CPU, and on an accelerator, where a pass costs about the same for one token or many,
drafts run to the rest of the answer: an unchanged answer takes one pass, a correction with k
edited regions about k + 1.
"""

from __future__ import annotations

import dataclasses
import threading
import weakref
from typing import Any, Literal

import torch
from transformers import DynamicCache

from aligner_chains.backends.local.drafting import (
    ACCELERATOR_COST,
    CPU_COST,
    Drafter,
    DraftTree,
    PassCost,
    PhraseMemory,
    Row,
    plan_trees,
)
from aligner_chains.backends.local.forward import (
    forward_parameters,
    model_blocker,
    position_ids_from_mask,
    tree_mask_blocker,
)
from aligner_chains.backends.local.settings import inherited_settings
from aligner_chains.backends.local.strategy import DecodeResult, DecodingStrategy, HFGenerate
from aligner_chains.core.errors import ConfigError
from aligner_chains.core.generation import GenerationParams

# Generation settings under which greedy verification is exact; anything else takes the plain path.
_EXACT_KEYS = {"max_new_tokens", "do_sample"}

# Per loaded model, decided once: `model_blocker` and `tree_mask_blocker` (weak keys: a cached verdict never
# keeps a model alive).
_BLOCKERS: weakref.WeakKeyDictionary[Any, str | None] = weakref.WeakKeyDictionary()
_TREE_BLOCKERS: weakref.WeakKeyDictionary[Any, str | None] = weakref.WeakKeyDictionary()
_BLOCKERS_LOCK = threading.Lock()

CostModel = Literal["cpu", "accelerator"]


def cached_model_blocker(model: Any) -> str | None:
    """`model_blocker` of ``model``, computed on first use and kept for the model's lifetime."""
    with _BLOCKERS_LOCK:
        if model not in _BLOCKERS:
            _BLOCKERS[model] = model_blocker(model)
        return _BLOCKERS[model]


def cached_tree_mask_blocker(model: Any) -> str | None:
    """`tree_mask_blocker` of ``model``, computed on first use and kept for the model's lifetime."""
    with _BLOCKERS_LOCK:
        if model not in _TREE_BLOCKERS:
            _TREE_BLOCKERS[model] = tree_mask_blocker(model)
        return _TREE_BLOCKERS[model]


class CopyAwareSpeculative(DecodingStrategy):
    """Greedy decoding that drafts from each row's source text (the answer) and verifies in blocks.

    ``max_draft`` bounds a draft where passes are cheap; a row's draft length grows while its drafts
    are accepted and shrinks when they are not. ``block_tokens`` caps the drafts of one pass over
    the whole batch. ``max_candidates`` is how many continuations a row's draft tree may hold.
    ``cost_model`` says what a forward pass costs (None: ``"cpu"`` on a CPU, ``"accelerator"``
    elsewhere): on a CPU every position costs, beyond ``pass_cost_tokens`` per pass (default 48); on
    an accelerator a pass computes up to ``pass_cost_tokens`` positions (default 2048) for the price
    of one, so drafts run to the rest of the answer and alternatives ride along. It decides how the
    prompt pass groups prompts of different lengths, how wide a block is worth making (a block is
    as wide as its widest row, so on a busy CPU rows that rarely hit do not pad the batch) and how
    many drafts the prompt pass verifies. ``memory_tokens`` is how much of a model's recent output
    each model keeps to draft from (`PhraseMemory`: refusals and placeholders a correction writes
    anew). It is off by default (0): with it, a request's latency depends on what earlier requests of
    other users produced, a timing side channel on a shared server; 16384 is a good size to opt in.
    Sampling and non-greedy settings, and models it is not exact on, fall
    back to ``fallback``.
    """

    name = "copy-aware"

    def __init__(
        self,
        max_draft: int = 24,
        min_draft: int = 8,
        max_ngram: int = 3,
        block_tokens: int = 192,
        fallback: DecodingStrategy | None = None,
        pass_cost_tokens: int | None = None,
        cost_model: CostModel | None = None,
        max_candidates: int = 8,
        memory_tokens: int = 0,
    ):
        if cost_model not in (None, "cpu", "accelerator"):
            raise ConfigError(f"cost_model={cost_model!r} is not a cost model; use 'cpu', 'accelerator' or None.")
        if pass_cost_tokens is not None and pass_cost_tokens < 0:
            raise ConfigError(f"pass_cost_tokens={pass_cost_tokens} is negative; use 0 or more (or None).")
        self.block_tokens = block_tokens
        self.pass_cost_tokens = pass_cost_tokens
        self.cost_model = cost_model
        if memory_tokens < 0:
            raise ConfigError(f"memory_tokens={memory_tokens} is negative; use 0 (no memory) or more.")
        self.drafter = Drafter(max_draft, min_draft, max_ngram, max_candidates)
        self.fallback = fallback or HFGenerate()
        self.memory_tokens = memory_tokens
        self._memories: weakref.WeakKeyDictionary[Any, PhraseMemory] = weakref.WeakKeyDictionary()
        self._memories_lock = threading.Lock()

    def memory(self, model: Any) -> PhraseMemory | None:
        """The `PhraseMemory` of ``model`` (None when ``memory_tokens`` is 0), made on first use."""
        if self.memory_tokens == 0:
            return None
        with self._memories_lock:
            if model not in self._memories:
                self._memories[model] = PhraseMemory(self.memory_tokens, self.drafter.max_ngram)
            return self._memories[model]

    @property
    def max_draft(self) -> int:
        return self.drafter.max_draft

    def is_exact_for(self, params: GenerationParams) -> bool:
        """True when greedy verification reproduces plain decoding for these settings."""
        settings = params.generate_kwargs()
        return (
            not params.do_sample
            and set(settings) <= _EXACT_KEYS | {"repetition_penalty"}
            and (settings.get("repetition_penalty") in (None, 1.0))
        )

    def mixes_limits(self, params: GenerationParams) -> bool:
        return self.is_exact_for(params)

    def fallback_reason(self, model: Any, params: GenerationParams) -> str | None:
        """Why this call takes plain ``generate``: settings greedy verification does not reproduce, or a
        model it is not exact on (`aligner_chains.backends.local.forward.copy_aware_blocker`)."""
        if not self.is_exact_for(params):
            settings = params.generate_kwargs()
            odd = {k: v for k, v in settings.items() if k not in _EXACT_KEYS or (k == "do_sample" and v)}
            return (
                "generation settings greedy verification does not reproduce ("
                + ", ".join(f"{k}={v!r}" for k, v in sorted(odd.items()))
                + ")"
            )
        inherited = inherited_settings(model, params)  # generate would apply them; verification would not
        if inherited:
            return (
                "the checkpoint's generation_config sets "
                + ", ".join(f"{k}={v!r}" for k, v in sorted(inherited.items()))
                + ", which plain generate applies"
            )
        return cached_model_blocker(model)

    def pass_cost(self, device: torch.device | str) -> PassCost:
        """The cost model on ``device``: `CPU_COST` or `ACCELERATOR_COST`, with ``pass_cost_tokens`` if set."""
        kind = self.cost_model or ("cpu" if torch.device(device).type == "cpu" else "accelerator")
        base = CPU_COST if kind == "cpu" else ACCELERATOR_COST
        overhead = base.overhead if self.pass_cost_tokens is None else self.pass_cost_tokens
        return PassCost(overhead, overhead if base.free else 0)

    def decode(
        self,
        model: Any,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        params: GenerationParams,
        *,
        eos_token_ids: list[int],
        pad_token_id: int,
        streamer: Any = None,
        stop_event: threading.Event | None = None,
        sources: list[list[int]] | None = None,
        limits: list[int] | None = None,
    ) -> DecodeResult:
        reason = self.fallback_reason(model, params)
        if reason is not None:
            result = self.fallback.decode(
                model,
                input_ids,
                attention_mask,
                params,
                eos_token_ids=eos_token_ids,
                pad_token_id=pad_token_id,
                streamer=streamer,
                stop_event=stop_event,
                limits=limits,
            )
            stats = [{**row, "decoder": self.fallback.name, "decoder_reason": reason} for row in result.stats]
            return dataclasses.replace(result, stats=stats)
        device = input_ids.device
        if limits is None:
            limits = [int(params.max_new_tokens or 1)] * input_ids.shape[0]
        eos = set(eos_token_ids)
        if sources is None:
            sources = [ids[mask.bool()].tolist() for ids, mask in zip(input_ids, attention_mask, strict=True)]
        memory = self.memory(model)
        rows = [self.drafter.row(src, limit, memory) for src, limit in zip(sources, limits, strict=True)]
        if streamer is not None:
            streamer.put(input_ids.cpu())

        forward_args = forward_parameters(model)
        run = _Forward(
            model,
            "cache" if "cache" in forward_args else "past_key_values",  # renamed in transformers 5.x
            "logits_to_keep" in forward_args,
            pad_token_id,
        )
        cost = self.pass_cost(device)
        branches = cached_tree_mask_blocker(model) is None
        cache, mask, n_real = self._prefill(run, input_ids, attention_mask, rows, cost, eos)
        self._stream(streamer, rows, [row.generated[:] for row in rows])
        live = list(range(len(rows)))  # the rows still in the batch tensors, in tensor order

        while True:
            keep = [k for k, r in enumerate(live) if not rows[r].done]
            if not keep:
                break
            if len(keep) < len(live):  # drop finished rows from the batch and the cache
                index = torch.tensor(keep, device=device)
                cache.batch_select_indices(index)
                mask, n_real = mask[index], n_real[index]
                live = [live[k] for k in keep]
            if stop_event is not None and stop_event.is_set():
                break
            batch = [rows[r] for r in live]
            cap = max(1, max(self.block_tokens, cost.free) // len(live))
            trees, width = plan_trees(self.drafter, batch, cost, cap, branches)
            roots = [[row.generated[-1]] for row in batch]
            mask, choices = run.verify(cache, mask, n_real, roots, trees, width)
            before = [len(row.generated) for row in rows]
            for k, row in enumerate(batch):
                path, token = trees[k].walk(choices[k].__getitem__)
                self.drafter.accept(row, trees[k], path, token, eos)
                _keep_path(mask, k, mask.shape[1] - width, [0, *(node + 1 for node in path)])
                n_real[k] += 1 + len(path)
            self._stream(streamer, rows, [row.generated[b:] for row, b in zip(rows, before, strict=True)])

        if streamer is not None:
            streamer.end()
        for row in rows if memory is not None else ():
            memory.add(row.generated)
        width = max(len(row.generated) for row in rows)
        tokens = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
        for r, row in enumerate(rows):
            tokens[r, : len(row.generated)] = torch.tensor(row.generated, dtype=torch.long)
        attention = getattr(model.config, "_attn_implementation", None)
        why = f"greedy settings; full attention over a dynamic KV cache ({attention})"
        stats = [
            {
                "decoder": self.name,
                "decoder_reason": why,
                "forward_passes": row.passes,
                "draft_tokens": row.drafted,
                "accepted_draft_tokens": row.accepted,
                "tokens_per_pass": round(len(row.generated) / row.passes, 3),
            }
            for row in rows
        ]
        return DecodeResult(tokens=tokens, stats=stats)

    def _prefill(
        self, run: _Forward, input_ids: torch.Tensor, mask: torch.Tensor, rows: list[Row], cost: PassCost, eos: set[int]
    ) -> tuple[Any, torch.Tensor, torch.Tensor]:
        """The prompt pass, which also verifies each row's first draft (the start of its answer).

        Returns the KV cache, its attention mask and each row's real-token count. Prompts of very
        different lengths run in separate passes, each trimmed to its own longest prompt, and their
        caches are joined, padded on the left with masked zeros; so short prompts do not pay for the
        padding of long ones when that costs more than the extra passes. Every group appends the
        same draft block, as wide as the cost model finds worth it beyond the prompts: on an
        accelerator the whole answer, so an unchanged answer is written in this one pass.
        """
        lengths = mask.sum(-1).tolist()
        groups = length_groups(lengths, cost.overhead)
        if len(groups) > 1 and not _joinable(DynamicCache(config=run.model.config)):
            groups = [list(range(len(rows)))]
        prompt_positions = sum(len(group) * max(lengths[i] for i in group) for group in groups)
        cap = max(1, max(self.block_tokens, cost.free) // len(rows))
        trees, width = plan_trees(self.drafter, rows, cost, cap, branches=False, fixed=prompt_positions)
        ids, valid, _ = _block(trees, width - 1, run.pad_token_id, input_ids.device, mask.dtype)
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
            cache = _join_left_padded(caches, ids.shape[1])
            cache.batch_select_indices(order)
            choices = torch.cat(parts)[order]
        picks = choices.tolist()
        n_real = mask.sum(-1)
        for k, row in enumerate(rows):
            path, token = trees[k].walk(picks[k].__getitem__)
            self.drafter.accept(row, trees[k], path, token, eos)
            _keep_path(full, k, mask.shape[1], path)
            n_real[k] += len(path)
        return cache, full, n_real

    @staticmethod
    def _stream(streamer: Any, rows: list[Row], new: list[list[int]]) -> None:
        if streamer is not None and len(rows) == 1 and new[0]:
            streamer.put(torch.tensor(new[0]))


class _Forward:
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
        ids, valid, offsets = _block(trees, width, self.pad_token_id, mask.device, mask.dtype, roots)
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
            allowed[k, 0, :, past:] = _ancestry(tree, width, mask.device)
        if self.tree_mask == "bool":
            return allowed
        dtype = getattr(self.model, "dtype", torch.float32)
        return torch.zeros(allowed.shape, dtype=dtype, device=mask.device).masked_fill(~allowed, torch.finfo(dtype).min)

    def _clamp(self, positions: torch.Tensor) -> torch.Tensor:
        return positions.clamp(max=self.last_position) if self.last_position > 0 else positions


def _block(
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


def _ancestry(tree: DraftTree, width: int, device: torch.device) -> torch.Tensor:
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


def _keep_path(mask: torch.Tensor, row: int, start: int, positions: list[int]) -> None:
    """Leave only ``positions`` (offsets from ``start``) of the last block visible in ``row`` of ``mask``."""
    mask[row, start:] = 0
    if positions:
        mask[row, torch.tensor(positions, device=mask.device) + start] = 1


def _joinable(cache: Any) -> bool:
    """Plain growing per-layer caches (keys and values of shape batch x heads x length x dim) can be joined."""
    layers = getattr(cache, "layers", None)  # transformers >= 4.54
    return bool(layers) and all(type(layer).__name__ == "DynamicLayer" for layer in layers)


def _join_left_padded(caches: list[Any], length: int) -> Any:
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
