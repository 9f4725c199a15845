"""Fine-tuning: correction SFT on accelerate (identity warm-up, LoRA/QLoRA, resumable, multi-process)."""

from aligner_chains.finetune.config import LoraSettings, SFTConfig, load_config, parse_overrides
from aligner_chains.finetune.data import encode_example, load_rows
from aligner_chains.finetune.sft import train_sft

__all__ = ["LoraSettings", "SFTConfig", "encode_example", "load_config", "load_rows", "parse_overrides", "train_sft"]
