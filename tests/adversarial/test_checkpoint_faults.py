"""Broken checkpoints fail at load, naming what is wrong (issue #16), and a resumed finished run writes valid JSON.

Tiny Llama checkpoints from `build_tiny_llama`, edited on disk: a tensor deleted, ``num_hidden_layers``
changed, a bad ``generation`` block in ``aligner_config.json``.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file, save_file

from aligner_chains import Aligner, CheckpointError
from aligner_chains.finetune import SFTConfig, train_sft
from aligner_chains.testing import build_tiny_llama


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("pristine") / "model")


def variant(pristine: Path, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    shutil.copytree(pristine, path)
    return path


def edit_weights(path: Path, change: Any) -> None:
    weights = load_file(path / "model.safetensors")
    change(weights)
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})


def edit_json(path: Path, change: Any) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(json.dumps(data), encoding="utf-8")


def test_a_missing_tensor_is_named(pristine: Path, tmp_path: Path) -> None:
    path = variant(pristine, tmp_path, "no-embeddings")
    edit_weights(path, lambda w: w.pop("model.embed_tokens.weight"))
    with pytest.raises(CheckpointError, match=r"1 weight\(s\) missing from the checkpoint.*embed_tokens\.weight"):
        Aligner.from_pretrained(str(path))


@pytest.mark.parametrize(
    ("layers", "what", "named"),
    [
        (1, "in the checkpoint but not in the model", "model.layers.1.input_layernorm.weight"),
        (3, "missing from the checkpoint", "model.layers.2.input_layernorm.weight"),
    ],
)
def test_num_hidden_layers_that_disagree_with_the_weights(
    pristine: Path, tmp_path: Path, layers: int, what: str, named: str
) -> None:
    path = variant(pristine, tmp_path, f"layers-{layers}")
    edit_json(path / "config.json", lambda c: c.update(num_hidden_layers=layers))
    with pytest.raises(CheckpointError) as info:
        Aligner.from_pretrained(str(path))
    message = str(info.value)
    assert "9 weight(s) " + what in message and named in message and "num_hidden_layers" in message


def test_tied_weights_are_not_missing(pristine: Path, tmp_path: Path) -> None:
    path = variant(pristine, tmp_path, "tied")
    edit_json(path / "config.json", lambda c: c.update(tie_word_embeddings=True))
    edit_weights(path, lambda w: w.pop("lm_head.weight"))
    aligner = Aligner.from_pretrained(str(path), max_new_tokens=2)
    model = aligner.backend.loaded.model
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert aligner.correct("Q?", "An answer.").finish_reason in ("stop", "length")


@pytest.mark.parametrize(
    ("generation", "match"),
    [
        ([{"max_new_tokens": 8}], "must be a JSON object"),
        ("greedy", "must be a JSON object"),
        ({"max_new_token": 8}, r"unknown setting\(s\) \['max_new_token'\]"),
        ({"max_new_tokens": "8"}, "max_new_tokens='8'"),
        ({"max_new_tokens": True}, "max_new_tokens=True"),
        ({"max_new_tokens": 0}, "max_new_tokens=0"),
        ({"do_sample": "yes"}, "do_sample='yes'"),
        ({"temperature": -1.0}, "temperature=-1.0"),
    ],
)
def test_a_bad_generation_block_fails_at_load(pristine: Path, tmp_path: Path, generation: Any, match: str) -> None:
    path = variant(pristine, tmp_path, "bad-generation")
    edit_json(path / "aligner_config.json", lambda c: c.update(generation=generation))
    with pytest.raises(CheckpointError, match=match) as info:
        Aligner.from_pretrained(str(path))
    assert "aligner_config.json: 'generation'" in str(info.value)
    with pytest.raises(CheckpointError, match=match):  # the remote backend reads a local copy's block too
        Aligner.from_server("http://127.0.0.1:9", model="m", template="aligner-v2", tokenizer=str(path))


def test_a_good_generation_block_applies(pristine: Path, tmp_path: Path) -> None:
    path = variant(pristine, tmp_path, "good-generation")
    edit_json(path / "aligner_config.json", lambda c: c.update(generation={"max_new_tokens": 3, "do_sample": False}))
    aligner = Aligner.from_pretrained(str(path))
    assert aligner.generation.max_new_tokens == 3
    assert aligner.correct("Q?", "A longer answer to rewrite.").completion_tokens <= 3


def test_resuming_a_finished_run_writes_valid_json(tmp_path: Path) -> None:
    rows = [
        {"question": f"Reach team {i}?", "answer": f"Mail team{i}@example.com.", "correction": "Mail [EMAIL]."}
        for i in range(12)
    ]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    config = SFTConfig.model_validate(
        {
            "train_file": str(data),
            "model_config": {
                "hidden_size": 16,
                "intermediate_size": 32,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "num_key_value_heads": 1,
                "max_position_embeddings": 128,
            },
            "tokenizer_vocab_size": 300,
            "max_length": 96,
            "per_device_batch_size": 6,
            "eval_fraction": 0.0,
            "save_steps": 1,
            "output_dir": str(tmp_path / "run"),
        }
    )

    def strict(path: Path) -> dict[str, Any]:
        def refuse(constant: str) -> None:
            raise AssertionError(f"{path} holds {constant}, which is not JSON")

        return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)

    first = strict(train_sft(config) / "aligner_config.json")["summary"]
    again = strict(train_sft(config) / "aligner_config.json")["summary"]  # nothing left to train
    assert again["resumed_from_step"] == first["steps"] == again["steps"]
    assert again["loss_tokens_this_run"] == 0
    assert math.isfinite(first["final_train_loss"]) and again["final_train_loss"] == first["final_train_loss"]
