"""Soak run of the Aligner server under faults: slow clients, abandoned requests, mixed hostile load.

    python -m benchmarks.soak                    # about a minute on 2 CPU cores, tiny model
    python -m benchmarks.soak --quick --no-write # seconds: a smoke run that leaves RESULTS.md alone

Scenarios, one after the other against one server (uvicorn in a thread of this process, loopback only;
every count, loop and wait is bounded):

- ``slow clients``: connections that trickle their headers or their body one byte at a time, while
  ordinary corrections run; the server must close every slow connection (header timeout, or 408 at the
  body timeout) and serve the ordinary requests without errors (slow uploads hold no in-flight slot).
- ``abandoned requests``: clients that ask for long generations (``max_tokens=440``; the tiny model's
  context is 512) and leave after a quarter of a second, on ``/v1/completions`` and then on the
  micro-batched ``/v1/corrections``; then short requests, whose latency shows whether the abandoned work
  was stopped.
- ``big bodies``: ten 0.9 MB corrections at once, twice (tokenized, then refused as too long), while
  ``/health`` is polled on its own connection; its latency shows whether tokenizing blocks the event loop,
  and the RSS after each burst whether memory keeps growing.
- ``mixed load``: corrections, completions, streamed corrections, ``/tokenize`` and ``/health``, 32 at a time,
  with hostile requests among them (malformed, deeply nested, lone surrogates, ``temperature=1e-300``,
  a wrong Content-Type, made-up methods), each of which must get its 4xx.

Figures: requests, errors, p50/p95 latency and the process RSS before and after each scenario; they
replace the ``## Soak (faults and hostile clients)`` section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.results import machine, now
from benchmarks.results import write_section as write_results_section
from benchmarks.serving_load import percentile, run_load

SECTION = "Soak (faults and hostile clients)"
HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 2.0


def rss_mb() -> float:
    """Resident memory of this process in MiB (Linux ``/proc``; elsewhere the peak from ``getrusage``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def closed_by_peer(sock: socket.socket, within_s: float) -> bool:
    """True when the peer closes ``sock`` within ``within_s`` seconds (data it sends meanwhile is read and dropped)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            if sock.recv(4096) == b"":
                return True
        except TimeoutError:
            return False
        except OSError:
            return True
    return False


def _trickle(port: int, head: bytes, give_up_s: float, closed_after: list[float]) -> None:
    """Send ``head`` then one byte per 0.2 s until the server closes the connection (or ``give_up_s``)."""
    started = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(head)
            while time.monotonic() - started < give_up_s:
                sock.sendall(b"a")
                if closed_by_peer(sock, 0.2):
                    closed_after.append(time.monotonic() - started)
                    return
    except OSError:
        closed_after.append(time.monotonic() - started)


def _upload_head(length: int) -> bytes:
    return (
        "POST /v1/corrections HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def _row(name: str, stats: dict[str, Any], before: float, note: str) -> dict[str, Any]:
    return {**stats, "scenario": name, "rss_before": before, "rss_after": rss_mb(), "note": note}


async def slow_clients(server: Any, http: Any, args: argparse.Namespace) -> dict[str, Any]:
    before = rss_mb()
    closed_after: list[float] = []
    slow = [b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "] * args.slow_headers
    slow += [_upload_head(10_000) + b'{"question": "'] * args.slow_bodies
    give_up = 3 * (HEADER_TIMEOUT + BODY_TIMEOUT)
    threads = [
        threading.Thread(target=_trickle, args=(server.port, head, give_up, closed_after), daemon=True) for head in slow
    ]
    for thread in threads:
        thread.start()

    async def correction(i: int) -> bool:
        body = {"question": f"Question {i}?", "answer": f"Answer {i}."}
        reply = await http.post(server.url + "/v1/corrections", json=body)
        return reply.status_code == 200 and reply.json()["question"] == body["question"]

    stats = await run_load(args.requests, correction, concurrency=args.connections)
    for thread in threads:
        await asyncio.to_thread(thread.join, give_up + 1)
    note = (
        f"{len(slow)} slow connections ({args.slow_headers} trickling headers, {args.slow_bodies} trickling bodies; "
        f"timeouts {HEADER_TIMEOUT:g} s / {BODY_TIMEOUT:g} s): {len(closed_after)} closed by the server, "
        f"the last after {max(closed_after, default=float('nan')):.1f} s"
    )
    if len(closed_after) != len(slow):
        stats["errors"] += len(slow) - len(closed_after)
    return _row("slow clients + ordinary corrections", stats, before, note)


async def abandoned(server: Any, http: Any, args: argparse.Namespace, path: str) -> dict[str, Any]:
    import httpx

    before = rss_mb()
    if path == "/v1/completions":
        long = [{"prompt": f"Story {i}:", "max_tokens": args.long} for i in range(args.abandon)]
    else:
        long = [
            {"question": f"Q{i}?", "answer": "A long answer.", "max_new_tokens": args.long} for i in range(args.abandon)
        ]

    async def leave(body: dict[str, Any]) -> bool:
        try:
            await http.post(server.url + path, json=body, timeout=0.25)
        except httpx.TimeoutException:
            return True
        return False  # it finished within 0.25 s: nothing was abandoned

    left = await asyncio.gather(*(leave(body) for body in long))
    await asyncio.sleep(0.5)
    latencies, errors = [], 0
    for i in range(args.short):
        started = time.perf_counter()
        reply = await http.post(server.url + "/v1/completions", json={"prompt": f"Hi {i}", "max_tokens": 2})
        latencies.append(time.perf_counter() - started)
        errors += reply.status_code != 200
    stats = {
        "requests": len(long) + args.short,
        "errors": errors,
        "p50_ms": percentile(latencies, 0.5) * 1000,
        "p95_ms": percentile(latencies, 0.95) * 1000,
    }
    note = (
        f"{sum(left)} of {len(long)} clients left after 0.25 s (max_tokens={args.long}); latency is of the "
        f"{args.short} short /v1/completions requests sent 0.5 s later, one at a time"
    )
    return _row(f"abandoned {path}, then short requests", stats, before, note)


async def big_bodies(server: Any, http: Any, args: argparse.Namespace) -> dict[str, Any]:
    import httpx

    before = rss_mb()
    answer = "word " * (args.big_kb * 1024 // 5)
    finished = asyncio.Event()

    async def big(i: int) -> bool:
        reply = await http.post(server.url + "/v1/corrections", json={"question": f"Q{i}?", "answer": answer})
        return reply.status_code == 400 and reply.json()["error"]["code"] == "context_length_exceeded"

    async def poll() -> tuple[list[float], int]:
        latencies, errors = [], 0
        async with httpx.AsyncClient(timeout=30) as own:  # its own connection: no wait behind the big uploads
            while not finished.is_set() or len(latencies) < 5:
                started = time.perf_counter()
                errors += (await own.get(server.url + "/health")).status_code != 200
                latencies.append(time.perf_counter() - started)
                await asyncio.sleep(0.01)
        return latencies, errors

    poller = asyncio.ensure_future(poll())
    first = await run_load(args.big, big)
    after_first = rss_mb()
    second = await run_load(args.big, big)  # the same burst again: memory must not keep growing
    finished.set()
    latencies, errors = await poller
    stats = {
        "requests": 2 * args.big + len(latencies),
        "errors": first["errors"] + second["errors"] + errors,
        "p50_ms": percentile(latencies, 0.5) * 1000,
        "p95_ms": percentile(latencies, 0.95) * 1000,
    }
    note = (
        f"twice {args.big} corrections of {args.big_kb} KB at once (each tokenized, then refused 400 as too long) "
        f"while /health is polled on its own connection; latency is of the {len(latencies)} /health requests (max "
        f"{max(latencies) * 1000:.0f} ms); RSS after the first burst {after_first:.0f} MiB"
    )
    return _row("big bodies, /health meanwhile", stats, before, note)


HOSTILE: list[tuple[str, str, bytes, str, int]] = [
    ("POST", "/v1/completions", b"{not json", "application/json", 400),
    ("POST", "/v1/completions", b'{"prompt": ' + b"[" * 5000 + b"]" * 5000 + b"}", "application/json", 400),
    ("POST", "/v1/corrections", b'{"question": "a\\ud800", "answer": "b"}', "application/json", 400),
    ("POST", "/v1/completions", b'{"prompt": "x", "max_tokens": ' + b"9" * 5000 + b"}", "application/json", 400),
    ("POST", "/v1/completions", b'{"prompt": "x", "temperature": 1e-300}', "application/json", 400),
    ("POST", "/v1/corrections", b'{"question": "q", "answer": "a"}', "text/plain", 415),
    ("BREW", "/v1/completions", b"", "application/json", 405),
]


async def mixed(server: Any, http: Any, args: argparse.Namespace) -> dict[str, Any]:
    before = rss_mb()
    metrics_before = len((await http.get(server.url + "/metrics")).content)

    async def one(i: int) -> bool:
        kind = i % 10
        url = server.url
        if kind <= 3:
            body = {"question": f"Question {i}?", "answer": f"Answer {i}."}
            reply = await http.post(url + "/v1/corrections", json=body)
            return reply.status_code == 200 and reply.json()["original"] == body["answer"]
        if kind <= 5:
            reply = await http.post(url + "/v1/completions", json={"prompt": f"Prompt {i}", "max_tokens": 4})
            return reply.status_code == 200 and reply.json()["object"] == "text_completion"
        if kind == 6:
            body = {"question": f"Streamed {i}?", "answer": f"Answer {i}.", "stream": True}
            reply = await http.post(url + "/v1/corrections", json=body)
            events = [line[6:] for line in reply.text.split("\n") if line.startswith("data: ")]
            final = json.loads(events[-2]) if len(events) >= 2 else {}
            return events[-1:] == ["[DONE]"] and final.get("correction", {}).get("original") == body["answer"]
        if kind == 7:
            reply = await http.post(url + "/tokenize", json={"prompt": f"Tokens {i}"})
            return reply.status_code == 200 and reply.json()["count"] > 0
        if kind == 8:
            return (await http.get(url + "/health")).status_code == 200
        method, path, content, content_type, status = HOSTILE[(i // 10) % len(HOSTILE)]
        reply = await http.request(method, url + path, content=content, headers={"Content-Type": content_type})
        return reply.status_code == status

    # at most `connections` requests outstanding: 400 queued in httpx's pool would cost the client (which shares
    # this process and its GIL with the server) more CPU than the server spends on them
    stats = await run_load(args.mixed, one, concurrency=args.connections)
    metrics_after = len((await http.get(server.url + "/metrics")).content)
    note = (
        f"{args.connections} at a time: 40% corrections, 20% completions, "
        f"10% streamed, 10% /tokenize, 10% /health, 10% hostile (each must get its 4xx); "
        f"/metrics {metrics_before / 1024:.1f} KB -> {metrics_after / 1024:.1f} KB"
    )
    return _row("mixed load with hostile requests", stats, before, note)


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    import httpx
    import torch

    from aligner_chains import Aligner
    from aligner_chains.server import ServerThread, create_app
    from aligner_chains.testing import build_tiny_llama

    torch.set_num_threads(args.threads)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        aligner = Aligner.from_pretrained(str(build_tiny_llama(Path(tmp) / "tiny")), max_new_tokens=8)
        app = create_app(aligner, served_model_name="soak", max_in_flight=64, body_timeout=BODY_TIMEOUT)
        with ServerThread(app, header_timeout=HEADER_TIMEOUT) as server:

            async def scenarios() -> None:
                limits = httpx.Limits(max_connections=args.connections)
                async with httpx.AsyncClient(limits=limits, timeout=120) as http:
                    await run_load(4, lambda i: _warm(http, server.url, i))
                    for scenario in (
                        slow_clients,
                        lambda *a: abandoned(*a, "/v1/completions"),
                        lambda *a: abandoned(*a, "/v1/corrections"),
                        big_bodies,
                        mixed,
                    ):
                        row = await scenario(server, http, args)
                        rows.append(row)
                        print(
                            f"{row['scenario']}: {row['requests']} requests, {row['errors']} errors, "
                            f"p50 {row['p50_ms']:.0f} ms, p95 {row['p95_ms']:.0f} ms, "
                            f"RSS {row['rss_before']:.0f} -> {row['rss_after']:.0f} MiB; {row['note']}"
                            + (f"; first errors: {row['first_errors']}" if row.get("first_errors") else ""),
                            file=sys.stderr,
                        )

            asyncio.run(asyncio.wait_for(scenarios(), args.deadline))
    return rows


async def _warm(http: Any, url: str, i: int) -> bool:
    reply = await http.post(url + "/v1/corrections", json={"question": f"Warm {i}?", "answer": "Up."})
    return reply.status_code == 200


def write_section(rows: list[dict[str, Any]], args: argparse.Namespace, command: str) -> None:
    import torch

    lines = [
        f"- Date: {now()}",
        f"- Machine: {machine()}; torch {torch.__version__}, {args.threads} torch thread(s), CPU only",
        f"- Command: `{command}`",
        "- Model: tiny random Llama (aligner_chains.testing.build_tiny_llama), greedy, max_new_tokens=8 unless "
        "stated; one server (uvicorn thread of the client's process, loopback only), header timeout "
        f"{HEADER_TIMEOUT:g} s, body timeout {BODY_TIMEOUT:g} s, --max-in-flight 64.",
        "- Errors: a failed or wrong reply (ordinary requests), a hostile request not given its 4xx, a slow",
        "  connection the server left open. RSS: this whole process (client, server, model), in MiB.",
        "",
        "| scenario | requests | errors | p50 ms | p95 ms | RSS before | RSS after | what ran |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['scenario']} | {r['requests']} | {r['errors']} | {r['p50_ms']:.0f} | {r['p95_ms']:.0f} | "
            f"{r['rss_before']:.0f} | {r['rss_after']:.0f} | {r['note']} |"
        )
    write_results_section(SECTION, lines)


# Requests per scenario (``long``: tokens the abandoned requests ask for; the tiny model's context is 512).
FULL = {"requests": 100, "slow_headers": 50, "slow_bodies": 20, "abandon": 15, "long": 440, "short": 20}
FULL |= {"big": 10, "big_kb": 900, "mixed": 400}
QUICK = {"requests": 8, "slow_headers": 3, "slow_bodies": 2, "abandon": 2, "long": 64, "short": 3}
QUICK |= {"big": 2, "big_kb": 100, "mixed": 40}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few requests per scenario (a smoke run)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument(
        "--connections", type=int, default=32, help="requests outstanding at once (and client connections)"
    )
    parser.add_argument("--deadline", type=float, default=110.0, help="seconds before the whole run is stopped")
    parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md alone")
    args = parser.parse_args(argv)
    vars(args).update(QUICK if args.quick else FULL)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    rows = run(args)
    if not args.no_write:
        extra = sys.argv[1:] if argv is None else argv
        write_section(rows, args, " ".join(["python -m benchmarks.soak", *extra]))
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
