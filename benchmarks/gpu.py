"""GPU decoding benchmark (issue 6, item 5): a Llama-shaped model of about 1B parameters, random weights.

    python -m benchmarks.gpu           # needs CUDA; bf16; figures into benchmarks/RESULTS.md
    python -m benchmarks.gpu --tiny    # seconds-long CPU smoke run of the same code; RESULTS.md left alone

Decode throughput at batch 1, 8 and 32 of plain `generate` (the anchor), of the engine's copy-aware
decoder with an unrelated source (little to copy: its cost over the anchor) and on a copy task shaped like the
demo's (the source is the model's own greedy continuation with a few edits, as an Aligner's answer
is mostly its correction). Decode tokens/s excludes the prompt pass (time for N tokens minus time
for one). At batch 1 each decoding pass reads every weight once, so passes/s is bounded by memory
bandwidth / weight bytes; the bandwidth is measured here with a device-to-device copy.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from aligner_chains.backends.local.speculative import CopyAwareSpeculative
from aligner_chains.core.generation import GenerationParams
from benchmarks.results import now, write_section

#: Llama 3.2 1B's shape (1.24B parameters with tied embeddings).
LLAMA_1B = {
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "tie_word_embeddings": True,
    "max_position_embeddings": 4096,
}
#: The same code path in seconds on a CPU.
TINY = {
    **LLAMA_1B,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 512,
}
PAD, EOS = 0, 1  # EOS is never produced: its logit is pushed down, so every row decodes all N tokens


def build_model(shape: dict[str, Any], device: torch.device, dtype: torch.dtype) -> Any:
    """A randomly initialised Llama of ``shape`` on ``device``; nothing is downloaded."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**shape, pad_token_id=PAD, bos_token_id=2, eos_token_id=EOS)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype).eval()
    with torch.no_grad():
        model.lm_head.weight[EOS].zero_()  # tied: zero embedding for EOS gives it a zero logit
    model.generation_config.eos_token_id = None
    return model


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, repeats: int) -> tuple[float, Any]:
    """Fastest of ``repeats`` runs (after one warm-up), and the last result."""
    result = fn()
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        started = time.perf_counter()
        result = fn()
        sync(device)
        best = min(best, time.perf_counter() - started)
    return best, result


def memory_bandwidth(device: torch.device, n_bytes: int = 1 << 30) -> float | None:
    """Achievable device memory bandwidth in bytes/s (a copy reads and writes ``n_bytes``); None on CPU."""
    if device.type != "cuda":
        return None
    src = torch.empty(n_bytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    seconds, _ = timed(lambda: dst.copy_(src), device, 5)
    return 2 * n_bytes / seconds


def generate_plain(model: Any, prompts: torch.Tensor, n: int) -> torch.Tensor:
    mask = torch.ones_like(prompts)
    out = model.generate(
        input_ids=prompts, attention_mask=mask, max_new_tokens=n, do_sample=False, pad_token_id=PAD, eos_token_id=None
    )
    return out[:, prompts.shape[1] :]


def generate_copy_aware(model: Any, prompts: torch.Tensor, n: int, sources: list[list[int]]) -> tuple[Any, Any]:
    result = CopyAwareSpeculative().decode(
        model,
        prompts,
        torch.ones_like(prompts),
        GenerationParams(max_new_tokens=n),
        eos_token_ids=[EOS],
        pad_token_id=PAD,
        sources=sources,
    )
    return result.tokens[:, :n], result.stats


def edited(tokens: list[int], vocab: int, every: int = 40) -> list[int]:
    """The continuation with one token replaced every ``every`` tokens: a correction that mostly copies."""
    out = list(tokens)
    for i in range(every // 2, len(out), every):
        out[i] = 3 + (out[i] + 7) % (vocab - 3)
    return out


def bench_batch(model: Any, batch: int, prompt_len: int, n: int, repeats: int) -> dict[str, Any]:
    device, vocab = model.device, model.config.vocab_size
    generator = torch.Generator().manual_seed(batch)
    prompts = torch.randint(3, vocab, (batch, prompt_len), generator=generator).to(device)
    rows: dict[str, Any] = {"batch": batch}
    with torch.inference_mode():
        t_prompt, _ = timed(lambda: generate_plain(model, prompts, 1), device, repeats)
        t_plain, plain = timed(lambda: generate_plain(model, prompts, n), device, repeats)
        reference = plain.tolist()
        rows["plain"] = batch * (n - 1) / max(t_plain - t_prompt, 1e-9)
        free = [torch.randint(3, vocab, (n,), generator=generator).tolist() for _ in range(batch)]
        t_free, (free_out, _) = timed(lambda: generate_copy_aware(model, prompts, n, free), device, repeats)
        rows["copy-aware, unrelated source"] = batch * (n - 1) / max(t_free - t_prompt, 1e-9)
        copy = [edited(ids, vocab) for ids in reference]
        t_copy, (copy_out, stats) = timed(lambda: generate_copy_aware(model, prompts, n, copy), device, repeats)
        rows["copy-aware, copy task"] = batch * (n - 1) / max(t_copy - t_prompt, 1e-9)
    rows["passes (copy task, mean per row)"] = sum(s["forward_passes"] for s in stats) / batch
    rows["identical rows"] = sum(
        a == r and b == r for a, b, r in zip(free_out.tolist(), copy_out.tolist(), reference, strict=True)
    )
    rows["plain decode passes/s"] = (n - 1) / max(t_plain - t_prompt, 1e-9)
    if device.type == "cuda":
        rows["peak GiB"] = torch.cuda.max_memory_allocated(device) / 2**30
    return rows


def report(results: list[dict[str, Any]], model: Any, bandwidth: float | None, args: argparse.Namespace) -> list[str]:
    params = sum(p.numel() for p in model.parameters())
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    device = model.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    bound = f"{bandwidth / weight_bytes:,.0f}" if bandwidth else "n/a"
    lines = [
        f"- Date: {now()}",
        f"- Machine: {name}; torch {torch.__version__}",
        f"- Command: `python -m benchmarks.gpu{' --tiny' if args.tiny else ''}`",
        f"- Model: Llama-shaped, {params / 1e6:,.1f}M parameters, random weights, {model.dtype}; prompts of "
        f"{args.prompt_len} random tokens, {args.new_tokens} new tokens per row, greedy, fastest of {args.repeats}.",
        f"- Memory bandwidth (measured copy): {bandwidth / 1e9:,.0f} GB/s; weights {weight_bytes / 1e9:.2f} GB, so "
        f"at most {bound} decoding passes/s at batch 1."
        if bandwidth
        else "- Memory bandwidth: not measured (CPU run).",
        "",
        "| batch | plain `generate` tok/s | copy-aware, unrelated source | copy-aware, copy task | ratio (copy task) "
        "| passes per row (copy task) | plain passes/s | identical rows | peak GiB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['batch']} | {r['plain']:,.0f} | {r['copy-aware, unrelated source']:,.0f} "
            f"| {r['copy-aware, copy task']:,.0f} | {r['copy-aware, copy task'] / r['plain']:.2f}x "
            f"| {r['passes (copy task, mean per row)']:.1f} | {r['plain decode passes/s']:,.0f} "
            f"| {r['identical rows']}/{r['batch']} | {r.get('peak GiB', float('nan')):.1f} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny model on CPU, seconds; RESULTS.md is left alone")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if args.tiny:
        device, dtype, shape = torch.device("cpu"), torch.float32, TINY
        args.batches, args.prompt_len, args.new_tokens, args.repeats = [1, 4], 16, 24, 1
    elif torch.cuda.is_available():
        device, dtype, shape = torch.device("cuda"), torch.bfloat16, LLAMA_1B
    else:
        print("No CUDA device: run with --tiny for the CPU smoke version.", file=sys.stderr)
        return 2
    model = build_model(shape, device, dtype)
    bandwidth = memory_bandwidth(device)
    results = [bench_batch(model, b, args.prompt_len, args.new_tokens, args.repeats) for b in args.batches]
    lines = report(results, model, bandwidth, args)
    print("\n".join(lines))
    if not args.tiny:
        write_section("GPU decoding", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
