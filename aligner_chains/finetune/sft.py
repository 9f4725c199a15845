"""Correction SFT on accelerate: one readable loop, resumable, multi-process ready.

Run directly (``aligner-chains train sft --config cfg.yaml``) or under
``accelerate launch -m aligner_chains.finetune.sft --config cfg.yaml`` for several processes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from aligner_chains.backends.local.loading import quiet_transformers
from aligner_chains.core.errors import ConfigError, MissingDependencyError
from aligner_chains.core.model_files import ALIGNER_CONFIG_NAME, resolve_model_path
from aligner_chains.core.templates import BUILTIN_TEMPLATES, Template, get_template
from aligner_chains.finetune.checkpoints import checkpoint_loss, latest_checkpoint, save_checkpoint
from aligner_chains.finetune.config import SFTConfig, load_config, parse_overrides, script_main
from aligner_chains.finetune.data import (
    IGNORE_INDEX,
    Example,
    collate,
    encode_example,
    identity_rows,
    load_rows,
    plan_micro_batches,
    split_eval,
)
from aligner_chains.finetune.logprobs import label_logits
from aligner_chains.finetune.metrics import json_safe
from aligner_chains.jobs import progress_bar, write_atomic


def _template_record(template: Template | None) -> str | dict[str, Any] | None:
    """How aligner_config.json names the template: the built-in name, the whole definition, or None
    (a model that is not an Aligner, e.g. an upstream model trained on preferences)."""
    if template is None:
        return None
    return template.name if template in BUILTIN_TEMPLATES else template.model_dump()


def build_tokenizer_and_model(config: SFTConfig, rows: list[dict[str, str]], accelerator: Any) -> tuple[Any, Any]:
    """Load a pretrained base (optionally quantized + LoRA) or build a small model from scratch."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if config.base_model is not None:
        path = resolve_model_path(config.base_model)
        tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=config.trust_remote_code)
        kwargs: dict[str, Any] = {"trust_remote_code": config.trust_remote_code, "use_safetensors": True}
        if config.quantization is not None:
            from aligner_chains.backends.local.loading import quantization_config

            kwargs["quantization_config"] = quantization_config(config.quantization, torch.bfloat16)
            kwargs["device_map"] = {"": accelerator.local_process_index}
        with quiet_transformers():
            model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    else:
        tokenizer = _scratch_tokenizer(config, rows, accelerator)
        arch = dict(config.scratch_config or {})
        arch.setdefault("max_position_embeddings", config.max_length)
        model = LlamaForCausalLM(
            LlamaConfig(
                vocab_size=len(tokenizer),
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                **arch,
            )
        )
        tokenizer.model_max_length = model.config.max_position_embeddings
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    if config.lora is not None:
        model = _with_lora(model, config)
    return tokenizer, model


def _scratch_tokenizer(config: SFTConfig, rows: list[dict[str, str]], accelerator: Any) -> Any:
    from transformers import AutoTokenizer

    from aligner_chains.finetune.tokenizer import train_byte_bpe

    if config.tokenizer is not None:
        return AutoTokenizer.from_pretrained(config.tokenizer)
    saved = Path(config.output_dir) / "tokenizer"
    if accelerator.is_main_process and not (saved / "tokenizer.json").is_file():
        template = get_template(config.template)
        texts = [template.render("", "")] + [r[k] for r in rows for k in ("question", "answer", "correction")]
        tokenizer = train_byte_bpe(texts, config.tokenizer_vocab_size, pad=True, extra=config.tokenizer_extra_tokens)
        tokenizer.save_pretrained(saved)
    accelerator.wait_for_everyone()
    return AutoTokenizer.from_pretrained(str(saved))


def _with_lora(model: Any, config: SFTConfig) -> Any:
    try:
        import peft
    except ImportError as exc:
        raise MissingDependencyError("lora needs peft: pip install -e '.[lora]'.") from exc
    assert config.lora is not None
    if config.quantization is not None:
        model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing)
    elif config.gradient_checkpointing:
        model.enable_input_require_grads()
    lora = peft.LoraConfig(
        r=config.lora.r,
        lora_alpha=config.lora.alpha,
        lora_dropout=config.lora.dropout,
        target_modules=config.lora.target_modules,
        task_type="CAUSAL_LM",
    )
    return peft.get_peft_model(model, lora)


def plan_updates(
    stages: Sequence[tuple[int, list[Example], float]],
    config: SFTConfig,
    world_size: int,
) -> list[list[tuple[int, list[int]]]]:
    """Every optimizer update as a list of (stage, example indices) micro-batches, for all processes.

    Stages run in order (identity warm-up first). The plan depends only on the data and seed, so
    a resumed run finds its data position from the step number alone. ``max_steps`` is the number of
    updates, as in HF Trainer: it overrides the last stage's epochs, which repeat (reshuffled) until
    there are that many updates, or stop early.
    """
    group = config.gradient_accumulation_steps * world_size
    wanted = None if config.max_steps is None else config.max_steps * group  # micro-batches, all processes
    micro: list[tuple[int, list[int]]] = []
    last_stage_start = 0
    for position, (stage, examples, epochs) in enumerate(stages):
        last_stage_start = len(micro)
        lengths = [len(e.input_ids) for e in examples]
        endless = wanted is not None and position == len(stages) - 1
        epoch = 0
        while len(micro) < (wanted or 0) if endless else epoch < epochs:
            batches = plan_micro_batches(
                lengths,
                config.per_device_batch_size,
                config.seed + 1000 * stage,
                epoch,
                group_by_length=config.group_by_length,
            )
            if not batches:
                break
            if not endless and epoch + 1 > epochs:  # fractional last epoch
                batches = batches[: max(1, round(len(batches) * (epochs - epoch)))]
            micro.extend((stage, b) for b in batches)
            epoch += 1
    if len(micro) % group:
        # Wrap around within the last stage, so every process does the same number of steps.
        micro.extend(micro[last_stage_start : last_stage_start + group - len(micro) % group])
    updates = [micro[i : i + group] for i in range(0, len(micro), group)]
    if config.max_steps is not None:
        updates = updates[: config.max_steps]
    return updates


def _loss_sum(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed next-token cross-entropy over label positions (normalised by the caller)."""
    logits, labels = label_logits(model, batch)
    return F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )


@torch.no_grad()
def evaluate_loss(
    model: Any, examples: list[Example], config: SFTConfig, accelerator: Any, pad_id: int
) -> float | None:
    """Token-level mean loss over ``examples``, split across processes."""
    if not examples:
        return None
    model.eval()
    total = torch.zeros(2, device=accelerator.device, dtype=torch.float64)
    mine = examples[accelerator.process_index :: accelerator.num_processes]
    for start in range(0, len(mine), config.per_device_batch_size):
        batch = {
            k: v.to(accelerator.device)
            for k, v in collate(mine[start : start + config.per_device_batch_size], pad_id).items()
        }
        with accelerator.autocast():
            total[0] += _loss_sum(model, batch).double()
        total[1] += (batch["labels"][:, 1:] != IGNORE_INDEX).sum()
    total = accelerator.reduce(total, reduction="sum")
    model.train()
    return float(total[0] / total[1]) if total[1] > 0 else None


def make_accelerator(mixed_precision: str, report_to: list[str], output_dir: str) -> Any:
    """An Accelerator; several processes without CUDA (``torchrun``) train on CPU over gloo.

    accelerate only forms a multi-process CPU group when told ``cpu=True``, so a CPU-only machine
    launched with ``accelerate launch --multi_gpu --num_processes N`` (or ``torchrun``) asks for it.
    """
    import os

    from accelerate import Accelerator

    world = int(os.environ.get("WORLD_SIZE", "1"))
    return Accelerator(
        mixed_precision=mixed_precision,
        log_with=report_to or None,
        project_dir=output_dir,
        cpu=world > 1 and not torch.cuda.is_available(),
    )


def train_sft(config: SFTConfig) -> Path:
    """Train an Aligner by correction SFT and export it; returns the exported model directory."""
    from accelerate.utils import set_seed
    from transformers import get_cosine_schedule_with_warmup

    started = time.perf_counter()
    accelerator = make_accelerator(config.mixed_precision, config.report_to, config.output_dir)
    set_seed(config.seed)
    template = get_template(config.template)
    rows = load_rows(config.train_file)
    if config.eval_file is not None:
        eval_rows = load_rows(config.eval_file)
    else:
        rows, eval_rows = split_eval(rows, config.eval_fraction, config.seed)
    Path(config.output_dir).mkdir(parents=True, exist_ok=True)
    tokenizer, model = build_tokenizer_and_model(config, rows, accelerator)

    def encode(batch_rows: list[dict[str, str]]) -> tuple[list[Example], int]:
        encoded = [encode_example(tokenizer, template, r["question"], r["answer"], r["correction"]) for r in batch_rows]
        kept = [e for e in encoded if len(e.input_ids) <= config.max_length]
        return kept, len(encoded) - len(kept)

    warmup, skipped_warmup = encode(identity_rows(rows, config.identity_warmup_fraction, config.seed))
    main_examples, skipped_main = encode(rows)
    eval_examples, _ = encode(eval_rows)
    if not main_examples:
        raise ConfigError(f"No training example fits max_length={config.max_length}; raise it.")
    stages = (
        [(1, warmup, 1.0), (2, main_examples, config.num_epochs)] if warmup else [(2, main_examples, config.num_epochs)]
    )
    by_stage = {stage: examples for stage, examples, _ in stages}
    plan = plan_updates(stages, config, accelerator.num_processes)
    total_steps = len(plan)

    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, round(config.warmup_ratio * total_steps), total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    # Not prepared: accelerate would step it once per process, but our plan already counts optimizer updates.
    accelerator.register_for_checkpointing(scheduler)

    start_step = 0
    found = latest_checkpoint(config.output_dir) if config.resume else None
    if found is not None:
        path, start_step = found
        accelerator.load_state(str(path))
        accelerator.print(f"Resuming from {path} at step {start_step}/{total_steps}.")
    if config.report_to:
        accelerator.init_trackers("aligner-sft", config={k: str(v) for k, v in config.model_dump().items()})

    data_stats = {
        "train_rows": len(rows),
        "eval_rows": len(eval_rows),
        "warmup_examples": len(warmup),
        "train_examples": len(main_examples),
        "skipped_too_long": skipped_warmup + skipped_main,
        "train_loss_tokens": sum(e.n_loss_tokens for e in main_examples),
    }
    pad_id = int(tokenizer.pad_token_id)
    model.train()
    bar = progress_bar(total_steps, start_step, unit="step", desc="sft", enabled=accelerator.is_local_main_process)
    running, tokens_seen = 0.0, 0
    last_loss = checkpoint_loss(found[0]) if found is not None else None  # a finished run resumed trains no step
    for step in range(start_step, total_steps):
        mine = plan[step][accelerator.process_index :: accelerator.num_processes]
        batches = [collate([by_stage[stage][i] for i in idx], pad_id) for stage, idx in mine]
        local_tokens = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches)
        global_tokens = accelerator.reduce(torch.tensor(local_tokens, device=accelerator.device), reduction="sum")
        scale = accelerator.num_processes / max(1, int(global_tokens))  # DDP averages gradients over processes
        loss_total = 0.0
        for j, batch in enumerate(batches):
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            sync = j == len(batches) - 1
            with nullcontext() if sync else accelerator.no_sync(model), accelerator.autocast():
                loss = _loss_sum(model, batch) * scale
            accelerator.backward(loss)
            loss_total += float(loss.detach())
        if config.max_grad_norm is not None:
            accelerator.clip_grad_norm_(trainable, config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step_loss = (
            float(accelerator.reduce(torch.tensor(loss_total, device=accelerator.device), "sum"))
            / accelerator.num_processes
        )
        last_loss = step_loss
        running += step_loss
        tokens_seen += int(global_tokens)
        bar.update(1)
        if (step + 1) % config.logging_steps == 0 or step + 1 == total_steps:
            stage = plan[step][0][0]
            avg = running / ((step % config.logging_steps) + 1)
            bar.set_postfix(loss=f"{avg:.4f}", stage=stage)
            accelerator.log(
                {"train/loss": avg, "train/lr": scheduler.get_last_lr()[0], "train/stage": stage}, step=step + 1
            )
            running = 0.0
        if config.eval_steps and (step + 1) % config.eval_steps == 0:
            eval_loss = evaluate_loss(model, eval_examples, config, accelerator, pad_id)
            if eval_loss is not None:
                accelerator.log({"eval/loss": eval_loss}, step=step + 1)
        if (step + 1) % config.save_steps == 0 or step + 1 == total_steps:  # the last one marks the run done
            save_checkpoint(accelerator, config.output_dir, step + 1, config.save_total_limit, {"loss": step_loss})
    bar.close()
    eval_loss = evaluate_loss(model, eval_examples, config, accelerator, pad_id)
    summary = {
        "steps": total_steps,
        "resumed_from_step": start_step,
        "loss_tokens_this_run": tokens_seen,
        "final_train_loss": last_loss,
        "eval_loss": eval_loss,
        "wall_time_s": round(time.perf_counter() - started, 1),
    }
    if eval_loss is not None:
        accelerator.log({"eval/loss": eval_loss}, step=total_steps)
    return finish_training(accelerator, model, tokenizer, config, template, data_stats, summary)


def finish_training(
    accelerator: Any,
    model: Any,
    tokenizer: Any,
    config: Any,
    template: Template | None,
    data_stats: dict[str, Any],
    summary: dict[str, Any],
) -> Path:
    """The end of every trainer: export, print the summary, close the trackers."""
    out = export_model(accelerator, model, tokenizer, config, template, data_stats, summary)
    accelerator.print("Training summary: " + json.dumps(json_safe(summary)))
    accelerator.end_training()
    return out


def export_model(
    accelerator: Any,
    model: Any,
    tokenizer: Any,
    config: SFTConfig,
    template: Template | None,
    data_stats: dict[str, Any],
    summary: dict[str, Any],
) -> Path:
    """Save safetensors weights, tokenizer and aligner_config.json, which `Aligner.from_pretrained` reads."""
    out = Path(config.output_dir) / "final"
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        is_adapter = config.lora is not None and not config.lora.merge_on_export
        if config.lora is not None and config.lora.merge_on_export:
            unwrapped = unwrapped.merge_and_unload()
        if config.export_dtype is not None and not is_adapter:
            unwrapped = unwrapped.to(getattr(torch, config.export_dtype))
        with quiet_transformers():
            unwrapped.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
        record = {
            "template": _template_record(template),
            "base_model": config.base_model,
            "adapter": is_adapter,
            "training": config.model_dump(mode="json", by_alias=True),
            "data": data_stats,
            "summary": summary,
        }
        write_atomic(out / ALIGNER_CONFIG_NAME, json.dumps(json_safe(record), indent=2, allow_nan=False) + "\n")
    accelerator.wait_for_everyone()
    return out


def run_from_args(config_path: str | None, overrides: list[str]) -> Path:
    config = load_config(SFTConfig, config_path, parse_overrides(overrides))
    return train_sft(config)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m aligner_chains.finetune.sft --config cfg.yaml [--key value ...]`` (also under accelerate launch)."""
    return script_main(run_from_args, __doc__, argv, SFTConfig)


if __name__ == "__main__":
    raise SystemExit(main())
