"""Training configurations: pydantic models loadable from YAML/JSON, with ``--key value`` overrides."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from aligner_chains.core.errors import ConfigError

C = TypeVar("C", bound=BaseModel)


class LoraSettings(BaseModel):
    """LoRA adapter settings (peft); ``quantization="4bit"`` on the base gives QLoRA."""

    model_config = ConfigDict(extra="forbid")

    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | str = "all-linear"
    merge_on_export: bool = True


class SFTConfig(BaseModel):
    """Correction SFT: loss on correction tokens + EOS, optional identity warm-up stage first.

    Give ``base_model`` (a path or hub id) to fine-tune, or ``model_config`` (LlamaConfig fields)
    to train a small model from scratch with a byte-level BPE tokenizer trained on the data.
    """

    # data
    train_file: str
    eval_file: str | None = None
    eval_fraction: float = Field(0.05, ge=0, lt=1)
    template: str | dict[str, Any] = "aligner-v2"
    max_length: int = Field(1024, ge=16)
    identity_warmup_fraction: float = Field(0.2, ge=0, le=1)
    # model
    base_model: str | None = None
    scratch_config: dict[str, Any] | None = Field(None, alias="model_config")
    tokenizer: str | None = None
    tokenizer_vocab_size: int = Field(4096, ge=300)
    tokenizer_extra_tokens: list[str] = Field(default_factory=list)
    trust_remote_code: bool = False
    quantization: Literal["4bit", "8bit"] | None = None
    lora: LoraSettings | None = None
    gradient_checkpointing: bool = False
    # optimisation
    num_epochs: float = Field(1.0, gt=0)
    per_device_batch_size: int = Field(8, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    learning_rate: float = Field(2e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    max_grad_norm: float | None = Field(1.0, gt=0)
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    group_by_length: bool = True
    seed: int = 42
    # bookkeeping
    output_dir: str = "runs/sft"
    save_steps: int = Field(200, ge=1)
    save_total_limit: int = Field(2, ge=1)
    eval_steps: int | None = Field(None, ge=1)
    logging_steps: int = Field(10, ge=1)
    report_to: list[str] = Field(default_factory=list)
    resume: bool = True
    export_dtype: Literal["float32", "bfloat16", "float16"] | None = None
    max_steps: int | None = Field(None, ge=1)

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @model_validator(mode="after")
    def _one_model_source(self) -> SFTConfig:
        if (self.base_model is None) == (self.scratch_config is None):
            raise ValueError("give exactly one of base_model (path or hub id) or model_config (train from scratch)")
        if self.lora is not None and self.scratch_config is not None:
            raise ValueError("lora needs a pretrained base_model, not model_config")
        return self


class _PreferenceSettings(BaseModel):
    """Settings shared by the preference trainers (DPO offline, OAIF online): policy, loss, optimiser, bookkeeping."""

    # policy (the frozen reference is its initial weights; with LoRA, the base with adapters disabled)
    base_model: str
    template: str | dict[str, Any] | None = None  # for aligner_config.json; None: the base model's own, if any
    trust_remote_code: bool = False
    quantization: Literal["4bit", "8bit"] | None = None
    lora: LoraSettings | None = None
    gradient_checkpointing: bool = False
    # loss
    loss_type: Literal["dpo", "ipo", "slic"] = "dpo"
    beta: float = Field(0.1, gt=0)
    # optimisation
    learning_rate: float = Field(1e-6, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    max_grad_norm: float | None = Field(1.0, gt=0)
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    seed: int = 42
    # bookkeeping
    save_steps: int = Field(200, ge=1)
    save_total_limit: int = Field(2, ge=1)
    logging_steps: int = Field(10, ge=1)
    report_to: list[str] = Field(default_factory=list)
    resume: bool = True
    export_dtype: Literal["float32", "bfloat16", "float16"] | None = None

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class DPOConfig(_PreferenceSettings):
    """Offline DPO/IPO/SLiC on preference pairs (explicit pairs, correction triples or HH-RLHF transcripts)."""

    train_file: str
    eval_file: str | None = None
    eval_fraction: float = Field(0.05, ge=0, lt=1)
    data_format: Literal["auto", "pairs", "triples", "hh"] = "auto"
    prompt_format: str = "{prompt}"
    max_length: int = Field(1024, ge=16)
    max_prompt_length: int | None = Field(None, ge=1)
    num_epochs: float = Field(1.0, gt=0)
    per_device_batch_size: int = Field(4, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    group_by_length: bool = True
    max_steps: int | None = Field(None, ge=1)
    eval_steps: int | None = Field(None, ge=1)
    output_dir: str = "runs/dpo"


class AnnotatorSettings(BaseModel):
    """Which annotator judges OAIF pairs (a Python object passed to ``train_oaif`` takes precedence).

    ``length``: prefer the ``shorter``/``longer`` response; ``llm``: a LangChain chat model, from
    ``model`` (``"provider:name"`` through ``langchain.chat_models.init_chat_model``) or ``target``
    (``"module:factory"`` called with ``kwargs``); ``reward_model``: ``model`` is a sequence-classification
    checkpoint; ``aligner``: ``model`` is an Aligner (path or ``"demo"``), preferring the response it
    changes less; ``callable``: ``target`` is ``"module:function(prompt, a, b) -> 0 | 1 | None"``.
    """

    type: Literal["length", "llm", "reward_model", "aligner", "callable"]
    prefer: Literal["shorter", "longer"] = "shorter"
    unit: Literal["chars", "words"] = "chars"
    model: str | None = None
    target: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)
    instructions: str | None = None
    both_orders: bool = True
    max_concurrency: int = Field(8, ge=1)

    model_config = ConfigDict(extra="forbid")


class OAIFConfig(_PreferenceSettings):
    """Online AI feedback: each step, two sampled responses per prompt, an annotator's label, a DAP update.

    Prompt rows: ``{"prompt"}`` (wrapped by ``prompt_format``), or ``{"question", "answer"}`` to train an
    Aligner as the policy (rendered with its template; responses are corrections).
    """

    prompts_file: str
    prompt_format: str = "{prompt}"
    prompts_per_step: int = Field(8, ge=1)
    micro_batch_size: int | None = Field(None, ge=1)
    max_steps: int = Field(200, ge=1)
    temperature: float = Field(1.0, gt=0)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)
    max_new_tokens: int = Field(64, ge=1)
    max_prompt_length: int = Field(512, ge=1)
    annotator: AnnotatorSettings | None = None
    output_dir: str = "runs/oaif"


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["--lr", "1e-4", "--lora.r", "8"]`` -> ``{"lr": 1e-4, "lora": {"r": 8}}`` (values read as YAML)."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(pairs):
        key = pairs[i]
        if not key.startswith("--"):
            raise ConfigError(f"Override {key!r} must look like --key value.")
        key = key[2:].replace("-", "_")
        if "=" in key:
            key, raw = key.split("=", 1)
            i += 1
        elif i + 1 < len(pairs):
            raw = pairs[i + 1]
            i += 2
        else:
            raise ConfigError(f"Override --{key} has no value.")
        target = out
        *parents, leaf = key.split(".")
        for part in parents:
            target = target.setdefault(part, {})
        target[leaf] = yaml.safe_load(raw)
    return out


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config(cls: type[C], path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> C:
    """Build ``cls`` from a YAML/JSON file plus overrides; errors name the file and the bad field."""
    data: dict[str, Any] = {}
    if path is not None:
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"Config file {str(file)!r} does not exist.")
        text = file.read_text(encoding="utf-8")
        try:
            loaded = json.loads(text) if file.suffix == ".json" else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as exc:
            raise ConfigError(f"{file}: cannot parse ({exc}).") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{file}: expected a mapping of settings, got {type(loaded).__name__}.")
        data = loaded
    data = _merge(data, overrides or {})
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"Invalid {cls.__name__}{f' in {path}' if path else ''}: {problems}") from exc


def script_main(run_from_args: Any, description: str | None, argv: Sequence[str] | None) -> int:
    """``python -m <trainer> --config cfg.yaml [--key value ...]``: the shared entry of every trainer module."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", help="YAML or JSON config file; any further --key value overrides it")
    args, rest = parser.parse_known_args(argv)
    print(f"Exported to {run_from_args(args.config, rest)}")
    return 0
