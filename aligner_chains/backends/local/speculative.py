"""Copy-aware speculative decoding: draft from the answer being corrected, verify a block per forward pass.

Most of a correction copies the answer it corrects. Each step, every row of the batch drafts the
tokens that followed the last generated n-gram in its answer (or in its own output so far), the
model scores ``[last token, drafts...]`` in one forward pass with the KV cache, and the row keeps
the longest draft prefix the model agrees with plus the model's own next token. Greedy output is
therefore the model's greedy output, token for token in exact arithmetic (in half precision a
block's sums round differently from one token's: see the README); rows accept different numbers
of tokens.

Rows advance unevenly, so rejected drafts stay in the cache as masked holes: the 2-D attention
mask marks them invisible and position ids count only real tokens, which keeps the arithmetic
that of an unbroken sequence. That holds only for full attention over a dynamic KV cache through
an attention implementation that honours such a mask: models with a sliding window, recurrent or
convolution state, or another attention kernel take plain ``generate`` (decided once per model by
`aligner_chains.backends.local.forward.copy_aware_blocker`; ``Correction.stats`` says which decoder
ran and why). Each row stops at its own token limit, and finished rows leave the batch (and its
cache), so a long correction does not keep its short batch-mates computing.

Two choices weigh compute against passes (``pass_cost_tokens``): the prompt pass runs prompts of
very different lengths apart and joins their caches, and each verification block is only as wide
as the expected accepted tokens pay for, so one eager row does not pad the whole batch.
"""

from __future__ import annotations

import bisect
import dataclasses
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache

from aligner_chains.backends.local.forward import forward_parameters, model_blocker, position_ids_from_mask
from aligner_chains.backends.local.settings import inherited_settings
from aligner_chains.backends.local.strategy import DecodeResult, DecodingStrategy, HFGenerate
from aligner_chains.core.generation import GenerationParams

# Generation settings under which greedy verification is exact; anything else takes the plain path.
_EXACT_KEYS = {"max_new_tokens", "do_sample"}

# `model_blocker` per loaded model, decided once (weak keys: a cached verdict never keeps a model alive).
_BLOCKERS: weakref.WeakKeyDictionary[Any, str | None] = weakref.WeakKeyDictionary()
_BLOCKERS_LOCK = threading.Lock()


def cached_model_blocker(model: Any) -> str | None:
    """`model_blocker` of ``model``, computed on first use and kept for the model's lifetime."""
    with _BLOCKERS_LOCK:
        if model not in _BLOCKERS:
            _BLOCKERS[model] = model_blocker(model)
        return _BLOCKERS[model]


@dataclass
class _Row:
    """Per-row decoding state: the draft source, what was generated, n-gram indexes and statistics."""

    source: list[int]
    budget: int
    generated: list[int] = field(default_factory=list)
    draft_len: int = 4
    acceptance: float = 0.8  # running estimate of the chance that a draft token is accepted
    pointer: int = -1  # index in ``source`` of the token last copied, to prefer the next match
    aligned_at: int = 0  # len(generated) when ``pointer`` was set
    done: bool = False
    passes: int = 0
    drafted: int = 0
    accepted: int = 0
    source_index: dict[tuple[int, ...], list[int]] = field(default_factory=dict)
    history_index: dict[tuple[int, ...], list[int]] = field(default_factory=dict)
    indexed: int = 0  # how many generated tokens ``history_index`` covers
    max_ngram: int = 0

    def remaining(self) -> float:
        """Rough tokens still to come: the rest of the source after the copy pointer, within the budget."""
        left = len(self.source) - self.pointer - 1 if self.pointer >= 0 else len(self.source)
        return float(max(1, min(left, self.budget - len(self.generated))))

    def build_index(self, max_ngram: int) -> None:
        """Index every n-gram (n <= max_ngram) of the source by its start positions, in order."""
        self.max_ngram = max_ngram
        for n in range(1, max_ngram + 1):
            for i in range(len(self.source) - n + 1):
                self.source_index.setdefault(tuple(self.source[i : i + n]), []).append(i)

    def update_history_index(self) -> None:
        """Add the n-grams of newly generated tokens to the history index."""
        history = self.generated
        for end in range(self.indexed + 1, len(history) + 1):
            for n in range(1, min(self.max_ngram, end) + 1):
                self.history_index.setdefault(tuple(history[end - n : end]), []).append(end - n)
        self.indexed = len(history)


class CopyAwareSpeculative(DecodingStrategy):
    """Greedy decoding that drafts from each row's source text (the answer) and verifies in blocks.

    ``max_draft`` bounds the block; the draft length of a row grows while its drafts are accepted
    and shrinks when they are not. ``block_tokens`` caps the drafts of one forward pass over the
    whole batch, so large batches verify short drafts (their compute is already well used).
    ``pass_cost_tokens`` is what one forward pass costs beyond its tokens, in token positions
    (None: 48 on CPU, 2048 on accelerators); it decides how the prompt pass groups prompts of
    different lengths and how wide a verification block is worth making (a block is as wide as
    its longest draft, so on a busy CPU rows that rarely hit do not pad the batch with drafts).
    Sampling and non-greedy settings, and models it is not exact on, fall back to ``fallback``.
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
    ):
        self.block_tokens = block_tokens
        self.pass_cost_tokens = pass_cost_tokens
        self.max_draft = max_draft
        self.min_draft = min(min_draft, max_draft)
        self.max_ngram = max_ngram
        self.fallback = fallback or HFGenerate()

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
        first_draft = min(self.max_draft, max(self.min_draft, 4))
        rows = [_Row(list(src), limit, draft_len=first_draft) for src, limit in zip(sources, limits, strict=True)]
        # Masked padding in a block may sit past the last real position: keep its id in range.
        last_position = int(getattr(model.config, "max_position_embeddings", 0) or 0) - 1
        if streamer is not None:
            streamer.put(input_ids.cpu())

        forward_args = forward_parameters(model)
        cache_arg = "cache" if "cache" in forward_args else "past_key_values"  # renamed in transformers 5.x
        mask = attention_mask.clone()
        pass_cost = self._pass_cost(device)
        cache, pending = self._prefill(model, input_ids, mask, cache_arg, "logits_to_keep" in forward_args, pass_cost)
        n_real = mask.sum(-1)  # real tokens per row so far (the next position id)
        for r, row in enumerate(rows):
            row.passes = 1
            self._emit(row, [int(pending[r])], eos)
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
            cap = max(1, self.block_tokens // len(live))
            drafts = [self._draft(rows[r])[:cap] for r in live]
            # Rows with more left to write weigh more (squared): they decide how many passes the batch takes.
            width = block_width(
                [len(d) for d in drafts],
                [rows[r].acceptance for r in live],
                pass_cost,
                [rows[r].remaining() ** 2 for r in live],
            )
            drafts = [d[: width - 1] for d in drafts]
            block = torch.full((len(live), width), pad_token_id, dtype=torch.long, device=device)
            valid = torch.zeros((len(live), width), dtype=mask.dtype, device=device)
            for k, r in enumerate(live):
                tokens = [rows[r].generated[-1], *drafts[k]]
                block[k, : len(tokens)] = torch.tensor(tokens, device=device)
                valid[k, : len(tokens)] = 1
            block_pos = n_real.unsqueeze(1) + torch.arange(width, device=device).unsqueeze(0)
            if last_position > 0:
                block_pos = block_pos.clamp(max=last_position)
            mask = torch.cat([mask, valid], dim=1)
            logits = model(
                input_ids=block, attention_mask=mask, position_ids=block_pos, use_cache=True, **{cache_arg: cache}
            ).logits
            choices = logits.argmax(-1).tolist()
            before = [len(row.generated) for row in rows]
            for k, r in enumerate(live):
                row = rows[r]
                draft, predicted = drafts[k], choices[k]
                accepted = 0
                while accepted < len(draft) and draft[accepted] == predicted[accepted]:
                    accepted += 1
                row.passes += 1
                row.drafted += len(draft)
                row.accepted += accepted
                self._adapt(row, len(draft), accepted)
                self._emit(row, [*draft[:accepted], predicted[accepted]], eos)
                kept = 1 + accepted  # the last token fed plus the accepted drafts stay visible
                mask[k, mask.shape[1] - width + kept :] = 0
                n_real[k] += kept
            self._stream(streamer, rows, [row.generated[b:] for row, b in zip(rows, before, strict=True)])

        if streamer is not None:
            streamer.end()
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
        self, model: Any, input_ids: torch.Tensor, mask: torch.Tensor, cache_arg: str, last_only: bool, pass_cost: int
    ) -> tuple[Any, torch.Tensor]:
        """The prompt pass: a KV cache over the (left-padded) prompts and each row's first token.

        Prompts of very different lengths run in separate passes, each trimmed to its own longest
        prompt, and their caches are joined, padded on the left with masked zeros; so short prompts
        do not pay for the padding of long ones when that costs more than the extra passes.
        """
        # Only the last position's logits are needed (a quarter of the compute on small models).
        extra = {"logits_to_keep": 1} if last_only else {}

        def run(ids: torch.Tensor, row_mask: torch.Tensor) -> tuple[Any, torch.Tensor]:
            cache = DynamicCache(config=model.config)
            out = model(
                input_ids=ids,
                attention_mask=row_mask,
                position_ids=position_ids_from_mask(row_mask),
                use_cache=True,
                **extra,
                **{cache_arg: cache},
            )
            return cache, out.logits[:, -1].argmax(-1)

        lengths = mask.sum(-1).tolist()
        groups = length_groups(lengths, pass_cost)
        if len(groups) == 1 or not _joinable(DynamicCache(config=model.config)):
            return run(input_ids, mask)
        caches, firsts = [], []
        for group in groups:
            index = torch.tensor(group, device=input_ids.device)
            width = max(lengths[i] for i in group)
            cache, first = run(input_ids[index, -width:], mask[index, -width:])
            caches.append(cache)
            firsts.append(first)
        order = torch.tensor([i for group in groups for i in group], device=input_ids.device).argsort()
        cache = _join_left_padded(caches, input_ids.shape[1])
        cache.batch_select_indices(order)
        return cache, torch.cat(firsts)[order]

    def _pass_cost(self, device: torch.device) -> int:
        if self.pass_cost_tokens is not None:
            return self.pass_cost_tokens
        return 48 if device.type == "cpu" else 2048

    @staticmethod
    def _emit(row: _Row, tokens: list[int], eos: set[int]) -> None:
        for token in tokens:
            if row.done:
                return
            row.generated.append(token)
            if token in eos or len(row.generated) >= row.budget:
                row.done = True

    @staticmethod
    def _stream(streamer: Any, rows: list[_Row], new: list[list[int]]) -> None:
        if streamer is not None and len(rows) == 1 and new[0]:
            streamer.put(torch.tensor(new[0]))

    def _adapt(self, row: _Row, drafted: int, accepted: int) -> None:
        if drafted == 0:  # nothing verified: drift back towards even odds, so the row drafts again
            row.acceptance = 0.5 * row.acceptance + 0.4
            return
        # A run of ``accepted`` hits ended by a miss suggests p = a / (a + 1); no miss, at least (d + 1) / (d + 2).
        seen = accepted / (accepted + 1) if accepted < drafted else (drafted + 1) / (drafted + 2)
        row.acceptance = 0.5 * row.acceptance + 0.5 * seen
        if accepted == drafted:
            row.draft_len = min(self.max_draft, row.draft_len + 2)
        elif accepted < drafted // 2:
            row.draft_len = max(self.min_draft, row.draft_len // 2)

    def _draft(self, row: _Row) -> list[int]:
        """Tokens that followed the longest recent n-gram match, preferring the spot after the last copy.

        The answer is searched first (its n-grams are indexed once), then the row's own output.
        """
        room = min(row.draft_len, row.budget - len(row.generated) - 1)
        if room <= 0:
            return []
        if row.max_ngram != self.max_ngram:
            row.build_index(self.max_ngram)
        row.update_history_index()
        history = row.generated
        for n in range(min(self.max_ngram, len(history)), 0, -1):
            tail = tuple(history[-n:])
            starts = row.source_index.get(tail)
            if starts:
                hint = row.pointer + 1 - n
                at = bisect.bisect_left(starts, hint)
                start = starts[at] if at < len(starts) else starts[0]
                if start + n < len(row.source):
                    row.pointer = start + n - 1
                    row.aligned_at = len(history)
                    return row.source[start + n : start + n + room]
            earlier = [i for i in row.history_index.get(tail, ()) if i < len(history) - n]
            if earlier:
                start = earlier[-1]
                return history[start + n : start + n + room]
        if row.pointer >= 0:
            # No match: guess the correction replaced as many tokens as it wrote, and copy on from there.
            guess = row.pointer + 1 + len(history) - row.aligned_at
            return row.source[guess : guess + room]
        return []


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


def block_width(drafts: list[int], acceptance: list[float], pass_cost: int, weights: list[float] | None = None) -> int:
    """The block width (1 + drafts verified per row) that yields the most expected tokens per cost.

    A row with ``d`` drafts and per-token acceptance ``p`` expects ``1 + p + ... + p**d`` tokens
    (times its weight, if given); a pass of width ``w`` over ``n`` rows costs ``pass_cost + n * w``
    token positions. Rows with shorter drafts are padded to the width, so one row's long draft
    costs every row; on a CPU that is often not worth it, on an accelerator it nearly always is.
    """
    best, best_rate = 1, 0.0
    for width in sorted({1, *(1 + d for d in drafts)}):
        gain = 0.0
        for d, p, w in zip(drafts, acceptance, weights or [1.0] * len(drafts), strict=True):
            k = min(d, width - 1)
            gain += w * (1 + (k if p >= 1 else p * (1 - p**k) / (1 - p)))
        rate = gain / (pass_cost + len(drafts) * width)
        if rate > best_rate:
            best, best_rate = width, rate
    return best


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
