from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from aligner_chains import Aligner, ConfigError, DataError, get_template
from aligner_chains.finetune import SFTConfig, load_config, load_rows, parse_overrides, train_sft
from aligner_chains.finetune import sft as sft_module
from aligner_chains.finetune.data import IGNORE_INDEX, encode_example, identity_rows, plan_micro_batches
from aligner_chains.testing import train_byte_bpe

FIXTURES = Path(__file__).parent / "fixtures"

TINY_ARCH = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
}


def make_rows(n: int) -> list[dict[str, str]]:
    return [
        {
            "question": f"How do I reach team {i}?",
            "answer": f"Write to team{i}@example.com or visit room {i}.",
            "correction": f"Write to [EMAIL] or visit room {i}.",
        }
        for i in range(n)
    ]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def tiny_config(tmp_path: Path, **overrides) -> SFTConfig:
    tmp_path.mkdir(parents=True, exist_ok=True)
    data = write_jsonl(tmp_path / "train.jsonl", make_rows(24))
    base = {
        "train_file": str(data),
        "model_config": TINY_ARCH,
        "tokenizer_vocab_size": 300,
        "tokenizer_extra_tokens": ["[EMAIL]"],
        "max_length": 128,
        "per_device_batch_size": 4,
        "learning_rate": 5e-3,
        "eval_fraction": 0.1,
        "save_steps": 2,
        "output_dir": str(tmp_path / "run"),
        "seed": 3,
    }
    return SFTConfig.model_validate({**base, **overrides})


def test_only_correction_and_eos_carry_loss() -> None:
    tokenizer = train_byte_bpe(["BEGINNING OF CONVERSATION: USER: ##Question: hi ##Answer: ASSISTANT: fixed text"], 300)
    template = get_template("aligner-v2")
    example = encode_example(tokenizer, template, "Why?", "Because ASSISTANT: so.", "Because so.")
    prompt_ids = tokenizer(template.render("Why?", "Because ASSISTANT: so."))["input_ids"]
    n = len(prompt_ids)
    assert example.input_ids[:n] == prompt_ids  # the exact ids inference feeds the model
    assert example.labels[:n] == [IGNORE_INDEX] * n
    completion = example.labels[n:]
    assert completion[-1] == tokenizer.eos_token_id and IGNORE_INDEX not in completion
    assert tokenizer.decode(completion[:-1]) == " Because so."
    assert example.n_loss_tokens == len(completion)


def test_identity_warmup_rows_copy_the_answer() -> None:
    rows = make_rows(50)
    warm = identity_rows(rows, 0.2, seed=0)
    assert len(warm) == 10
    assert all(r["correction"] == r["answer"] for r in warm)
    assert all(r in [{**x, "correction": x["answer"]} for x in rows] for r in warm)
    assert identity_rows(rows, 0.0, seed=0) == []


def test_plan_runs_warmup_first_and_is_deterministic(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, gradient_accumulation_steps=2)
    tokenizer = train_byte_bpe(["some text"], 300)
    template = get_template("aligner-v2")
    main = [encode_example(tokenizer, template, r["question"], r["answer"], r["correction"]) for r in make_rows(20)]
    warm = main[:4]
    plan = sft_module.plan_updates([(1, warm, 1.0), (2, main, 2.0)], config, world_size=1)
    stages = [stage for update in plan for stage, _ in update]
    assert stages[: stages.index(2)] == [1] * stages.index(2) and set(stages[stages.index(2) :]) == {2}
    seen = sorted(i for update in plan for stage, idx in update if stage == 2 for i in idx)
    counts = {i: seen.count(i) for i in set(seen)}
    assert set(counts) == set(range(20))  # two epochs: every example twice (a few again as padding)
    assert all(2 <= c <= 3 for c in counts.values()) and len(seen) - 40 < 2 * 4
    assert all(len(update) == 2 for update in plan)  # every update has its accumulation micro-batches
    assert plan == sft_module.plan_updates([(1, warm, 1.0), (2, main, 2.0)], config, world_size=1)
    assert (
        plan_micro_batches([5, 1, 3], 2, seed=0, epoch=0) != []
        and len(plan_micro_batches(list(range(9)), 4, 0, 0)) == 3
    )


def test_max_steps_is_the_number_of_updates_as_in_hf_trainer(tmp_path: Path) -> None:
    tokenizer = train_byte_bpe(["some text"], 300)
    template = get_template("aligner-v2")
    main = [encode_example(tokenizer, template, r["question"], r["answer"], r["correction"]) for r in make_rows(20)]
    warm = main[:4]
    stages = [(1, warm, 1.0), (2, main, 1.0)]
    one_epoch = sft_module.plan_updates(stages, tiny_config(tmp_path / "a", gradient_accumulation_steps=2), 1)
    assert len(one_epoch) == 3  # (1 warm-up + 5 micro-batches of 4) / 2 per update
    for max_steps in (2, 3, 30):  # fewer than an epoch, exactly one, and many epochs of 20 rows
        config = tiny_config(tmp_path / str(max_steps), gradient_accumulation_steps=2, max_steps=max_steps)
        plan = sft_module.plan_updates(stages, config, world_size=1)
        assert len(plan) == max_steps and all(len(update) == 2 for update in plan)
        assert plan[: min(3, max_steps)] == one_epoch[: min(3, max_steps)]  # the same start: warm-up first
    # num_epochs=0.5 but 30 updates of 2 processes: the warm-up once, then 59 micro-batches of the 5 an epoch has
    many = sft_module.plan_updates(stages, tiny_config(tmp_path / "b", max_steps=30, num_epochs=0.5), world_size=2)
    batches = [(stage, idx) for update in many for stage, idx in update]
    assert len(many) == 30 and [stage for stage, _ in batches].count(1) == 1
    main_batches = [idx for stage, idx in batches if stage == 2]
    assert main_batches[:5] != main_batches[5:10]  # each repeat is reshuffled
    assert min(sum(batch.count(i) for batch in main_batches) for i in range(20)) == 11  # 11 whole epochs, then part


def test_checkpoints_leave_out_the_shared_tensor_warning(caplog: pytest.LogCaptureFixture) -> None:
    from accelerate import PartialState
    from accelerate.utils.other import clean_state_dict_for_safetensors

    from aligner_chains.finetune.checkpoints import without_shared_tensor_warning

    PartialState()
    tied = torch.zeros(2)
    with caplog.at_level("WARNING"), without_shared_tensor_warning():
        clean_state_dict_for_safetensors({"embed.weight": tied, "lm_head.weight": tied})
    assert "Removed shared tensor" not in caplog.text
    with caplog.at_level("WARNING"):
        clean_state_dict_for_safetensors({"embed.weight": tied, "lm_head.weight": tied})
    assert "Removed shared tensor" in caplog.text  # only within the context


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            '{"question": "q", "answer": "a", "correction": "c"}\n{"question": "q", "answer": "a"}\n',
            r"data.jsonl:2: field 'correction' is missing",
        ),
        ('{"question": "q", "answer": 3, "correction": "c"}\n', r"data.jsonl:1: field 'answer' is a int"),
        ('{"question": "q", "answer": "a", "correction": "  "}\n', r"data.jsonl:1: field 'correction' is empty"),
        ('{"question": "q", "answer": "a", "correction": "c"}\n{oops\n', r"data.jsonl:2: not valid JSON"),
        ('["not", "objects"]', r"data.jsonl:1: item 1 must be a JSON object"),
        ("", r"holds no rows"),
    ],
)
def test_bad_rows_name_file_line_and_field(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        load_rows(path)
    with pytest.raises(DataError, match="does not exist"):
        load_rows(tmp_path / "missing.jsonl")


def test_reference_format_fixture_loads() -> None:
    rows = load_rows(FIXTURES / "aligner-template-dataset.json")
    assert len(rows) == 2 and rows[0]["question"].startswith("Who is the real life character")


def test_config_from_yaml_with_overrides(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text("train_file: data.jsonl\nbase_model: some/model\nlora: {r: 4}\nlearning_rate: 1.0e-4\n")
    overrides = parse_overrides(["--learning-rate", "3e-4", "--lora.r", "8", "--num_epochs=2"])
    config = load_config(SFTConfig, path, overrides)
    assert (config.learning_rate, config.lora.r, config.num_epochs, config.lora.alpha) == (3e-4, 8, 2, 32)
    with pytest.raises(ConfigError, match="lerning_rate"):
        load_config(SFTConfig, path, {"lerning_rate": 1})
    with pytest.raises(ConfigError, match="exactly one of base_model"):
        load_config(SFTConfig, None, {"train_file": "x", "base_model": "a/b", "model_config": {}})
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(SFTConfig, tmp_path / "nope.yaml")


def test_train_from_scratch_export_and_reload(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, num_epochs=3.0, eval_steps=4)
    out = train_sft(config)
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    record = json.loads((out / "aligner_config.json").read_text())
    assert record["template"] == "aligner-v2"
    assert record["data"]["train_rows"] == 22 and record["data"]["eval_rows"] == 2
    assert record["data"]["warmup_examples"] == 4  # identity warm-up: 20 % of the training rows
    summary = record["summary"]
    assert summary["steps"] > 0 and summary["eval_loss"] is not None and summary["wall_time_s"] > 0
    assert summary["final_train_loss"] < 5.0  # it learned something: random is ln(300) ~ 5.7
    aligner = Aligner.from_pretrained(str(out), max_new_tokens=12)
    assert aligner.template.name == "aligner-v2"
    assert (
        aligner.correct("How do I reach team 3?", "Write to team3@example.com or visit room 3.").completion_tokens > 0
    )


def test_custom_template_is_stored_and_used(tmp_path: Path) -> None:
    template = {"name": "qa-fix", "prompt": "Q: {question}\nA: {answer}\nFixed:"}
    out = train_sft(tiny_config(tmp_path, template=template, max_steps=2))
    assert json.loads((out / "aligner_config.json").read_text())["template"] == {**template, "description": ""}
    assert Aligner.from_pretrained(str(out)).template.name == "qa-fix"


def test_resume_after_interruption_matches_uninterrupted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reference = train_sft(tiny_config(tmp_path / "a", num_epochs=2.0))
    expected = load_file(reference / "model.safetensors")

    real_save = sft_module.save_checkpoint
    calls = {"n": 0}

    def save_then_die(*args, **kwargs):
        path = real_save(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # killed right after the second checkpoint (step 4)
        return path

    config = tiny_config(tmp_path / "b", num_epochs=2.0)
    monkeypatch.setattr(sft_module, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_sft(config)
    monkeypatch.setattr(sft_module, "save_checkpoint", real_save)
    resumed = train_sft(config)
    record = json.loads((resumed / "aligner_config.json").read_text())
    assert record["summary"]["resumed_from_step"] == 4
    assert len(list((tmp_path / "b" / "run" / "checkpoints").glob("step-*"))) <= 2  # save_total_limit
    got = load_file(resumed / "model.safetensors")
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, rtol=1e-5, atol=1e-6)


def test_lora_merge_and_adapter_export(tmp_path: Path, tiny_model_dir: Path) -> None:
    pytest.importorskip("peft")
    base = {"base_model": str(tiny_model_dir), "model_config": None, "max_steps": 3, "learning_rate": 1e-2}
    merged = train_sft(tiny_config(tmp_path / "m", **base, lora={"r": 4, "target_modules": ["q_proj", "v_proj"]}))
    assert not (merged / "adapter_config.json").exists()
    before = load_file(tiny_model_dir / "model.safetensors")
    after = load_file(merged / "model.safetensors")
    changed = [k for k in before if "q_proj" in k and not torch.equal(before[k], after[k])]
    assert changed, "merged LoRA weights should differ from the base"
    Aligner.from_pretrained(str(merged), max_new_tokens=4).correct("q", "a")
    adapter = train_sft(
        tiny_config(tmp_path / "a", **base, lora={"r": 4, "target_modules": ["q_proj"], "merge_on_export": False})
    )
    assert (adapter / "adapter_config.json").is_file()
    Aligner.from_pretrained(str(tiny_model_dir), adapter=str(adapter), max_new_tokens=4).correct("q", "a")


def test_cli_train_sft(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tiny_config(tmp_path, max_steps=2)
    path = tmp_path / "cfg.json"
    path.write_text(config.model_dump_json(by_alias=True))
    from aligner_chains.cli import main

    assert main(["train", "sft", "--config", str(path), "--max_steps", "1", "--output_dir", str(tmp_path / "cli")]) == 0
    assert json.loads((tmp_path / "cli" / "final" / "aligner_config.json").read_text())["summary"]["steps"] == 1
    captured = capsys.readouterr()
    assert f"Exported to {tmp_path / 'cli' / 'final'}" in captured.out
    summary = captured.err.strip().splitlines()[-1]
    assert summary.startswith("train sft: 1 step done, 0 skipped, 0 failed in ") and "final train loss" in summary
    assert main(["train", "sft", "--config", str(path), "--max_steps", "1", "--output_dir", str(tmp_path / "cli")]) == 0
    assert "train sft: 0 steps done, 0 skipped, 0 failed in " in capsys.readouterr().err  # resumed: nothing left


@pytest.mark.slow
def test_cpu_config_fine_tunes_the_demo_aligner(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """cookbook/configs/cpu_tiny_sft.yaml as its header runs it (2 steps here; all 40 take about a minute)."""
    from aligner_chains.cli import main

    config = Path(__file__).resolve().parents[1] / "cookbook" / "configs" / "cpu_tiny_sft.yaml"
    assert load_config(SFTConfig, config).base_model == "demo"
    rows = write_jsonl(tmp_path / "train.jsonl", make_rows(24))
    argv = ["train", "sft", "--config", str(config), "--train_file", str(rows), "--output_dir", str(tmp_path / "run")]
    assert main([*argv, "--max_steps", "2"]) == 0
    captured = capsys.readouterr()
    assert "Loading weights" not in captured.err and "Writing model shards" not in captured.err
    assert "train sft: 2 steps done, 0 skipped, 0 failed in " in captured.err
    corrected = Aligner.from_pretrained(str(tmp_path / "run" / "final"), max_new_tokens=24).correct("Hi?", "Hello.")
    assert corrected.finish_reason in ("stop", "length")


@pytest.mark.slow
def test_two_process_training_matches_gradient_accumulation(tmp_path: Path) -> None:
    """2 processes x 1 micro-batch make the same first update as 1 process x 2 accumulated micro-batches.

    The step loss (token-normalised across processes) must agree to float precision. Adam moves each
    weight by about lr * sign(gradient) on its first step, so float noise in a near-zero gradient can
    flip a few elements by up to 2 * lr; all others must agree to float precision too.
    """
    lr = 5e-3
    one = tiny_config(tmp_path / "one", gradient_accumulation_steps=2, max_steps=1, eval_fraction=0.0, learning_rate=lr)
    single = train_sft(one)
    config = tiny_config(
        tmp_path / "two", gradient_accumulation_steps=1, max_steps=1, eval_fraction=0.0, learning_rate=lr
    )
    cfg = tmp_path / "two.json"
    cfg.write_text(config.model_dump_json(by_alias=True))
    # Both runs must share one tokenizer: reuse the one the single-process run trained.
    shutil.copytree(tmp_path / "one" / "run" / "tokenizer", tmp_path / "two" / "run" / "tokenizer")
    cmd = [
        # `--multi_gpu` is accelerate's torchrun launcher; without CUDA the trainer forms a gloo CPU group.
        # (`accelerate launch --cpu --num_processes 2` starts a single process in accelerate 1.x.)
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "-m", "aligner_chains.finetune.sft", "--config", str(cfg),
    ]  # fmt: skip
    done = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    two = tmp_path / "two" / "run" / "final"
    loss_one = json.loads((single / "aligner_config.json").read_text())["summary"]["final_train_loss"]
    loss_two = json.loads((two / "aligner_config.json").read_text())["summary"]["final_train_loss"]
    assert loss_two == pytest.approx(loss_one, rel=1e-5)
    a, b = load_file(single / "model.safetensors"), load_file(two / "model.safetensors")
    close = total = 0
    for name in a:
        diff = (a[name] - b[name]).abs()
        assert float(diff.max()) <= 2 * lr + 1e-6, name
        close += int((diff <= 1e-6).sum())
        total += diff.numel()
    assert close / total > 0.99
