"""The remote backend: an Aligner served by an OpenAI-compatible completions server (vLLM, TGI, SGLang,
``aligner-chains serve``), over ``httpx``. Imports neither torch nor transformers."""

from aligner_chains.backends.remote.client import API_KEY_ENV, RemoteBackend, TokenCounting
from aligner_chains.backends.remote.protocol import estimate_tokens
from aligner_chains.backends.remote.transport import RETRY_STATUSES, HTTPTransport
from aligner_chains.core.errors import BackendError, BackendTimeoutError

__all__ = [
    "API_KEY_ENV",
    "RETRY_STATUSES",
    "BackendError",
    "BackendTimeoutError",
    "HTTPTransport",
    "RemoteBackend",
    "TokenCounting",
    "estimate_tokens",
]
