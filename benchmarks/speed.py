"""Speed benchmarks of issues 6 and 19: drafting replay, copy-aware decoding, micro-batching, adapter overhead.

    python -m benchmarks.speed            # all, writes the 'Speed' section of benchmarks/RESULTS.md
    python -m benchmarks.speed --quick    # a seconds-long smoke version (no file written)

Anchors are measured in the same run: naive prompt lookup for drafting, plain ``model.generate``
greedy and Hugging Face prompt lookup for decoding, each correction's pass limit (prompt pass, one
per edited region, one to end), one-at-a-time calls for micro-batching, a bare engine call for the
LangChain adapter. `drafting_replay` replays any trace set.
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from aligner_chains.backends.local.drafting import ACCELERATOR_COST, PassCost, PhraseMemory, plan_trees
from aligner_chains.backends.local.inference_thread import run_inference
from aligner_chains.backends.local.speculative import CopyAwareSpeculative
from aligner_chains.core.aligner import Aligner
from benchmarks import gpu
from benchmarks.results import machine, now, write_section

ROOT = Path(__file__).resolve().parents[1]
TRACES = [
    ROOT.parent / "shared" / "data" / "alpaca_eval-aligner-2b-gpt-4-turbo.json",
    ROOT / "tests" / "fixtures" / "alpaca_eval_aligner2b_slice.json",
]


# ----------------------------------------------------------------------------- 1. drafting replay


def replay_naive(prompt: list[int], target: list[int], k: int = 10, max_ngram: int = 3) -> int:
    """Forward passes of Hugging Face-style prompt lookup on a teacher-forced ``target``.

    Each pass drafts the ``k`` tokens after the first earlier match of the last n-gram (n from
    ``max_ngram`` down to 1) in prompt + generated text, and gains the accepted drafts + 1.
    """
    seq: list[int] = []
    first: dict[tuple[int, ...], int] = {}  # n-gram -> its first start in seq

    def extend(tokens: list[int]) -> None:
        for token in tokens:
            seq.append(token)
            for n in range(1, min(max_ngram, len(seq)) + 1):
                first.setdefault(tuple(seq[-n:]), len(seq) - n)

    extend(prompt)
    done, passes = 0, 0
    while done < len(target):
        draft: list[int] = []
        for n in range(min(max_ngram, len(seq)), 0, -1):
            start = first.get(tuple(seq[-n:]))
            if start is not None and start + n < len(seq):
                draft = seq[start + n : start + n + k]
                break
        accepted = 0
        while accepted < len(draft) and done + accepted < len(target) and draft[accepted] == target[done + accepted]:
            accepted += 1
        extend(target[done : done + accepted + 1])
        done += accepted + 1
        passes += 1
    return passes


def replay_copy_aware(
    answer: list[int],
    target: list[int],
    strategy: CopyAwareSpeculative,
    cost: PassCost,
    prompt_tokens: int = 0,
    memory: PhraseMemory | None = None,
) -> tuple[int, int]:
    """Forward passes and verified draft tokens of our drafter on a teacher-forced ``target``, one row.

    The engine's own planning (`plan_trees`, under the cost model ``cost``) and verification
    (`DraftTree.walk`, the model's choice read off ``target``); the prompt pass verifies the first
    draft, as in the engine. ``target`` is then remembered in ``memory``, as the engine does.
    """
    drafter = strategy.drafter
    row = drafter.row(answer, len(target), memory)
    cap = max(1, strategy.block_tokens, cost.free)
    while not row.done:
        first = not row.generated
        trees, _ = plan_trees(drafter, [row], cost, cap, branches=not first, fixed=prompt_tokens if first else 0)
        tree, done = trees[0], len(row.generated)
        path, token = tree.walk(lambda position, tree=tree, done=done: target[done + tree.depth(position)])
        drafter.accept(row, tree, path, token, eos=set())
    if memory is not None:
        memory.add(target)
    return row.passes, row.drafted


# Drafters replayed, as reported: key -> label.
DRAFTERS = {
    "copy_aware": "copy-aware, CPU drafter (answer, copy pointer, phrase memory)",
    "copy_aware_no_memory": "copy-aware, CPU drafter without phrase memory",
    "copy_aware_accelerator": "copy-aware, accelerator cost model (rest-of-answer drafts, draft trees, memory)",
    "copy_aware_accelerator_no_trees": "copy-aware, accelerator cost model, primary draft only",
    "copy_aware_accelerator_no_memory": "copy-aware, accelerator cost model, without phrase memory",
}
# Drafters replayed: (strategy, cost model, memory?). Replayed passes count, not compute, so the CPU drafter
# runs with every draft verified (its adaptive draft length, no width cut), as the figures before issue 19 did.
EVERY_DRAFT_VERIFIED = PassCost(overhead=1 << 30)
# Phrase memory size when a replayed drafter remembers (the engine keeps it off unless asked).
MEMORY_TOKENS = 16384

REPLAYED = {
    "copy_aware": (CopyAwareSpeculative(), EVERY_DRAFT_VERIFIED, True),
    "copy_aware_no_memory": (CopyAwareSpeculative(), EVERY_DRAFT_VERIFIED, False),
    "copy_aware_accelerator": (CopyAwareSpeculative(), ACCELERATOR_COST, True),
    "copy_aware_accelerator_no_trees": (CopyAwareSpeculative(max_candidates=1), ACCELERATOR_COST, True),
    "copy_aware_accelerator_no_memory": (CopyAwareSpeculative(), ACCELERATOR_COST, False),
}


def drafting_replay(items: list[dict[str, Any]], tokenizer: Any) -> dict[str, Any]:
    """Tokens per forward pass of naive prompt lookup and of our drafter, replayed on recorded corrections.

    ``items`` as in ``alpaca_eval-aligner-2b-gpt-4-turbo.json`` (``instruction``, ``original_output``,
    ``output``), rendered with the template Aligner-2B ran with, replayed in order (what the model
    wrote before is in its memory, as in a server). Keys ``naive_tokens_per_pass`` and, per drafter
    of `REPLAYED`, ``<name>_tokens_per_pass`` and ``<name>_drafts_per_pass``: ``copy_aware`` is the
    CPU drafter, ``copy_aware_accelerator`` the accelerator one (rest-of-answer drafts, draft trees).
    """
    from aligner_chains.core.templates import get_template

    template = get_template("aligner-revision")  # the prompt Aligner-2B was run with
    memories = {
        name: PhraseMemory(MEMORY_TOKENS, strategy.drafter.max_ngram) if remember else None
        for name, (strategy, _, remember) in REPLAYED.items()
    }
    tokens = naive = 0
    passes = dict.fromkeys(REPLAYED, 0)
    verified = dict.fromkeys(REPLAYED, 0)
    for item in items:
        prompt = tokenizer(template.render(item["instruction"], item["original_output"]))["input_ids"]
        answer = tokenizer(" " + item["original_output"], add_special_tokens=False)["input_ids"]
        target = tokenizer(" " + item["output"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        tokens += len(target)
        naive += replay_naive(prompt, target)
        for name, (strategy, cost, _) in REPLAYED.items():
            used, drafted = replay_copy_aware(answer, target, strategy, cost, len(prompt), memories[name])
            passes[name] += used
            verified[name] += drafted
    figures: dict[str, Any] = {"traces": len(items), "target_tokens": tokens, "naive_tokens_per_pass": tokens / naive}
    for name in REPLAYED:
        figures[f"{name}_tokens_per_pass"] = tokens / passes[name]
        figures[f"{name}_drafts_per_pass"] = verified[name] / passes[name]
    return figures


def bench_drafting(tokenizer: Any, limit: int | None) -> dict[str, Any]:
    path = next(p for p in TRACES if p.is_file())
    items = json.loads(path.read_text(encoding="utf-8"))[:limit]
    return {**drafting_replay(items, tokenizer), "source": path.name}


# ----------------------------------------------------------------------------- 2. decoding on the demo Aligner


class PassCounter:
    """Counts top-level forward calls of a model."""

    def __init__(self, model: Any) -> None:
        self.calls = 0
        self.handle = model.register_forward_pre_hook(self._hook)

    def _hook(self, *args: Any) -> None:
        self.calls += 1


def hf_generate(aligner: Aligner, pairs: list[tuple[str, str]], batch_size: int, **extra: Any) -> list[str]:
    """Corrections by ``model.generate`` itself on left-padded batches (the anchor), greedy.

    Each batch runs to the room its shortest prompt leaves; every row is then cut at its own room
    (the Aligner's default limit), and Llama's rotary positions make the longer rows' extra steps
    harmless.
    """
    loaded = aligner.backend.loaded
    tokenizer, eos = loaded.tokenizer, loaded.tokenizer.eos_token_id
    texts = []
    for start in range(0, len(pairs), batch_size):
        prompts = [aligner.template.render(q, a) for q, a in pairs[start : start + batch_size]]
        ids = tokenizer(prompts, return_tensors="pt", padding=True)
        rooms = [aligner.backend.max_context - int(n) for n in ids["attention_mask"].sum(-1)]
        # On the thread the decoders use, so that both run on one OpenMP team (see `run_inference`).
        out = run_inference(
            loaded.lock,
            loaded.model.generate,
            **ids,
            do_sample=False,
            max_new_tokens=max(rooms),
            pad_token_id=tokenizer.pad_token_id,
            **extra,
        )
        for row, room in zip(out[:, ids["input_ids"].shape[1] :].tolist(), rooms, strict=True):
            row = row[:room]
            texts.append(aligner.backend.decode(row[: row.index(eos)] if eos in row else row))
    return texts


def edit_limit(tokenizer: Any, answer: str, correction: str) -> int:
    """The fewest forward passes a correction needs: the prompt pass, one per edited region, one to end.

    Edited regions are the non-equal blocks of a token diff of answer and correction (the answer
    tokenised as the decoder drafts it).
    """
    source = tokenizer(" " + answer, add_special_tokens=False)["input_ids"]
    written = tokenizer(" " + correction, add_special_tokens=False)["input_ids"]
    blocks = difflib.SequenceMatcher(None, source, written, autojunk=False).get_opcodes()
    return 2 + sum(1 for kind, *_ in blocks if kind != "equal")


# Copy-aware configurations measured on the demo Aligner: name -> cost model.
COPY_AWARE = {"copy-aware": "cpu", "copy-aware, accelerator cost model": "accelerator"}


def bench_decoding(model: str, n: int, batch_sizes: tuple[int, ...]) -> list[dict[str, Any]]:
    """Wall time, forward passes and output of each decoder; for copy-aware ones also each correction's
    passes against its `edit_limit`. Each copy-aware run starts with an empty phrase memory."""
    from cookbook.demo_aligner.dataset import build_examples

    rows = build_examples(n, 1, "heldout")
    pairs = [(r["question"], r["answer"]) for r in rows]
    spec = Aligner.from_pretrained(model, device="cpu", micro_batching=False)
    counter = PassCounter(spec.backend.loaded.model)
    spec.correct_batch(pairs[:2], batch_size=2)  # warm-up
    limits: list[int] = []
    results = []
    for batch_size in batch_sizes:
        figures: dict[str, Any] = {"batch_size": batch_size, "requests": n}
        outputs = {}
        runs: dict[str, Any] = {
            "plain greedy": lambda size: hf_generate(spec, pairs, size),
            "HF prompt lookup": lambda size: hf_generate(spec, pairs, size, prompt_lookup_num_tokens=10),
        }
        if batch_size > 1:
            del runs["HF prompt lookup"]  # Hugging Face's prompt lookup handles batch size 1 only
        for name, run in runs.items():
            counter.calls = 0
            started = time.perf_counter()
            outputs[name] = run(batch_size)
            figures[name] = {"seconds": time.perf_counter() - started, "passes": counter.calls}
        if not limits:
            limits = [
                edit_limit(spec.backend.tokenizer, a, c)
                for (_, a), c in zip(pairs, outputs["plain greedy"], strict=True)
            ]
        for name, cost_model in COPY_AWARE.items():
            fresh = Aligner.from_pretrained(
                model, device="cpu", micro_batching=False, strategy=CopyAwareSpeculative(cost_model=cost_model)
            )
            counter.calls = 0
            started = time.perf_counter()
            corrections = fresh.correct_batch(pairs, batch_size=batch_size)
            seconds = time.perf_counter() - started
            outputs[name] = [c.corrected for c in corrections]
            row_passes = [c.stats["forward_passes"] for c in corrections]
            unchanged = [p for p, limit in zip(row_passes, limits, strict=True) if limit == 2]
            figures[name] = {
                "seconds": seconds,
                "passes": counter.calls,
                "row_passes": sum(row_passes),
                "limit": sum(limits),
                "unchanged": len(unchanged),
                "unchanged_max_passes": max(unchanged, default=0),
            }
        figures["identical"] = {name: out == outputs["plain greedy"] for name, out in outputs.items()}
        results.append(figures)
    counter.handle.remove()
    return results


# ----------------------------------------------------------------------------- 3. micro-batching


async def _concurrent(aligner: Aligner, pairs: list[tuple[str, str]]) -> float:
    started = time.perf_counter()
    await asyncio.gather(*(aligner.acorrect(q, a) for q, a in pairs))
    return time.perf_counter() - started


async def _arrivals(aligner: Aligner, pairs: list[tuple[str, str]], gaps: list[float]) -> list[float]:
    """Latency of each call when call i starts ``gaps[i]`` seconds after call i - 1 (an open arrival process)."""

    async def one(q: str, a: str, at: float) -> float:
        await asyncio.sleep(at)
        started = time.perf_counter()
        await aligner.acorrect(q, a)
        return time.perf_counter() - started

    starts = [sum(gaps[: i + 1]) for i in range(len(gaps))]
    return list(await asyncio.gather(*(one(q, a, at) for (q, a), at in zip(pairs, starts, strict=True))))


def micro_batched(
    model: str, inflight: bool, max_batch_size: int = 16, max_wait_ms: float = 20, **load: Any
) -> Aligner:
    """An Aligner (loaded with ``load`` options) whose concurrent calls share batches: in flight, or whole
    batches as before in-flight batching."""
    from aligner_chains.core.batching import default_batcher

    loaded = Aligner.from_pretrained(model, micro_batching=False, **load)
    # The backend's one batcher, which every Aligner built on it shares.
    default_batcher(loaded.backend, max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, inflight=inflight)
    return Aligner(loaded.backend, loaded.template, generation=loaded.generation)


def benchmark_pairs(n: int, max_chars: int = 1200) -> list[tuple[str, str]]:
    """``n`` clean and redaction rows of the demo's report split (real answers of models it never trained on,
    some with contacts), of up to ``max_chars``, spread evenly over their lengths as a server's requests are."""
    from cookbook.demo_aligner.real import heldout_sets

    rows = [r for r in heldout_sets("report") if r["kind"] in ("clean", "redact") and len(r["answer"]) <= max_chars]
    rows.sort(key=lambda r: (len(r["answer"]), r["question"]))
    picked = [rows[i * (len(rows) - 1) // max(1, n - 1)] for i in range(n)]
    random.Random(0).shuffle(picked)  # arrival order is not length order
    return [(r["question"], r["answer"]) for r in picked]


def oneline_pairs(n: int) -> list[tuple[str, str]]:
    """``n`` rows of the demo's v1 held-out set (one-line synthetic text), on which issue 19 was measured."""
    from cookbook.demo_aligner.dataset import build_examples

    return [(r["question"], r["answer"]) for r in build_examples(n, 7, "heldout")]


MICRO_SETS = {
    "real": (
        "real answers of the demo's report split (models it never trained on, some with contacts), of varied length",
        benchmark_pairs,
    ),
    "one-line": ("the demo's v1 held-out set (one-line synthetic text, what issue 19 was measured on)", oneline_pairs),
}


def pass_costs(aligner: Aligner, repeats: int = 5) -> dict[str, float]:
    """What a forward pass of ``aligner``'s model costs on this machine, at best: seconds per position of a
    dense, compute-bound pass (16 rows x 128 positions, no cache) and the fixed cost of a pass (one row,
    one position, 150 cached)."""
    from transformers import DynamicCache

    model = aligner.backend.loaded.model
    dense = torch.randint(5, model.config.vocab_size, (16, 128))

    def timed(fn: Any) -> float:  # on the inference thread, where the decoders run
        return run_inference(aligner.backend.loaded.lock, gpu.timed, fn, torch.device("cpu"), repeats)[0]

    def step() -> None:
        cache = DynamicCache(config=model.config)
        model(input_ids=dense[:1, :150], past_key_values=cache, logits_to_keep=1)
        for _ in range(10):
            model(input_ids=dense[:1, :1], past_key_values=cache, logits_to_keep=1)

    per_position = timed(lambda: model(input_ids=dense, logits_to_keep=1)) / dense.numel()
    prefill = timed(lambda: model(input_ids=dense[:1, :150], past_key_values=DynamicCache(config=model.config)))
    return {"per_position_s": per_position, "per_pass_s": max(0.0, timed(step) - prefill) / 10}


def batching_bound(stats: list[dict[str, Any]], floor_s: float, costs: dict[str, float]) -> float:
    """The least wall time of any batched schedule of the corrections whose one-at-a-time ``stats`` these are:
    their prompt passes batched (``floor_s``, measured), every position the copy-aware decoder verified
    after them at the dense per-position cost, and the fixed cost of each pass the row with most passes
    needs after its prompt pass (passes run one after another). No padding, no other overhead."""
    verified = sum(row["draft_tokens"] + row["forward_passes"] - 1 for row in stats)
    passes = max(row["forward_passes"] for row in stats) - 1
    return floor_s + verified * costs["per_position_s"] + passes * costs["per_pass_s"]


def bench_micro_batching(
    model: str, n: int, kind: str = "real", batch_sizes: tuple[int, ...] = (16, 32), repeats: int = 3
) -> dict[str, Any]:
    """Wall time of ``n`` concurrent `acorrect` calls (of `MICRO_SETS` ``kind``), micro-batched in whole
    batches and in flight, against the same calls one at a time; then latency when the calls arrive over
    time instead of all at once. Every figure is the best of ``repeats`` interleaved runs (this machine's
    timings vary by tens of percent from run to run)."""
    label, make_pairs = MICRO_SETS[kind]
    pairs = make_pairs(n)
    singles = {
        "one at a time, copy-aware": Aligner.from_pretrained(model, device="cpu", micro_batching=False),
        "one at a time, plain greedy": Aligner.from_pretrained(
            model, device="cpu", micro_batching=False, speculative=False
        ),
    }
    batched = {
        f"micro-batched, {'in flight' if inflight else 'whole batches'}, max_batch_size={size}": micro_batched(
            model, inflight, size, device="cpu"
        )
        for size in batch_sizes
        for inflight in (False, True)
    }
    for aligner in singles.values():
        aligner.correct(*pairs[0])  # warm-up
    for aligner in batched.values():
        asyncio.run(_concurrent(aligner, pairs[:2]))
    times: dict[str, float] = {}
    longest = float("inf")
    stats: list[dict[str, Any]] = []
    for _ in range(repeats):
        for name, single in singles.items():
            each = []
            for q, a in pairs:
                started = time.perf_counter()
                correction = single.correct(q, a)
                each.append(time.perf_counter() - started)
                if name == "one at a time, copy-aware" and len(stats) < len(pairs):
                    stats.append(correction.stats)
            times[name] = min(times.get(name, float("inf")), sum(each))
            if name == "one at a time, copy-aware":
                longest = min(longest, max(each))
        for name, aligner in batched.items():
            times[name] = min(times.get(name, float("inf")), asyncio.run(_concurrent(aligner, pairs)))
    # The floor of any batched schedule on a compute-bound machine: the prompts' own pass, batched.
    floor = singles["one at a time, copy-aware"]
    floor_s = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        floor.correct_batch(pairs, batch_size=n, max_new_tokens=1)
        floor_s = min(floor_s, time.perf_counter() - started)
    costs = pass_costs(floor)
    # Arrivals over time: exponential gaps whose mean is 1.5x the in-flight batch's time per request (so the
    # load is below what it sustains), the same gaps for both modes.
    size = batch_sizes[0]
    mean_gap = 1.5 * times[f"micro-batched, in flight, max_batch_size={size}"] / n
    rng = random.Random(19)
    gaps = [0.0, *(rng.expovariate(1 / mean_gap) for _ in range(n - 1))]
    arrivals: dict[str, dict[str, float]] = {}
    for _ in range(repeats):
        for inflight in (False, True):
            aligner = batched[f"micro-batched, {'in flight' if inflight else 'whole batches'}, max_batch_size={size}"]
            latencies = sorted(asyncio.run(_arrivals(aligner, pairs, gaps)))
            figures = {
                "p50_s": statistics.median(latencies),
                "p95_s": latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))],
                "max_s": latencies[-1],
            }
            best = arrivals.setdefault("in flight" if inflight else "whole batches", figures)
            for key, value in figures.items():
                best[key] = min(best[key], value)
    return {
        "label": label,
        "requests": n,
        "seconds": times,
        "prompt_pass_floor": floor_s,
        "pass_costs": costs,
        "bound_s": batching_bound(stats, floor_s, costs),
        "longest_s": longest,
        "arrivals": arrivals,
        "mean_gap_s": mean_gap,
        "arrival_batch_size": size,
    }


# ----------------------------------------------------------------------------- 4. one inference thread


def bench_thread_teams(model: str, n: int, repeats: int) -> dict[str, Any]:
    """``n`` one-line corrections one at a time, with every pass on the inference thread (as shipped), and
    while a second live thread holds an OpenMP team of its own (it ran one matmul and waits): what each
    caller thread that ran the model itself caused before the inference thread. Best of ``repeats``."""
    import threading

    aligner = Aligner.from_pretrained(model, device="cpu", micro_batching=False)
    pairs = oneline_pairs(n)
    aligner.correct(*pairs[0])

    def run_all() -> float:
        started = time.perf_counter()
        for q, a in pairs:
            aligner.correct(q, a)
        return time.perf_counter() - started

    def beside_another_team() -> float:
        release, ready = threading.Event(), threading.Event()

        def other_thread() -> None:
            x = torch.randn(256, 256)
            _ = x @ x  # this thread now has its own OpenMP team, alive while the thread is
            ready.set()
            release.wait()

        holder = threading.Thread(target=other_thread, daemon=True)
        holder.start()
        ready.wait()
        try:
            return run_all()
        finally:
            release.set()
            holder.join()  # its team goes with it

    alone = beside = float("inf")
    for _ in range(repeats):  # interleaved, so drift on a shared machine hits both alike
        alone = min(alone, run_all())
        beside = min(beside, beside_another_team())
    return {"requests": n, "one_team_s": alone, "two_teams_s": beside}


# ----------------------------------------------------------------------------- 5. adapter overhead


def bench_runnable_overhead(model: str, repeats: int) -> dict[str, Any]:
    from aligner_chains.langchain import AlignerRunnable

    aligner = Aligner.from_pretrained(model, device="cpu", micro_batching=False)
    runnable = AlignerRunnable(aligner)
    q, a = "How can I reach you?", "Write to me at sam.lee@example.org or call 555-201-3344 on weekdays."
    aligner.correct(q, a)
    runnable.invoke({"question": q, "answer": a})
    bare, wrapped = [], []
    for _ in range(repeats):  # interleaved, so drifts in machine load hit both alike
        started = time.perf_counter()
        aligner.correct(q, a)
        bare.append(time.perf_counter() - started)
        started = time.perf_counter()
        runnable.invoke({"question": q, "answer": a})
        wrapped.append(time.perf_counter() - started)
    return {
        "repeats": repeats,
        "bare_ms": statistics.median(bare) * 1e3,
        "runnable_ms": statistics.median(wrapped) * 1e3,
    }


# ----------------------------------------------------------------------------- report


def report(
    draft: dict[str, Any],
    decoding: list[dict[str, Any]],
    micro: list[dict[str, Any]],
    teams: dict[str, Any],
    overhead: dict[str, Any],
    command: str,
    model: str,
) -> list[str]:
    lines = [
        f"- Date: {now()}",
        f"- Machine: {machine()}; torch {torch.__version__}, {torch.get_num_threads()} torch threads, CPU only",
        f"- Command: `{command}`",
        f"- Model: `{model}` (the shipped demo Aligner unless stated), greedy; no GPU was lent to this session.",
        "",
        f"### 1. Drafting replay ({draft['traces']} real Aligner-2B traces, `{draft['source']}`, "
        f"{draft['target_tokens']} correction tokens, the demo Aligner's byte-level BPE tokenizer)",
        "",
        "Teacher-forced replay (`benchmarks.speed.drafting_replay`) in the traces' order, so the phrase",
        "memory holds the corrections replayed before, as in a server. Passes are counted, not compute: the",
        "CPU drafter's drafts (its adaptive draft length, 8 to 24) are all verified here.",
        "",
        "| drafter | tokens per forward pass | vs naive | drafts verified per pass |",
        "|---|---:|---:|---:|",
        f"| naive prompt lookup (first match, 10 drafts; the anchor) | {draft['naive_tokens_per_pass']:.2f} | "
        "1.00x | |",
    ]
    for key, label in DRAFTERS.items():
        rate = draft[f"{key}_tokens_per_pass"]
        lines.append(
            f"| {label} | {rate:.2f} | {rate / draft['naive_tokens_per_pass']:.2f}x | "
            f"{draft[f'{key}_drafts_per_pass']:.0f} |"
        )
    lines += [
        "",
        "### 2. Demo Aligner decoding (held-out set)",
        "",
        "Wall times are this CPU's. The accelerator cost model's row shows its passes on the same model;",
        "its wall time here is not what an accelerator would see (it verifies whole answers per pass).",
        "",
        "| batch | method | forward passes | wall s | passes vs plain | speed-up vs plain | identical to plain |",
        "|---:|---|---:|---:|---:|---:|---|",
    ]
    for fig in decoding:
        base = fig["plain greedy"]
        for name in ("plain greedy", "HF prompt lookup", *COPY_AWARE):
            if name not in fig:
                continue
            f = fig[name]
            lines.append(
                f"| {fig['batch_size']} | {name} | {f['passes']} | {f['seconds']:.2f} | "
                f"{base['passes'] / f['passes']:.2f}x fewer | {base['seconds'] / f['seconds']:.2f}x | "
                f"{fig['identical'][name]} |"
            )
    lines += [
        "",
        "Forward passes per correction against the limit (the prompt pass, one per edited region of a token",
        "diff of answer and correction, one to end: `benchmarks.speed.edit_limit`); a row's passes are those",
        "of the batch while the row was in it.",
        "",
        "| batch | method | passes (all corrections) | limit | passes / limit | unchanged answers | "
        "most passes of an unchanged one |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for fig in decoding:
        for name in COPY_AWARE:
            f = fig[name]
            lines.append(
                f"| {fig['batch_size']} | {name} | {f['row_passes']} | {f['limit']} | "
                f"{f['row_passes'] / f['limit']:.2f} | {f['unchanged']} | {f['unchanged_max_passes']} |"
            )
    lines += [
        "",
        f"### 3. Micro-batching ({micro[0]['requests']} concurrent `acorrect` calls, `max_wait_ms=20`)",
        "",
        "Each figure is the best of three interleaved runs (timings here vary by tens of percent between runs).",
        "Whole batches: requests that arrive while a batch decodes wait for all of it (before in-flight",
        "batching); in flight: they join the running batch at its next pass, and each leaves when done.",
    ]
    for figures in micro:
        lines += micro_report(figures)
    lines += [
        "",
        "### 4. One inference thread",
        "",
        f"{teams['requests']} one-line corrections one at a time (best of the runs): every forward pass on the "
        "process's inference thread, as shipped, against the same while a second live thread holds an OpenMP "
        "team of its own, as every caller thread that ran the model did before (a server's request threads, "
        "the micro-batcher's worker next to a direct call).",
        "",
        "| threads with an OpenMP team | wall s | vs one |",
        "|---|---:|---:|",
        f"| one (the inference thread) | {teams['one_team_s']:.2f} | 1.00x |",
        f"| two | {teams['two_teams_s']:.2f} | {teams['two_teams_s'] / teams['one_team_s']:.2f}x |",
        "",
        f"### 5. `AlignerRunnable` overhead (median of {overhead['repeats']} interleaved calls)",
        "",
        "| call | ms | overhead |",
        "|---|---:|---:|",
        f"| bare `Aligner.correct` | {overhead['bare_ms']:.1f} | |",
        f"| `AlignerRunnable.invoke` | {overhead['runnable_ms']:.1f} | "
        f"{(overhead['runnable_ms'] / overhead['bare_ms'] - 1) * 100:+.1f} % |",
        "",
        "### 6. GPU",
        "",
        "Measured by `python -m benchmarks.gpu` (section GPU decoding) on a machine with CUDA.",
    ]
    return lines


def micro_report(micro: dict[str, Any]) -> list[str]:
    """Section 3's tables for one request set."""
    lines = [
        "",
        f"#### On {micro['label']}",
        "",
        "| mode | wall s | throughput vs one at a time (copy-aware) | vs one at a time (plain greedy) |",
        "|---|---:|---:|---:|",
    ]
    anchor, plain = micro["seconds"]["one at a time, copy-aware"], micro["seconds"]["one at a time, plain greedy"]
    lines += [f"| {name} | {t:.2f} | {anchor / t:.2f}x | {plain / t:.2f}x |" for name, t in micro["seconds"].items()]
    floor = micro["prompt_pass_floor"]
    lines += [
        f"| prompt passes alone (1 new token), one batch | {floor:.2f} | {anchor / floor:.2f}x (ceiling) | "
        f"{plain / floor:.2f}x (ceiling) |",
        "",
        "The last row is the floor of any batched schedule: every prompt must pass through the model once,",
        "and on a compute-bound CPU batching saves only the per-pass overhead of that work. Its ratio to the",
        "one-at-a-time run is the most micro-batching could gain on this machine, before a token is decoded.",
        f"Another bound: the longest correction alone took {micro['longest_s']:.2f} s (copy-aware, one at a "
        f"time), and no schedule ends before its own passes do: at most {anchor / micro['longest_s']:.2f}x.",
        f"A tighter bound (`batching_bound`): the prompt passes batched, plus every position the copy-aware "
        f"decoder verified one at a time at the cost of a dense pass ({micro['pass_costs']['per_position_s'] * 1e3:.3f}"
        f" ms per position), plus the fixed cost of a pass ({micro['pass_costs']['per_pass_s'] * 1e3:.2f} ms) for "
        f"each decoding pass of the row with most: {micro['bound_s']:.2f} s, at most "
        f"{anchor / micro['bound_s']:.2f}x; no padding, no rejected work beyond these drafts, no call overhead.",
        "",
        f"Arrivals over time: the same {micro['requests']} calls, started at exponential gaps of mean "
        f"{micro['mean_gap_s']:.2f} s (the same gaps for both), `max_batch_size={micro['arrival_batch_size']}`.",
        "",
        "| mode | p50 latency s | p95 latency s | max s |",
        "|---|---:|---:|---:|",
    ]
    lines += [
        f"| {mode} | {f['p50_s']:.2f} | {f['p95_s']:.2f} | {f['max_s']:.2f} |" for mode, f in micro["arrivals"].items()
    ]
    whole, flight = micro["arrivals"]["whole batches"], micro["arrivals"]["in flight"]
    return [
        *lines,
        "",
        f"In flight against whole batches: p95 {flight['p95_s'] / whole['p95_s']:.2f}x, "
        f"p50 {flight['p50_s'] / whole['p50_s']:.2f}x.",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo")
    parser.add_argument("--quick", action="store_true", help="seconds-long smoke run; RESULTS.md is left alone")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    quick = args.quick
    aligner = Aligner.from_pretrained(args.model, device="cpu")
    draft = bench_drafting(aligner.backend.tokenizer, 20 if quick else None)
    decoding = bench_decoding(args.model, 4 if quick else 48, (1, 8))
    micro = [
        bench_micro_batching(args.model, 8 if quick else 32, kind, repeats=1 if quick else 3) for kind in MICRO_SETS
    ]
    teams = bench_thread_teams(args.model, 8 if quick else 32, 1 if quick else 3)
    overhead = bench_runnable_overhead(args.model, 3 if quick else 40)
    lines = report(
        draft,
        decoding,
        micro,
        teams,
        overhead,
        "python -m benchmarks.speed" + (" --quick" if quick else ""),
        args.model,
    )
    print("\n".join(lines))
    if not quick:
        write_section("Speed", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
