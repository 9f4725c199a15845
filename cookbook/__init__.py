"""Worked examples kept in the repository, not installed with aligner-chains: notebooks, configs, recipes."""
