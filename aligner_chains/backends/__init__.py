"""Backends turn rendered Aligner prompts into completions: ``local`` (torch + transformers, in this process)
and ``remote`` (an OpenAI-compatible server over HTTP). Each is imported only when used."""

from aligner_chains._lazy import lazy_dir, lazy_getattr

_LAZY_EXPORTS = {
    "LocalBackend": "aligner_chains.backends.local",
    "RemoteBackend": "aligner_chains.backends.remote",
}
__all__ = sorted(_LAZY_EXPORTS)
__getattr__ = lazy_getattr(__name__, _LAZY_EXPORTS)
__dir__ = lazy_dir(__name__, _LAZY_EXPORTS)
