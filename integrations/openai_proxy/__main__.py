"""``python -m integrations.openai_proxy --upstream URL [--aligner MODEL | --aligner-server URL]``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from aligner_chains.core.segmented import DEFAULT_STREAM_MODE, STREAM_MODES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m integrations.openai_proxy",
        description="A correcting OpenAI-compatible proxy: POST /v1/chat/completions goes to --upstream, "
        "the reply through an Aligner. Keys are read from environment variables, never from the command line.",
    )
    parser.add_argument("--upstream", required=True, help="upstream OpenAI-compatible API with its /v1")
    parser.add_argument(
        "--upstream-api-key-env",
        default="UPSTREAM_API_KEY",
        help="variable holding the upstream key (default UPSTREAM_API_KEY; unset: forward the client's header)",
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--aligner", default=None, help="local Aligner: path or hub id (default: $ALIGNER_MODEL, else the demo)"
    )
    which.add_argument("--aligner-server", default=None, help="remote Aligner: an OpenAI-compatible server URL")
    parser.add_argument("--aligner-model", default=None, help="model name on --aligner-server")
    parser.add_argument("--template", default=None, help="the Aligner's template (default: from the checkpoint)")
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--aligner-timeout", type=float, default=120.0, help="seconds to wait for a correction")
    parser.add_argument("--upstream-timeout", type=float, default=120.0, help="seconds to wait for the upstream")
    parser.add_argument("--fail-open", action="store_true", help="on an Aligner failure return the uncorrected reply")
    parser.add_argument(
        "--stream-mode",
        choices=STREAM_MODES,
        default=DEFAULT_STREAM_MODE,
        help="stream=true replies: 'whole' (read the upstream reply in full, then stream its correction) or "
        f"'segments' (correct each segment while the upstream streams; n=1 only) (default: {DEFAULT_STREAM_MODE})",
    )
    parser.add_argument(
        "--header-timeout", type=float, default=10.0, help="seconds a client may take to send its headers (then closed)"
    )
    parser.add_argument("--body-timeout", type=float, default=30.0, help="seconds a client may take to send its body")
    parser.add_argument(
        "--api-key-env",
        default="ALIGNER_PROXY_API_KEY",
        help="variable holding the key clients must send to the proxy (default ALIGNER_PROXY_API_KEY; unset: none)",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--log-level", default="info")
    return parser


def build_app(args: argparse.Namespace):
    from aligner_chains import Aligner
    from integrations.openai_proxy.app import create_proxy_app

    if args.aligner_server:
        aligner = Aligner.from_server(args.aligner_server, model=args.aligner_model, template=args.template)
    else:
        aligner = Aligner.from_pretrained(args.aligner, template=args.template)
    return create_proxy_app(
        aligner,
        upstream_base_url=args.upstream,
        upstream_api_key=os.environ.get(args.upstream_api_key_env) or None,
        api_key=os.environ.get(args.api_key_env) or None,
        aligner_timeout=args.aligner_timeout,
        upstream_timeout=args.upstream_timeout,
        fail_open=args.fail_open,
        max_new_tokens=args.max_new_tokens,
        body_timeout=args.body_timeout,
        stream_mode=args.stream_mode,
    )


def main(argv: Sequence[str] | None = None) -> int:
    from aligner_chains.core.errors import AlignerError
    from aligner_chains.server.runner import run_server

    args = build_parser().parse_args(argv)
    try:
        app = build_app(args)
    except AlignerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"Correcting proxy on http://{args.host}:{args.port}/v1 -> {args.upstream}", file=sys.stderr)
    run_server(app, host=args.host, port=args.port, log_level=args.log_level, header_timeout=args.header_timeout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
