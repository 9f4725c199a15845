"""Fine-tuning: correction SFT on accelerate (identity warm-up, LoRA/QLoRA, resumable, multi-process),
and preference learning: offline DPO/IPO/SLiC, online AI feedback (OAIF) and Aligner bootstrapping."""

from __future__ import annotations

from aligner_chains._lazy import lazy_dir, lazy_getattr

# Imported now: the function ``bootstrap`` must shadow its own module's name in this package.
from aligner_chains.finetune.bootstrap import BootstrapResult as BootstrapResult
from aligner_chains.finetune.bootstrap import RoundStats as RoundStats
from aligner_chains.finetune.bootstrap import bootstrap as bootstrap

# Each name loads its module on first use, so `python -m aligner_chains.finetune.sft` (or .dpo, .oaif)
# runs a module the package has not already imported.
_EXPORTS = {
    "AlignerAnnotator": "aligner_chains.finetune.annotators",
    "Annotator": "aligner_chains.finetune.annotators",
    "CallableAnnotator": "aligner_chains.finetune.annotators",
    "Judgement": "aligner_chains.finetune.annotators",
    "LLMAnnotator": "aligner_chains.finetune.annotators",
    "LengthAnnotator": "aligner_chains.finetune.annotators",
    "RewardModelAnnotator": "aligner_chains.finetune.annotators",
    "as_annotator": "aligner_chains.finetune.annotators",
    "AnnotatorSettings": "aligner_chains.finetune.config",
    "DPOConfig": "aligner_chains.finetune.config",
    "LoraSettings": "aligner_chains.finetune.config",
    "OAIFConfig": "aligner_chains.finetune.config",
    "SFTConfig": "aligner_chains.finetune.config",
    "load_config": "aligner_chains.finetune.config",
    "parse_overrides": "aligner_chains.finetune.config",
    "encode_example": "aligner_chains.finetune.data",
    "load_rows": "aligner_chains.finetune.data",
    "train_dpo": "aligner_chains.finetune.dpo",
    "dpo_loss": "aligner_chains.finetune.losses",
    "ipo_loss": "aligner_chains.finetune.losses",
    "preference_loss": "aligner_chains.finetune.losses",
    "slic_loss": "aligner_chains.finetune.losses",
    "read_metrics": "aligner_chains.finetune.metrics",
    "train_oaif": "aligner_chains.finetune.oaif",
    "PreferencePair": "aligner_chains.finetune.preference_data",
    "load_pairs": "aligner_chains.finetune.preference_data",
    "split_transcripts": "aligner_chains.finetune.preference_data",
    "train_sft": "aligner_chains.finetune.sft",
}
__all__ = sorted([*_EXPORTS, "BootstrapResult", "RoundStats", "bootstrap"])
__getattr__ = lazy_getattr(__name__, _EXPORTS)
__dir__ = lazy_dir(__name__, _EXPORTS)
