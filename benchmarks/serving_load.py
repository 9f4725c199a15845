"""Serving load benchmark: N concurrent requests to the Aligner server and to the correcting proxy, over loopback.

    python -m benchmarks.serving_load                     # 200 concurrent requests per scenario, tiny model
    python -m benchmarks.serving_load --requests 50 --no-write

Scenarios (each: a few warm-up requests, then all requests at once; every reply is checked against its
request, so cross-talk counts as an error):

- ``server /v1/corrections``: native corrections (``aligner.acorrect``, micro-batched where the core does it:
  in flight with copy-aware decoding), and the same with whole micro-batches, as before in-flight batching;
- ``server /v1/completions via Aligner.from_server``: the remote backend's path (raw prompt completions);
- ``proxy /v1/chat/completions``: the correcting proxy in front of a fake OpenAI upstream (also on loopback),
  a fifth of the requests streamed.

The model is a tiny random Llama built on the spot (or ``--model PATH``), so the numbers measure the
serving stack (HTTP, queueing, batching, a short generation), not a real Aligner's speed. Servers run in
uvicorn threads of this process, next to the asyncio client. Results replace the ``## Serving load``
section of ``benchmarks/RESULTS.md`` (other sections are kept).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from benchmarks.results import machine, now
from benchmarks.results import write_section as write_results_section

SECTION = "## Serving load"
CORRECTIONS = "server /v1/corrections"
WHOLE = "server /v1/corrections, whole micro-batches (before in-flight batching)"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


async def run_load(n: int, call: Callable[[int], Awaitable[bool]], concurrency: int | None = None) -> dict[str, Any]:
    """Run ``call(0..n-1)`` all at once; count errors (exceptions and False) and time each successful call.

    ``concurrency`` bounds the calls outstanding at once (each is timed from when it starts); None: no bound.
    """
    latencies: list[float] = []
    errors: list[str] = []
    slots = asyncio.Semaphore(concurrency or n or 1)

    async def timed(i: int) -> None:
        async with slots:
            started = time.perf_counter()
            try:
                ok = await call(i)
            except Exception as exc:  # counted, not raised: the benchmark reports errors
                errors.append(f"{i}: {type(exc).__name__}: {exc}"[:200])
                return
            latencies.append(time.perf_counter() - started)
        if not ok:
            errors.append(f"{i}: reply does not match its request")

    started = time.perf_counter()
    await asyncio.gather(*(timed(i) for i in range(n)))
    wall = time.perf_counter() - started
    return {
        "requests": n,
        "errors": len(errors),
        "first_errors": errors[:3],
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p95_ms": percentile(latencies, 0.95) * 1000,
        "max_ms": max(latencies, default=float("nan")) * 1000,
        "wall_s": wall,
        "rps": n / wall if wall else float("nan"),
    }


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    import httpx
    import torch

    from aligner_chains import Aligner
    from aligner_chains.server import ServerThread, create_app
    from aligner_chains.testing import build_tiny_llama
    from benchmarks.speed import micro_batched
    from integrations.openai_proxy import create_proxy_app
    from integrations.openai_proxy.testing import create_fake_upstream, default_answer

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(build_tiny_llama(Path(tmp) / "tiny"))
        aligner = Aligner.from_pretrained(model, max_new_tokens=args.max_new_tokens)
        # The same server with whole micro-batches (as before in-flight batching), on its own copy of the model.
        whole = micro_batched(model, inflight=False, max_wait_ms=5.0, max_new_tokens=args.max_new_tokens)
        pairs = [
            (f"Question {i}: how do I bake bread?", f"Answer {i}: mix flour and water.") for i in range(args.requests)
        ]
        limits = httpx.Limits(max_connections=args.requests + 10)
        rows = []
        with (
            ServerThread(create_app(aligner, served_model_name="bench")) as server,
            ServerThread(create_app(whole, served_model_name="bench")) as whole_server,
            ServerThread(create_fake_upstream()) as upstream,
            ServerThread(create_proxy_app(aligner, upstream_base_url=upstream.url + "/v1")) as proxy,
        ):
            remote = Aligner.from_server(server.url, max_new_tokens=args.max_new_tokens, max_concurrency=64)

            async def scenarios() -> None:
                async with httpx.AsyncClient(limits=limits, timeout=300) as http:

                    async def correction(i: int, url: str = server.url) -> bool:
                        q, a = pairs[i]
                        r = await http.post(url + "/v1/corrections", json={"question": q, "answer": a})
                        r.raise_for_status()
                        body = r.json()
                        return (body["question"], body["original"]) == (q, a)

                    async def whole_batches(i: int) -> bool:
                        return await correction(i, whole_server.url)

                    async def via_remote(i: int) -> bool:
                        q, a = pairs[i]
                        c = await remote.acorrect(q, a)
                        return (c.question, c.original, c.error) == (q, a, None)

                    async def chat(i: int) -> bool:
                        q = pairs[i][0]
                        body = {"model": "m", "messages": [{"role": "user", "content": q}], "stream": i % 5 == 0}
                        r = await http.post(proxy.url + "/v1/chat/completions", json=body)
                        r.raise_for_status()
                        if body["stream"]:
                            from aligner_chains.server.testing import sse_payloads

                            events = [e for e in sse_payloads(r.text)[:-1] if e["choices"]]
                            summary = events[-1]["choices"][0]["aligner"]
                        else:
                            summary = r.json()["choices"][0]["aligner"]
                        return summary["original"] == default_answer(q) and summary["error"] is None

                    for name, call in (
                        (CORRECTIONS, correction),
                        (WHOLE, whole_batches),
                        ("server /v1/completions via Aligner.from_server", via_remote),
                        ("proxy /v1/chat/completions (fake upstream, 1/5 streamed)", chat),
                    ):
                        await run_load(args.warmup, call)
                        row = await run_load(args.requests, call)
                        row["scenario"] = name
                        rows.append(row)
                        print(
                            f"{name}: {row['requests']} requests, {row['errors']} errors, p50 {row['p50_ms']:.0f} ms, "
                            f"p95 {row['p95_ms']:.0f} ms, {row['rps']:.1f} req/s",
                            file=sys.stderr,
                        )

            asyncio.run(scenarios())
            remote.backend.close()
    return rows


def write_section(rows: list[dict[str, Any]], args: argparse.Namespace, command: str) -> None:
    import torch

    lines = [
        SECTION,
        "",
        f"- Date: {now()}",
        f"- Machine: {machine()}; torch {torch.__version__}, {args.threads} torch thread(s), CPU only",
        f"- Command: `{command}`",
        f"- Model: {args.model or 'tiny random Llama (aligner_chains.testing.build_tiny_llama)'}, greedy, "
        f"max_new_tokens={args.max_new_tokens}; {args.requests} concurrent requests per scenario after "
        f"{args.warmup} warm-up requests; servers in uvicorn threads of the client's process, loopback only.",
        "- Latency is per request, from send to full reply (streams: to `[DONE]`); every reply is checked",
        "  against its request (cross-talk would count as an error).",
        "",
        "| scenario | requests | errors | p50 ms | p95 ms | max ms | wall s | req/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['scenario']} | {r['requests']} | {r['errors']} | {r['p50_ms']:.0f} | {r['p95_ms']:.0f} | "
            f"{r['max_ms']:.0f} | {r['wall_s']:.2f} | {r['rps']:.1f} |"
        )
    by_name = {r["scenario"]: r for r in rows}
    if CORRECTIONS in by_name and WHOLE in by_name:
        flight, whole = by_name[CORRECTIONS], by_name[WHOLE]
        lines += [
            "",
            f"In-flight batching against whole micro-batches, same model and load: p95 "
            f"{flight['p95_ms'] / whole['p95_ms']:.2f}x, p50 {flight['p50_ms'] / whole['p50_ms']:.2f}x, "
            f"throughput {flight['rps'] / whole['rps']:.2f}x.",
        ]
    write_results_section(SECTION.removeprefix("## "), lines[2:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--model", default=None, help="an Aligner checkpoint (default: a tiny random Llama)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md alone")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    rows = run(args)
    if not args.no_write:
        extra = sys.argv[1:] if argv is None else argv
        command = " ".join(["python -m benchmarks.serving_load", *extra])
        write_section(rows, args, command)
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
