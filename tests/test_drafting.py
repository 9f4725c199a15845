"""Drafting for copy-aware decoding: candidates, draft trees and the cost model; forward passes counted.

The pass counts use the "forced copy" of the conformance suite: the tiny model's own greedy output
is the answer it drafts from (edited in places), so greedy decoding copies it, and the count of
forward passes is a property of the decoder alone.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from aligner_chains.backends.local.blocks import tree_ancestry
from aligner_chains.backends.local.drafting import (
    ACCELERATOR_COST,
    CPU_COST,
    Candidate,
    Drafter,
    DraftTree,
    PassCost,
    PhraseMemory,
    block_width,
    plan_trees,
)
from aligner_chains.backends.local.loading import load_model
from aligner_chains.backends.local.speculative import CopyAwareSpeculative
from aligner_chains.core.errors import ConfigError
from aligner_chains.core.generation import GenerationParams

PROMPTS = ["BEGINNING OF CONVERSATION: USER: a", "The quick brown fox jumps over the lazy dog again"]
MAX_NEW = 60


def test_tree_merges_candidates_and_follows_the_models_choice() -> None:
    tree = DraftTree.build(
        [Candidate([1, 2, 3, 4], 0), Candidate([5, 6], None), Candidate([1, 2, 7, 8], None), Candidate([1, 9], None)]
    )
    assert tree.tokens == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert tree.parents == [-1, 0, 1, 2, -1, 4, 1, 6, 0]
    assert tree.depths == [1, 2, 3, 4, 1, 2, 3, 4, 2]
    assert tree.owners == [0, 0, 0, 0, 1, 1, 2, 2, 3]
    assert tree.primary_length() == 4 and not tree.is_chain()
    # The model writes 1 2 7, then 0: the third candidate's branch, then the model's own token.
    after = {0: 1, 2: 7, 7: 0}  # block position -> the model's next token (positions off the path unused)
    after[1] = 2
    assert tree.walk(after.__getitem__) == ([0, 1, 6], 0)
    assert tree.walk(lambda position: 42) == ([], 42)
    assert tree.trimmed(5).tokens == [1, 2, 3, 4, 5] and tree.trimmed(4).is_chain()
    assert DraftTree.build([Candidate([1, 2, 3], 0), Candidate([4, 5], None)], limit=4).tokens == [1, 2, 3, 4]


def test_tree_mask_lets_each_draft_see_only_its_ancestors() -> None:
    tree = DraftTree.build([Candidate([1, 2, 3], 0), Candidate([1, 7, 8], None), Candidate([9], None)])
    assert tree.parents == [-1, 0, 1, 0, 3, -1]
    seen = tree_ancestry(tree, 8, torch.device("cpu"))
    visible = [sorted(torch.nonzero(row).flatten().tolist()) for row in seen]
    assert visible == [
        [0],  # the root (the last token written)
        [0, 1],
        [0, 1, 2],
        [0, 1, 2, 3],
        [0, 1, 4],  # 7 hangs off the shared 1
        [0, 1, 4, 5],
        [0, 6],  # 9 hangs off the root
        [0, 7],  # padding: the root and itself
    ]


def test_candidates_worked_example() -> None:
    """The module docstring's example: answer ``a b c d a b e``, output so far ``x a b``."""
    a, b, c, d, e, x = 1, 2, 3, 4, 5, 9
    drafter = Drafter()
    row = drafter.row([a, b, c, d, a, b, e], budget=100)
    row.generated = [x, a, b]
    found = drafter.candidates(row, room=10, branch_room=10)
    assert [(f.tokens, f.start) for f in found] == [([c, d, a, b, e], 2), ([e], 6)]
    assert (row.anchor, row.aligned_at) == (2, 3)  # the primary moved the copy pointer
    tree = drafter.tree(row, room=10, limit=100, branch_room=10)
    path, token = tree.walk(lambda position: e if position == 0 else 0)  # the model writes e, then 0
    drafter.accept(row, tree, path, token, eos=set())
    assert row.generated == [x, a, b, e, 0]
    assert (row.anchor, row.aligned_at) == (7, 4)  # moved to the winning branch, past its accepted token
    assert (row.passes, row.accepted, row.drafted) == (1, 1, 6)


def test_candidates_after_an_edit_include_both_ways_to_resume() -> None:
    drafter = Drafter()
    row = drafter.row(list(range(10, 30)), budget=100)
    tree = drafter.tree(row, room=99, limit=100)  # before anything is written: the answer itself
    assert tree.tokens == list(range(10, 30))
    path, token = tree.walk(lambda position: 10 + position if position < 5 else 99)  # copies 5, then writes 99
    drafter.accept(row, tree, path, token, eos=set())
    assert row.generated == [10, 11, 12, 13, 14, 99] and row.anchor == 5  # the answer's 15, at index 5
    starts = [f.start for f in drafter.candidates(row, room=4, branch_room=4)]
    assert starts == [6, 5]  # 99 replaced the answer's 15, or was inserted before it
    assert drafter.draft(row) == [16, 17, 18, 19, 20, 21, 22, 23]  # the primary alone, at the draft length


def test_pass_cost_models() -> None:
    assert CPU_COST.of(10) == 58 and CPU_COST.free_width(4) == 0
    assert ACCELERATOR_COST.of(1) == ACCELERATOR_COST.of(2048) == 2048 and ACCELERATOR_COST.of(2050) == 2050
    assert ACCELERATOR_COST.free_width(8) == 256 and ACCELERATOR_COST.free_width(1, fixed=2000) == 48
    # Within the free positions the widest block is no dearer, so a likely copy is verified whole.
    assert block_width([300], [0.8], ACCELERATOR_COST) == 301
    assert block_width([300], [0.8], CPU_COST) == 1  # widths 1 or 301: on a CPU the long draft does not pay
    strategy = CopyAwareSpeculative(pass_cost_tokens=100)
    assert strategy.pass_cost("cpu") == PassCost(100) and strategy.pass_cost("cuda") == PassCost(100, 100)
    assert CopyAwareSpeculative(cost_model="accelerator").pass_cost("cpu") == ACCELERATOR_COST
    with pytest.raises(ConfigError, match="cost_model='gpu'"):
        CopyAwareSpeculative(cost_model="gpu")  # type: ignore[arg-type]


def test_plan_trees_by_cost_model() -> None:
    """On a CPU a lone row verifies its adaptive primary draft; on an accelerator the rest of its answer
    and the alternatives; in a CPU batch alternatives fill the padding of rows with short primaries."""
    drafter = Drafter()

    def row(answer: list[int], written: list[int]):
        r = drafter.row(answer, budget=500)
        r.generated, r.anchor = list(written), 0
        return r

    answer = [*range(100, 200), *range(100, 110), 7, *range(300, 400)]  # 100..109 twice
    trees, width = plan_trees(drafter, [row(answer, [105])], CPU_COST, cap=192)
    assert trees[0].is_chain() and len(trees[0]) == width - 1 <= drafter.max_draft
    trees, width = plan_trees(drafter, [row(answer, [105])], ACCELERATOR_COST, cap=2048)
    assert trees[0].primary_length() == len(answer) - 6  # the rest of the answer after the first 105
    assert not trees[0].is_chain() and width == 1 + len(trees[0])
    trees, width = plan_trees(drafter, [row(answer, [105]), row([5, 6, 7], [6])], CPU_COST, cap=96)
    assert trees[1].primary_length() == 1 and len(trees[1]) > 1  # a second candidate rides in the padding
    trees, _ = plan_trees(drafter, [row(answer, [105]), row([5, 6, 7], [6])], CPU_COST, cap=96, branches=False)
    assert all(tree.is_chain() for tree in trees)


def test_phrase_memory_keeps_the_latest_continuations_within_its_size() -> None:
    memory = PhraseMemory(max_tokens=10, max_ngram=2, per_key=2)
    memory.add([1, 2, 3])
    memory.add([1, 2, 4, 5])
    assert [text[start:] for text, start in memory.continuations((1, 2))] == [[4, 5], [3]]  # latest first
    memory.add([1, 2, 6])
    assert [text[start:] for text, start in memory.continuations((2,))] == [[6], [4, 5]]  # two per n-gram
    memory.add([7, 8, 9, 1])  # 14 tokens: the oldest texts go
    assert len(memory) == 7 and memory.continuations((2, 3)) == []
    assert memory.continuations((8, 9))[0][0] == [7, 8, 9, 1]
    memory.add(list(range(11)))  # longer than the whole memory: not kept
    assert len(memory) == 7
    drafter = Drafter()
    row = drafter.row([50, 51, 52], budget=100, memory=memory)
    row.generated = [9, 8, 9]  # the answer has nothing after (8, 9), the memory has
    assert drafter.draft(row) == [1]


# ----------------------------------------------------------------------------- forward passes on a tiny model


@pytest.fixture(scope="module")
def greedy(tiny_model_dir: Path):
    """The tiny model, its prompts (one per row, unpadded) and each one's plain greedy continuation."""
    loaded = load_model(str(tiny_model_dir))
    rows = []
    for prompt in PROMPTS:
        ids = loaded.tokenizer(prompt, return_tensors="pt")
        with torch.inference_mode():
            out = loaded.model.generate(
                **ids, max_new_tokens=MAX_NEW, do_sample=False, pad_token_id=loaded.tokenizer.pad_token_id
            )
        rows.append((ids, out[0, ids["input_ids"].shape[1] :].tolist()))
    return loaded, rows


def decode_counting(loaded, ids, source: list[int], cost_model: str, strategy: CopyAwareSpeculative | None = None):
    """(new tokens, stats, forward calls) of copy-aware decoding drafting from ``source`` (a fresh memory)."""
    calls: list[int] = []
    handle = loaded.model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        with torch.inference_mode():
            result = (strategy or CopyAwareSpeculative(cost_model=cost_model)).decode(
                loaded.model,
                ids["input_ids"],
                ids["attention_mask"],
                GenerationParams(max_new_tokens=MAX_NEW),
                eos_token_ids=[loaded.tokenizer.eos_token_id],
                pad_token_id=loaded.tokenizer.pad_token_id,
                sources=[source],
            )
    finally:
        handle.remove()
    return result.tokens[0].tolist(), result.stats[0], len(calls)


def substituted(tokens: list[int], k: int) -> list[int]:
    """``tokens`` with ``k`` evenly spaced single tokens replaced by one the row never uses."""
    unused = next(t for t in range(5, 1000) if t not in tokens)
    edited = list(tokens)
    for i in range(k):
        edited[(i + 1) * len(tokens) // (k + 1)] = unused
    return edited


@pytest.mark.parametrize("row", [0, 1])
def test_unchanged_answer_takes_one_pass_on_an_accelerator(greedy, row: int) -> None:
    loaded, rows = greedy
    ids, want = rows[row]
    got, stats, calls = decode_counting(loaded, ids, want, "accelerator")
    assert got == want
    assert calls == 1 and stats["forward_passes"] == 1  # the bound is 2
    assert stats["accepted_draft_tokens"] == len(want) - 1  # the last token is the model's own


@pytest.mark.parametrize("k", [1, 2, 4])
@pytest.mark.parametrize("row", [0, 1])
def test_k_edits_take_at_most_k_plus_3_passes_on_an_accelerator(greedy, row: int, k: int) -> None:
    loaded, rows = greedy
    ids, want = rows[row]
    got, stats, calls = decode_counting(loaded, ids, substituted(want, k), "accelerator")
    assert got == want
    assert calls == stats["forward_passes"] <= k + 3
    assert calls <= k + 1  # what these edits take: the prompt pass, then one per edit


@pytest.mark.parametrize("edit", ["dropped", "inserted"])
def test_an_edit_that_drops_or_adds_words_takes_one_pass(greedy, edit: str) -> None:
    """The correction leaves out two of the answer's tokens, or writes one the answer lacks."""
    loaded, rows = greedy
    ids, want = rows[1]
    source = want[:20] + [5, 6] + want[20:] if edit == "dropped" else want[:20] + want[21:]
    got, _, calls = decode_counting(loaded, ids, source, "accelerator")
    assert got == want
    assert calls <= 1 + 3  # one edited region: k + 3
    assert calls <= 2 if edit == "dropped" else calls <= 3


@pytest.mark.parametrize("k", [0, 2])
def test_cpu_cost_model_stays_exact(greedy, k: int) -> None:
    """The CPU cost model verifies shorter drafts (more passes), with the same tokens."""
    loaded, rows = greedy
    for ids, want in rows:
        got, stats, calls = decode_counting(loaded, ids, substituted(want, k), "cpu")
        assert got == want
        assert calls == stats["forward_passes"] < len(want) // 2


def test_eager_attention_takes_the_tree_mask_as_additive_floats(greedy, tiny_model_dir: Path) -> None:
    """sdpa reads the 4-D tree mask as booleans, eager attention adds it: both give greedy's tokens."""
    from transformers import AutoModelForCausalLM

    loaded, rows = greedy
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), attn_implementation="eager").eval()
    assert model.config._attn_implementation == "eager"
    eager = SimpleNamespace(model=model, tokenizer=loaded.tokenizer)
    for ids, _ in rows:
        with torch.inference_mode():
            out = model.generate(
                **ids, max_new_tokens=MAX_NEW, do_sample=False, pad_token_id=loaded.tokenizer.pad_token_id
            )
        want = out[0, ids["input_ids"].shape[1] :].tolist()
        got, _, calls = decode_counting(eager, ids, substituted(want, 3), "accelerator")
        assert got == want and calls <= 4


@pytest.mark.parametrize("memory_tokens", [0, 4096])
def test_text_the_model_wrote_before_is_drafted_from_memory(greedy, memory_tokens: int) -> None:
    """A correction that shares nothing with its answer (a refusal, say) is drafted from what the model
    wrote before: the second time it takes two passes (the prompt pass, whose draft is the answer, then
    one drafted from memory). Without memory it takes about one pass per token."""
    loaded, rows = greedy
    ids, want = rows[0]
    strategy = CopyAwareSpeculative(cost_model="accelerator", memory_tokens=memory_tokens)
    unrelated = [t for t in range(5, 300) if t not in want][:10]
    first = decode_counting(loaded, ids, unrelated, "", strategy)
    second = decode_counting(loaded, ids, unrelated, "", strategy)
    assert first[0] == second[0] == want
    assert first[2] > len(want) // 2
    assert second[2] == (2 if memory_tokens else first[2])
    assert len(strategy.memory(loaded.model) or ()) == (2 * len(want) if memory_tokens else 0)
