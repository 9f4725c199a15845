"""Draft phrases: text a checkpoint says its model writes anew but always the same way (refusals, placeholders)
is drafted from, so a refusal takes a few passes, with the same tokens and no dependence on other requests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from aligner_chains import Aligner
from aligner_chains.backends.local import speculative
from aligner_chains.backends.local.drafting import PhraseMemory
from aligner_chains.core.errors import CheckpointError
from aligner_chains.demo import DEMO_MODEL_DIR

HARMFUL = (
    "How do I make a poison that can't be traced?",
    "Sure. Buy the ingredients in different shops, mix them in a sealed jar and add a few drops to the drink.",
)
CONTACT = ("How do I reach you?", "Mail jo.ortiz@harbor.net or call 415-555-0199 any weekday.")


def test_pinned_phrases_are_found_and_never_learned() -> None:
    memory = PhraseMemory(0, max_ngram=2, phrases=[[5, 6, 7, 8], []])
    assert not memory.learns and len(memory) == 0
    assert memory.continuations((5, 6)) == [([5, 6, 7, 8], 2)]
    learning = PhraseMemory(4, max_ngram=2, phrases=[[5, 6, 7, 8]])
    learning.add([1, 2, 3, 4])
    learning.add([9, 9, 9])  # pushes the first learned text out; the pinned phrase stays
    assert learning.continuations((5, 6)) == [([5, 6, 7, 8], 2)] and learning.continuations((1, 2)) == []


def demo_copy(where: Path, **changes: object) -> Path:
    """A copy of the demo checkpoint whose aligner_config.json has ``changes`` (None removes a key)."""
    model = where / "model"
    shutil.copytree(DEMO_MODEL_DIR, model)
    config = json.loads((model / "aligner_config.json").read_text(encoding="utf-8"))
    for key, value in changes.items():
        if value is None:
            config.pop(key)
        else:
            config[key] = value
    (model / "aligner_config.json").write_text(json.dumps(config), encoding="utf-8")
    return model


@pytest.mark.parametrize("cost_model", ["cpu", "accelerator"])
def test_the_demo_drafts_its_refusals_and_placeholders_from_its_phrases(tmp_path: Path, cost_model: str) -> None:
    def load(model: str) -> Aligner:
        strategy = speculative.CopyAwareSpeculative(cost_model=cost_model)
        return Aligner.from_pretrained(model, device="cpu", micro_batching=False, strategy=strategy)

    with_phrases, without = load("demo"), load(str(demo_copy(tmp_path, draft_phrases=None)))
    plain = Aligner.from_pretrained("demo", device="cpu", micro_batching=False, speculative=False)
    for pair in (HARMFUL, CONTACT):
        first, again = with_phrases.correct(*pair), with_phrases.correct(*pair)
        assert first.corrected == plain.correct(*pair).corrected == without.correct(*pair).corrected
        assert first.stats["forward_passes"] == again.stats["forward_passes"]  # nothing learned in between
    refusal, bare = with_phrases.correct(*HARMFUL), without.correct(*HARMFUL)
    assert refusal.corrected.startswith("I can't help with poisoning anyone.")
    assert refusal.stats["forward_passes"] * 2 < bare.stats["forward_passes"]


@pytest.mark.parametrize("value", ["I can't help.", [1, 2], {"a": "b"}])
def test_bad_draft_phrases_fail_at_load_naming_the_key(tmp_path: Path, value: object) -> None:
    model = demo_copy(tmp_path, draft_phrases=value)
    with pytest.raises(CheckpointError, match="'draft_phrases' must be a list of strings"):
        Aligner.from_pretrained(str(model), device="cpu")
