"""Benchmarks run on demand (`make bench`), not in CI.

Where the figures go, one rule for every entry point: into the results file, which is
``benchmarks/RESULTS.md`` (the committed figures) unless ``$BENCH_RESULTS`` names another file.

- ``make bench`` (``python -m benchmarks.run``) runs them all and names a new file,
  ``benchmarks/results-<UTC date-time>.md`` (git-ignored), so a run never rewrites the committed figures;
  ``make bench UPDATE=1`` (``python -m benchmarks.run --update``) writes into RESULTS.md instead.
- ``python -m benchmarks.<name>`` (speed, precision, serving_load, soak, demo_quality, gpu) replaces its own
  section of RESULTS.md, as each section's command line says; ``BENCH_RESULTS=path`` sends it elsewhere.
- Smoke runs write nothing: ``--quick`` (speed, precision, demo_quality), ``--tiny`` (gpu), ``--no-write``
  (serving_load, soak).
"""
