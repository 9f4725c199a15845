"""Copy-aware decoding in half precision (issue 15): how often its tokens equal plain greedy decoding's.

    python -m benchmarks.precision           # writes the 'Precision' section of benchmarks/RESULTS.md
    python -m benchmarks.precision --quick   # a seconds-long smoke version (no file written)

For each model and dtype (float32, bfloat16, float16; CPU), plain greedy ``generate`` one request
at a time is the reference. Compared row by row (identical token ids, first differing token):
plain greedy in batches against it, which is what half precision does to plain decoding anyway,
since a batch's padding changes the shapes and so the rounding of every sum; copy-aware decoding
one at a time against plain one at a time; copy-aware against plain over the same batches.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from aligner_chains.backends.local import clear_model_cache
from aligner_chains.core.aligner import Aligner
from aligner_chains.core.generation import GenerationParams
from aligner_chains.testing import build_tiny_model
from benchmarks.results import machine, now, write_section

DTYPES = ("float32", "bfloat16", "float16")
# Tiny random models of families copy-aware decoding runs on (see tests/test_conformance.py for all).
FAMILIES = ("llama", "qwen2", "gemma", "gpt_neox", "opt")
_TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "Paris is the capital of France, and Paris is also its largest city.",
    "Mix flour, water, salt and yeast. Mix again, then bake the bread for thirty minutes.",
    "I can't help with that, but here is a safer alternative: ask a pharmacist.",
    "Contact me at jane.doe@example.com or +1 415-555-0132 after nine.",
    "Hello there, how are you? Hello there, how are you today?",
    "0123456789 and again 0123456789, then 42.",
    "Edit the following answer to make it more helpful and harmless, please.",
)
COMPARISONS = (
    ("plain batched vs plain one at a time", "plain_batched", "plain_single"),
    ("copy-aware vs plain, one at a time", "copy_single", "plain_single"),
    ("copy-aware vs plain, same batches", "copy_batched", "plain_batched"),
)


def tiny_pairs(n: int) -> list[tuple[str, str]]:
    """``n`` question-answer pairs of mixed lengths, some with repeated text the decoder can copy."""
    pairs = []
    for i in range(n):
        answer = " ".join(_TEXTS[(i + j) % len(_TEXTS)] for j in range(1 + i % 3))
        pairs.append((_TEXTS[(3 * i + 1) % len(_TEXTS)][: 8 + 5 * (i % 5)], answer))
    return pairs


def demo_pairs(n: int) -> list[tuple[str, str]]:
    from cookbook.demo_aligner.dataset import build_examples

    return [(r["question"], r["answer"]) for r in build_examples(n, 5, "heldout")]


def run(aligner: Aligner, pairs: list[tuple[str, str]], max_new: int, batch: int) -> tuple[list[list[int]], set[str]]:
    """New token ids per pair (EOS excluded) in batches of ``batch``, and the decoders that ran."""
    params = GenerationParams(max_new_tokens=max_new)
    ids: list[list[int]] = []
    decoders: set[str] = set()
    for start in range(0, len(pairs), batch):
        part = pairs[start : start + batch]
        prompts = [aligner.template.render(q, a) for q, a in part]
        for out in aligner.backend.generate(prompts, params, sources=[a for _, a in part]):
            ids.append(out.token_ids)
            decoders.add(out.stats.get("decoder", "?"))
    return ids, decoders


def agreement(got: list[list[int]], want: list[list[int]]) -> dict[str, Any]:
    """Rows with identical tokens, and where the others first differ (token index)."""
    firsts = []
    for a, b in zip(got, want, strict=True):
        if a != b:
            firsts.append(next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))))
    return {"identical": len(got) - len(firsts), "rows": len(got), "first_differences": sorted(firsts)}


def bench_model(model: str, dtype: str, pairs: list[tuple[str, str]], max_new: int, batch: int) -> dict[str, Any]:
    """The four runs of one model in one dtype, or the error that stopped them."""
    try:
        copy = Aligner.from_pretrained(model, device="cpu", dtype=dtype, micro_batching=False)
        plain = Aligner.from_pretrained(model, device="cpu", dtype=dtype, micro_batching=False, speculative=False)
        runs: dict[str, list[list[int]]] = {}
        decoders: set[str] = set()
        seconds: dict[str, float] = {}
        for name, aligner, size in (
            ("plain_single", plain, 1),
            ("plain_batched", plain, batch),
            ("copy_single", copy, 1),
            ("copy_batched", copy, batch),
        ):
            started = time.perf_counter()
            runs[name], used = run(aligner, pairs, max_new, size)
            seconds[name] = time.perf_counter() - started
            if name.startswith("copy"):
                decoders |= used
    except Exception as exc:  # e.g. a half-precision kernel missing on this CPU
        return {"model": model, "dtype": dtype, "error": f"{type(exc).__name__}: {str(exc)[:160]}"}
    finally:
        clear_model_cache(model)  # only this model: others in the process keep theirs
    result = {"model": model, "dtype": dtype, "decoders": sorted(decoders), "seconds": seconds}
    result["tokens"] = sum(len(row) for row in runs["plain_single"])
    for label, got, want in COMPARISONS:
        result[label] = agreement(runs[got], runs[want])
    return result


def cell(found: dict[str, Any]) -> str:
    text = f"{found['identical']}/{found['rows']}"
    firsts = found["first_differences"]
    if firsts:
        text += f" (first difference at token {firsts[0]}-{firsts[-1]}, median {statistics.median(firsts):g})"
    return text


def totals(results: list[dict[str, Any]], models: list[str]) -> list[dict[str, Any]]:
    """One row per dtype adding up the comparisons of ``models`` (rows that ran)."""
    rows = []
    for dtype in DTYPES:
        ran = [r for r in results if r["model"] in models and r["dtype"] == dtype and "error" not in r]
        if not ran:
            continue
        row: dict[str, Any] = {"model": f"all {len(ran)} tiny models", "dtype": dtype, "seconds": {}}
        row["decoders"] = sorted({d for r in ran for d in r["decoders"]})
        for label, _, _ in COMPARISONS:
            row[label] = {
                "identical": sum(r[label]["identical"] for r in ran),
                "rows": sum(r[label]["rows"] for r in ran),
                "first_differences": sorted(f for r in ran for f in r[label]["first_differences"]),
            }
        rows.append(row)
    return rows


def report(results: list[dict[str, Any]], command: str, settings: str) -> list[str]:
    lines = [
        f"- Date: {now()}",
        f"- Machine: {machine()}; torch {torch.__version__}, {torch.get_num_threads()} torch threads, CPU only",
        f"- Command: `{command}`",
        f"- {settings}",
        "- Each cell: rows whose new token ids are identical, of all rows; for the others, the token index of",
        "  the first difference (range and median). Plain one-at-a-time greedy `generate` is the reference;",
        "  'plain batched' shows what batching alone (left padding, other matmul shapes) does in that dtype.",
        "",
        "| model | dtype | " + " | ".join(label for label, _, _ in COMPARISONS) + " | decoder | plain 1-at-a-time s |",
        "|---|---|" + "---|" * len(COMPARISONS) + "---|---:|",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['dtype']} | failed: {r['error']} |" + " |" * (len(COMPARISONS) + 1))
            continue
        cells = " | ".join(cell(r[label]) for label, _, _ in COMPARISONS)
        seconds = f"{r['seconds']['plain_single']:.1f}" if r["seconds"] else ""
        lines.append(f"| {r['model']} | {r['dtype']} | {cells} | {', '.join(r['decoders'])} | {seconds} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="seconds-long smoke run; RESULTS.md is left alone")
    parser.add_argument("--rows", type=int, default=24, help="question-answer pairs per tiny model")
    parser.add_argument("--demo-rows", type=int, default=48, help="held-out pairs for the demo Aligner")
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # tiny models: one thread is fastest, and steadiest on a shared machine
    families = FAMILIES[:1] if args.quick else FAMILIES
    dtypes = DTYPES[:2] if args.quick else DTYPES
    rows, tiny_new, demo_new = (4, 8, 0) if args.quick else (args.rows, 48, 256)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for family in families:
            path = build_tiny_model(Path(tmp) / family, family, vocab_size=300, hidden_size=64, num_layers=2)
            for dtype in dtypes:
                results.append(
                    {**bench_model(str(path), dtype, tiny_pairs(rows), tiny_new, args.batch), "model": family}
                )
                print(results[-1], file=sys.stderr, flush=True)
    results += totals(results, list(families))
    for dtype in () if args.quick else dtypes:
        found = bench_model("demo", dtype, demo_pairs(args.demo_rows), demo_new, args.batch)
        results.append({**found, "model": "demo Aligner"})
        print(results[-1], file=sys.stderr, flush=True)
    settings = (
        f"Models: tiny random models (`aligner_chains.testing.build_tiny_model`, hidden 64, 2 layers, vocab 300; "
        f"{rows} pairs of mixed lengths, max_new_tokens={tiny_new}) and the shipped demo Aligner "
        f"({args.demo_rows} held-out pairs, max_new_tokens={demo_new}, stops at EOS); greedy; batches of {args.batch}."
    )
    lines = report(results, "python -m benchmarks.precision" + (" --quick" if args.quick else ""), settings)
    print("\n".join(lines))
    if not args.quick:
        write_section("Precision: copy-aware decoding against plain greedy", lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
