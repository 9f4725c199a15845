"""Training configurations: pydantic models loadable from YAML/JSON, with ``--key value`` overrides."""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from aligner_chains.core.errors import ConfigError

C = TypeVar("C", bound=BaseModel)


class LoraSettings(BaseModel):
    """LoRA adapter settings (peft); ``quantization="4bit"`` on the base gives QLoRA."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    r: int = Field(16, ge=1)
    """Rank of the adapter matrices (more: more capacity and memory)."""
    alpha: int = Field(32, ge=1)
    """Scaling numerator: adapter updates are scaled by alpha / r."""
    dropout: float = Field(0.05, ge=0, lt=1)
    """Dropout on the adapter inputs during training."""
    target_modules: list[str] | str = "all-linear"
    """Modules that get adapters: "all-linear" or a list of module names (e.g. [q_proj, v_proj])."""
    merge_on_export: bool = True
    """Merge the adapters into the base weights on export (false: export the adapter alone)."""


class SFTConfig(BaseModel):
    """Correction SFT: loss on correction tokens + EOS, optional identity warm-up stage first.

    Give ``base_model`` (a path or hub id) to fine-tune, or ``model_config`` (LlamaConfig fields)
    to train a small model from scratch with a byte-level BPE tokenizer trained on the data.
    """

    # data
    train_file: str
    """JSONL of {"question", "answer", "correction"} rows to train on."""
    eval_file: str | None = None
    """JSONL of held-out rows for the evaluation loss (null: hold out eval_fraction of train_file)."""
    eval_fraction: float = Field(0.05, ge=0, lt=1)
    """Share of train_file held out for evaluation when eval_file is null (0: none)."""
    template: str | dict[str, Any] = "aligner-v2"
    """Prompt template: a built-in name (`aligner-chains templates` lists them) or a mapping defining one."""
    max_length: int = Field(1024, ge=16)
    """Longest example in tokens (prompt + correction); longer rows are skipped and counted."""
    identity_warmup_fraction: float = Field(0.2, ge=0, le=1)
    """Share of rows first trained as identity pairs (correction = answer): a copying warm-up stage."""
    # model
    base_model: str | None = None
    """Pretrained model to fine-tune (path or hub id); give this or model_config."""
    scratch_config: dict[str, Any] | None = Field(None, alias="model_config")
    """LlamaConfig fields of a small model trained from scratch, tokenizer included; give this or base_model."""
    tokenizer: str | None = None
    """With model_config: an existing tokenizer (path or hub id) instead of training one."""
    tokenizer_vocab_size: int = Field(4096, ge=300)
    """With model_config: vocabulary size of the tokenizer trained on the data."""
    tokenizer_extra_tokens: list[str] = Field(default_factory=list)
    """With model_config: strings kept as single tokens (e.g. ["[EMAIL]"])."""
    trust_remote_code: bool = False
    """Run code shipped with the model repository (only for repositories you trust)."""
    quantization: Literal["4bit", "8bit"] | None = None
    """Load base_model in 4 or 8 bits (QLoRA: needs lora, bitsandbytes and a GPU)."""
    lora: LoraSettings | None = None
    """LoRA adapter settings (needs peft); null trains all weights."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, slower steps."""
    # optimisation
    num_epochs: float = Field(1.0, gt=0)
    """Passes over the training rows (fractions allowed); max_steps overrides it."""
    per_device_batch_size: int = Field(8, ge=1)
    """Examples per micro-batch on each process."""
    gradient_accumulation_steps: int = Field(1, ge=1)
    """Micro-batches per optimizer step on each process."""
    learning_rate: float = Field(2e-5, gt=0)
    """Peak AdamW learning rate (linear warm-up, then cosine decay)."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay."""
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    """Share of the optimizer steps spent warming the learning rate up."""
    max_grad_norm: float | None = Field(1.0, gt=0)
    """Clip the gradient norm to this (null: no clipping)."""
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    """Autocast precision: no, bf16 or fp16."""
    group_by_length: bool = True
    """Batch examples of similar length together (less padding); batch order is still shuffled."""
    seed: int = 42
    """Seed of the data split, the batch plan and the weights of a scratch model."""
    # bookkeeping
    output_dir: str = "runs/sft"
    """Run directory: checkpoints, metrics and the exported model (output_dir/final)."""
    save_steps: int = Field(200, ge=1)
    """Save a resumable checkpoint every this many optimizer steps (and at the end)."""
    save_total_limit: int = Field(2, ge=1)
    """Checkpoints kept; older ones are deleted."""
    eval_steps: int | None = Field(None, ge=1)
    """Compute the evaluation loss every this many steps (null: only at the end)."""
    logging_steps: int = Field(10, ge=1)
    """Log the mean training loss every this many steps."""
    report_to: list[str] = Field(default_factory=list)
    """accelerate trackers to log to, e.g. [tensorboard] ([]: the progress bar only)."""
    resume: bool = True
    """Resume from the newest checkpoint in output_dir, if there is one."""
    export_dtype: Literal["float32", "bfloat16", "float16"] | None = None
    """Cast the exported weights to this dtype (null: as trained)."""
    max_steps: int | None = Field(None, ge=1)
    """Total optimizer steps, as in HF Trainer: overrides num_epochs (the data repeats as needed)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, use_attribute_docstrings=True)

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
    """The policy to train (path or hub id); its initial weights are the frozen reference."""
    template: str | dict[str, Any] | None = None  # for aligner_config.json; None: the base model's own, if any
    """Template recorded in the exported aligner_config.json (null: the base model's own, if any)."""
    trust_remote_code: bool = False
    """Run code shipped with the model repository (only for repositories you trust)."""
    quantization: Literal["4bit", "8bit"] | None = None
    """Load base_model in 4 or 8 bits (QLoRA: needs lora, bitsandbytes and a GPU)."""
    lora: LoraSettings | None = None
    """LoRA adapter settings (needs peft); the reference is then the base with adapters disabled."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, slower steps."""
    # loss
    loss_type: Literal["dpo", "ipo", "slic"] = "dpo"
    """Preference loss: dpo (sigmoid), ipo (squared) or slic (hinge)."""
    beta: float = Field(0.1, gt=0)
    """Strength of the loss on the log-ratio margin (DPO's beta; IPO's target margin is 1 / (2 beta))."""
    # optimisation
    learning_rate: float = Field(1e-6, gt=0)
    """Peak AdamW learning rate (linear warm-up, then cosine decay)."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay."""
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    """Share of the optimizer steps spent warming the learning rate up."""
    max_grad_norm: float | None = Field(1.0, gt=0)
    """Clip the gradient norm to this (null: no clipping)."""
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    """Autocast precision: no, bf16 or fp16."""
    seed: int = 42
    """Seed of the data split, the batch plan and sampling."""
    # bookkeeping
    save_steps: int = Field(200, ge=1)
    """Save a resumable checkpoint every this many optimizer steps."""
    save_total_limit: int = Field(2, ge=1)
    """Checkpoints kept; older ones are deleted."""
    logging_steps: int = Field(10, ge=1)
    """Log (and write to output_dir/metrics.jsonl) the mean statistics every this many steps."""
    report_to: list[str] = Field(default_factory=list)
    """accelerate trackers to log to, e.g. [tensorboard] ([]: the progress bar and metrics.jsonl only)."""
    resume: bool = True
    """Resume from the newest checkpoint in output_dir, if there is one."""
    export_dtype: Literal["float32", "bfloat16", "float16"] | None = None
    """Cast the exported weights to this dtype (null: as trained)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, use_attribute_docstrings=True)


class DPOConfig(_PreferenceSettings):
    """Offline DPO/IPO/SLiC on preference pairs (explicit pairs, correction triples or HH-RLHF transcripts)."""

    train_file: str
    """JSONL of preference rows: {"prompt", "chosen", "rejected"} pairs, correction triples or HH-RLHF transcripts."""
    eval_file: str | None = None
    """JSONL of held-out pairs (null: hold out eval_fraction of train_file)."""
    eval_fraction: float = Field(0.05, ge=0, lt=1)
    """Share of train_file held out for evaluation when eval_file is null (0: none)."""
    data_format: Literal["auto", "pairs", "triples", "hh"] = "auto"
    """Row format: pairs, triples, hh, or auto (recognised row by row)."""
    prompt_format: str = "{prompt}"
    """Format string that wraps every prompt; must contain {prompt}."""
    max_length: int = Field(1024, ge=16)
    """Tokens per prompt + response; longer responses are cut (and counted)."""
    max_prompt_length: int | None = Field(None, ge=1)
    """Prompt tokens kept (the end of a longer prompt; null: max_length // 2)."""
    num_epochs: float = Field(1.0, gt=0)
    """Passes over the pairs (fractions allowed); max_steps overrides it."""
    per_device_batch_size: int = Field(4, ge=1)
    """Pairs per micro-batch on each process."""
    gradient_accumulation_steps: int = Field(1, ge=1)
    """Micro-batches per optimizer step on each process."""
    group_by_length: bool = True
    """Batch pairs of similar length together (less padding); batch order is still shuffled."""
    max_steps: int | None = Field(None, ge=1)
    """Total optimizer steps, as in HF Trainer: overrides num_epochs (the data repeats as needed)."""
    eval_steps: int | None = Field(None, ge=1)
    """Evaluate the held-out pairs every this many steps (null: only at the end)."""
    output_dir: str = "runs/dpo"
    """Run directory: checkpoints, metrics.jsonl and the exported model (output_dir/final)."""


class AnnotatorSettings(BaseModel):
    """Which annotator judges OAIF pairs (a Python object passed to ``train_oaif`` takes precedence).

    ``length``: prefer the ``shorter``/``longer`` response; ``llm``: a LangChain chat model, from
    ``model`` (``"provider:name"`` through ``langchain.chat_models.init_chat_model``) or ``target``
    (``"module:factory"`` called with ``kwargs``); ``reward_model``: ``model`` is a sequence-classification
    checkpoint; ``aligner``: ``model`` is an Aligner (path or ``"demo"``), preferring the response it
    changes less; ``callable``: ``target`` is ``"module:function(prompt, a, b) -> 0 | 1 | None"``.
    """

    type: Literal["length", "llm", "reward_model", "aligner", "callable"]
    """Which annotator: length, llm, reward_model, aligner or callable."""
    prefer: Literal["shorter", "longer"] = "shorter"
    """length: prefer the shorter or the longer response."""
    unit: Literal["chars", "words"] = "chars"
    """length: measure in chars or words."""
    model: str | None = None
    """llm: provider:name; reward_model: a classifier path; aligner: a path, hub id or demo."""
    target: str | None = None
    """llm: module:factory returning a chat model; callable: module:function(prompt, a, b)."""
    kwargs: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments of the factory, the chat model, the reward model or the Aligner."""
    instructions: str | None = None
    """llm: what the judge is told to prefer (null: the default instructions)."""
    both_orders: bool = True
    """llm: ask in both orders and keep consistent labels only (against position bias)."""
    max_concurrency: int = Field(8, ge=1)
    """llm and callable: calls in flight at once."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class OAIFConfig(_PreferenceSettings):
    """Online AI feedback: each step, two sampled responses per prompt, an annotator's label, a DAP update.

    Prompt rows: ``{"prompt"}`` (wrapped by ``prompt_format``), or ``{"question", "answer"}`` to train an
    Aligner as the policy (rendered with its template; responses are corrections).
    """

    prompts_file: str
    """JSONL of {"prompt"} rows, or {"question", "answer"} rows to train an Aligner as the policy."""
    prompt_format: str = "{prompt}"
    """Format string that wraps every {prompt} row; must contain {prompt}."""
    prompts_per_step: int = Field(8, ge=1)
    """Prompts per optimizer step on each process (two sampled responses each)."""
    micro_batch_size: int | None = Field(None, ge=1)
    """Prompts per forward/backward pass (null: prompts_per_step)."""
    max_steps: int = Field(200, ge=1)
    """Total optimizer steps (online: the prompts repeat as needed)."""
    temperature: float = Field(1.0, gt=0)
    """Sampling temperature of the two responses."""
    top_p: float | None = Field(None, gt=0, le=1)
    """Nucleus sampling threshold (null: off)."""
    top_k: int | None = Field(None, ge=0)
    """Top-k sampling (null or 0: off)."""
    max_new_tokens: int = Field(64, ge=1)
    """Longest sampled response in tokens."""
    max_prompt_length: int = Field(512, ge=1)
    """Prompt tokens kept (the end of a longer prompt)."""
    annotator: AnnotatorSettings | None = None
    """Which annotator labels the pairs (an annotator object passed to train_oaif takes precedence)."""
    output_dir: str = "runs/oaif"
    """Run directory: checkpoints, metrics.jsonl and the exported model (output_dir/final)."""


class FieldDoc(NamedTuple):
    """One config field as a file or ``--key value`` names it: its type, default (or "required") and doc line."""

    name: str
    type: str
    default: str
    doc: str


def field_docs(cls: type[BaseModel], prefix: str = "") -> list[FieldDoc]:
    """Every field of ``cls`` in order, a nested settings block's own fields after it (``lora.r``, ...).

    What ``aligner-chains train sft|dpo|oaif --help`` lists; the docs' config reference can use it too.
    """
    rows: list[FieldDoc] = []
    for name, field in cls.model_fields.items():
        key = prefix + (field.alias or name)
        if field.is_required():
            default = "required"
        else:
            default = _yaml_text(field.default_factory() if field.default_factory else field.default)  # type: ignore[call-arg]
        rows.append(FieldDoc(key, _type_text(field.annotation), default, field.description or ""))
        nested = [a for a in _union_members(field.annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
        for model in nested:
            rows += field_docs(model, key + ".")
    return rows


#: How every trainer's command line reads its settings; the epilog of each trainer's ``--help``.
OVERRIDES_HELP = """\
Settings come from --config FILE (YAML, or JSON by its .json suffix); every further --key value
overrides one field of it (or sets it, without --config). Values are read as YAML (--eval_file null,
--report_to [tensorboard]); --key=value works too, dashes and underscores are the same, and a dot
reaches into a block (--lora.r 8). For example:

  {example}"""


def fields_help(cls: type[BaseModel], example: str) -> str:
    """The ``--help`` epilog of a trainer: `OVERRIDES_HELP` with an ``example`` command, then every field
    with its type, default and doc line."""
    lines = [OVERRIDES_HELP.format(example=example), "", f"config fields ({cls.__name__}):"]
    for row in field_docs(cls):
        default = "required" if row.default == "required" else f"default {row.default}"
        lines.append(f"  {row.name} ({row.type}; {default})")
        lines += textwrap.wrap(row.doc, 100, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return "\n".join(lines)


def _union_members(annotation: Any) -> tuple[Any, ...]:
    return get_args(annotation) if get_origin(annotation) in (Union, types.UnionType) else (annotation,)


def _type_text(annotation: Any) -> str:
    """``str | None`` -> ``str | null``; ``Literal["a", "b"]`` -> ``a | b``; a settings model -> ``mapping``."""
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        return " | ".join(_type_text(a) for a in get_args(annotation))
    if origin is Literal:
        return " | ".join(str(v) for v in get_args(annotation))
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "mapping"
    if origin is not None:
        args = ", ".join(_type_text(a) for a in get_args(annotation))
        return f"{'mapping' if origin is dict else origin.__name__}[{args}]"
    return getattr(annotation, "__name__", str(annotation))


def _yaml_text(value: Any) -> str:
    """A default as a config file would write it: ``null``, ``true``, ``2e-05``, ``[]``, ``runs/sft``."""
    if value is None or isinstance(value, (bool, list, dict)):
        return json.dumps(value)
    return str(value)


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


def main_process() -> bool:
    """False on every process but the first of a multi-process launch (``torchrun``, ``accelerate launch``),
    so what a trainer prints after training is printed once."""
    return os.environ.get("RANK", "0") == "0"


def script_main(
    run_from_args: Any, description: str | None, argv: Sequence[str] | None, config: type[BaseModel] | None = None
) -> int:
    """``python -m <trainer> --config cfg.yaml [--key value ...]``: the shared entry of every trainer module;
    ``--help`` lists the fields of ``config``."""
    spec = getattr(sys.modules.get(run_from_args.__module__), "__spec__", None)  # __main__ under python -m
    module = spec.name if spec is not None else run_from_args.__module__
    example = f"python -m {module} --config cfg.yaml --max_steps 50 --output_dir runs/try"
    parser = argparse.ArgumentParser(
        description=description,
        epilog=None if config is None else fields_help(config, example),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="YAML or JSON config file; any further --key value overrides it")
    args, rest = parser.parse_known_args(argv)
    out = run_from_args(args.config, rest)
    if main_process():
        print(f"Exported to {out}")
    return 0
