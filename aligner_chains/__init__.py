"""aligner-chains: a learned corrector (Aligner) behind any LangChain or LlamaIndex application."""

from aligner_chains._lazy import lazy_getattr
from aligner_chains.core import *  # noqa: F403
from aligner_chains.core import __all__ as _core_all

__version__ = "0.1.0"
__all__ = [*_core_all, "__version__"]

# Adapters are imported on first use, so `import aligner_chains` does not import LangChain.
_LAZY_EXPORTS = {
    "AlignerRunnable": "aligner_chains.langchain",
    "AlignedChatModel": "aligner_chains.langchain",
    "AlignerMiddleware": "aligner_chains.langchain",
    "AlignerNodePostprocessor": "aligner_chains.llama_index",
    "AlignerQueryEngine": "aligner_chains.llama_index",
    "AlignerWorkflow": "aligner_chains.llama_index",
}


__getattr__ = lazy_getattr(__name__, _LAZY_EXPORTS)
