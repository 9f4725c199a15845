"""``python -m aligner_chains.cli``: the same as the ``aligner-chains`` console script."""

from aligner_chains.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
