"""Benchmarks run on demand (`make bench`), not in CI; figures go to benchmarks/RESULTS.md."""
