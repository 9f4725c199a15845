"""`make bench`: every benchmark, figures into benchmarks/RESULTS.md."""

from __future__ import annotations

import sys

from benchmarks import serving_load, speed


def main() -> int:
    return speed.main([]) or serving_load.main([])


if __name__ == "__main__":
    sys.exit(main())
