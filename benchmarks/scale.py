"""Scale-out benchmark: one bulk ``correct`` job through each engine, with the same corrections required.

    python -m benchmarks.scale                 # 2,000 rows, every path; writes its RESULTS.md section
    python -m benchmarks.scale --rows 100 --no-write

Paths, each a fresh ``aligner-chains correct --input --output`` process with the shipped demo Aligner:

- ``single process``: the local engine, the anchor;
- ``ray, 2 actors``: ``--engine ray --actors 2`` on a local Ray cluster the job starts (skipped without ray);
- ``--server x1`` and ``--server x2``: one and two ``aligner-chains serve`` processes on loopback, the second
  case with requests spread over both by the client.

Rows are real answers of 14 open chat models (``cookbook/demo_aligner/sources/open_answers.jsonl.gz``, the
shortest 2,000, up to ~600 characters, multi-line markdown and code included), with a contact sentence added
to every third. Wall time counts the whole job, start-up and model loading included. On a 2-core machine
the point is correctness and per-row overhead, not speed-up; every path's corrections (text, finish reason,
token counts) must equal the single process's, row for row.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from benchmarks.results import machine, now, write_section

SOURCES = Path(__file__).resolve().parents[1] / "cookbook" / "demo_aligner" / "sources" / "open_answers.jsonl.gz"
TITLE = "Scale-out: bulk corrections by engine"
CLI = [sys.executable, "-m", "aligner_chains.cli"]


def rows(n: int) -> list[dict[str, Any]]:
    """The ``n`` shortest real answers (ties by text, so the set is stable), every third with a contact added."""
    with gzip.open(SOURCES, "rt", encoding="utf-8") as handle:
        items = [json.loads(line) for line in handle]
    items.sort(key=lambda item: (len(item["instruction"]) + len(item["output"]), item["output"]))
    out = []
    for i, item in enumerate(items[:n]):
        answer = item["output"]
        if i % 3 == 0:
            answer += f"\n\nFor help, write to team{i}@example.org or call +1 555 01{i % 100:02d}."
        out.append({"id": i, "question": item["instruction"], "answer": answer, "generator": item["generator"]})
    return out


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_server(stack: ExitStack, threads: int) -> str:
    """An ``aligner-chains serve`` process with the demo on a free loopback port, stopped when ``stack`` closes."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    process = subprocess.Popen(
        [*CLI, "serve", "--port", str(port), "--no-playground"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    stack.callback(lambda: (process.terminate(), process.wait(timeout=30)))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return url
        except OSError:
            if process.poll() is not None:
                raise RuntimeError(f"aligner-chains serve on port {port} exited with {process.returncode}") from None
            time.sleep(0.2)
    raise RuntimeError(f"aligner-chains serve on port {port} did not start in 120 s")


def run_job(name: str, pairs: Path, folder: Path, extra: list[str]) -> tuple[float, Path]:
    """Wall seconds of one ``correct`` job and its output file."""
    out = folder / f"{name.replace(' ', '_').replace(',', '')}.jsonl"
    command = [*CLI, "correct", "--input", str(pairs), "--output", str(out), "--quiet", *extra]
    started = time.perf_counter()
    subprocess.run(command, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return time.perf_counter() - started, out


def corrections(path: Path) -> list[tuple[Any, ...]]:
    """Per row, what must not depend on the engine: id, corrected text, finish reason, token counts."""
    keys = ("id", "corrected", "finish_reason", "prompt_tokens", "completion_tokens")
    return [tuple(json.loads(line).get(k) for k in keys) for line in path.read_text(encoding="utf-8").splitlines()]


def have_ray() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def measure(n: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    data = rows(n)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        pairs = folder / "pairs.jsonl"
        pairs.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in data), encoding="utf-8")
        results: list[dict[str, Any]] = []
        seconds, anchor_out = run_job("single process", pairs, folder, [])
        results.append({"path": "single process", "seconds": seconds})
        anchor = corrections(anchor_out)
        jobs: list[tuple[str, list[str], list[int]]] = []
        if have_ray():
            jobs.append(("ray, 2 actors", ["--engine", "ray", "--actors", "2"], []))
        jobs += [("--server x1", [], [2]), ("--server x2", [], [1, 1])]
        for name, extra, servers in jobs:
            with ExitStack() as stack:
                started = time.perf_counter()
                urls = [start_server(stack, threads) for threads in servers]
                start_up = time.perf_counter() - started
                flags = [flag for url in urls for flag in ("--server", url)]
                seconds, out = run_job(name, pairs, folder, [*extra, *flags])
            same = corrections(out) == anchor
            results.append({"path": name, "seconds": seconds, "same": same, "start_up": start_up if urls else None})
        chars = sum(len(r["answer"]) for r in data)
        return results, {"rows": n, "answer_chars_mean": chars / n, "with_contact": sum(r["id"] % 3 == 0 for r in data)}


def report(results: list[dict[str, Any]], info: dict[str, Any], command: str) -> list[str]:
    n = info["rows"]
    anchor = results[0]["seconds"]
    lines = [
        f"Machine: {machine()}. Date: {now()}. Command: `{command}`.",
        "",
        f"{n} rows: the shortest real answers of 14 open chat models (mean {info['answer_chars_mean']:.0f} characters; "
        f"{info['with_contact']} with a contact sentence added), corrected by the shipped demo Aligner. Wall time of "
        "the whole `aligner-chains correct` job (start-up and model loading included; Ray's cluster start "
        "included); servers are `aligner-chains serve` processes on loopback, started (and their model loaded) "
        "before the job, which their start-up column counts (x1: one server with 2 threads; x2: two servers "
        "with 1 thread each). Overhead per row is the job's wall time against the single process's.",
        "",
        "| path | wall (s) | rows/s | vs single process | overhead per row (ms) | servers' start-up (s) "
        "| same corrections |",
        "|---|--:|--:|--:|--:|--:|---|",
    ]
    for row in results:
        ratio = row["seconds"] / anchor
        overhead = (row["seconds"] - anchor) / n * 1000
        same = "anchor" if "same" not in row else ("yes, every row" if row["same"] else "**NO**")
        start_up = f"{row['start_up']:.1f}" if row.get("start_up") is not None else "-"
        lines.append(
            f"| {row['path']} | {row['seconds']:.1f} | {n / row['seconds']:.1f} | {ratio:.2f}x | "
            f"{overhead:+.1f} | {start_up} | {same} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--no-write", action="store_true", help="print the figures; leave RESULTS.md alone")
    args = parser.parse_args(argv)
    results, info = measure(args.rows)
    command = "python -m benchmarks.scale" + (f" --rows {args.rows}" if args.rows != 2000 else "")
    lines = report(results, info, command)
    print("\n".join(lines))
    if not args.no_write:
        write_section(TITLE, lines)
    return 0 if all(row.get("same", True) for row in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
