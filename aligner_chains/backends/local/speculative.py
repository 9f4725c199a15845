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

from aligner_chains.backends.local.drafting import ACCELERATOR_COST, CPU_COST, Drafter, PassCost, PhraseMemory, Row
from aligner_chains.backends.local.forward import model_blocker, tree_mask_blocker
from aligner_chains.backends.local.running import RunningBatch, row_stats
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

# Per loaded model, the token ids of the phrases its checkpoint says it writes (`set_draft_phrases`).
_PHRASES: weakref.WeakKeyDictionary[Any, list[list[int]]] = weakref.WeakKeyDictionary()


def set_draft_phrases(model: Any, phrases: list[list[int]]) -> None:
    """Pin ``phrases`` (token ids) as drafts for ``model``: text its corrections write anew but always the
    same way (a refusal, a placeholder), fixed by the checkpoint, so no request's latency depends on another's.
    Set before the model's first decode."""
    _PHRASES[model] = [list(phrase) for phrase in phrases if phrase]


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
        """The `PhraseMemory` of ``model``, made on first use: its checkpoint's draft phrases (`set_draft_phrases`)
        and, with ``memory_tokens``, what it wrote lately; None when it has neither."""
        phrases = _PHRASES.get(model, ())
        if self.memory_tokens == 0 and not phrases:
            return None
        with self._memories_lock:
            if model not in self._memories:
                self._memories[model] = PhraseMemory(self.memory_tokens, self.drafter.max_ngram, phrases=phrases)
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
        if limits is None:
            limits = [int(params.max_new_tokens or 1)] * input_ids.shape[0]
        if streamer is not None:
            streamer.put(input_ids.cpu())
        batch = self.open_batch(model, pad_token_id, eos_token_ids, input_ids.device)
        rows = batch.add(input_ids, attention_mask, sources, limits)
        self._stream(streamer, rows, [row.generated[:] for row in rows])
        while True:
            batch.remove(batch.finished())
            if not batch.rows or (stop_event is not None and stop_event.is_set()):
                break
            before = [len(row.generated) for row in rows]
            batch.step()
            self._stream(streamer, rows, [row.generated[b:] for row, b in zip(rows, before, strict=True)])
        if streamer is not None:
            streamer.end()
        width = max(len(row.generated) for row in rows)
        tokens = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
        for r, row in enumerate(rows):
            tokens[r, : len(row.generated)] = torch.tensor(row.generated, dtype=torch.long)
        why = self.exact_reason(model)
        return DecodeResult(tokens=tokens, stats=[row_stats(row, self.name, why) for row in rows])

    def open_batch(self, model: Any, pad_token_id: int, eos_token_ids: list[int], device: Any) -> RunningBatch:
        """An empty `RunningBatch` of this decoder on ``model``, which rows may join between passes."""
        return RunningBatch(self, model, pad_token_id, set(eos_token_ids), device)

    def exact_reason(self, model: Any) -> str:
        """Why copy-aware decoding is exact on ``model`` (what `Correction.stats` says of it)."""
        attention = getattr(model.config, "_attn_implementation", None)
        return f"greedy settings; full attention over a dynamic KV cache ({attention})"

    def tree_masks(self, model: Any) -> bool:
        """Whether ``model`` verifies branching draft trees (it takes a 4-D mask)."""
        return cached_tree_mask_blocker(model) is None

    @staticmethod
    def _stream(streamer: Any, rows: list[Row], new: list[list[int]]) -> None:
        if streamer is not None and len(rows) == 1 and new[0]:
            streamer.put(torch.tensor(new[0]))
