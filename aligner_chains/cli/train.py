"""``aligner-chains train sft|dpo|oaif --config cfg.yaml [--key value ...]``: the trainers of `aligner_chains.finetune`.

Each subcommand calls ``run_from_args(config_path, overrides)`` of its trainer module (the same function
``python -m aligner_chains.finetune.<name>`` runs), imported only when the subcommand runs: the trainers
import torch and accelerate.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_cli(subparsers: Any) -> None:
    """Add ``train`` and its subcommands ``sft``, ``dpo`` and ``oaif``."""
    train = subparsers.add_parser("train", help="train a model (any further --key value overrides the config)")
    kinds = train.add_subparsers(dest="kind", required=True)
    trainers = [
        ("sft", cmd_sft, "correction SFT (runs under `accelerate launch` too)"),
        ("dpo", cmd_dpo, "offline DPO/IPO/SLiC on preference pairs, correction triples or HH-RLHF"),
        ("oaif", cmd_oaif, "online AI feedback: sample two responses, annotate, DPO/IPO/SLiC update"),
    ]
    for name, func, help_text in trainers:
        trainer = kinds.add_parser(name, help=help_text)
        trainer.add_argument("--config", help="YAML or JSON file of the trainer's config fields")
        trainer.set_defaults(func=func, accepts_overrides=True)


def _exported(path: Path) -> int:
    print(f"Exported to {path}")
    return 0


def cmd_sft(args: argparse.Namespace) -> int:
    from aligner_chains.finetune.sft import run_from_args

    return _exported(run_from_args(args.config, args.overrides))


def cmd_dpo(args: argparse.Namespace) -> int:
    from aligner_chains.finetune.dpo import run_from_args

    return _exported(run_from_args(args.config, args.overrides))


def cmd_oaif(args: argparse.Namespace) -> int:
    from aligner_chains.finetune.oaif import run_from_args

    return _exported(run_from_args(args.config, args.overrides))
