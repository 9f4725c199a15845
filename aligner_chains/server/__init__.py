"""`aligner-chains serve`: an OpenAI-compatible HTTP server over an `Aligner` (FastAPI + uvicorn).

Endpoints: ``POST /v1/completions`` (raw prompts, so `Aligner.from_server` and any OpenAI client can use
it), ``POST /v1/corrections`` (question + answer in, `Correction` out, optionally streamed),
``GET /v1/models``, ``POST /tokenize`` and ``/detokenize`` (vLLM-compatible), ``GET /health`` and
``GET /metrics`` (Prometheus). Needs the ``serve`` extra: ``pip install -e '.[serve]'``.

This package imports FastAPI only when its names are used, so ``aligner-chains --help`` stays fast.
"""

from __future__ import annotations

from aligner_chains._lazy import lazy_dir, lazy_getattr

__all__ = ["ServerConfig", "ServerThread", "create_app", "run_server"]

_EXPORTS = {
    "ServerConfig": "aligner_chains.server.config",
    "create_app": "aligner_chains.server.app",
    "ServerThread": "aligner_chains.server.runner",
    "run_server": "aligner_chains.server.runner",
}


__getattr__ = lazy_getattr(__name__, _EXPORTS)
__dir__ = lazy_dir(__name__, _EXPORTS)
