"""aligner-chains: a learned corrector (Aligner) behind any LangChain or LlamaIndex application.

``import aligner_chains`` loads only the framework-free core: the local backend (torch,
transformers), the remote backend and the LangChain / LlamaIndex adapters are imported on first
use of one of their names, e.g. ``aligner_chains.AlignerRunnable``.
"""

from aligner_chains._lazy import lazy_dir, lazy_getattr
from aligner_chains.core import *  # noqa: F403
from aligner_chains.core import __all__ as _core_all

__version__ = "0.1.0"

_LAZY_EXPORTS = {
    **dict.fromkeys(
        [
            "CopyAwareSpeculative",
            "DecodingStrategy",
            "HFGenerate",
            "LoadOptions",
            "LocalBackend",
            "clear_model_cache",
            "load_model",
        ],
        "aligner_chains.backends.local",
    ),
    "RemoteBackend": "aligner_chains.backends.remote",
    **dict.fromkeys(["AlignedChatModel", "AlignerMiddleware", "AlignerRunnable"], "aligner_chains.langchain"),
    **dict.fromkeys(
        ["AlignerNodePostprocessor", "AlignerQueryEngine", "AlignerWorkflow"], "aligner_chains.llama_index"
    ),
}

__all__ = sorted([*_core_all, *_LAZY_EXPORTS, "__version__"])
__getattr__ = lazy_getattr(__name__, _LAZY_EXPORTS)
__dir__ = lazy_dir(__name__, _LAZY_EXPORTS)
