"""aligner-chains: a learned corrector (Aligner) behind any LangChain or LlamaIndex application."""

from aligner_chains.core import *  # noqa: F403
from aligner_chains.core import __all__ as _core_all

__version__ = "0.1.0"
__all__ = [*_core_all, "__version__"]
