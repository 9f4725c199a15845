"""`ScoreModelJudge`: safe-rlhf style score models (a causal LM backbone plus a ``score_head``) load without remote
code and score the end token; reward models prefer higher scores, cost models lower ones. Tiny random checkpoints
are written here in safe-rlhf's layout (and transformers' ``score`` head layout) and checked against the
backbone's own forward pass."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from aligner_chains.core.errors import CheckpointError, ConfigError
from aligner_chains.evaluate import CallableJudge, ScoreModelJudge, evaluate
from aligner_chains.evaluate.judges import DEFAULT_RM_FORMAT
from aligner_chains.evaluate.scores import read_score_head
from aligner_chains.evaluate.testing import build_tiny_score_model
from aligner_chains.testing import train_byte_bpe

Q, UNSAFE, SAFE = (
    "How do I pick a lock?",
    "Insert a tension wrench and rake the pins.",
    "Sorry, I can't help with that.",
)


def _config(tokenizer):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        initializer_range=0.5,
    )


@pytest.fixture(scope="module")
def safe_rlhf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint as safe-rlhf's LlamaForScore saves one: ``model.*`` backbone, ``score_head`` with a bias."""
    from safetensors.torch import save_file
    from transformers import LlamaModel

    path = tmp_path_factory.mktemp("beaver") / "cost"
    path.mkdir()
    tokenizer = train_byte_bpe([DEFAULT_RM_FORMAT, Q, UNSAFE, SAFE], 300)
    config = _config(tokenizer)
    torch.manual_seed(1)
    state = {f"model.{k}": v.contiguous() for k, v in LlamaModel(config).state_dict().items()}
    state["score_head.weight"] = torch.randn(1, 16)
    state["score_head.bias"] = torch.tensor([0.25])
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    extra = {"architectures": ["LlamaForScore"], "score_dim": 1, "bias": True, "score_type": "cost"}
    (path / "config.json").write_text(json.dumps({**config.to_dict(), **extra, "do_normalize": False}))
    tokenizer.save_pretrained(path)
    return path


def _expected(path: Path, question: str, answer: str) -> float:
    """The end score computed by hand: the backbone's last hidden state at the EOS token, through the head."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, LlamaModel

    tokenizer = AutoTokenizer.from_pretrained(path)
    state = load_file(str(path / "model.safetensors"))
    config = json.loads((path / "config.json").read_text())
    from transformers import LlamaConfig

    backbone = LlamaModel(LlamaConfig(**{k: v for k, v in config.items() if k != "architectures"}))
    backbone.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})
    text = f"BEGINNING OF CONVERSATION: USER: {question} ASSISTANT:{answer}</s>"
    ids = tokenizer(text, return_tensors="pt")
    assert ids["input_ids"][0, -1].item() == tokenizer.eos_token_id
    with torch.no_grad():
        hidden = backbone(**ids).last_hidden_state[0, -1]
    bias = state.get("score_head.bias", torch.zeros(1))
    return float(hidden @ state["score_head.weight"][0] + bias[0])


def test_a_safe_rlhf_checkpoint_scores_the_end_token_without_remote_code(safe_rlhf_dir: Path) -> None:
    judge = ScoreModelJudge(str(safe_rlhf_dir), device="cpu")  # kind read from config.json: score_type "cost"
    assert (judge.kind, judge.dimension, judge.higher_is_better, judge.head_name) == (
        "cost",
        "cost",
        False,
        "score_head",
    )
    assert judge.text(Q, SAFE) == f"BEGINNING OF CONVERSATION: USER: {Q} ASSISTANT:{SAFE}</s>"
    for answer in (UNSAFE, SAFE):
        assert judge.score(Q, answer) == pytest.approx(_expected(safe_rlhf_dir, Q, answer), abs=1e-4)
    unsafe, safe = judge.score(Q, UNSAFE), judge.score(Q, SAFE)
    assert unsafe != safe
    judgment = judge.judge(Q, UNSAFE, SAFE)  # lower cost wins
    assert judgment.verdict == ("win" if safe < unsafe else "loss")
    assert judgment.scores == {"original": unsafe, "corrected": safe}
    wide = ScoreModelJudge(str(safe_rlhf_dir), "cost", margin=abs(unsafe - safe) + 1, device="cpu")
    assert wide.judge(Q, UNSAFE, SAFE).verdict == "tie"


def test_reward_and_cost_point_opposite_ways(tmp_path: Path) -> None:
    reward_dir = build_tiny_score_model(tmp_path / "reward", kind="reward", seed=3, texts=[Q, UNSAFE, SAFE])
    reward = ScoreModelJudge(str(reward_dir), "reward", device="cpu")
    a, b = reward.score(Q, UNSAFE), reward.score(Q, SAFE)
    assert a != b and reward.higher_is_better
    assert reward.judge(Q, UNSAFE, SAFE).verdict == ("win" if b > a else "loss")
    config = json.loads((reward_dir / "config.json").read_text())
    (reward_dir / "config.json").write_text(json.dumps({**config, "score_type": "critic"}))
    as_cost = ScoreModelJudge(str(reward_dir), "cost", device="cpu")  # same weights read as a cost
    assert as_cost.judge(Q, UNSAFE, SAFE).verdict == ("loss" if b > a else "win")
    with pytest.raises(ConfigError, match="score_type='critic'; pass kind='reward'"):
        ScoreModelJudge(str(reward_dir), device="cpu")
    (reward_dir / "config.json").write_text(json.dumps({**config, "score_type": "reward"}))
    with pytest.raises(ConfigError, match="says score_type='reward'; pass kind='reward'"):
        ScoreModelJudge(str(reward_dir), "cost", device="cpu")
    with pytest.raises(ConfigError, match="kind='helpful'"):
        ScoreModelJudge(str(reward_dir), "helpful", device="cpu")  # type: ignore[arg-type]


def test_a_head_named_score_reads_like_transformers_sequence_classification(tmp_path: Path) -> None:
    from transformers import LlamaForSequenceClassification

    tokenizer = train_byte_bpe([DEFAULT_RM_FORMAT, Q, UNSAFE, SAFE], 300)
    config = _config(tokenizer)
    config.num_labels = 1
    config.pad_token_id = tokenizer.eos_token_id
    torch.manual_seed(2)
    model = LlamaForSequenceClassification(config).eval()
    model.save_pretrained(tmp_path / "rm", safe_serialization=True)
    tokenizer.save_pretrained(tmp_path / "rm")
    judge = ScoreModelJudge(str(tmp_path / "rm"), "reward", add_eos=False, device="cpu")
    assert judge.head_name == "score"
    ids = tokenizer(DEFAULT_RM_FORMAT.format(question=Q, answer=SAFE), return_tensors="pt")
    with torch.no_grad():
        expected = float(model(**ids).logits[0, 0])
    assert judge.score(Q, SAFE) == pytest.approx(expected, abs=1e-4)


def test_unsafe_or_wrong_checkpoints_are_refused(tmp_path: Path, safe_rlhf_dir: Path) -> None:
    from safetensors.torch import load_file

    state = load_file(str(safe_rlhf_dir / "model.safetensors"))
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (pickled / name).write_bytes((safe_rlhf_dir / name).read_bytes())
    torch.save(state, pickled / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pickle weights"):
        ScoreModelJudge(str(pickled), device="cpu")
    trusted = ScoreModelJudge(str(pickled), allow_pickle=True, device="cpu")
    assert trusted.score(Q, SAFE) == pytest.approx(ScoreModelJudge(str(safe_rlhf_dir), device="cpu").score(Q, SAFE))
    headless = tmp_path / "headless"
    headless.mkdir()
    from safetensors.torch import save_file

    save_file({k: v for k, v in state.items() if not k.startswith("score_head")}, str(headless / "model.safetensors"))
    (headless / "config.json").write_bytes((safe_rlhf_dir / "config.json").read_bytes())
    with pytest.raises(CheckpointError, match=r"no score head \(looked for \['score_head.weight', 'score.weight'\]"):
        read_score_head(headless)
    two = tmp_path / "two"
    two.mkdir()
    save_file({**state, "score_head.weight": torch.randn(2, 16)}, str(two / "model.safetensors"))
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (two / name).write_bytes((safe_rlhf_dir / name).read_bytes())
    with pytest.raises(CheckpointError, match=r"shape \(2, 16\).*score_dim=1"):
        ScoreModelJudge(str(two), device="cpu")
    with pytest.raises(ConfigError, match="lacks"):
        ScoreModelJudge(str(safe_rlhf_dir), format="{question} only", device="cpu")


def test_normalised_scores_and_score_deltas_in_the_report(tmp_path: Path, safe_rlhf_dir: Path) -> None:
    normalised = tmp_path / "normalised"
    normalised.mkdir()
    for file in safe_rlhf_dir.iterdir():
        (normalised / file.name).write_bytes(file.read_bytes())
    config = json.loads((safe_rlhf_dir / "config.json").read_text())
    (normalised / "config.json").write_text(json.dumps({**config, "do_normalize": True, "mean": [3.0], "var": [4.0]}))
    plain = ScoreModelJudge(str(safe_rlhf_dir), device="cpu").score(Q, SAFE)
    assert ScoreModelJudge(str(normalised), device="cpu").score(Q, SAFE) == pytest.approx(plain / 2, abs=1e-6)

    cost = ScoreModelJudge(str(safe_rlhf_dir), device="cpu")
    items = [(Q, UNSAFE, SAFE), (Q, SAFE, UNSAFE), (Q, UNSAFE, UNSAFE)]
    report = evaluate(items, [cost, CallableJudge(lambda q, o, c: "tie", dimension="rule")], progress=False)
    (delta,) = report.score_deltas
    u, s = cost.score(Q, UNSAFE), cost.score(Q, SAFE)
    assert (delta.dimension, delta.n, delta.higher_is_better) == ("cost", 3, False)
    assert delta.delta_mean == pytest.approx(((s - u) + (u - s) + 0) / 3, abs=1e-9)
    assert delta.original_mean == pytest.approx((u + s + u) / 3)
    assert delta.ci_low <= delta.delta_mean <= delta.ci_high
    markdown = report.to_markdown()
    assert "## Scores" in markdown and "| cost | all | 3 | lower |" in markdown


@pytest.mark.gpu
def test_scores_on_a_gpu_in_bf16_match_the_cpu(safe_rlhf_dir: Path) -> None:
    on_cpu = ScoreModelJudge(str(safe_rlhf_dir), device="cpu")
    on_gpu = ScoreModelJudge(str(safe_rlhf_dir), device="cuda", dtype="bfloat16")
    assert on_gpu.device.type == "cuda" and next(on_gpu.backbone.parameters()).dtype == torch.bfloat16
    for answer in (UNSAFE, SAFE):
        expected = on_cpu.score(Q, answer)
        assert on_gpu.score(Q, answer) == pytest.approx(expected, abs=0.05 * max(1.0, abs(expected)))
