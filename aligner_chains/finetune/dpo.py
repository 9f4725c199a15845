"""Offline preference training (DPO, IPO or SLiC) on accelerate: one readable loop, resumable, multi-process ready.

Run directly (``aligner-chains train dpo --config cfg.yaml``) or under
``accelerate launch -m aligner_chains.finetune.dpo --config cfg.yaml``. Pairs come from JSONL
(explicit pairs, correction triples or HH-RLHF transcripts, see `preference_data`). The reference
is the frozen initial policy: with LoRA, the same model with its adapters disabled.
"""

from __future__ import annotations

import time
import warnings
from collections import defaultdict
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from aligner_chains.core.errors import ConfigError
from aligner_chains.finetune.checkpoints import checkpoint_loss, latest_checkpoint, save_checkpoint
from aligner_chains.finetune.config import DPOConfig, load_config, parse_overrides, script_main
from aligner_chains.finetune.data import split_eval
from aligner_chains.finetune.logprobs import Reference, sequence_logps
from aligner_chains.finetune.losses import preference_loss
from aligner_chains.finetune.metrics import MetricsLog, policy_template
from aligner_chains.finetune.preference_data import PairExample, collate_pairs, encode_pair, load_pairs
from aligner_chains.finetune.sft import build_tokenizer_and_model, finish_training, make_accelerator, plan_updates
from aligner_chains.jobs import progress_bar


def check_policy_settings(config: Any) -> None:
    """Quantized weights cannot be trained directly: they need LoRA adapters."""
    if config.quantization is not None and config.lora is None:
        raise ConfigError(f"quantization={config.quantization!r} needs lora settings (QLoRA); add `lora: {{r: 16}}`.")


def pair_stats(
    model: Any,
    reference: Reference,
    batch: dict[str, torch.Tensor],
    config: Any,
    accelerator: Any,
) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """Policy (with grad) and reference log-probs of a collated pair batch, and the masked loss."""
    inputs = {k: v.to(accelerator.device) for k, v in batch.items() if k != "valid"}
    with accelerator.autocast():
        policy, _ = sequence_logps(model, inputs)
    ref = reference.logps(accelerator.unwrap_model(model), inputs, accelerator.autocast())
    n = policy.shape[0] // 2
    out = preference_loss(
        config.loss_type, policy[:n], policy[n:], ref[:n], ref[n:], config.beta, batch["valid"].to(policy.device)
    )
    return out, policy.detach(), ref


@torch.no_grad()
def evaluate_pairs(
    model: Any,
    reference: Reference,
    examples: list[PairExample],
    config: DPOConfig,
    accelerator: Any,
    pad_id: int,
) -> dict[str, float] | None:
    """Held-out means over non-identical pairs: chosen-minus-rejected log-prob margin under the policy
    (``margin``) and the reference (``ref_margin``: the margin before training), reward accuracy, loss."""
    if not examples:
        return None
    model.eval()
    totals = torch.zeros(5, device=accelerator.device, dtype=torch.float64)
    mine = examples[accelerator.process_index :: accelerator.num_processes]
    for start in range(0, len(mine), config.per_device_batch_size):
        batch = collate_pairs(mine[start : start + config.per_device_batch_size], pad_id)
        out, policy, ref = pair_stats(model, reference, batch, config, accelerator)
        n, valid = policy.shape[0] // 2, out.mask
        totals[0] += out.loss_sum.double()
        totals[1] += (policy[:n] - policy[n:])[valid].sum().double()
        totals[2] += (ref[:n] - ref[n:])[valid].sum().double()
        totals[3] += (out.margins > 0)[valid].sum()
        totals[4] += out.n_valid
    totals = accelerator.reduce(totals, reduction="sum")
    model.train()
    if totals[4] == 0:
        return None
    loss, margin, ref_margin, accuracy = (float(t / totals[4]) for t in totals[:4])
    return {"loss": loss, "margin": margin, "ref_margin": ref_margin, "reward_accuracy": accuracy}


def train_dpo(config: DPOConfig) -> Path:
    """Train a policy on preference pairs and export it; returns the exported model directory."""
    from accelerate.utils import set_seed
    from transformers import get_cosine_schedule_with_warmup

    started = time.perf_counter()
    check_policy_settings(config)
    accelerator = make_accelerator(config.mixed_precision, config.report_to, config.output_dir)
    set_seed(config.seed)
    pairs = load_pairs(config.train_file, config.data_format, config.prompt_format)
    if config.eval_file is not None:
        eval_pairs = load_pairs(config.eval_file, config.data_format, config.prompt_format)
    else:
        pairs, eval_pairs = split_eval(pairs, config.eval_fraction, config.seed)  # type: ignore[arg-type]
    Path(config.output_dir).mkdir(parents=True, exist_ok=True)
    tokenizer, model = build_tokenizer_and_model(config, [], accelerator)  # type: ignore[arg-type]
    template = policy_template(config.template, config.base_model)

    def encode(items: Sequence[Any]) -> tuple[list[PairExample], int]:
        encoded = [encode_pair(tokenizer, p, config.max_length, config.max_prompt_length) for p in items]
        return [e for e, _ in encoded], sum(cut for _, cut in encoded)

    examples, truncated = encode(pairs)
    eval_examples, _ = encode(eval_pairs)
    if all(e.identical for e in examples):
        raise ConfigError(
            f"All {len(examples)} training pairs have identical chosen and rejected responses: nothing to learn."
        )
    plan = plan_updates([(1, examples, config.num_epochs)], config, accelerator.num_processes)  # type: ignore[arg-type]
    total_steps = len(plan)

    reference = Reference(model, uses_adapters=config.lora is not None)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, round(config.warmup_ratio * total_steps), total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    # Not prepared: accelerate would step it once per process, but our plan already counts optimizer updates.
    accelerator.register_for_checkpointing(scheduler)
    reference.to(accelerator.device)

    start_step = 0
    found = latest_checkpoint(config.output_dir) if config.resume else None
    if found is not None:
        path, start_step = found
        accelerator.load_state(str(path))
        accelerator.print(f"Resuming from {path} at step {start_step}/{total_steps}.")
    if config.report_to:
        accelerator.init_trackers("aligner-dpo", config={k: str(v) for k, v in config.model_dump().items()})
    log = MetricsLog(config.output_dir, start_step, enabled=accelerator.is_main_process)

    data_stats = {
        "train_pairs": len(examples),
        "eval_pairs": len(eval_examples),
        "identical_pairs": sum(e.identical for e in examples),
        "truncated_pairs": truncated,
    }
    pad_id = int(tokenizer.pad_token_id)
    model.train()
    bar = progress_bar(total_steps, start_step, unit="step", desc="dpo", enabled=accelerator.is_local_main_process)
    window: dict[str, list[float]] = defaultdict(list)
    last_loss = checkpoint_loss(found[0]) if found is not None else None  # a finished run resumed trains no step
    for step in range(start_step, total_steps):
        mine = plan[step][accelerator.process_index :: accelerator.num_processes]
        batches = [collate_pairs([examples[i] for i in idx], pad_id) for _, idx in mine]
        local_valid = sum(int(b["valid"].sum()) for b in batches)
        global_valid = accelerator.reduce(torch.tensor(local_valid, device=accelerator.device), reduction="sum")
        scale = accelerator.num_processes / max(1, int(global_valid))  # DDP averages gradients over processes
        # loss, chosen reward, rejected reward, reward accuracy, chosen logp, rejected logp (sums over valid pairs)
        sums = torch.zeros(6, device=accelerator.device, dtype=torch.float64)
        for j, batch in enumerate(batches):
            sync = j == len(batches) - 1
            with nullcontext() if sync else accelerator.no_sync(model):
                out, policy, _ = pair_stats(model, reference, batch, config, accelerator)
                accelerator.backward(out.loss_sum * scale)
            n, valid = policy.shape[0] // 2, out.mask
            sums += torch.stack(
                [
                    out.loss_sum.detach().double(),
                    out.chosen_rewards[valid].sum().double(),
                    out.rejected_rewards[valid].sum().double(),
                    (out.margins > 0)[valid].sum().double(),
                    policy[:n][valid].sum().double(),
                    policy[n:][valid].sum().double(),
                ]
            )
        if int(global_valid) > 0:  # all pairs identical: no gradient, and Adam's momentum must not move weights
            if config.max_grad_norm is not None:
                accelerator.clip_grad_norm_(trainable, config.max_grad_norm)
            optimizer.step()
        with warnings.catch_warnings():  # a skipped optimizer step before the first one makes torch warn
            warnings.simplefilter("ignore", UserWarning)
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        sums = accelerator.reduce(sums, reduction="sum") / max(1, int(global_valid))
        loss, chosen, rejected, accuracy, logp_w, logp_l = (float(v) for v in sums)
        last_loss = loss
        for key, value in (
            ("loss", loss),
            ("rewards/chosen", chosen),
            ("rewards/rejected", rejected),
            ("rewards/margin", chosen - rejected),
            ("rewards/accuracy", accuracy),
            ("logps/chosen", logp_w),
            ("logps/rejected", logp_l),
            ("pairs/valid", float(global_valid)),
        ):
            window[key].append(value)
        bar.update(1)
        if (step + 1) % config.logging_steps == 0 or step + 1 == total_steps:
            values = {k: sum(v) / len(v) for k, v in window.items()}
            values["lr"] = scheduler.get_last_lr()[0]
            bar.set_postfix(loss=f"{values['loss']:.4f}", margin=f"{values['rewards/margin']:.3f}")
            accelerator.log({f"train/{k}": v for k, v in values.items()}, step=step + 1)
            log.write(step + 1, values)
            window.clear()
        if config.eval_steps and (step + 1) % config.eval_steps == 0:
            scores = evaluate_pairs(model, reference, eval_examples, config, accelerator, pad_id)
            if scores is not None:
                accelerator.log({f"eval/{k}": v for k, v in scores.items()}, step=step + 1)
                log.write(step + 1, {f"eval/{k}": v for k, v in scores.items()})
        if (step + 1) % config.save_steps == 0 and step + 1 < total_steps:
            save_checkpoint(accelerator, config.output_dir, step + 1, config.save_total_limit, {"loss": loss})
    bar.close()
    scores = evaluate_pairs(model, reference, eval_examples, config, accelerator, pad_id) or {}
    summary = {
        "steps": total_steps,
        "resumed_from_step": start_step,
        "final_train_loss": last_loss,
        "eval_margin_before": scores.get("ref_margin"),
        "eval_margin": scores.get("margin"),
        "eval_reward_accuracy": scores.get("reward_accuracy"),
        "eval_loss": scores.get("loss"),
        "wall_time_s": round(time.perf_counter() - started, 1),
    }
    if scores:
        accelerator.log({f"eval/{k}": v for k, v in scores.items()}, step=total_steps)
        log.write(total_steps, {f"eval/{k}": v for k, v in scores.items()})
    return finish_training(accelerator, model, tokenizer, config, template, data_stats, summary)


def run_from_args(config_path: str | None, overrides: list[str]) -> Path:
    config = load_config(DPOConfig, config_path, parse_overrides(overrides))
    return train_dpo(config)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m aligner_chains.finetune.dpo --config cfg.yaml [--key value ...]`` (also under accelerate launch)."""
    return script_main(run_from_args, __doc__, argv, DPOConfig)


if __name__ == "__main__":
    raise SystemExit(main())
