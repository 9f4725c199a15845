"""OAIF: on-policy sampling, annotation, DAP updates; controllability (shorter/longer), Aligner policy, LoRA, resume."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from aligner_chains import Aligner, ConfigError, DataError, get_template
from aligner_chains.finetune import (
    AlignerAnnotator,
    LengthAnnotator,
    LLMAnnotator,
    OAIFConfig,
    SFTConfig,
    read_metrics,
    train_oaif,
    train_sft,
)
from aligner_chains.finetune import oaif as oaif_module
from aligner_chains.finetune.data import IGNORE_INDEX
from aligner_chains.finetune.logprobs import Reference, sample_completions, sequence_logps
from aligner_chains.finetune.oaif import load_prompts, step_prompt_indices

WORDS = "yes no maybe sure fine call write visit email team room desk help soon today later".split()
TRAIN_PROMPTS = [f"Question {i}: how do I reach team {i}?" for i in range(32)]
HELD_OUT = [f"Question {i}: how do I reach team {i}?" for i in range(500, 532)]
MAX_NEW = 16


def build_warm_policy(root: Path, seed: int = 0) -> Path:
    """A tiny policy that has learnt to end its answers at varying lengths (1-6 words): correction SFT
    from scratch for 36 steps (a few seconds). It is an Aligner (template aligner-v2) and, like any
    causal LM, can answer plain prompts too."""
    rng = random.Random(seed)
    rows = [
        {
            "question": f"How do I reach team {i}?",
            "answer": f"Try team {i}.",
            "correction": " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 6))),
        }
        for i in range(96)
    ]
    root.mkdir(parents=True, exist_ok=True)
    data = root / "warm.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    config = SFTConfig(
        train_file=str(data),
        model_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 256,
        },
        tokenizer_vocab_size=300,
        max_length=128,
        per_device_batch_size=8,
        learning_rate=5e-3,
        num_epochs=3.0,
        identity_warmup_fraction=0.0,
        eval_fraction=0.0,
        save_steps=10_000,
        logging_steps=1000,
        output_dir=str(root / "sft"),
        seed=seed,
    )
    return train_sft(config)


@pytest.fixture(scope="module")
def warm_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_warm_policy(tmp_path_factory.mktemp("warm"))


def write_prompts(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def oaif_config(tmp_path: Path, base: Path, **overrides) -> OAIFConfig:
    tmp_path.mkdir(parents=True, exist_ok=True)
    prompts = write_prompts(tmp_path / "prompts.jsonl", [{"prompt": p} for p in TRAIN_PROMPTS])
    settings = {
        "base_model": str(base),
        "prompts_file": str(prompts),
        "max_steps": 150,
        "prompts_per_step": 8,
        "max_new_tokens": MAX_NEW,
        "temperature": 1.0,
        "learning_rate": 5e-4,
        "warmup_ratio": 0.1,
        "beta": 0.5,  # a firm anchor to the reference: at 0.1 a run now and then loses EOS altogether
        "logging_steps": 1,
        "save_steps": 10_000,
        "output_dir": str(tmp_path / "run"),
        "seed": 1,
    }
    return OAIFConfig.model_validate({**settings, **overrides})


def mean_length(model_dir: Path, prompts: list[str], samples_per_prompt: int = 4) -> float:
    """Mean response length in tokens (before EOS) of sampled responses to held-out prompts."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    torch.manual_seed(1234)
    samples = sample_completions(
        model, tokenizer, prompts, num_return_sequences=samples_per_prompt, max_new_tokens=MAX_NEW
    )
    return sum(samples.lengths) / len(samples.lengths)


# ----------------------------------------------------------------------------- pieces


def test_prompt_schedule_is_a_function_of_the_step() -> None:
    first_epoch = [i for step in range(4) for i in step_prompt_indices(10, step, 3, seed=7)[:3]]
    assert sorted(first_epoch[:10]) == list(range(10))  # one epoch covers every prompt once
    assert step_prompt_indices(10, 5, 3, seed=7) == step_prompt_indices(10, 5, 3, seed=7)
    assert step_prompt_indices(10, 0, 3, seed=7) != step_prompt_indices(10, 0, 3, seed=8)
    assert len(step_prompt_indices(4, 2, 9, seed=0)) == 9  # batches larger than the prompt set wrap


def test_load_prompts(tmp_path: Path) -> None:
    template = get_template("aligner-v2")
    path = write_prompts(tmp_path / "p.jsonl", [{"prompt": "Hi?"}, "Bare string?", {"question": "Q?", "answer": "A."}])
    prompts = load_prompts(path, "User: {prompt}\nBot:", template)
    assert [p.policy_text for p in prompts] == [
        "User: Hi?\nBot:",
        "User: Bare string?\nBot:",
        template.render("Q?", "A."),
    ]
    assert [p.shown for p in prompts] == ["Hi?", "Bare string?", "Q?"]  # the annotator sees the question
    with pytest.raises(ConfigError, match="names a template"):
        load_prompts(path, "{prompt}", None)
    with pytest.raises(DataError, match=r"p2.jsonl:1: needs a non-empty 'prompt'"):
        load_prompts(write_prompts(tmp_path / "p2.jsonl", [{"text": "x"}]), "{prompt}", None)


def test_batched_sampling_and_log_probs(tiny_model_dir: Path) -> None:
    """Left-padded batched generation gives each prompt what it gets alone; log-probs of the sampled
    completions (one forward, padding on both sides) match an unpadded forward per row."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()
    prompts = ["Hi", "How do I bake bread? Mix flour"]
    batched = sample_completions(model, tokenizer, prompts, num_return_sequences=2, max_new_tokens=6, do_sample=False)
    alone = sample_completions(model, tokenizer, prompts[1:], num_return_sequences=1, max_new_tokens=6, do_sample=False)
    assert len(batched.texts) == 4 and batched.texts[2] == batched.texts[3] == alone.texts[0]  # rows 2i, 2i+1
    assert all(n <= 6 for n in batched.lengths)
    torch.manual_seed(0)
    sampled = sample_completions(model, tokenizer, prompts, num_return_sequences=2, max_new_tokens=6)
    with torch.no_grad():
        total, count = sequence_logps(model, sampled.batch(range(4)))
    for row in range(4):
        labels = sampled.labels[row]
        completion = labels[labels != IGNORE_INDEX].tolist()
        assert completion[: sampled.lengths[row]] == sampled.completion_ids[row]
        assert len(completion) == sampled.lengths[row] + int(sampled.ended[row])  # EOS scored when sampled
        prompt = tokenizer(prompts[row // 2])["input_ids"]
        ids = torch.tensor([prompt + completion])
        with torch.no_grad():
            logp = model(input_ids=ids).logits.log_softmax(-1)[0]
        expected = sum(float(logp[len(prompt) - 1 + k, t]) for k, t in enumerate(completion))
        assert count[row].item() == len(completion) and total[row].item() == pytest.approx(expected, abs=1e-4)


# ----------------------------------------------------------------------------- controllability


def rule_judge(prefer: str) -> LLMAnnotator:
    from test_annotators import RuleJudge

    return LLMAnnotator(RuleJudge(), instructions=f"Prefer the {prefer} response.", max_concurrency=4)


@pytest.mark.parametrize(
    ("judge", "prefer", "seed"),
    [  # ~15 s each: `make test-fast` keeps the first
        ("rule", "shorter", 1),
        pytest.param("rule", "longer", 2, marks=pytest.mark.slow),
        pytest.param("llm", "shorter", 3, marks=pytest.mark.slow),
        pytest.param("llm", "longer", 4, marks=pytest.mark.slow),
    ],
)
def test_oaif_controllability(tmp_path: Path, warm_policy: Path, judge: str, prefer: str, seed: int) -> None:
    """An annotator that prefers shorter (longer) responses makes the policy's responses shorter (longer)."""
    annotator = LengthAnnotator(prefer) if judge == "rule" else rule_judge(prefer)
    out = train_oaif(oaif_config(tmp_path, warm_policy, seed=seed), annotator)
    before, after = mean_length(warm_policy, HELD_OUT), mean_length(out, HELD_OUT)
    metrics = read_metrics(tmp_path / "run")
    curve = [m["response/mean_length"] for m in metrics]
    early, late = sum(curve[:15]) / 15, sum(curve[-15:]) / 15
    print(f"{judge}/{prefer}: held-out mean length {before:.2f} -> {after:.2f}; training {early:.2f} -> {late:.2f}")
    if prefer == "shorter":  # over 11 seeds x 3 warm policies: 10.5-12.6 -> 1.8-4.9 tokens
        assert after < before / 2 and late < early / 2
    else:  # 10.5-12.6 -> 13.7-14.8 (of 16): at least 40 % of the way to max_new_tokens
        assert after > before + 0.4 * (MAX_NEW - before) and late > early + 0.3 * (MAX_NEW - early)
    assert len(metrics) == 150 and metrics[0]["kl"] == pytest.approx(0.0, abs=1e-5)  # on-policy start
    assert metrics[-1]["kl"] > 0.1  # it moved away from the reference
    summary = json.loads((out / "aligner_config.json").read_text())["summary"]
    assert summary["annotator"]["failures"] == 0 and summary["annotator"]["pairs"] == 150 * 8
    if judge == "llm":
        assert summary["annotator"]["position_consistency"] == pytest.approx(1.0 - summary["annotator"]["tie_rate"])


# ----------------------------------------------------------------------------- policies, losses, logging


def test_an_aligner_as_the_policy(tmp_path: Path, warm_policy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Prompts are rendered correction prompts, responses are sampled corrections; an Aligner judges them."""
    from test_annotators import first_words_aligner

    rows = [{"question": f"How do I reach team {i}?", "answer": f"Try team {i} or desk {i}."} for i in range(16)]
    config = oaif_config(
        tmp_path, warm_policy, prompts_file=str(write_prompts(tmp_path / "qa.jsonl", rows)), max_steps=6
    )
    seen: list[str] = []
    real = oaif_module.sample_completions

    def spy(model, tokenizer, prompts, **kwargs):
        seen.extend(prompts)
        return real(model, tokenizer, prompts, **kwargs)

    monkeypatch.setattr(oaif_module, "sample_completions", spy)
    out = train_oaif(config, AlignerAnnotator(first_words_aligner(2)))
    template = get_template("aligner-v2")
    assert set(seen) <= {template.render(r["question"], r["answer"]) for r in rows} and len(seen) == 48
    record = json.loads((out / "aligner_config.json").read_text())
    assert record["template"] == "aligner-v2" and record["data"]["annotator"] == "AlignerAnnotator"
    aligner = Aligner.from_pretrained(str(out), max_new_tokens=8)
    assert aligner.template.name == "aligner-v2" and aligner.correct("How do I reach team 1?", "Try team 1.").corrected


@pytest.mark.parametrize("loss_type", ["dpo", "ipo", "slic"])
def test_lora_policy_logs_every_metric(tmp_path: Path, tiny_model_dir: Path, loss_type: str) -> None:
    pytest.importorskip("peft")
    config = oaif_config(
        tmp_path,
        tiny_model_dir,
        loss_type=loss_type,
        max_steps=3,
        prompts_per_step=4,
        micro_batch_size=3,
        max_new_tokens=6,
        learning_rate=1e-2,
        lora={"r": 4, "target_modules": ["q_proj", "v_proj"]},
    )
    references: list[Reference] = []
    real_init = Reference.__init__

    def spy(self, policy, *, uses_adapters):
        real_init(self, policy, uses_adapters=uses_adapters)
        references.append(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Reference, "__init__", spy)
        out = train_oaif(config, LengthAnnotator("shorter"))
    assert references[0].frozen is None  # the reference is the base with adapters disabled
    metrics = read_metrics(tmp_path / "run")
    assert [m["step"] for m in metrics] == [1, 2, 3]
    first = metrics[0]
    assert first["kl"] == 0.0 and first["rewards/margin"] == 0.0  # LoRA starts as the identity
    expected = {
        "loss",
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margin",
        "rewards/accuracy",
        "kl",
        "response/mean_length",
        "response/eos_rate",
        "annotator/labelled_rate",
        "annotator/tie_rate",
        "annotator/failure_rate",
        "pairs/identical_rate",
        "pairs/trained",
        "lr",
    }
    assert expected <= set(first)
    assert 0 <= first["response/mean_length"] <= 6
    assert first["annotator/labelled_rate"] + first["annotator/tie_rate"] + first["annotator/failure_rate"] == 1.0
    Aligner.from_pretrained(str(out), max_new_tokens=4).correct("q", "a")  # merged export loads


def test_position_consistency_is_logged_for_an_llm_judge(tmp_path: Path, warm_policy: Path) -> None:
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel

    biased = LLMAnnotator(GenericFakeChatModel(messages=iter(["A"] * 1000)))  # always the first shown: all ties
    train_oaif(oaif_config(tmp_path, warm_policy, max_steps=2, prompts_per_step=4), biased)
    metrics = read_metrics(tmp_path / "run")
    assert all(m["annotator/position_consistency"] == 0.0 and m["annotator/tie_rate"] == 1.0 for m in metrics)
    assert all(m["pairs/trained"] == 0.0 for m in metrics)  # nothing labelled, nothing trained
    before, after = (
        load_file(warm_policy / "model.safetensors"),
        load_file(tmp_path / "run" / "final" / "model.safetensors"),
    )
    assert all(torch.equal(before[k], after[k]) for k in before)  # no labels: the weights did not move


def test_oaif_needs_an_annotator(tmp_path: Path, warm_policy: Path) -> None:
    with pytest.raises(ConfigError, match="needs an annotator"):
        train_oaif(oaif_config(tmp_path, warm_policy))


def test_oaif_resume_after_interruption_matches_uninterrupted(
    tmp_path: Path, warm_policy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = {"max_steps": 6, "save_steps": 2, "prompts_per_step": 4, "learning_rate": 1e-3}
    reference = train_oaif(oaif_config(tmp_path / "a", warm_policy, **settings), LengthAnnotator("shorter"))
    expected = load_file(reference / "model.safetensors")

    real_save = oaif_module.save_checkpoint
    calls = {"n": 0}

    def save_then_die(*args, **kwargs):
        path = real_save(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # killed right after the second checkpoint (step 4)
        return path

    config = oaif_config(tmp_path / "b", warm_policy, **settings)
    monkeypatch.setattr(oaif_module, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_oaif(config, LengthAnnotator("shorter"))
    monkeypatch.setattr(oaif_module, "save_checkpoint", real_save)
    torch.manual_seed(999)  # whatever the RNG holds now, the checkpoint's RNG state is restored
    resumed = train_oaif(config, LengthAnnotator("shorter"))
    record = json.loads((resumed / "aligner_config.json").read_text())
    assert record["summary"]["resumed_from_step"] == 4
    assert [m["step"] for m in read_metrics(tmp_path / "b" / "run")] == [1, 2, 3, 4, 5, 6]
    assert read_metrics(tmp_path / "b" / "run") == read_metrics(tmp_path / "a" / "run")  # same samples, same labels
    got = load_file(resumed / "model.safetensors")
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, rtol=1e-5, atol=1e-6)


def test_cli_train_oaif_with_a_configured_annotator(tmp_path: Path, warm_policy: Path) -> None:
    config = oaif_config(tmp_path, warm_policy, annotator={"type": "length", "prefer": "longer"})
    path = tmp_path / "cfg.yaml"
    import yaml

    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    from aligner_chains.cli import main

    args = ["train", "oaif", "--config", str(path), "--max_steps", "2", "--output_dir", str(tmp_path / "cli")]
    assert main([*args, "--loss_type", "ipo", "--beta", "0.5"]) == 0
    record = json.loads((tmp_path / "cli" / "final" / "aligner_config.json").read_text())
    assert record["summary"]["steps"] == 2 and record["training"]["loss_type"] == "ipo"
    assert record["data"]["annotator"] == "LengthAnnotator"


def test_secrets_in_annotator_settings_are_not_exported(tmp_path: Path) -> None:
    from aligner_chains.finetune.oaif import public_config

    annotator = {"type": "llm", "model": "openai:gpt-4o-mini", "kwargs": {"api_key": "sk-123", "temperature": 0}}
    config = oaif_config(tmp_path, tmp_path / "model", annotator=annotator)
    public = public_config(config)
    assert public.annotator.kwargs == {"api_key": "<redacted>", "temperature": 0}
    assert config.annotator.kwargs["api_key"] == "sk-123"  # the live config keeps it
