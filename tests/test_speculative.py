from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import DynamicCache

from aligner_chains import Aligner, GenerationParams
from aligner_chains.backends.local.blocks import joinable, length_groups
from aligner_chains.backends.local.drafting import Row, block_width
from aligner_chains.backends.local.loading import load_model
from aligner_chains.backends.local.speculative import CopyAwareSpeculative
from aligner_chains.backends.local.strategy import DecodingStrategy, HFGenerate
from aligner_chains.demo import DEMO_MODEL_DIR

PAIRS = [
    ("What is it?", "The quick brown fox jumps over the lazy dog."),
    ("Again?", "The quick brown fox jumps over the lazy dog. The quick brown fox jumps over the lazy dog."),
    ("Hi", "Hello there, how are you?"),
    ("Contact?", "Write to jane.doe@example.com or call +1 415-555-0132 after nine."),
    ("x", "y"),
]


@pytest.fixture(scope="module")
def plain_and_spec(tiny_model_dir: Path) -> tuple[Aligner, Aligner]:
    plain = Aligner.from_pretrained(str(tiny_model_dir), max_new_tokens=24, speculative=False)
    spec = Aligner.from_pretrained(str(tiny_model_dir), max_new_tokens=24)
    assert isinstance(spec.backend.strategy, CopyAwareSpeculative) and isinstance(plain.backend.strategy, HFGenerate)
    return plain, spec


@pytest.mark.parametrize("batch_size", [1, 2, 5])
def test_greedy_output_identical_to_plain(plain_and_spec: tuple[Aligner, Aligner], batch_size: int) -> None:
    plain, spec = plain_and_spec
    expected = [c.corrected for c in plain.correct_batch(PAIRS, batch_size=batch_size)]
    got = spec.correct_batch(PAIRS, batch_size=batch_size)
    assert [c.corrected for c in got] == expected
    assert all({"forward_passes", "accepted_draft_tokens", "tokens_per_pass"} <= set(c.stats) for c in got)


def greedy_ids(loaded, prompts: list[str], max_new: int) -> tuple[dict, list[list[int]]]:
    batch = loaded.tokenizer(prompts, return_tensors="pt", padding=True)
    out = loaded.model.generate(
        **batch, max_new_tokens=max_new, do_sample=False, pad_token_id=loaded.tokenizer.pad_token_id
    )
    return batch, out[:, batch["input_ids"].shape[1] :].tolist()


def run_decode(strategy: DecodingStrategy, loaded, batch: dict, max_new: int, **options):
    """One ``strategy.decode`` of ``batch`` on the loaded model, called as `LocalBackend` calls it."""
    with torch.inference_mode():
        return strategy.decode(
            loaded.model,
            batch["input_ids"],
            batch["attention_mask"],
            GenerationParams(max_new_tokens=max_new),
            eos_token_ids=[loaded.tokenizer.eos_token_id],
            pad_token_id=loaded.tokenizer.pad_token_id,
            **options,
        )


def greedy_prefix(want: list[int], eos: int, limit: int | None = None) -> list[int]:
    """What a decoder must reproduce of a plain greedy row: up to its EOS (kept), or its first ``limit`` tokens."""
    cut = want if limit is None else want[:limit]
    return want[: want.index(eos) + 1] if eos in cut else cut


def test_long_accepted_drafts_stay_exact_in_a_batch(tiny_model_dir: Path) -> None:
    """Drafting from the model's own greedy output (corrupted in places) accepts long blocks, unevenly per row."""
    loaded = load_model(str(tiny_model_dir))
    prompts = ["BEGINNING OF CONVERSATION: USER: a", "short", "The quick brown fox jumps over the lazy dog again"]
    batch, expected = greedy_ids(loaded, prompts, 30)
    sources = [ids[:10] + [5, 6, 7] + ids[10:] for ids in expected]  # an inserted detour forces a re-sync
    sources[1] = sources[1][:4]  # one row can only draft briefly
    result = run_decode(CopyAwareSpeculative(max_draft=8), loaded, batch, 30, sources=sources)
    eos = loaded.tokenizer.eos_token_id
    for row, want in zip(result.tokens.tolist(), expected, strict=True):
        want = greedy_prefix(want, eos)
        assert row[: len(want)] == want
    accepted = [s["accepted_draft_tokens"] for s in result.stats]
    passes = [s["forward_passes"] for s in result.stats]
    assert accepted[0] > 15 and accepted[2] > 15 and accepted[1] < accepted[0]
    assert passes[0] < 15 and passes[0] < passes[1]  # rows advance unevenly in one batch


def test_sampling_falls_back_to_plain_generate(plain_and_spec: tuple[Aligner, Aligner]) -> None:
    _, spec = plain_and_spec
    strategy = spec.backend.strategy
    assert strategy.is_exact_for(GenerationParams(max_new_tokens=4))
    assert not strategy.is_exact_for(GenerationParams(do_sample=True, temperature=0.7))
    assert not strategy.is_exact_for(GenerationParams(num_beams=2))
    torch.manual_seed(0)
    c = spec.correct(*PAIRS[0], do_sample=True, temperature=0.9)
    assert "accepted_draft_tokens" not in c.stats and c.completion_tokens == 24


def test_stream_and_max_new_tokens(plain_and_spec: tuple[Aligner, Aligner]) -> None:
    plain, spec = plain_and_spec
    for q, a in PAIRS:
        assert "".join(spec.stream(q, a)) == plain.correct(q, a).corrected
        assert spec.correct(q, a, max_new_tokens=5).completion_tokens <= 5


def test_draft_length_adapts() -> None:
    drafter = CopyAwareSpeculative(max_draft=10, min_draft=2).drafter
    row = Row(source=[1, 2, 3], budget=100, draft_len=4)
    drafter.adapt(row, drafted=4, accepted=4)
    assert row.draft_len == 6
    drafter.adapt(row, drafted=6, accepted=1)
    assert row.draft_len == 3
    for _ in range(10):
        drafter.adapt(row, drafted=row.draft_len, accepted=row.draft_len)
    assert row.draft_len == 10


def test_drafts_follow_the_answer_after_a_divergence() -> None:
    drafter = CopyAwareSpeculative(max_draft=4).drafter
    row = Row(source=[10, 11, 12, 13, 14, 15, 16], budget=100, draft_len=4)
    row.generated = [10, 11]
    assert drafter.draft(row) == [12, 13, 14, 15]
    row.generated = [10, 11, 99, 14]  # the correction replaced 12-13, then copies again
    assert drafter.draft(row) == [15, 16]
    row.generated = [10, 11, 99, 14, 15, 16, 77]  # nothing matches: guess a same-length replacement
    assert drafter.draft(row) == []  # ... which runs past the end of the answer here
    fresh = Row(source=[10, 11, 12, 13, 14, 15, 16], budget=100, draft_len=4)
    fresh.generated = [10, 11]
    assert drafter.draft(fresh) == [12, 13, 14, 15]
    fresh.generated = [10, 11, 88]  # 12 was replaced by 88: copy on from 13
    assert drafter.draft(fresh) == [13, 14, 15, 16]
    unaligned = Row(source=[1, 2, 3], budget=100, draft_len=4)
    unaligned.generated = [42]
    assert drafter.draft(unaligned) == []


demo_only = pytest.mark.skipif(not (DEMO_MODEL_DIR / "config.json").is_file(), reason="demo Aligner not installed")


@demo_only
@pytest.mark.parametrize("batch_size", [1, 8])
def test_demo_aligner_identical_with_fewer_passes(batch_size: int) -> None:
    from cookbook.demo_aligner.dataset import build_examples

    rows = build_examples(8, seed=5, split="heldout")
    pairs = [(r["question"], r["answer"]) for r in rows]
    plain = Aligner.from_pretrained("demo", speculative=False)
    spec = Aligner.from_pretrained("demo")
    expected = plain.correct_batch(pairs, batch_size=batch_size)
    got = spec.correct_batch(pairs, batch_size=batch_size)
    assert [c.corrected for c in got] == [c.corrected for c in expected]
    passes = sum(c.stats["forward_passes"] for c in got)
    tokens = sum(c.completion_tokens for c in got)
    assert passes * 2 < tokens


def test_rows_stop_at_their_own_limits(tiny_model_dir: Path) -> None:
    """One batch, three limits: each row is the model's greedy output cut at its own limit."""
    loaded = load_model(str(tiny_model_dir))
    prompts = ["BEGINNING OF CONVERSATION: USER: a", "short", "The quick brown fox jumps over the lazy dog again"]
    batch, expected = greedy_ids(loaded, prompts, 30)
    limits = [3, 30, 11]
    sources = [ids[:20] for ids in expected]
    result = run_decode(CopyAwareSpeculative(max_draft=8), loaded, batch, 30, sources=sources, limits=limits)
    eos = loaded.tokenizer.eos_token_id
    for row, want, limit in zip(result.tokens.tolist(), expected, limits, strict=True):
        want = greedy_prefix(want, eos, limit)
        assert row[: len(want)] == want
        assert set(row[len(want) :]) <= {loaded.tokenizer.pad_token_id}


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_unset_limits_share_one_batch(tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Prompts of different lengths get different implicit limits (the room left) yet run as one batch.

    GPT-2's learned positions would fail on any position id past the context, so it also shows that
    no row (nor its masked padding) runs past its own room.
    """
    from aligner_chains.testing import build_tiny_llama

    path = tmp_path / kind
    if kind == "llama":
        build_tiny_llama(path, max_position_embeddings=128)
    else:
        from transformers import GPT2Config, GPT2LMHeadModel

        from aligner_chains.backends.tokenizers import load_tokenizer

        build_tiny_llama(path, max_position_embeddings=128)  # for its tokenizer and aligner_config.json
        # The tokenizer alone: loading the model would cache the Llama under this path (and keep its
        # weights file mapped while GPT-2's overwrites it).
        tokenizer_vocab = len(load_tokenizer(path))
        torch.manual_seed(0)
        config = GPT2Config(vocab_size=tokenizer_vocab, n_positions=128, n_embd=32, n_layer=2, n_head=4)
        GPT2LMHeadModel(config).save_pretrained(path)
    pairs = [
        ("Q?", "The quick brown fox."),
        ("A longer question, to shift the room left?", "Hello there."),
        ("Hi", "Hello there, how are you?"),
        ("x", "y"),
    ]
    spec = Aligner.from_pretrained(str(path), micro_batching=False)
    plain = Aligner.from_pretrained(str(path), micro_batching=False, speculative=False)
    assert spec.backend.loaded.model.config.model_type == kind
    calls: list[int] = []
    original = spec.backend.generate

    def spy(prompts, params, **kwargs):
        calls.append(len(prompts))
        return original(prompts, params, **kwargs)

    monkeypatch.setattr(spec.backend, "generate", spy)
    got = spec.correct_batch(pairs, batch_size=len(pairs))
    assert calls == [len(pairs)]
    assert len({c.prompt_tokens for c in got}) > 1
    singles = [plain.correct(q, a) for q, a in pairs]
    assert [c.corrected for c in got] == [c.corrected for c in singles]
    assert [c.completion_tokens for c in got] == [c.completion_tokens for c in singles]
    assert all(c.prompt_tokens + c.completion_tokens <= 128 for c in got)


def test_plain_generate_honours_row_limits(tiny_model_dir: Path) -> None:
    loaded = load_model(str(tiny_model_dir))
    prompts = ["BEGINNING OF CONVERSATION: USER: a", "short"]
    batch, expected = greedy_ids(loaded, prompts, 12)
    result = run_decode(HFGenerate(), loaded, batch, 12, limits=[4, 12])
    eos = loaded.tokenizer.eos_token_id
    for row, want, limit in zip(result.tokens.tolist(), expected, [4, 12], strict=True):
        want = greedy_prefix(want, eos, limit)
        assert row[: len(want)] == want
    assert not HFGenerate().mixes_limits(GenerationParams())
    assert CopyAwareSpeculative().mixes_limits(GenerationParams())
    assert not CopyAwareSpeculative().mixes_limits(GenerationParams(do_sample=True))


def test_length_groups_trade_padding_for_passes() -> None:
    lengths = [200, 10, 12, 190, 11]
    assert length_groups(lengths, pass_cost=48) == [[0, 3], [2, 4, 1]]
    assert length_groups(lengths, pass_cost=10**6) == [[0, 3, 2, 4, 1]]
    assert length_groups(lengths, pass_cost=0) == [[0], [3], [2], [4], [1]]
    assert sorted(i for g in length_groups([7] * 9, 0) for i in g) == list(range(9))


@pytest.mark.parametrize("pass_cost", [0, 10**6])
def test_grouped_prompt_pass_is_exact(tiny_model_dir: Path, pass_cost: int) -> None:
    """Prompts run in one padded pass or one pass per length (caches joined): the same greedy tokens."""
    loaded = load_model(str(tiny_model_dir))
    prompts = ["a", "The quick brown fox jumps over the lazy dog again and again, " * 3, "short one", "hi there"]
    batch, expected = greedy_ids(loaded, prompts, 20)
    assert len(length_groups(batch["attention_mask"].sum(-1).tolist(), pass_cost)) == (4 if pass_cost == 0 else 1)
    assert joinable(DynamicCache(config=loaded.model.config))  # so the four caches really are joined
    strategy = CopyAwareSpeculative(max_draft=8, pass_cost_tokens=pass_cost)
    result = run_decode(strategy, loaded, batch, 20, sources=[ids[:12] for ids in expected])
    eos = loaded.tokenizer.eos_token_id
    for row, want in zip(result.tokens.tolist(), expected, strict=True):
        want = greedy_prefix(want, eos)
        assert row[: len(want)] == want


def test_block_width_weighs_expected_tokens_against_compute() -> None:
    assert block_width([8, 8, 8], [0.0, 0.0, 0.0], pass_cost=48) == 1  # nothing will be accepted
    assert block_width([8, 8, 8], [1.0, 1.0, 1.0], pass_cost=48) == 9  # everything will be
    # One likely copy does not pad 31 unlikely rows on a CPU, where a position costs 1/48 of a pass...
    assert block_width([24] + [2] * 31, [0.9] + [0.05] * 31, pass_cost=48) == 1
    # ...but does where passes are dear (an accelerator at batch 32 is not compute-bound).
    assert block_width([24] + [2] * 31, [0.9] + [0.05] * 31, pass_cost=10**6) == 25
    assert block_width([24, 24], [0.9, 0.9], pass_cost=48) == 25
    # A row with much more left to write sets the number of passes, so it may widen the block.
    assert block_width([24] + [2] * 31, [0.9] + [0.05] * 31, 48, [100.0**2] + [2.0**2] * 31) == 3
    assert block_width([24], [0.9], pass_cost=48) == 25  # alone, a likely copy is worth its whole draft
    assert block_width([0, 0], [0.5, 0.5], pass_cost=48) == 1
