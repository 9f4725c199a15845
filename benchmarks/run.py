"""`make bench`: every benchmark, figures into benchmarks/RESULTS.md."""

from __future__ import annotations

import sys

import torch

from benchmarks import gpu, serving_load, soak, speed


def main() -> int:
    """CPU benchmarks always; the GPU decoding benchmark where CUDA is present."""
    return (
        speed.main([]) or serving_load.main([]) or soak.main([]) or (gpu.main([]) if torch.cuda.is_available() else 0)
    )


if __name__ == "__main__":
    sys.exit(main())
