"""`make bench`: every benchmark, its figures into a new results file or, asked to, into benchmarks/RESULTS.md.

python -m benchmarks.run             # figures into a new benchmarks/results-<UTC date-time>.md (git-ignored)
python -m benchmarks.run --update    # figures into benchmarks/RESULTS.md, the committed ones (make bench UPDATE=1)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from benchmarks import demo_quality, gpu, results, scale, serving_load, soak, speed, streaming


def main(argv: list[str] | None = None) -> int:
    """CPU benchmarks always; the GPU decoding benchmark where CUDA is present."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--update", action="store_true", help="write into benchmarks/RESULTS.md (make bench UPDATE=1)")
    parser.add_argument("--out", type=Path, help="the new results file (default: benchmarks/results-<date-time>.md)")
    args = parser.parse_args(argv)
    if args.update and args.out:
        parser.error("--update writes benchmarks/RESULTS.md; --out names another file: give one of them")
    path = results.RESULTS if args.update else args.out or results.new_results_file()
    print(f"benchmark figures go to {path}", file=sys.stderr)
    with results.writing_to(path):
        return (
            speed.main([])
            or serving_load.main([])
            or soak.main([])
            or demo_quality.main([])
            or scale.main([])
            or streaming.main([])
            or (gpu.main([]) if torch.cuda.is_available() else 0)
        )


if __name__ == "__main__":
    sys.exit(main())
