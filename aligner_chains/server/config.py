"""`ServerConfig`: the limits and options of ``aligner-chains serve`` (CLI flags map onto its fields)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from aligner_chains.core.segmented import DEFAULT_STREAM_MODE, StreamMode


class ServerConfig(BaseModel):
    """Options of the Aligner server; every limit answers a clear 4xx when exceeded."""

    model_config = ConfigDict(extra="forbid")

    served_model_name: str | None = None
    """The ``model`` name clients send (default: the Aligner's model id); the model id is accepted too."""
    api_key: str | None = Field(default=None, repr=False)
    """When set, ``/v1/*``, ``/tokenize`` and ``/detokenize`` need ``Authorization: Bearer <key>``."""
    max_body_bytes: int = Field(default=1_048_576, ge=1)
    """Largest request body (413 beyond)."""
    max_tokens_limit: int | None = Field(default=None, ge=1)
    """Largest ``max_tokens`` / ``max_new_tokens`` a request may ask for (None: the model's context)."""
    max_prompt_tokens: int | None = Field(default=None, ge=1)
    """Largest prompt of ``/v1/completions`` in tokens (None: the model's context)."""
    max_batch_items: int = Field(default=64, ge=1)
    """Most prompts in one ``/v1/completions`` or items in one ``/v1/corrections`` request."""
    max_in_flight: int = Field(default=1024, ge=1)
    """Requests processed at once (counted once their body is read); beyond, 429 with ``Retry-After``."""
    batch_size: int = Field(default=16, ge=1)
    """Pairs per padded generation for ``/v1/corrections`` with ``items``."""
    header_timeout: float = Field(default=10.0, gt=0)
    """Seconds a connection may take to send a request's headers before it is closed (uvicorn runners)."""
    body_timeout: float = Field(default=30.0, gt=0)
    """Seconds a request may take to send its whole body (408 beyond)."""
    cors_allow_origins: list[str] = Field(default_factory=list)
    """Web origins (``https://app.example.com``, or ``*``) whose pages may call the API; empty: no CORS headers."""
    allowed_hosts: list[str] | None = None
    """``Host`` names this server answers for (``*.example.com`` matches subdomains); others get 400. None: any."""
    playground: bool = True
    """Serve the browser playground at ``/playground`` (a static page; the API it calls still needs the key)."""
    stream_mode: StreamMode = DEFAULT_STREAM_MODE
    """How a streamed ``/v1/corrections`` is corrected when the request names no ``stream_mode``: ``whole`` (one
    generation over the whole answer, streamed token by token) or ``segments`` (segment by segment, each shown
    once corrected; a refusal ends the stream)."""
