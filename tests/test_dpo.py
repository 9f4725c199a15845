"""Offline preference training: pair loading (pairs, triples, HH-RLHF), log-probs, learning, LoRA reference, resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from aligner_chains import Aligner, ConfigError, DataError
from aligner_chains.finetune import DPOConfig, load_pairs, read_metrics, split_transcripts, train_dpo
from aligner_chains.finetune import dpo as dpo_module
from aligner_chains.finetune.data import IGNORE_INDEX
from aligner_chains.finetune.logprobs import Reference, sequence_logps
from aligner_chains.finetune.preference_data import PreferencePair, collate_pairs, encode_pair
from aligner_chains.testing import build_tiny_llama, train_byte_bpe

FIXTURES = Path(__file__).parent / "fixtures"


def contact_pairs(ids: range) -> list[dict[str, str]]:
    """Chosen: the contact data redacted; rejected: the raw e-mail address (fewer tokens, so a random
    model starts out preferring it: the margin starts negative)."""
    return [
        {
            "prompt": f"How do I reach team {i}?",
            "chosen": f"Write to [EMAIL] or visit room {i}, the desk is open daily.",
            "rejected": f"Write to t{i}@x.com.",
        }
        for i in ids
    ]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama (no template: an upstream model, not an Aligner)."""
    texts = [json.dumps(r) for r in contact_pairs(range(10))]
    return build_tiny_llama(tmp_path_factory.mktemp("dpo") / "policy", template=None, texts=texts)


def dpo_config(tmp_path: Path, base: Path, **overrides) -> DPOConfig:
    tmp_path.mkdir(parents=True, exist_ok=True)
    train = write_jsonl(tmp_path / "train.jsonl", contact_pairs(range(24)))
    held_out = write_jsonl(tmp_path / "eval.jsonl", contact_pairs(range(100, 108)))
    base_config = {
        "base_model": str(base),
        "train_file": str(train),
        "eval_file": str(held_out),
        "learning_rate": 1e-3,
        "beta": 0.1,
        "per_device_batch_size": 4,
        "num_epochs": 2.0,
        "max_length": 128,
        "save_steps": 4,
        "logging_steps": 1,
        "output_dir": str(tmp_path / "run"),
        "seed": 5,
    }
    return DPOConfig.model_validate({**base_config, **overrides})


# ----------------------------------------------------------------------------- data


def test_hh_transcripts_split_into_prompt_and_last_turns() -> None:
    chosen = "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: Help me?\n\nAssistant: Sure, here is how."
    rejected = "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: Help me?\n\nAssistant: Sure, no."
    pair = split_transcripts(chosen, rejected)
    assert pair == PreferencePair(
        "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: Help me?\n\nAssistant:", "Sure, here is how.", "Sure, no."
    )
    with pytest.raises(DataError, match="further turns"):
        split_transcripts(chosen, "\n\nHuman: Hi\n\nAssistant: Bye.\n\nHuman: Help me?\n\nAssistant: No.")
    with pytest.raises(DataError, match="share no prefix"):
        split_transcripts("\n\nHuman: A", "\n\nHuman: B")


def test_hh_rlhf_fixture_loads_as_pairs() -> None:
    pairs = load_pairs(FIXTURES / "hh_rlhf_slice.jsonl")
    rows = [json.loads(line) for line in (FIXTURES / "hh_rlhf_slice.jsonl").read_text().splitlines()]
    assert len(pairs) == len(rows) == 50
    for pair, row in zip(pairs, rows, strict=True):
        assert pair.prompt.startswith("\n\nHuman:") and pair.prompt.endswith("\n\nAssistant:")
        assert "\n\nHuman:" not in pair.chosen and "\n\nHuman:" not in pair.rejected
        assert pair.chosen != pair.rejected
        assert row["chosen"].startswith(pair.prompt) and row["chosen"].rstrip().endswith(pair.chosen)
        assert row["rejected"].startswith(pair.prompt) and row["rejected"].rstrip().endswith(pair.rejected)


def test_pairs_triples_and_formats(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "mixed.jsonl",
        [
            {"prompt": "P?", "chosen": "good", "rejected": "bad"},
            {"question": "Q?", "answer": "mail me at a@b.com", "correction": "mail me at [EMAIL]"},
        ],
    )
    pairs = load_pairs(path, prompt_format="User: {prompt}\nBot:")
    assert pairs == [
        PreferencePair("User: P?\nBot:", "good", "bad"),
        PreferencePair("User: Q?\nBot:", "mail me at [EMAIL]", "mail me at a@b.com"),  # correction > answer
    ]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"prompt": "p", "chosen": "c"}\n', r"bad.jsonl:1: cannot tell the row's format"),
        ('{"prompt": "p", "chosen": "c", "rejected": 3}\n', r"bad.jsonl:1: field 'rejected' is a int"),
        ('{"prompt": " ", "chosen": "c", "rejected": "r"}\n', r"bad.jsonl:1: the prompt is empty"),
        ('{"chosen": "\\n\\nHuman: a", "rejected": "\\n\\nHuman: b"}\n', r"bad.jsonl:1: the transcripts share no"),
        ("", r"holds no preference pairs"),
    ],
)
def test_bad_pair_rows_name_file_and_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        load_pairs(path)


def test_encode_and_collate_pairs() -> None:
    tokenizer = train_byte_bpe(["hello world, a longer answer here", "How do I?"], 300)
    pair = PreferencePair("How do I?", "hello world", "a longer answer here")
    example, cut = encode_pair(tokenizer, pair, max_length=64)
    assert not cut and example.chosen_ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(example.chosen_ids[:-1]) == " hello world"
    assert example.input_ids == example.prompt_ids + example.rejected_ids  # the longer one sizes the pair
    same, _ = encode_pair(tokenizer, PreferencePair("How do I?", "hi", "hi"), max_length=64)
    assert same.identical and not example.identical
    short, cut = encode_pair(tokenizer, pair, max_length=len(example.prompt_ids) + 2, max_prompt_length=3)
    assert cut and len(short.prompt_ids) == 3 and short.prompt_ids == example.prompt_ids[-3:]
    batch = collate_pairs([example, same], pad_token_id=0)
    assert batch["input_ids"].shape[0] == 4 and batch["valid"].tolist() == [True, False]
    n_prompt = len(example.prompt_ids)
    assert (batch["labels"][0, :n_prompt] == IGNORE_INDEX).all()  # no loss on the prompt
    assert batch["labels"][0, n_prompt : n_prompt + len(example.chosen_ids)].tolist() == example.chosen_ids
    assert batch["labels"][2, n_prompt : n_prompt + len(example.rejected_ids)].tolist() == example.rejected_ids


def test_sequence_logps_sum_completion_tokens_under_any_padding(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()
    prompt, completion = [1, 40, 41, 42], [50, 51, 2]
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logp = model(input_ids=ids).logits.log_softmax(-1)[0]
    expected = sum(float(logp[len(prompt) - 1 + k, t]) for k, t in enumerate(completion))
    labels = [IGNORE_INDEX] * len(prompt) + completion
    right = {
        "input_ids": torch.tensor([prompt + completion + [0, 0]]),
        "attention_mask": torch.tensor([[1] * 7 + [0, 0]]),
        "labels": torch.tensor([[*labels, IGNORE_INDEX, IGNORE_INDEX]]),
    }
    left = {
        "input_ids": torch.tensor([[0, 0, *prompt, *completion]]),
        "attention_mask": torch.tensor([[0, 0] + [1] * 7]),
        "labels": torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, *labels]]),
    }
    with torch.no_grad():
        for batch in (right, left):
            total, count = sequence_logps(model, batch)
            assert count.tolist() == [3]
            assert total.item() == pytest.approx(expected, abs=1e-4)


# ----------------------------------------------------------------------------- training


def test_dpo_raises_the_held_out_margin(tmp_path: Path, policy_dir: Path) -> None:
    out = train_dpo(dpo_config(tmp_path, policy_dir))
    record = json.loads((out / "aligner_config.json").read_text())
    summary = record["summary"]
    assert record["template"] is None  # an upstream model, not an Aligner
    assert record["data"] == {"train_pairs": 24, "eval_pairs": 8, "identical_pairs": 0, "truncated_pairs": 0}
    before, after = summary["eval_margin_before"], summary["eval_margin"]
    print(f"held-out margin {before:.2f} -> {after:.2f}, reward accuracy {summary['eval_reward_accuracy']:.2f}")
    assert before < 0 and after > before + 10  # held-out chosen-minus-rejected log-prob margin rises
    assert summary["eval_reward_accuracy"] == 1.0 and summary["final_train_loss"] < math.log(2)
    metrics = read_metrics(tmp_path / "run")
    steps = [m for m in metrics if "loss" in m]
    assert [m["step"] for m in steps] == list(range(1, 13))  # 24 pairs / 4 per step, 2 epochs
    assert steps[0]["rewards/margin"] == pytest.approx(0.0, abs=1e-6)  # step 1 starts at the reference
    assert {"rewards/chosen", "rewards/rejected", "rewards/accuracy", "logps/chosen", "lr"} <= set(steps[0])
    assert steps[-1]["rewards/margin"] > 1.0
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()


@pytest.mark.parametrize(("loss_type", "beta"), [("ipo", 0.05), ("slic", 0.1)])
def test_ipo_and_slic_also_raise_the_margin(tmp_path: Path, policy_dir: Path, loss_type: str, beta: float) -> None:
    # IPO regresses h to 1/(2 beta) = 10; SLiC's hinge is satisfied once beta h >= 1, i.e. h >= 10.
    out = train_dpo(dpo_config(tmp_path, policy_dir, loss_type=loss_type, beta=beta))
    summary = json.loads((out / "aligner_config.json").read_text())["summary"]
    print(f"{loss_type}: held-out margin {summary['eval_margin_before']:.2f} -> {summary['eval_margin']:.2f}")
    assert summary["eval_margin"] > summary["eval_margin_before"] + 5
    assert summary["eval_reward_accuracy"] == 1.0


def test_identical_pairs_are_counted_and_masked(tmp_path: Path, policy_dir: Path) -> None:
    rows = contact_pairs(range(8)) + [{"prompt": f"Q{i}?", "chosen": "same", "rejected": "same"} for i in range(4)]
    train = write_jsonl(tmp_path / "mixed.jsonl", rows)
    out = train_dpo(dpo_config(tmp_path, policy_dir, train_file=str(train), max_steps=2))
    record = json.loads((out / "aligner_config.json").read_text())
    assert record["data"]["identical_pairs"] == 4
    assert all(m["pairs/valid"] <= 4 for m in read_metrics(tmp_path / "run") if "pairs/valid" in m)
    only_same = write_jsonl(tmp_path / "same.jsonl", rows[8:])
    with pytest.raises(ConfigError, match="identical chosen and rejected"):
        train_dpo(dpo_config(tmp_path / "x", policy_dir, train_file=str(only_same)))


def test_lora_reference_is_the_base_with_adapters_disabled(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("peft")
    references: list[Reference] = []
    real_init = Reference.__init__

    def spy(self, policy, *, uses_adapters):
        real_init(self, policy, uses_adapters=uses_adapters)
        references.append(self)

    monkeypatch.setattr(Reference, "__init__", spy)
    config = dpo_config(
        tmp_path,
        tiny_model_dir,
        train_file=str(FIXTURES / "hh_rlhf_slice.jsonl"),
        eval_file=None,
        eval_fraction=0.1,
        max_length=160,
        max_prompt_length=96,
        max_steps=4,
        learning_rate=5e-3,
        lora={"r": 4, "target_modules": ["q_proj", "v_proj"], "merge_on_export": False},
    )
    out = train_dpo(config)
    assert len(references) == 1 and references[0].frozen is None  # no second copy of the weights
    first = next(m for m in read_metrics(tmp_path / "run") if "loss" in m)
    assert first["rewards/chosen"] == 0.0 and first["rewards/rejected"] == 0.0  # LoRA starts as the identity
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)
    record = json.loads((out / "aligner_config.json").read_text())
    assert record["adapter"] is True and record["template"] == "aligner-v2"  # the base was an Aligner
    assert record["data"]["truncated_pairs"] > 0 and record["data"]["train_pairs"] == 45
    Aligner.from_pretrained(str(tiny_model_dir), adapter=str(out), max_new_tokens=4).correct("q", "a")


def test_full_finetune_reference_is_a_frozen_copy(policy_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(policy_dir))
    reference = Reference(model, uses_adapters=False)
    assert reference.frozen is not model and not any(p.requires_grad for p in reference.frozen.parameters())
    with torch.no_grad():
        next(model.parameters()).add_(1.0)  # training the policy leaves the reference as it was
    assert not torch.equal(next(model.parameters()), next(reference.frozen.parameters()))


def test_dpo_resume_after_interruption_matches_uninterrupted(
    tmp_path: Path, policy_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = train_dpo(dpo_config(tmp_path / "a", policy_dir))
    expected = load_file(reference / "model.safetensors")

    real_save = dpo_module.save_checkpoint
    calls = {"n": 0}

    def save_then_die(*args, **kwargs):
        path = real_save(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # killed right after the second checkpoint (step 8)
        return path

    config = dpo_config(tmp_path / "b", policy_dir)
    monkeypatch.setattr(dpo_module, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_dpo(config)
    monkeypatch.setattr(dpo_module, "save_checkpoint", real_save)
    resumed = train_dpo(config)
    record = json.loads((resumed / "aligner_config.json").read_text())
    assert record["summary"]["resumed_from_step"] == 8
    steps = [m["step"] for m in read_metrics(tmp_path / "b" / "run") if "loss" in m]
    assert steps == list(range(1, 13))  # the metrics log has each step once
    got = load_file(resumed / "model.safetensors")
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, rtol=1e-5, atol=1e-6)


def test_cli_train_dpo_on_correction_triples(tmp_path: Path, policy_dir: Path) -> None:
    triples = write_jsonl(
        tmp_path / "triples.jsonl",
        [
            {"question": f"How do I reach team {i}?", "answer": f"Mail t{i}@x.com.", "correction": "Use the form."}
            for i in range(8)
        ],
    )
    config = dpo_config(tmp_path, policy_dir, train_file=str(triples), eval_file=None, eval_fraction=0.0)
    path = tmp_path / "cfg.json"
    path.write_text(config.model_dump_json())
    from aligner_chains.cli import main

    args = ["train", "dpo", "--config", str(path), "--max_steps", "2", "--output_dir", str(tmp_path / "cli")]
    assert main(args) == 0
    record = json.loads((tmp_path / "cli" / "final" / "aligner_config.json").read_text())
    assert record["summary"]["steps"] == 2 and record["training"]["data_format"] == "auto"
    assert main(["train", "dpo", "--config", str(path), "--loss_type", "kto"]) == 2  # a ConfigError, reported
