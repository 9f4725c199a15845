"""Reproduce the shipped demo Aligner: build its data, train it with `train_sft`, score it, install it.

    python -m aligner_chains.demo.train --workdir runs/demo            # full recipe (CPU, about an hour)
    python -m aligner_chains.demo.train --workdir runs/demo --short    # a seconds-long smoke version
    python -m aligner_chains.demo.train --evaluate aligner_chains/demo/model

The held-out set is built with another seed from disjoint base texts and contact pools.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

from aligner_chains.core.loading import DEMO_MODEL_DIR
from aligner_chains.demo.dataset import build_examples, score_demo, write_jsonl
from aligner_chains.finetune.config import SFTConfig
from aligner_chains.finetune.sft import train_sft

TRAIN_SEED, HELDOUT_SEED = 0, 1

#: The recipe of the shipped model (bf16 autocast: 1.5x faster than fp32 on CPUs with AVX512-BF16).
#: ``--short`` scales it down for smoke tests and CI.
FULL: dict[str, Any] = {
    "n_train": 30000,
    "n_heldout": 1000,
    "config": {
        "template": "aligner-v2",
        "model_config": {
            "hidden_size": 256,
            "intermediate_size": 768,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "num_key_value_heads": 4,
            "tie_word_embeddings": True,
            "max_position_embeddings": 512,
        },
        "tokenizer_vocab_size": 4096,
        "tokenizer_extra_tokens": ["[EMAIL]", "[PHONE]"],
        "max_length": 512,
        "identity_warmup_fraction": 0.2,
        "eval_fraction": 0.02,
        "num_epochs": 1.0,
        "per_device_batch_size": 32,
        "mixed_precision": "bf16",
        "learning_rate": 1.5e-3,
        "weight_decay": 0.01,
        "warmup_ratio": 0.03,
        "save_steps": 100,
        "logging_steps": 10,
        "seed": 0,
    },
}
SHORT: dict[str, Any] = {
    "n_train": 400,
    "n_heldout": 40,
    "config": {
        **FULL["config"],
        "model_config": {
            **FULL["config"]["model_config"],
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
        },
        "tokenizer_vocab_size": 1024,
        "per_device_batch_size": 16,
        "save_steps": 10,
    },
}


def build_data(workdir: Path, n_train: int, n_heldout: int) -> tuple[Path, Path]:
    """Write the training and held-out JSONL files the recipe uses."""
    workdir.mkdir(parents=True, exist_ok=True)
    train, heldout = workdir / "train.jsonl", workdir / "heldout.jsonl"
    write_jsonl(build_examples(n_train, TRAIN_SEED, "train"), train)
    write_jsonl(build_examples(n_heldout, HELDOUT_SEED, "heldout"), heldout)
    return train, heldout


def evaluate(model: str | Path, heldout: Path | None = None, n: int = 1000, batch_size: int = 32) -> dict[str, Any]:
    """Score an Aligner on the held-out set: exact match, clean unchanged, redaction, refusal figures."""
    from aligner_chains.core.aligner import Aligner

    rows = (
        [json.loads(line) for line in heldout.read_text(encoding="utf-8").splitlines()]
        if heldout is not None
        else build_examples(n, HELDOUT_SEED, "heldout")
    )
    aligner = Aligner.from_pretrained(str(model), device="cpu")
    started = time.perf_counter()
    results = aligner.correct_batch([(r["question"], r["answer"]) for r in rows], batch_size=batch_size)
    scores = score_demo(rows, [r.corrected for r in results])
    return {**scores, "n": len(rows), "seconds": round(time.perf_counter() - started, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="runs/demo")
    parser.add_argument("--short", action="store_true", help="tiny smoke version of the recipe")
    parser.add_argument("--install", action="store_true", help=f"copy the trained model to {DEMO_MODEL_DIR}")
    parser.add_argument("--evaluate", metavar="MODEL", help="only score MODEL on the held-out set")
    args = parser.parse_args(argv)
    if args.evaluate:
        print(json.dumps(evaluate(args.evaluate), indent=2))
        return 0
    recipe = SHORT if args.short else FULL
    workdir = Path(args.workdir)
    train, heldout = build_data(workdir, recipe["n_train"], recipe["n_heldout"])
    config = SFTConfig.model_validate(
        {**recipe["config"], "train_file": str(train), "output_dir": str(workdir / "run")}
    )
    final = train_sft(config)
    scores = evaluate(final, heldout)
    (final / "heldout_scores.json").write_text(json.dumps(scores, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(scores, indent=2))
    if args.install:
        shutil.rmtree(DEMO_MODEL_DIR, ignore_errors=True)
        shutil.copytree(final, DEMO_MODEL_DIR)
        print(f"Installed at {DEMO_MODEL_DIR}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
