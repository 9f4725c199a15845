"""Aligner bootstrapping: corrections of the policy's answers train the policy, round after round."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_annotators import first_words_aligner
from test_oaif import build_warm_policy

from aligner_chains import ConfigError
from aligner_chains.finetune import bootstrap
from aligner_chains.finetune import dpo as dpo_module

PROMPTS = [f"Question {i}: how do I reach team {i}?" for i in range(48)]
DPO = {
    "learning_rate": 2e-3,
    "beta": 0.1,
    "num_epochs": 4.0,
    "per_device_batch_size": 8,
    "max_length": 96,
    "eval_fraction": 0.1,
    "warmup_ratio": 0.1,
    "logging_steps": 100,
}


@pytest.fixture(scope="module")
def warm_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_warm_policy(tmp_path_factory.mktemp("warm"))


def test_rounds_make_the_policy_write_what_the_aligner_would(tmp_path: Path, warm_policy: Path) -> None:
    """The stand-in Aligner keeps an answer's first word; round after round the policy's answers get
    shorter and the Aligner has less to change (Model -> Model+ -> Model++)."""
    aligner = first_words_aligner(1)
    result = bootstrap(
        warm_policy, aligner, PROMPTS, rounds=3, output_dir=tmp_path, dpo=DPO, do_sample=True, max_new_tokens=16
    )
    rounds = result.rounds
    for r in rounds:
        print(
            f"round {r.round}: pairs {r.pairs}, unchanged {r.unchanged}, change rate {r.change_rate:.2f}, "
            f"mean change {r.mean_change:.2f}, answer words {r.mean_answer_words:.2f}, "
            f"eval margin {r.dpo['eval_margin_before']:.1f} -> {r.dpo['eval_margin']:.1f}"
        )
    assert [r.round for r in rounds] == [1, 2, 3]
    assert rounds[0].policy == str(warm_policy)
    assert [r.policy for r in rounds[1:]] == [r.output for r in rounds[:-1]]  # each round trains the last one's model
    assert result.final_model == Path(rounds[-1].output)
    assert all(r.pairs + r.unchanged + r.failed == len(PROMPTS) for r in rounds)
    assert all(r.dpo["eval_margin"] > r.dpo["eval_margin_before"] for r in rounds)
    assert rounds[-1].mean_answer_words < rounds[0].mean_answer_words - 0.5
    assert rounds[-1].mean_change < rounds[0].mean_change
    triples = [json.loads(line) for line in (tmp_path / "round-1" / "corrections.jsonl").read_text().splitlines()]
    assert len(triples) == rounds[0].pairs
    assert all(t["correction"] == t["answer"].split()[0] and t["question"] in PROMPTS for t in triples)
    saved = json.loads((tmp_path / "bootstrap.json").read_text())
    assert [s["round"] for s in saved] == [1, 2, 3] and saved[2]["output"] == rounds[2].output
    record = json.loads((result.final_model / "aligner_config.json").read_text())
    assert record["template"] == "aligner-v2"  # the warm policy happened to be an Aligner; it stays one


def test_finished_rounds_are_reused(tmp_path: Path, warm_policy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = bootstrap(warm_policy, first_words_aligner(1), PROMPTS[:16], rounds=1, output_dir=tmp_path, dpo=DPO)

    def no_training(config):
        raise AssertionError("a finished round was trained again")

    monkeypatch.setattr(dpo_module, "train_dpo", no_training)
    again = bootstrap(warm_policy, first_words_aligner(1), PROMPTS[:16], rounds=1, output_dir=tmp_path, dpo=DPO)
    assert again.rounds == first.rounds and again.final_model == first.final_model


def test_stops_when_the_aligner_changes_nothing(tmp_path: Path, warm_policy: Path) -> None:
    result = bootstrap(warm_policy, first_words_aligner(1000), PROMPTS[:8], rounds=3, output_dir=tmp_path, dpo=DPO)
    assert len(result.rounds) == 1 and result.rounds[0].pairs == 0 and result.rounds[0].output is None
    assert result.rounds[0].change_rate == 0.0 and result.final_model == warm_policy


def test_bad_settings_are_refused(tmp_path: Path, warm_policy: Path) -> None:
    aligner = first_words_aligner(1)
    with pytest.raises(ConfigError, match="set by bootstrap itself"):
        bootstrap(warm_policy, aligner, PROMPTS, output_dir=tmp_path, dpo={"base_model": "x"})
    with pytest.raises(ConfigError, match="merge_on_export"):
        bootstrap(warm_policy, aligner, PROMPTS, output_dir=tmp_path, dpo={"lora": {"merge_on_export": False}})
    with pytest.raises(ConfigError, match="rounds must be"):
        bootstrap(warm_policy, aligner, PROMPTS, rounds=0, output_dir=tmp_path)
    with pytest.raises(ConfigError, match="non-empty"):
        bootstrap(warm_policy, aligner, [], output_dir=tmp_path)
    with pytest.raises(ConfigError, match="learning_rate"):
        bootstrap(warm_policy, aligner, PROMPTS[:4], output_dir=tmp_path, dpo={"learning_rate": -1})
