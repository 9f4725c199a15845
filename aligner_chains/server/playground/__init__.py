"""The browser playground at ``/playground``: paste a question and an answer, watch the correction stream in,
then see the answer and the correction side by side with insertions and deletions highlighted.

A static page (HTML, CSS and vanilla JavaScript shipped beside this module; no build step, nothing loaded
from elsewhere) that calls the server's own ``POST /v1/corrections`` with ``stream`` and ``include_diff``.
The page needs no API key, since it holds no data; the API it calls still does, so with a key set the page
asks for it and keeps it in the tab's memory only. ``ServerConfig(playground=False)`` (``--no-playground``)
leaves it out.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from starlette.responses import JSONResponse, RedirectResponse, Response

from aligner_chains.server.config import ServerConfig
from aligner_chains.server.http import ApiError

__all__ = ["PLAYGROUND_PATH", "PLAYGROUND_ROUTES", "add_playground", "load_examples"]

HERE = Path(__file__).resolve().parent
PLAYGROUND_PATH = "/playground"
#: The files under ``/playground/`` and their content types (nothing else there is served).
ASSETS = {"playground.css": "text/css; charset=utf-8", "playground.js": "text/javascript; charset=utf-8"}
PLAYGROUND_ROUTES = frozenset(
    {PLAYGROUND_PATH, f"{PLAYGROUND_PATH}/settings.json", *(f"{PLAYGROUND_PATH}/{name}" for name in ASSETS)}
)
#: The page runs only its own script and talks only to this server; no other site may frame it.
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def load_examples() -> list[dict[str, str]]:
    """The example pairs the page offers: held-out pairs of the demo Aligner (see ``examples.json``'s source)."""
    examples: list[dict[str, str]] = json.loads((HERE / "examples.json").read_text(encoding="utf-8"))["examples"]
    return examples


def add_playground(app: FastAPI, *, model: str, config: ServerConfig) -> None:
    """Serve the playground page, its assets and its settings on ``app`` (none of them needs the API key).

    The settings tell the page the model name, whether to ask for a key (never the key) and the token limit.
    """
    page = (HERE / "index.html").read_bytes()
    files = {name: (HERE / name).read_bytes() for name in ASSETS}
    settings: dict[str, Any] = {
        "model": model,
        "api_key_required": bool(config.api_key),
        "max_tokens_limit": config.max_tokens_limit,
        "examples": load_examples(),
    }

    @app.get(PLAYGROUND_PATH, include_in_schema=False)
    async def playground() -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers=HEADERS)

    @app.get(f"{PLAYGROUND_PATH}/", include_in_schema=False)
    async def playground_slash() -> Response:
        return RedirectResponse("../playground", status_code=308)  # relative: works behind a path prefix too

    @app.get(f"{PLAYGROUND_PATH}/settings.json", include_in_schema=False)
    async def playground_settings() -> Response:
        return JSONResponse(settings, headers=HEADERS)

    @app.get(f"{PLAYGROUND_PATH}/{{name}}", include_in_schema=False)
    async def playground_asset(name: str) -> Response:
        if name not in files:
            raise ApiError(
                404,
                f"No playground file {name!r}; the page is at {PLAYGROUND_PATH}.",
                code="not_found",
            )
        return Response(files[name], media_type=ASSETS[name], headers=HEADERS)
