"""The ``aligner-chains`` command line (``aligner-chains = "aligner_chains.cli:main"``).

One module per subcommand family, all registered in `aligner_chains.cli.commands`:
``correct``/``templates`` (`.correct`), ``train`` (`.train`), ``eval`` (`.evaluate`),
``synthesize`` (`.synthesize`) and ``serve`` (`.serve`); `.options` holds what they share.
"""

from aligner_chains.cli.commands import COMMANDS, build_parser, main

__all__ = ["COMMANDS", "build_parser", "main"]
