"""Aligner bootstrapping: an Aligner's corrections of a model's answers train that model ("Model -> Model+ -> Model++").

Each round: the policy answers the prompts, the Aligner corrects the answers, every changed answer
gives a correction triple (the correction preferred over the answer), and DPO on those pairs turns
the policy into the next round's policy. Rounds already finished in ``output_dir`` are reused, so an
interrupted run resumes at the round it stopped in (and inside it, at the DPO checkpoint).
"""

from __future__ import annotations

import gc
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aligner_chains.core.errors import ConfigError
from aligner_chains.finetune.annotators import change_amount
from aligner_chains.finetune.config import DPOConfig, load_config
from aligner_chains.jobs import write_atomic

ROUND_FILE = "round.json"
SUMMARY_FILE = "bootstrap.json"


@dataclass
class RoundStats:
    """What one round saw and did. ``change_rate`` and ``mean_change`` (share of each answer the Aligner
    rewrote) falling from round to round is the policy learning what the Aligner would write."""

    round: int
    policy: str
    prompts: int
    pairs: int
    unchanged: int
    failed: int
    change_rate: float
    mean_change: float
    mean_answer_words: float
    mean_correction_words: float
    output: str | None
    dpo: dict[str, Any] = field(default_factory=dict)


@dataclass
class BootstrapResult:
    rounds: list[RoundStats]
    final_model: Path


def generate_answers(
    policy: str | Path,
    prompts: Sequence[str],
    *,
    prompt_format: str = "{prompt}",
    max_new_tokens: int = 128,
    do_sample: bool = False,
    temperature: float = 1.0,
    batch_size: int = 16,
    device: str = "auto",
    seed: int | None = None,
) -> list[str]:
    """The policy's answers to ``prompts`` (batched generation, left-padded; weights freed afterwards)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from aligner_chains.backends.local.loading import resolve_device
    from aligner_chains.core.model_files import resolve_model_path
    from aligner_chains.finetune.logprobs import sample_completions

    path = resolve_model_path(str(policy))
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    target = resolve_device(device)
    model = AutoModelForCausalLM.from_pretrained(str(path), use_safetensors=True).to(target)
    if seed is not None:
        torch.manual_seed(seed)
    answers: list[str] = []
    for start in range(0, len(prompts), batch_size):
        chunk = [prompt_format.replace("{prompt}", p) for p in prompts[start : start + batch_size]]
        samples = sample_completions(
            model,
            tokenizer,
            chunk,
            num_return_sequences=1,
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            temperature=temperature,
            device=target,
        )
        answers.extend(samples.texts)
    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return answers


def bootstrap(
    policy: str | Path,
    aligner: Any,
    prompts: Sequence[str],
    rounds: int = 1,
    *,
    output_dir: str | Path = "runs/bootstrap",
    dpo: dict[str, Any] | None = None,
    prompt_format: str = "{prompt}",
    max_new_tokens: int = 128,
    do_sample: bool = False,
    temperature: float = 1.0,
    batch_size: int = 16,
    aligner_options: dict[str, Any] | None = None,
    seed: int = 0,
) -> BootstrapResult:
    """Improve ``policy`` with ``aligner``'s corrections of its own answers, ``rounds`` times.

    ``policy``: a causal LM (path or hub id). ``aligner``: an `Aligner`, a path or ``"demo"``.
    ``dpo``: `DPOConfig` fields for each round's training (``learning_rate``, ``beta``, ``lora``,
    ``num_epochs``, ...); ``base_model``, ``train_file`` and ``output_dir`` are set per round.
    ``aligner_options``: generation settings for the corrections (e.g. ``max_new_tokens``).
    Answers are greedy unless ``do_sample`` (sampling is seeded by ``seed`` and the round number).
    Stops early when the Aligner changes no answer.
    """
    from aligner_chains.core import resolve_aligner
    from aligner_chains.finetune.dpo import train_dpo

    if rounds < 1:
        raise ConfigError(f"rounds must be >= 1, got {rounds}.")
    prompts = list(prompts)
    if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise ConfigError("bootstrap needs a non-empty list of non-empty prompt strings.")
    overrides = dict(dpo or {})
    taken = sorted({"base_model", "train_file", "output_dir", "data_format", "prompt_format"} & set(overrides))
    if taken:
        raise ConfigError(f"dpo settings {taken} are set by bootstrap itself; remove them.")
    lora = overrides.get("lora")
    if lora is not None and not dict(lora).get("merge_on_export", True):
        raise ConfigError("bootstrap needs lora.merge_on_export=True: each round's model is the next round's base.")
    corrector = resolve_aligner(aligner)
    root = Path(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    current = str(policy)
    history: list[RoundStats] = []
    for number in range(1, rounds + 1):
        folder = root / f"round-{number}"
        record = folder / ROUND_FILE
        if record.is_file():  # finished earlier: reuse it
            stats = RoundStats(**json.loads(record.read_text(encoding="utf-8")))
        else:
            folder.mkdir(parents=True, exist_ok=True)
            stats = _run_round(
                number, current, corrector, prompts, folder, overrides, prompt_format, train_dpo,
                max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature,
                batch_size=batch_size, aligner_options=aligner_options or {}, seed=seed + number,
            )  # fmt: skip
            write_atomic(record, json.dumps(asdict(stats), indent=2) + "\n")  # its presence marks the round done
        history.append(stats)
        write_atomic(root / SUMMARY_FILE, json.dumps([asdict(s) for s in history], indent=2) + "\n")
        if stats.output is None:
            break
        current = stats.output
    return BootstrapResult(rounds=history, final_model=Path(current))


def _run_round(
    number: int,
    policy: str,
    aligner: Any,
    prompts: list[str],
    folder: Path,
    overrides: dict[str, Any],
    prompt_format: str,
    train_dpo: Any,
    *,
    max_new_tokens: int,
    do_sample: bool,
    temperature: float,
    batch_size: int,
    aligner_options: dict[str, Any],
    seed: int,
) -> RoundStats:
    answers = generate_answers(
        policy,
        prompts,
        prompt_format=prompt_format,
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        temperature=temperature,
        batch_size=batch_size,
        seed=seed,
    )
    corrections = aligner.correct_batch(
        list(zip(prompts, answers, strict=True)), batch_size, on_error="passthrough", **aligner_options
    )
    triples, unchanged, failed, changes = [], 0, 0, []
    for prompt, answer, c in zip(prompts, answers, corrections, strict=True):
        if c.finish_reason in ("error", "skipped") or not c.corrected.strip():
            failed += 1  # no correction to learn from (failed, or an empty answer the Aligner skips)
            continue
        changes.append(change_amount(answer, c.corrected))
        if c.corrected.strip() == answer.strip():
            unchanged += 1
        else:
            triples.append({"question": prompt, "answer": answer, "correction": c.corrected})
    data = folder / "corrections.jsonl"
    write_atomic(data, "".join(json.dumps(t, ensure_ascii=False) + "\n" for t in triples))
    judged = len(prompts) - failed

    def words(texts: list[str]) -> float:
        return sum(len(t.split()) for t in texts) / len(texts) if texts else 0.0

    stats = RoundStats(
        round=number,
        policy=policy,
        prompts=len(prompts),
        pairs=len(triples),
        unchanged=unchanged,
        failed=failed,
        change_rate=len(triples) / judged if judged else 0.0,
        mean_change=sum(changes) / len(changes) if changes else 0.0,
        mean_answer_words=words(answers),
        mean_correction_words=words([c.corrected for c in corrections if c.finish_reason not in ("error", "skipped")]),
        output=None,
    )
    if not triples:
        return stats
    config = load_config(
        DPOConfig,
        None,
        {
            **overrides,
            "base_model": policy,
            "train_file": str(data),
            "data_format": "triples",
            "prompt_format": prompt_format,
            "output_dir": str(folder / "dpo"),
            "seed": overrides.get("seed", seed),
        },
    )
    out = train_dpo(config)
    summary = json.loads((out / "aligner_config.json").read_text(encoding="utf-8")).get("summary", {})
    stats.output = str(out)
    stats.dpo = summary
    return stats
