"""The decoding engine on tiny random models of many architecture families transformers ships.

Each family is built from its own config class with a tokenizer trained on the spot, saved, and
loaded through `Aligner.from_pretrained`. Everywhere: `correct`, `correct_batch` with mixed
lengths, `stream` and concurrent micro-batched calls run without error and agree with plain
greedy decoding. Where copy-aware decoding is eligible it runs and equals plain greedy token for
token (fp32); elsewhere ``Correction.stats`` names plain ``generate`` and the reason.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoConfig

from aligner_chains import Aligner, Correction, GenerationParams
from aligner_chains.backends.local import CopyAwareSpeculative, HFGenerate
from aligner_chains.backends.local.forward import copy_aware_blocker, tree_mask_blocker
from aligner_chains.testing import TINY_FAMILIES, build_tiny_model

MAX_NEW = 24
FOX = "The quick brown fox jumps over the lazy dog."
BREAD = "Mix flour, water, salt and yeast."
# Mixed lengths, and repeated text: the decoder drafts from the answer (and from its own output).
PAIRS = [
    ("What is it?", FOX),
    ("Again?", f"{FOX} {FOX} {FOX}"),
    ("Hi", "Hello there, how are you?"),
    ("Bread?", f"{BREAD} {BREAD} Bake it at 220 degrees for 30 minutes, then let it cool."),
    ("x", "y"),
]
# Families that must take plain generate, with a word of the reason ``Correction.stats`` gives.
PLAIN = {
    "mistral": "sliding window",  # TINY_FAMILIES gives it sliding_window=16
    "gemma2": "sliding window",
    "gemma3_text": "sliding window",
    "lfm2": "convolution state",
    "jamba": "recurrent state",
    "bloom": "position_ids",  # ALiBi from the mask; its forward takes no position ids
}


@pytest.fixture(scope="module", params=sorted(TINY_FAMILIES))
def family(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """(family, copy-aware Aligner, plain Aligner) over one tiny checkpoint of that family."""
    name = request.param
    path = build_tiny_model(tmp_path_factory.mktemp(name) / "model", name, vocab_size=300, seed=3)
    options = {"template": "aligner-v2", "device": "cpu", "max_new_tokens": MAX_NEW}
    spec = Aligner.from_pretrained(str(path), **options)
    plain = Aligner.from_pretrained(str(path), speculative=False, **options)
    # The tiny models stay in the process-wide cache: clearing it would unshare other tests' weights.
    return name, spec, plain


def same(got: list[Correction], want: list[Correction]) -> bool:
    return [(c.corrected, c.completion_tokens, c.finish_reason) for c in got] == [
        (c.corrected, c.completion_tokens, c.finish_reason) for c in want
    ]


def test_family_support(family) -> None:
    """Every family: one-at-a-time, mixed-length batch, stream and threads agree with plain greedy."""
    name, spec, plain = family
    assert isinstance(spec.backend.strategy, CopyAwareSpeculative) and isinstance(plain.backend.strategy, HFGenerate)
    singles = [plain.correct(q, a) for q, a in PAIRS]
    assert {c.stats["decoder"] for c in singles} == {"hf-generate"}
    assert all("requested" in c.stats["decoder_reason"] for c in singles)
    assert all(c.completion_tokens > 0 and c.error is None for c in singles)
    plain_batch = plain.correct_batch(PAIRS, batch_size=len(PAIRS))
    assert len({c.prompt_tokens for c in plain_batch}) > 2  # mixed lengths, left-padded in one batch

    got = spec.correct_batch(PAIRS, batch_size=len(PAIRS))
    assert same(got, plain_batch)
    assert same([spec.correct(q, a) for q, a in PAIRS], singles)
    for (q, a), want in zip(PAIRS[:3], singles, strict=False):
        assert "".join(spec.stream(q, a)) == want.corrected
    with ThreadPoolExecutor(max_workers=len(PAIRS)) as pool:  # micro-batched: concurrent calls share batches
        concurrent = list(pool.map(lambda pair: spec.correct(*pair), PAIRS))
    assert same(concurrent, singles)

    decoders = {c.stats["decoder"] for c in [*got, *concurrent]}
    if name in PLAIN:
        assert decoders == {"hf-generate"}
        assert all(PLAIN[name] in c.stats["decoder_reason"] for c in got), got[0].stats
        assert not spec.backend.can_mix_limits(spec.generation)  # the plain path shares one limit per batch
    else:
        assert decoders == {"copy-aware"}, got[0].stats
        assert all("full attention" in c.stats["decoder_reason"] for c in got)
        # Drafts were verified in blocks (how many a random model accepts is luck: see the next test).
        assert sum(c.stats["draft_tokens"] for c in got) > 0
        assert spec.backend.can_mix_limits(spec.generation)


def decode_inputs(spec):
    """The loaded model, the tokenized prompts of ``PAIRS``, and the settings `LocalBackend` decodes them with."""
    loaded = spec.backend.loaded
    prompts = [spec.template.render(q, a) for q, a in PAIRS]
    with loaded.tokenizer_lock:
        batch = loaded.tokenizer(prompts, return_tensors="pt", padding=True)
    options = {"eos_token_ids": spec.backend.eos_token_ids, "pad_token_id": spec.backend.pad_token_id}
    return loaded, batch, GenerationParams(max_new_tokens=MAX_NEW), options


def test_long_accepted_drafts_are_exact(family) -> None:
    """Drafts taken from the model's own greedy output (with a detour) are accepted in long runs,
    leaving rejected drafts as masked holes in the cache: the tokens stay those of plain greedy."""
    name, spec, _ = family
    loaded, batch, params, options = decode_inputs(spec)
    with torch.inference_mode():
        want = HFGenerate().decode(loaded.model, batch["input_ids"], batch["attention_mask"], params, **options)
        sources = [row[:8] + [5, 6, 7] + row[8:] for row in want.tokens.tolist()]
        got = CopyAwareSpeculative(max_draft=8).decode(
            loaded.model, batch["input_ids"], batch["attention_mask"], params, sources=sources, **options
        )
    assert got.tokens.tolist() == want.tokens.tolist()
    if name in PLAIN:
        assert {s["decoder"] for s in got.stats} == {"hf-generate"}
    else:
        assert {s["decoder"] for s in got.stats} == {"copy-aware"}
        eos = set(spec.backend.eos_token_ids)
        written = sum(next((i + 1 for i, t in enumerate(row) if t in eos), len(row)) for row in want.tokens.tolist())
        assert sum(s["accepted_draft_tokens"] for s in got.stats) * 2 >= written  # most tokens came as drafts


def test_accelerator_cost_model_with_draft_trees_is_exact(family) -> None:
    """Under the accelerator cost model the prompt pass verifies the whole answer and later passes verify
    draft trees through a 4-D mask (each draft sees only its ancestors): still plain greedy's tokens."""
    name, spec, _ = family
    loaded, batch, params, options = decode_inputs(spec)
    masks: list[int] = []
    with torch.inference_mode():
        want = HFGenerate().decode(loaded.model, batch["input_ids"], batch["attention_mask"], params, **options)
        # Edits of every kind: a detour the correction drops, a token it replaces, one it inserts.
        sources = []
        for row in want.tokens.tolist():
            sources.append(row[:4] + [5, 6, 7] + row[4:10] + [8] + row[11:16] + row[17:])
        handle = loaded.model.register_forward_pre_hook(
            lambda _, args, kwargs: masks.append(kwargs["attention_mask"].dim()), with_kwargs=True
        )
        try:
            got = CopyAwareSpeculative(cost_model="accelerator").decode(
                loaded.model, batch["input_ids"], batch["attention_mask"], params, sources=sources, **options
            )
        finally:
            handle.remove()
    assert got.tokens.tolist() == want.tokens.tolist()
    if name in PLAIN:
        assert {s["decoder"] for s in got.stats} == {"hf-generate"}
    else:
        assert {s["decoder"] for s in got.stats} == {"copy-aware"}
        # Draft trees were verified where the model takes a 4-D mask (every eligible family here on
        # current transformers; Falcon and OPT build their masks another way in transformers 5.0).
        trees = tree_mask_blocker(loaded.model) is None
        assert trees or name not in ("llama", "qwen2", "gpt2")
        assert (4 in masks) == trees, (masks, tree_mask_blocker(loaded.model))
        assert len(masks) < MAX_NEW // 2


def config(model_type: str, **settings):
    return AutoConfig.for_model(model_type, **{**TINY_FAMILIES.get(model_type, {}), **settings})


@pytest.mark.parametrize(
    ("cfg", "stateful", "layers", "reason"),
    [
        (config("llama"), False, ["DynamicLayer"], None),
        (config("llama", attn_implementation="eager"), False, None, None),
        (config("mistral", sliding_window=16), False, None, "sliding window (config.sliding_window=16)"),
        (config("mistral", sliding_window=None), False, None, None),  # Mistral v0.2+ has no window
        (config("qwen2"), False, None, None),  # a window field, but use_sliding_window=False
        (
            config("qwen2", use_sliding_window=True, sliding_window=16, max_window_layers=1, num_hidden_layers=2),
            False,
            None,
            "sliding window (config.layer_types has 'sliding_attention', window 16)",
        ),
        (
            config("gemma2", sliding_window=16),
            False,
            None,
            "sliding window (config.layer_types has 'sliding_attention'",
        ),
        (config("lfm2", num_hidden_layers=2), False, None, "convolution state (config.layer_types has 'conv')"),
        (config("lfm2", num_hidden_layers=2, layer_types=None), False, None, None),  # all layers attention
        (config("llama", attn_implementation="flash_attention_2"), False, None, "'flash_attention_2'"),
        (config("llama"), True, None, "recurrent state"),
        (config("llama"), False, ["DynamicLayer", "LinearAttentionLayer"], "LinearAttentionLayer"),
        (
            config("llama4_text", attention_chunk_size=8),
            False,
            None,
            "(config.layer_types has 'chunked_attention', window 8)",
        ),
        (SimpleNamespace(attention_chunk_size=8), False, None, "chunked attention (config.attention_chunk_size=8)"),
        (SimpleNamespace(is_encoder_decoder=True), False, None, "encoder-decoder"),
    ],
)
def test_copy_aware_blocker(cfg, stateful: bool, layers: list[str] | None, reason: str | None) -> None:
    got = copy_aware_blocker(cfg, stateful=stateful, cache_layers=layers)
    assert got == reason if reason is None else (got is not None and reason in got)


def test_sampling_reports_the_plain_decoder(tiny_aligner: Aligner) -> None:
    torch.manual_seed(0)
    c = tiny_aligner.correct("Hi", "Hello there.", do_sample=True, temperature=0.9)
    assert c.stats["decoder"] == "hf-generate"
    assert c.stats["decoder_reason"].startswith("generation settings greedy verification does not reproduce")
    assert "do_sample=True" in c.stats["decoder_reason"] and "temperature=0.9" in c.stats["decoder_reason"]


def test_eligibility_is_decided_once_per_model(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from aligner_chains.backends.local import speculative

    calls: list[object] = []
    original = speculative.model_blocker
    monkeypatch.setattr(speculative, "model_blocker", lambda model: calls.append(model) or original(model))
    monkeypatch.setattr(speculative, "_BLOCKERS", type(speculative._BLOCKERS)())
    aligner = Aligner.from_pretrained(str(tiny_model_dir), max_new_tokens=4, micro_batching=False)
    for _ in range(3):
        assert aligner.correct("Hi", "Hello there.").stats["decoder"] == "copy-aware"
    aligner.correct_batch([("a", "b"), ("c", "d e f")])
    assert calls == [aligner.backend.loaded.model]
