"""``aligner-chains serve``: the Aligner server from the command line (FastAPI/uvicorn imported on use)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from aligner_chains.cli.options import add_model_options, load_aligner, model_name
from aligner_chains.core.segmented import DEFAULT_STREAM_MODE, STREAM_MODES

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def add_cli(subparsers: Any) -> None:
    """Add the ``serve`` subcommand."""
    serve = subparsers.add_parser(
        "serve",
        help="serve an Aligner over HTTP (OpenAI /v1/completions, /v1/corrections, /health, /metrics)",
        description="Serve an Aligner over HTTP: POST /v1/completions (OpenAI), POST /v1/corrections, "
        "GET /v1/models, POST /tokenize, GET /health, GET /metrics (Prometheus), and a browser playground at "
        "GET /playground.",
    )
    add_model_options(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, loopback only)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--served-model-name", default=None, help="the model name clients send (default: --model)")
    serve.add_argument(
        "--api-key-env",
        default="ALIGNER_API_KEY",
        help="environment variable holding the API key clients must send (default: ALIGNER_API_KEY; unset: no auth)",
    )
    serve.add_argument("--max-body-bytes", type=int, default=1_048_576)
    serve.add_argument("--max-tokens-limit", type=int, default=None, help="largest max_tokens a request may ask for")
    serve.add_argument("--max-prompt-tokens", type=int, default=None, help="largest /v1/completions prompt")
    serve.add_argument("--max-batch-items", type=int, default=64, help="most prompts or items in one request")
    serve.add_argument("--max-in-flight", type=int, default=1024, help="concurrent requests before 429")
    serve.add_argument("--batch-size", type=int, default=16, help="pairs per padded generation for items")
    serve.add_argument(
        "--header-timeout", type=float, default=10.0, help="seconds a client may take to send its headers (then closed)"
    )
    serve.add_argument("--body-timeout", type=float, default=30.0, help="seconds a client may take to send its body")
    serve.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="a web origin whose pages may call the API (repeatable; default: none, no CORS headers)",
    )
    serve.add_argument(
        "--allowed-host",
        action="append",
        default=None,
        metavar="HOST",
        help="a Host name to answer for, e.g. localhost or *.example.com (repeatable; default: any); others get 400",
    )
    serve.add_argument(
        "--no-playground",
        dest="playground",
        action="store_false",
        help="do not serve the browser playground page at /playground (served by default; it needs no key to load, "
        "the API it calls does)",
    )
    serve.add_argument(
        "--stream-mode",
        choices=STREAM_MODES,
        default=DEFAULT_STREAM_MODE,
        help="how a streamed /v1/corrections is corrected when the request does not say: 'whole' (one generation "
        "over the answer) or 'segments' (segment by segment, each sent once corrected; a refusal ends the stream) "
        f"(default: {DEFAULT_STREAM_MODE})",
    )
    serve.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    serve.set_defaults(func=cmd_serve)


def build_app(args: argparse.Namespace) -> Any:
    """The app ``serve`` would run for ``args`` (loads the Aligner)."""
    from aligner_chains.server.app import create_app
    from aligner_chains.server.config import ServerConfig

    config = ServerConfig(
        served_model_name=args.served_model_name or model_name(args),
        api_key=os.environ.get(args.api_key_env) or None,
        max_body_bytes=args.max_body_bytes,
        max_tokens_limit=args.max_tokens_limit,
        max_prompt_tokens=args.max_prompt_tokens,
        max_batch_items=args.max_batch_items,
        max_in_flight=args.max_in_flight,
        batch_size=args.batch_size,
        header_timeout=args.header_timeout,
        body_timeout=args.body_timeout,
        cors_allow_origins=args.cors_origin,
        allowed_hosts=args.allowed_host,
        playground=args.playground,
        stream_mode=args.stream_mode,
    )
    return create_app(load_aligner(args), config)


def cmd_serve(args: argparse.Namespace) -> int:
    from aligner_chains.core.errors import MissingDependencyError

    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(f"`aligner-chains serve` needs {exc.name}: pip install -e '.[serve]'.") from exc
    from aligner_chains.server.runner import run_server

    app = build_app(args)
    server = app.state.server
    auth = f"on (${args.api_key_env})" if server.config.api_key else "off"
    print(
        f"Serving {server.model_name!r} (template {server.aligner.template.name}) on http://{args.host}:{args.port} "
        f"- API key: {auth}",
        file=sys.stderr,
    )
    if server.config.playground:
        print(f"Playground: http://{args.host}:{args.port}/playground", file=sys.stderr)
    if args.host not in LOOPBACK and not server.config.api_key:
        print(f"warning: listening on {args.host} without an API key; set ${args.api_key_env}.", file=sys.stderr)
    run_server(app, host=args.host, port=args.port, log_level=args.log_level, header_timeout=args.header_timeout)
    return 0
