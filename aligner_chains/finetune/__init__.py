"""Fine-tuning: correction SFT on accelerate (identity warm-up, LoRA/QLoRA, resumable, multi-process),
and preference learning: offline DPO/IPO/SLiC, online AI feedback (OAIF) and Aligner bootstrapping."""

from aligner_chains.finetune.annotators import (
    AlignerAnnotator,
    Annotator,
    CallableAnnotator,
    Judgement,
    LengthAnnotator,
    LLMAnnotator,
    RewardModelAnnotator,
    as_annotator,
)
from aligner_chains.finetune.bootstrap import BootstrapResult, RoundStats, bootstrap
from aligner_chains.finetune.config import (
    AnnotatorSettings,
    DPOConfig,
    LoraSettings,
    OAIFConfig,
    SFTConfig,
    load_config,
    parse_overrides,
)
from aligner_chains.finetune.data import encode_example, load_rows
from aligner_chains.finetune.dpo import train_dpo
from aligner_chains.finetune.losses import dpo_loss, ipo_loss, preference_loss, slic_loss
from aligner_chains.finetune.metrics import read_metrics
from aligner_chains.finetune.oaif import train_oaif
from aligner_chains.finetune.preference_data import PreferencePair, load_pairs, split_transcripts
from aligner_chains.finetune.sft import train_sft

__all__ = [
    "AlignerAnnotator",
    "Annotator",
    "AnnotatorSettings",
    "BootstrapResult",
    "CallableAnnotator",
    "DPOConfig",
    "Judgement",
    "LLMAnnotator",
    "LengthAnnotator",
    "LoraSettings",
    "OAIFConfig",
    "PreferencePair",
    "RewardModelAnnotator",
    "RoundStats",
    "SFTConfig",
    "as_annotator",
    "bootstrap",
    "dpo_loss",
    "encode_example",
    "ipo_loss",
    "load_config",
    "load_pairs",
    "load_rows",
    "parse_overrides",
    "preference_loss",
    "read_metrics",
    "slic_loss",
    "split_transcripts",
    "train_dpo",
    "train_oaif",
    "train_sft",
]
