"""``aligner-chains train sft|dpo|oaif --config cfg.yaml [--key value ...]``: the trainers of `aligner_chains.finetune`.

Each subcommand calls ``run_from_args(config_path, overrides)`` of its trainer module (the same function
``python -m aligner_chains.finetune.<name>`` runs), imported only when the subcommand runs: the trainers
import torch and accelerate. Each ``--help`` lists the config fields, read from the config models when
the help is shown (so ``aligner-chains --help`` does not import them).
"""

from __future__ import annotations

import argparse
import importlib
import json
import time
from pathlib import Path
from typing import Any

from aligner_chains.cli.options import print_summary

#: (subcommand, its config model in `aligner_chains.finetune.config`, help line, the config of its help's example)
TRAINERS = (
    ("sft", "SFTConfig", "correction SFT (runs under `accelerate launch` too)", "cookbook/configs/cpu_tiny_sft.yaml"),
    ("dpo", "DPOConfig", "offline DPO/IPO/SLiC on preference pairs, correction triples or HH-RLHF", "dpo.yaml"),
    ("oaif", "OAIFConfig", "online AI feedback: sample two responses, annotate, DPO/IPO/SLiC update", "oaif.yaml"),
)


class _TrainerParser(argparse.ArgumentParser):
    """A trainer's parser: its ``--help`` ends with the config fields of ``config_name``, built on demand."""

    config_name: str | None = None
    example_config: str = "cfg.yaml"

    def format_help(self) -> str:
        if self.epilog is None and self.config_name is not None:
            from aligner_chains.finetune import config

            example = f"{self.prog} --config {self.example_config} --max_steps 50 --output_dir runs/try"
            self.epilog = config.fields_help(getattr(config, self.config_name), example)
        return super().format_help()


def add_cli(subparsers: Any) -> None:
    """Add ``train`` and its subcommands ``sft``, ``dpo`` and ``oaif``."""
    train = subparsers.add_parser(
        "train",
        help="train a model (any further --key value overrides the config)",
        description="Train an Aligner or a policy. `aligner-chains train KIND --help` lists KIND's config fields.",
    )
    kinds = train.add_subparsers(dest="kind", required=True, parser_class=_TrainerParser)
    for name, config_name, help_text, example in TRAINERS:
        trainer = kinds.add_parser(
            name, help=help_text, description=help_text, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        trainer.config_name, trainer.example_config = config_name, example
        trainer.add_argument("--config", help="YAML or JSON file of the config fields below")
        trainer.set_defaults(func=cmd_train, accepts_overrides=True)


def cmd_train(args: argparse.Namespace) -> int:
    """Run the trainer ``args.kind``; on the main process print where the model went and a summary line."""
    from aligner_chains.finetune.config import main_process

    started = time.perf_counter()
    trainer = importlib.import_module(f"aligner_chains.finetune.{args.kind}")
    out = trainer.run_from_args(args.config, args.overrides)
    if main_process():
        print(f"Exported to {out}")
        print_summary(f"train {args.kind}", time.perf_counter() - started, **training_counts(out))
    return 0


def training_counts(out: Path) -> dict[str, Any]:
    """The counts of a finished run's summary line, from its exported ``aligner_config.json``: optimizer
    steps done in this run, rows left out (SFT: longer than max_length), the final training loss."""
    try:
        record = json.loads((Path(out) / "aligner_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"done": 0, "unit": "steps"}
    summary, data = record.get("summary") or {}, record.get("data") or {}
    total, before = int(summary.get("steps") or 0), int(summary.get("resumed_from_step") or 0)
    notes = [f"{before} of {total} done before"] if before else []
    if data.get("identical_pairs"):
        notes.append(f"{data['identical_pairs']} identical pair(s) carry no signal")
    if data.get("truncated_pairs"):
        notes.append(f"{data['truncated_pairs']} pair(s) cut to max_length")
    loss = summary.get("final_train_loss")
    if isinstance(loss, (int, float)):
        notes.append(f"final train loss {loss:.4g}")
    skipped = int(data.get("skipped_too_long") or 0)
    return {
        "done": total - before,
        "unit": "steps",
        "skipped": skipped,
        "skipped_why": "rows longer than max_length" if skipped else "",
        "note": "; ".join(notes),
    }
