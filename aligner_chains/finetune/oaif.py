"""Online AI feedback (OAIF, Guo et al., arXiv 2402.04792): direct alignment from preferences, online.

Each step: sample two responses per prompt from the current policy (one batched ``generate``), ask
an annotator which is better, and apply a DPO/IPO/SLiC update against the frozen reference. Any
causal LM can be the policy, an Aligner included (prompts are then rendered correction prompts and
the two responses are sampled corrections). Resumable by step: a checkpoint holds the weights,
optimizer, scheduler and RNG states, so a resumed run samples what the uninterrupted run would.

Run with ``aligner-chains train oaif --config cfg.yaml`` (an ``annotator`` block in the config), or
from Python with ``train_oaif(config, annotator=...)`` and any annotator object.
"""

from __future__ import annotations

import random
import re
import time
import warnings
from collections import defaultdict
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from aligner_chains.core.errors import ConfigError, DataError
from aligner_chains.core.templates import Template
from aligner_chains.finetune.annotators import Annotator, annotator_from_settings, as_annotator
from aligner_chains.finetune.checkpoints import checkpoint_loss, latest_checkpoint, save_checkpoint
from aligner_chains.finetune.config import OAIFConfig, load_config, parse_overrides, script_main
from aligner_chains.finetune.data import read_records
from aligner_chains.finetune.dpo import check_policy_settings
from aligner_chains.finetune.logprobs import Reference, sample_completions, sequence_logps
from aligner_chains.finetune.losses import preference_loss
from aligner_chains.finetune.metrics import MetricsLog, policy_template
from aligner_chains.finetune.sft import build_tokenizer_and_model, finish_training, make_accelerator
from aligner_chains.jobs import progress_bar


@dataclass(frozen=True)
class OnlinePrompt:
    """What the policy is prompted with, and what the annotator is shown as the prompt."""

    policy_text: str
    shown: str


def load_prompts(path: str | Path, prompt_format: str, template: Template | None) -> list[OnlinePrompt]:
    """Prompt rows: a string, ``{"prompt"}``, or ``{"question", "answer"}`` for an Aligner policy
    (rendered with its template; the annotator is shown the question)."""
    if "{prompt}" not in prompt_format:
        raise ConfigError(f"prompt_format {prompt_format!r} must contain '{{prompt}}'.")
    prompts = []
    for number, row in read_records(path):
        where = f"{path}:{number}"
        if isinstance(row, str):
            row = {"prompt": row}
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a string or a JSON object, got {type(row).__name__}.")
        if isinstance(row.get("prompt"), str) and row["prompt"].strip():
            prompts.append(OnlinePrompt(prompt_format.replace("{prompt}", row["prompt"]), row["prompt"]))
        elif isinstance(row.get("question"), str) and isinstance(row.get("answer"), str):
            if template is None:
                raise ConfigError(
                    f"{where}: question/answer rows train an Aligner policy, but neither the config nor the "
                    "base model's aligner_config.json names a template; set template: aligner-v2 (or yours)."
                )
            prompts.append(OnlinePrompt(template.render(row["question"], row["answer"]), row["question"]))
        else:
            raise DataError(
                f"{where}: needs a non-empty 'prompt' string, or 'question' and 'answer' strings (keys: {sorted(row)})."
            )
    if not prompts:
        raise DataError(f"{path} holds no prompts.")
    return prompts


def step_prompt_indices(n_prompts: int, step: int, size: int, seed: int) -> list[int]:
    """The ``size`` prompt indices of ``step``: consecutive slices of a fresh shuffle per epoch, a
    function of the step alone, so a resumed run takes the same prompts."""
    out: list[int] = []
    position = step * size
    while len(out) < size:
        epoch, offset = divmod(position, n_prompts)
        order = list(range(n_prompts))
        random.Random(f"{seed}-{epoch}").shuffle(order)
        taken = order[offset : offset + size - len(out)]
        out.extend(taken)
        position += len(taken)
    return out


_SECRET = re.compile(r"key|token|secret|password|credential", re.I)


def public_config(config: OAIFConfig) -> OAIFConfig:
    """The config as recorded in aligner_config.json: annotator kwargs that look like secrets are redacted."""
    if config.annotator is None or not config.annotator.kwargs:
        return config
    kwargs = {k: "<redacted>" if _SECRET.search(k) else v for k, v in config.annotator.kwargs.items()}
    return config.model_copy(update={"annotator": config.annotator.model_copy(update={"kwargs": kwargs})})


def train_oaif(config: OAIFConfig, annotator: Any = None) -> Path:
    """Online DAP training with an annotator's labels; returns the exported model directory.

    ``annotator``: an `Annotator`, a LangChain chat model, an Aligner or a callable
    ``(prompt, a, b) -> 0 | 1 | None``; None builds the one ``config.annotator`` describes.
    """
    from accelerate.utils import set_seed
    from transformers import get_cosine_schedule_with_warmup

    started = time.perf_counter()
    check_policy_settings(config)
    if annotator is None:
        if config.annotator is None:
            raise ConfigError("OAIF needs an annotator: pass annotator=... or set the config's annotator block.")
        judge: Annotator = annotator_from_settings(config.annotator)
    else:
        judge = as_annotator(annotator)
    accelerator = make_accelerator(config.mixed_precision, config.report_to, config.output_dir)
    set_seed(config.seed)
    Path(config.output_dir).mkdir(parents=True, exist_ok=True)
    template = policy_template(config.template, config.base_model)
    prompts = load_prompts(config.prompts_file, config.prompt_format, template)
    tokenizer, model = build_tokenizer_and_model(config, [], accelerator)  # type: ignore[arg-type]

    reference = Reference(model, uses_adapters=config.lora is not None)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
    total_steps = config.max_steps
    scheduler = get_cosine_schedule_with_warmup(optimizer, round(config.warmup_ratio * total_steps), total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    # Not prepared: accelerate would step it once per process, but our plan already counts optimizer updates.
    accelerator.register_for_checkpointing(scheduler)
    reference.to(accelerator.device)

    start_step = 0
    found = latest_checkpoint(config.output_dir) if config.resume else None
    if found is not None:
        path, start_step = found
        accelerator.load_state(str(path))  # weights, optimizer, scheduler and RNG states
        accelerator.print(f"Resuming from {path} at step {start_step}/{total_steps}.")
    if config.report_to:
        accelerator.init_trackers("aligner-oaif", config={k: str(v) for k, v in config.model_dump().items()})
    log = MetricsLog(config.output_dir, start_step, enabled=accelerator.is_main_process)

    micro = config.micro_batch_size or config.prompts_per_step
    model.train()
    bar = progress_bar(total_steps, start_step, unit="step", desc="oaif", enabled=accelerator.is_local_main_process)
    window: dict[str, list[float]] = defaultdict(list)
    lengths_seen: list[float] = []
    last_loss = checkpoint_loss(found[0]) if found is not None else None  # a finished run resumed trains no step
    for step in range(start_step, total_steps):
        world = accelerator.num_processes
        picked = step_prompt_indices(len(prompts), step, config.prompts_per_step * world, config.seed)
        items = [prompts[i] for i in picked[accelerator.process_index :: world]]
        samples = sample_completions(
            accelerator.unwrap_model(model),
            tokenizer,
            [p.policy_text for p in items],
            num_return_sequences=2,
            max_new_tokens=config.max_new_tokens,
            max_prompt_length=config.max_prompt_length,
            temperature=config.temperature,
            top_p=config.top_p,
            top_k=config.top_k,
            device=accelerator.device,
        )
        judgements = judge.judge_batch(
            [(p.shown, samples.texts[2 * i], samples.texts[2 * i + 1]) for i, p in enumerate(items)]
        )
        labels = [j.label for j in judgements]
        identical = [
            samples.completion_ids[2 * i] == samples.completion_ids[2 * i + 1]
            and samples.ended[2 * i] == samples.ended[2 * i + 1]
            for i in range(len(items))
        ]
        valid = [lab is not None and not same for lab, same in zip(labels, identical, strict=True)]
        global_valid = int(accelerator.reduce(torch.tensor(sum(valid), device=accelerator.device), reduction="sum"))
        scale = accelerator.num_processes / max(1, global_valid)
        # loss, chosen reward, rejected reward, accurate, kl sum, samples
        sums = torch.zeros(6, device=accelerator.device, dtype=torch.float64)
        chunks = list(range(0, len(items), micro))
        for k, start in enumerate(chunks):
            rows = range(start, min(start + micro, len(items)))
            sync = k == len(chunks) - 1
            sample_rows = range(2 * rows.start, 2 * rows.stop)
            batch = {key: t.to(accelerator.device) for key, t in samples.batch(sample_rows).items()}
            with nullcontext() if sync else accelerator.no_sync(model):
                with accelerator.autocast():
                    policy, _ = sequence_logps(model, batch)
                ref = reference.logps(accelerator.unwrap_model(model), batch, accelerator.autocast())
                # Local row 2r + c is completion c of prompt start + r; the label picks the winner.
                win = torch.tensor([2 * r + (labels[i] or 0) for r, i in enumerate(rows)], device=policy.device)
                lose = torch.tensor([2 * r + 1 - (labels[i] or 0) for r, i in enumerate(rows)], device=policy.device)
                mask = torch.tensor([valid[i] for i in rows], device=policy.device)
                out = preference_loss(
                    config.loss_type, policy[win], policy[lose], ref[win], ref[lose], config.beta, mask
                )
                accelerator.backward(out.loss_sum * scale)
            sums += torch.stack(
                [
                    out.loss_sum.detach().double(),
                    out.chosen_rewards[out.mask].sum().double(),
                    out.rejected_rewards[out.mask].sum().double(),
                    (out.margins > 0)[out.mask].sum().double(),
                    (policy.detach() - ref).sum().double(),
                    torch.tensor(float(policy.shape[0]), device=policy.device, dtype=torch.float64),
                ]
            )
        if global_valid > 0:  # with no labelled pair, Adam's momentum alone would still move the weights
            if config.max_grad_norm is not None:
                accelerator.clip_grad_norm_(trainable, config.max_grad_norm)
            optimizer.step()
        with warnings.catch_warnings():  # a skipped optimizer step before the first one makes torch warn
            warnings.simplefilter("ignore", UserWarning)
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        counts = torch.tensor(
            [
                sum(samples.lengths),
                sum(samples.ended),
                len(samples.lengths),
                sum(j.status == "labelled" for j in judgements),
                sum(j.status == "tie" for j in judgements),
                sum(j.status == "failed" for j in judgements),
                sum(j.consistent is True for j in judgements),
                sum(j.consistent is False for j in judgements),
                sum(lab is not None and same for lab, same in zip(labels, identical, strict=True)),
                len(judgements),
            ],
            device=accelerator.device,
            dtype=torch.float64,
        )
        counts = accelerator.reduce(counts, reduction="sum")
        sums = accelerator.reduce(sums, reduction="sum")
        n_valid = max(1, global_valid)
        pairs = float(counts[9])
        both = float(counts[6] + counts[7])
        values = {
            "loss": float(sums[0]) / n_valid,
            "rewards/chosen": float(sums[1]) / n_valid,
            "rewards/rejected": float(sums[2]) / n_valid,
            "rewards/margin": float(sums[1] - sums[2]) / n_valid,
            "rewards/accuracy": float(sums[3]) / n_valid,
            "kl": float(sums[4] / sums[5]),
            "response/mean_length": float(counts[0] / counts[2]),
            "response/eos_rate": float(counts[1] / counts[2]),
            "annotator/labelled_rate": float(counts[3]) / pairs,
            "annotator/tie_rate": float(counts[4]) / pairs,
            "annotator/failure_rate": float(counts[5]) / pairs,
            "pairs/identical_rate": float(counts[8]) / pairs,
            "pairs/trained": float(global_valid),
        }
        if both:
            values["annotator/position_consistency"] = float(counts[6]) / both
        last_loss = values["loss"]
        lengths_seen.append(values["response/mean_length"])
        for key, value in values.items():
            window[key].append(value)
        bar.update(1)
        if (step + 1) % config.logging_steps == 0 or step + 1 == total_steps:
            logged = {k: sum(v) / len(v) for k, v in window.items()}
            logged["lr"] = scheduler.get_last_lr()[0]
            bar.set_postfix(loss=f"{logged['loss']:.4f}", length=f"{logged['response/mean_length']:.1f}")
            accelerator.log({f"train/{k}": v for k, v in logged.items()}, step=step + 1)
            log.write(step + 1, logged)
            window.clear()
        if (step + 1) % config.save_steps == 0 and step + 1 < total_steps:
            save_checkpoint(accelerator, config.output_dir, step + 1, config.save_total_limit, {"loss": last_loss})
    bar.close()
    edge = max(1, len(lengths_seen) // 10)
    summary = {
        "steps": total_steps,
        "resumed_from_step": start_step,
        "final_train_loss": last_loss,
        "mean_length_first_steps": sum(lengths_seen[:edge]) / edge if lengths_seen else None,
        "mean_length_last_steps": sum(lengths_seen[-edge:]) / edge if lengths_seen else None,
        "annotator": judge.stats.as_dict(),
        "wall_time_s": round(time.perf_counter() - started, 1),
    }
    data_stats = {"prompts": len(prompts), "annotator": type(judge).__name__}
    return finish_training(accelerator, model, tokenizer, public_config(config), template, data_stats, summary)


def run_from_args(config_path: str | None, overrides: list[str]) -> Path:
    config = load_config(OAIFConfig, config_path, parse_overrides(overrides))
    return train_oaif(config)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m aligner_chains.finetune.oaif --config cfg.yaml [--key value ...]`` (also under accelerate launch)."""
    return script_main(run_from_args, __doc__, argv, OAIFConfig)


if __name__ == "__main__":
    raise SystemExit(main())
