"""Find an Aligner's model directory (a path, ``"demo"`` or a cached hub id) and read its ``aligner_config.json``.

No torch or transformers here: the remote backend reads a local ``aligner_config.json`` too.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from aligner_chains.core.errors import CheckpointError, ModelNotFoundError
from aligner_chains.core.generation import GenerationParams
from aligner_chains.demo import DEMO_MODEL_DIR, DEMO_MODEL_NAME

ALIGNER_CONFIG_NAME = "aligner_config.json"
#: Environment variable naming the Aligner every face loads when none is named.
DEFAULT_MODEL_ENV = "ALIGNER_MODEL"
#: Environment variable that, set to 1, keeps transformers' progress bars and warnings while a model loads.
VERBOSE_ENV = "ALIGNER_VERBOSE"

logger = logging.getLogger("aligner_chains")
_warned_demo_default = False


def default_model() -> str:
    """The Aligner to load when none is named, the one rule of every face (core, LangChain, LlamaIndex, CLI, server).

    ``$ALIGNER_MODEL`` when set (a path or hub id, e.g. ``aligner/aligner-7b-v1.0``), else ``"demo"``:
    the shipped demo Aligner, which works offline but is a demo, not a safety model (a warning says
    so once per process).
    """
    global _warned_demo_default
    configured = os.environ.get(DEFAULT_MODEL_ENV, "").strip()
    if configured:
        return configured
    if not _warned_demo_default:
        _warned_demo_default = True
        logger.warning(
            "No Aligner named: using the shipped demo Aligner, a small demo and not a safety model. "
            "Pass a model (e.g. 'aligner/aligner-7b-v1.0') or set $%s.",
            DEFAULT_MODEL_ENV,
        )
    return DEMO_MODEL_NAME


def resolve_model_path(model_id: str, *, revision: str | None = None) -> Path:
    """A local directory for ``model_id``: a path, ``"demo"``, or a hub id found in the HF cache."""
    if not isinstance(model_id, (str, Path)):
        raise TypeError(f"model must be a path or hub id string, got {type(model_id).__name__}")
    model_id = str(model_id)
    if model_id == DEMO_MODEL_NAME:
        if not (DEMO_MODEL_DIR / "config.json").is_file():
            raise ModelNotFoundError(
                f"The demo Aligner is not in this installation ({DEMO_MODEL_DIR} has no config.json). "
                "Reinstall aligner-chains, or rebuild it from a clone: "
                "`python -m cookbook.demo_aligner.train --install`."
            )
        return DEMO_MODEL_DIR
    local = Path(model_id).expanduser()
    if local.exists():
        if not local.is_dir():
            raise ModelNotFoundError(f"Model path {str(local)!r} is a file; pass the directory that holds config.json.")
        return local.resolve()
    if model_id.startswith((".", "/", "~")) or model_id.count("/") != 1:
        raise ModelNotFoundError(
            f"No model directory at {model_id!r} and it is not a hub id of the form 'owner/name'. "
            "Check the path, or pass a hub id such as 'aligner/aligner-7b-v1.0'."
        )
    return _snapshot(model_id, revision)


def _snapshot(repo_id: str, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "tokenizer*"]
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as exc:
        raise ModelNotFoundError(
            f"Model {repo_id!r} is not a local directory and is not in the Hugging Face cache "
            f"(offline or unreachable: {type(exc).__name__}). Download it once with network: "
            f"`hf download {repo_id}` (or huggingface_hub.snapshot_download('{repo_id}')), "
            "or pass the path of a local copy."
        ) from exc


def read_aligner_config(path: Path) -> dict[str, Any] | None:
    """The ``aligner_config.json`` beside the weights, or None when there is none."""
    file = path / ALIGNER_CONFIG_NAME
    if not file.is_file():
        return None
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{file} is not valid JSON ({exc}); fix or delete it.") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{file} must hold a JSON object, found {type(data).__name__}.")
    check_stored_generation(data.get("generation"), file)
    phrases = data.get("draft_phrases")
    if phrases is not None and not (isinstance(phrases, list) and all(isinstance(x, str) for x in phrases)):
        raise CheckpointError(
            f"{file}: 'draft_phrases' must be a list of strings (text the model writes the same way each time, "
            f"such as its refusals), found {json.dumps(phrases)[:80]}. Fix or remove it."
        )
    return data


def check_stored_generation(block: Any, file: Path) -> None:
    """Fail with `CheckpointError` unless ``block`` (``aligner_config.json``'s ``generation``) is None or an
    object of `GenerationParams` settings with the right types, so a bad file fails at load, not mid-run."""
    if block is None:
        return
    known = sorted(GenerationParams.model_fields)
    if not isinstance(block, dict):
        raise CheckpointError(
            f"{file}: 'generation' must be a JSON object of generation settings ({', '.join(known)}), "
            f"found {type(block).__name__} {json.dumps(block)[:80]}. Fix or remove it."
        )
    unknown = sorted(set(block) - set(known))
    if unknown:
        raise CheckpointError(
            f"{file}: 'generation' holds unknown setting(s) {unknown}; the settings stored with a model are "
            f"{', '.join(known)} (other generate() options go to each call). Fix or remove them."
        )
    try:
        GenerationParams.model_validate(block, strict=True)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}={error.get('input')!r}: {error['msg']}"
            for error in exc.errors()
        )
        raise CheckpointError(f"{file}: 'generation' is invalid ({problems}). Fix or remove it.") from exc
