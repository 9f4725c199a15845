"""The demo recipe: its data steps (word scrambling, made-up words, vocabulary pieces) and averaging."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from aligner_chains.demo import DEMO_MODEL_DIR
from cookbook.demo_aligner.dataset import build_examples, find_contacts, redact
from cookbook.demo_aligner.train import FULL, PHASE_KEYS, SHORT, Vocabulary, run_recipe, scramble


def test_scramble_keeps_contacts_whole_and_recomputes_the_correction() -> None:
    rows = build_examples(400, 3, "train", rich=True)
    mixed = scramble(rows, 0.5, seed=3, noise=0.2)
    assert mixed == scramble(rows, 0.5, seed=3, noise=0.2)  # deterministic for a seed
    changed = [(a, b) for a, b in zip(rows, mixed, strict=True) if a != b]
    assert 0.25 * len(rows) < len(changed) < 0.6 * len(rows)
    for before, after in changed:
        assert before["category"] in ("passage", "contact", "benign_trigger")
        found = [after["answer"][s:e] for s, e, _ in find_contacts(after["answer"])]
        assert sorted(found) == sorted(before["answer"][s:e] for s, e, _ in find_contacts(before["answer"]))
        assert after["correction"] == (redact(after["answer"]) if found else after["answer"])


def test_vocabulary_noise_puts_tokenizer_pieces_into_targets() -> None:
    vocabulary = Vocabulary(DEMO_MODEL_DIR)
    assert len(vocabulary.starts) > 1000 and len(vocabulary.rests) > 500
    rng = random.Random(0)
    words = [vocabulary.word(rng) for _ in range(300)]
    assert all(w and " " not in w and "@" not in w and "[" not in w for w in words)
    rows = build_examples(300, 4, "train")
    plain, pieced = scramble(rows, 1.0, 4, noise=0.3), scramble(rows, 1.0, 4, noise=0.3, vocabulary=vocabulary)
    assert plain != pieced
    targets = " ".join(r["correction"] for r in pieced).split()
    assert sum(w.strip(".,;:!?") in vocabulary.starts for w in targets) > 0.3 * len(targets)


def test_recipes_name_their_options(tmp_path: Path) -> None:
    for recipe in (FULL, SHORT):
        for phase in recipe["phases"]:
            assert set(phase) <= PHASE_KEYS, set(phase) - PHASE_KEYS
        members = [n for m in recipe.get("average", []) for n in (m if isinstance(m, list) else [m])]
        assert all(1 <= n <= len(recipe["phases"]) for n in members)
    typo = {"phases": [{**SHORT["phases"][0], "vocabulary_nosie": True}]}
    with pytest.raises(ValueError, match="vocabulary_nosie"):
        run_recipe(typo, tmp_path)
    assert not any(tmp_path.iterdir())  # refused before any work


def test_number_noise_is_never_a_contact() -> None:
    vocabulary = Vocabulary(DEMO_MODEL_DIR, numbers=True)
    rng = random.Random(1)
    words = [vocabulary.word(rng) for _ in range(2000)]
    numbers = [w for w in words if any(c.isdigit() for c in w) and w not in vocabulary.starts + vocabulary.rests]
    assert len(numbers) > 300
    assert not any(find_contacts(f"See {n} now.") for n in numbers)


def test_average_members_may_be_means_of_phases(tmp_path: Path) -> None:
    """``"average": [[1, 2], 3]`` gives the mean of phases 1 and 2 the same share as phase 3."""
    for number, value in ((1, 0.0), (2, 4.0), (3, 8.0)):
        final = tmp_path / f"phase{number}" / "final"
        final.mkdir(parents=True)
        save_file({"w": torch.full((2, 2), value)}, str(final / "model.safetensors"))
        (final / "aligner_config.json").write_text("{}", encoding="utf-8")  # marks the phase as done
    recipe = {"phases": [{"n_train": 1, "data_seed": 0, "config": {}}] * 3, "average": [[1, 2], 3]}
    result = run_recipe(recipe, tmp_path)
    assert torch.equal(load_file(str(result / "model.safetensors"))["w"], torch.full((2, 2), 5.0))  # (0+4)/2/2 + 8/2
