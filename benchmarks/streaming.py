"""Streaming benchmark: ``stream_mode="segments"`` against ``"whole"`` with the shipped demo Aligner.

    python -m benchmarks.streaming                   # writes its RESULTS.md section
    python -m benchmarks.streaming --quick --no-write

Timing: a scripted upstream streams real answers of about 300 demo tokens, token by token, at 30 and at 100
tokens per second. For each mode: time to the first corrected piece, time to the last, and how far the
corrected stream trails the upstream (the end of the corrected stream minus the end of the upstream's).
``whole`` reads the whole upstream answer, then streams the correction (`Aligner.astream`); ``segments``
corrects each segment as soon as it is complete (`Aligner.aiter_segments`).

Quality: on the demo's reported held-out split (real answers of three generators the demo never saw, to
instructions it never saw; ``cookbook.demo_aligner.real``), clean answers and answers with contacts
inserted: how often the segment-wise output equals the whole-answer output, and for the differences, which
one is right (the answer itself for a clean row, its exact redaction for a row with contacts).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import time
from collections.abc import AsyncIterator
from typing import Any

from benchmarks.results import machine, now, write_section

TITLE = "Streaming: segments against whole"


def _aligner() -> Any:
    from aligner_chains.core.aligner import Aligner
    from aligner_chains.core.model_files import default_model

    return Aligner.from_pretrained(default_model(), micro_batching=False)


def timing_rows(aligner: Any, n: int, tokens: int = 300) -> list[dict[str, Any]]:
    """``n`` clean held-out answers of about ``tokens`` demo tokens (the closest ones), with their tokens."""
    from cookbook.demo_aligner.real import heldout_sets

    rows = [r for r in heldout_sets("report") if r["kind"] == "clean" and r["category"] == "real"]
    counted = [(abs(aligner.backend.count_tokens(r["answer"]) - tokens), r["answer"], r) for r in rows]
    counted.sort(key=lambda item: (item[0], item[1]))
    tokenizer = aligner.backend.tokenizer
    out = []
    for _, _, row in counted[:n]:
        with tokenizer.lock:
            ids = tokenizer.raw(row["answer"], add_special_tokens=False)["input_ids"]
            pieces = [tokenizer.raw.decode(ids[:i]) for i in range(len(ids) + 1)]
        # token-sized text pieces that join to the decoded answer exactly
        out.append({**row, "pieces": [b[len(a) :] for a, b in itertools.pairwise(pieces)]})
    return out


async def _upstream(pieces: list[str], rate: float, clock: dict[str, float]) -> AsyncIterator[str]:
    start = time.perf_counter()
    for i, piece in enumerate(pieces):
        delay = start + (i + 1) / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        yield piece
    clock["upstream_end"] = time.perf_counter()


async def _timed(aligner: Any, row: dict[str, Any], rate: float, mode: str) -> dict[str, float]:
    clock: dict[str, float] = {}
    started = time.perf_counter()
    first = last = None
    if mode == "whole":
        answer = "".join([piece async for piece in _upstream(row["pieces"], rate, clock)])
        stream = aligner.astream(row["question"], answer)
    else:
        stream = aligner.astream_segments(row["question"], _upstream(row["pieces"], rate, clock))
    async for _ in stream:
        now_ = time.perf_counter()
        first = first if first is not None else now_
        last = now_
    assert first is not None and last is not None
    return {
        "first": first - started,
        "last": last - started,
        "upstream": clock["upstream_end"] - started,
        "trail": last - clock["upstream_end"],
    }


def measure_timing(aligner: Any, rows: list[dict[str, Any]], rates: list[float]) -> list[dict[str, Any]]:
    results = []
    for rate in rates:
        for mode in ("whole", "segments"):
            runs = [asyncio.run(_timed(aligner, row, rate, mode)) for row in rows]
            results.append(
                {
                    "rate": rate,
                    "mode": mode,
                    **{key: statistics.median(r[key] for r in runs) for key in ("first", "last", "upstream", "trail")},
                    "trail_max": max(r["trail"] for r in runs),
                }
            )
    return results


def quality_rows(n_clean: int, n_redact: int) -> list[dict[str, str]]:
    from cookbook.demo_aligner.real import heldout_sets

    rows = heldout_sets("report", n_redact=n_redact)
    clean = [r for r in rows if r["kind"] == "clean" and r["category"] == "real"][:n_clean]
    return clean + [r for r in rows if r["kind"] == "redact"]


def measure_quality(aligner: Any, rows: list[dict[str, str]]) -> dict[str, Any]:
    """Segment-wise against whole-answer corrections of ``rows`` (the upstream arrives in 8-character pieces)."""
    from aligner_chains.core.errors import InputTooLongError

    counts = {"n": 0, "same": 0, "segments_right": 0, "whole_right": 0, "neither": 0, "too_long": 0}
    by_kind: dict[str, dict[str, int]] = {}
    for row in rows:
        try:
            whole = aligner.correct(row["question"], row["answer"]).corrected
            pieces = [row["answer"][i : i + 8] for i in range(0, len(row["answer"]), 8)]
            segmented = "".join(aligner.stream_segments(row["question"], pieces))
        except InputTooLongError:
            counts["too_long"] += 1
            continue
        kind = by_kind.setdefault(row["kind"], {"n": 0, "same": 0})
        counts["n"] += 1
        kind["n"] += 1
        if segmented == whole:
            counts["same"] += 1
            kind["same"] += 1
            continue
        expected = row["correction"].strip()  # corrections are reported stripped
        if segmented == expected:
            counts["segments_right"] += 1
        elif whole == expected:
            counts["whole_right"] += 1
        else:
            counts["neither"] += 1
    return {**counts, "by_kind": by_kind}


def report(timing: list[dict[str, Any]], n_timing: int, quality: dict[str, Any], command: str) -> list[str]:
    lines = [
        f"Machine: {machine()}. Date: {now()}. Command: `{command}`.",
        "",
        f"Timing: {n_timing} real held-out answers of about 300 demo tokens, streamed token by token by a scripted "
        "upstream; medians over the answers, in seconds from the request. *Trails* is the end of the corrected "
        "stream minus the end of the upstream's.",
        "",
        "| upstream tokens/s | mode | first corrected piece | last piece | upstream done | trails by (median, max) "
        "| first piece vs whole |",
        "|--:|---|--:|--:|--:|---|--:|",
    ]
    whole_first = {row["rate"]: row["first"] for row in timing if row["mode"] == "whole"}
    for row in timing:
        ratio = row["first"] / whole_first[row["rate"]]
        lines.append(
            f"| {row['rate']:.0f} | {row['mode']} | {row['first']:.2f} | {row['last']:.2f} | {row['upstream']:.2f} | "
            f"{row['trail']:.2f}, {row['trail_max']:.2f} | {ratio:.0%} |"
        )
    n = quality["n"]
    kinds = ", ".join(
        f"{kind}: {v['same']}/{v['n']} ({v['same'] / v['n']:.1%})" for kind, v in sorted(quality["by_kind"].items())
    )
    differ = n - quality["same"]
    lines += [
        "",
        f"Quality: {n} held-out rows (clean real answers, and real answers with contacts inserted: kind `redact`), "
        "the upstream arriving in 8-character pieces; rows too long for the demo's context left out "
        f"({quality['too_long']}).",
        "",
        f"- segment-wise output equals the whole-answer output: {quality['same']}/{n} ({quality['same'] / n:.1%}); "
        f"{kinds}",
        f"- of the {differ} that differ: segment-wise right {quality['segments_right']}, whole right "
        f"{quality['whole_right']}, neither {quality['neither']} (right: the answer itself for a clean row, its "
        "exact redaction for a row with contacts)",
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 timed answers, 20 quality rows")
    parser.add_argument("--no-write", action="store_true", help="print the figures; leave RESULTS.md alone")
    args = parser.parse_args(argv)
    aligner = _aligner()
    n_timing = 2 if args.quick else 5
    timing = measure_timing(aligner, timing_rows(aligner, n_timing), [30.0, 100.0])
    quality = measure_quality(aligner, quality_rows(10 if args.quick else 150, 10 if args.quick else 150))
    command = "python -m benchmarks.streaming" + (" --quick" if args.quick else "")
    lines = report(timing, n_timing, quality, command)
    print("\n".join(lines))
    if not (args.no_write or args.quick):
        write_section(TITLE, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
