"""Find, check and load an Aligner checkpoint, with one process-wide cache of loaded models.

Safe by default: safetensors only (pickle checkpoints need ``allow_pickle=True``) and
``trust_remote_code=False``. Hub ids resolve through the Hugging Face cache, so they work offline
once downloaded. Quiet by default: no transformers progress bar or chatter while loading (`quiet_transformers`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from aligner_chains.backends.tokenizers import TokenizerMode, load_tokenizer, tokenizer_lock
from aligner_chains.core.errors import (
    CheckpointError,
    ConfigError,
    MissingDependencyError,
    ModelNotFoundError,
)
from aligner_chains.core.model_files import VERBOSE_ENV, read_aligner_config, resolve_model_path

Quantization = Literal["4bit", "8bit"]

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


@dataclass(frozen=True)
class LoadOptions:
    """Everything that decides which weights end up where; also the model-cache key."""

    device: str = "auto"
    dtype: str = "auto"
    device_map: str | None = None
    quantization: Quantization | None = None
    adapter: str | None = None
    trust_remote_code: bool = False
    allow_pickle: bool = False
    revision: str | None = None
    tokenizer_mode: TokenizerMode = "auto"


@dataclass
class LoadedModel:
    """A model and tokenizer ready for generation, with where they came from."""

    model: Any
    tokenizer: Any
    model_id: str
    path: Path
    device: torch.device
    dtype: torch.dtype
    aligner_config: dict[str, Any] | None
    max_context: int | None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    # Fast tokenizers set padding/truncation state on the shared Rust object for each call, so
    # concurrent calls with different settings corrupt each other: every call takes this lock, the
    # tokenizer's one lock (`LockedTokenizer` wrappers of it, anywhere, take the same).
    tokenizer_lock: threading.Lock = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.tokenizer_lock = tokenizer_lock(self.tokenizer)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; anything else is passed to ``torch.device``."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"Unknown device {device!r}: use 'auto', 'cpu', 'cuda', 'cuda:0' or 'mps'.") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r} but CUDA is not available here: use device='auto' or 'cpu'.")
    return resolved


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """``auto``: bf16 on GPUs that support it, fp16 on other GPUs and mps, fp32 on CPU."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "mps":
            return torch.float16
        return torch.float32
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise ConfigError(f"Unknown dtype {dtype!r}: use 'auto', {', '.join(sorted(_DTYPES))}.") from None


def check_checkpoint(path: Path, *, allow_pickle: bool) -> None:
    """Fail early, with the reason, on a directory that is not a loadable safe checkpoint."""
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path} has no config.json: it is not a Hugging Face model directory.")
    safe = list(path.glob("*.safetensors"))
    pickled = [p for p in path.glob("*.bin")] + [p for p in path.glob("*.pt")]
    if not safe and not pickled:
        raise CheckpointError(f"{path} holds no weights (*.safetensors). Save the model with save_pretrained().")
    if not safe and not allow_pickle:
        raise CheckpointError(
            f"{path} holds only pickle weights ({pickled[0].name}), which can run code when loaded. "
            "Convert them to safetensors, or pass allow_pickle=True if you trust the source."
        )


def check_loaded_weights(path: Path, loading_info: dict[str, Any]) -> None:
    """Fail with `CheckpointError` naming the weights the model lacked or did not use.

    transformers fills a missing tensor with random values and drops an unexpected one, with only a
    log line: a checkpoint short of ``model.embed_tokens.weight``, or whose ``num_hidden_layers``
    disagrees with its weights, would load and generate garbage. Tied weights (``lm_head`` with
    ``tie_word_embeddings``) are not reported missing by transformers, so they pass.
    """
    problems = []
    for key, what in (
        ("missing_keys", "missing from the checkpoint (the model would use random values)"),
        ("unexpected_keys", "in the checkpoint but not in the model its config.json describes (they would be dropped)"),
        ("mismatched_keys", "of the wrong shape"),
    ):
        names = sorted(str(name if isinstance(name, str) else name[0]) for name in loading_info.get(key) or ())
        if names:
            shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
            problems.append(f"{len(names)} weight(s) {what}: {shown}")
    problems += [str(message) for message in loading_info.get("error_msgs") or ()]
    if problems:
        raise CheckpointError(
            f"The weights in {path} do not match its config.json: " + "; ".join(problems) + ". The checkpoint is "
            "incomplete, or config.json (e.g. num_hidden_layers) does not describe these weights: re-download "
            "or re-export it."
        )


def quantization_config(quantization: Quantization | None, dtype: torch.dtype) -> Any:
    if quantization is None:
        return None
    if quantization not in ("4bit", "8bit"):
        raise ConfigError(f"Unknown quantization {quantization!r}: use '4bit' or '8bit'.")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(
            f"quantization={quantization!r} needs bitsandbytes: pip install -e '.[quant]'."
        ) from exc
    from transformers import BitsAndBytesConfig

    if quantization == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
    return BitsAndBytesConfig(load_in_8bit=True)


def _apply_adapter(model: Any, adapter: str) -> Any:
    try:
        from peft import PeftModel
    except ImportError as exc:
        raise MissingDependencyError(f"adapter={adapter!r} needs peft: pip install -e '.[lora]'.") from exc
    if not (Path(adapter) / "adapter_config.json").is_file():
        raise ModelNotFoundError(f"Adapter path {adapter!r} has no adapter_config.json; pass a saved PEFT adapter.")
    return PeftModel.from_pretrained(model, adapter)


def _context_length(model: Any, tokenizer: Any) -> int | None:
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < 10**7:
        return limit
    return None


def verbose() -> bool:
    """True when ``$ALIGNER_VERBOSE`` is set to something other than ``0``/``false``: loading stays chatty."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Within: no transformers progress bars ("Loading weights", "Writing model shards") and only its errors
    logged; both restored after. Around every load here, and around the trainers' loads and exports.

    Process-wide while it lasts (transformers has one switch for each), so a bar another thread shows
    during a load is hidden too. ``ALIGNER_VERBOSE=1`` (``aligner-chains --verbose``) leaves both on.
    """
    if verbose():
        yield
        return
    from transformers.utils import logging as hf_logging

    bars, level = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hub_bars_off = _hub_progress_bars_disabled()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()
        if _hub_progress_bars_disabled() != hub_bars_off:  # transformers' switches flip huggingface_hub's too
            from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

            (disable_progress_bars if hub_bars_off else enable_progress_bars)()


def _hub_progress_bars_disabled() -> bool:
    from huggingface_hub.utils import are_progress_bars_disabled

    return bool(are_progress_bars_disabled())


def mute_length_warning(tokenizer: Any) -> None:
    """Silence the tokenizer's "Token indices sequence length is longer than the specified maximum" warning.

    The Aligner measures every prompt against the context itself (``overflow=``, `InputTooLongError`), so
    the warning, printed once per tokenizer on the first long input, says nothing the caller is not told.
    """
    flags = getattr(tokenizer, "deprecation_warnings", None)
    if isinstance(flags, dict):
        flags["sequence-length-is-longer-than-the-specified-maximum"] = True


def _load_uncached(model_id: str, path: Path, options: LoadOptions) -> LoadedModel:
    with quiet_transformers():
        return _load_quietly(model_id, path, options)


def _load_quietly(model_id: str, path: Path, options: LoadOptions) -> LoadedModel:
    from transformers import AutoModelForCausalLM

    check_checkpoint(path, allow_pickle=options.allow_pickle)
    aligner_config = read_aligner_config(path)
    device = resolve_device(options.device)
    dtype = resolve_dtype(options.dtype, device)
    tokenizer = load_tokenizer(path, trust_remote_code=options.trust_remote_code, tokenizer_mode=options.tokenizer_mode)
    mute_length_warning(tokenizer)
    kwargs: dict[str, Any] = {
        "dtype": dtype,
        "trust_remote_code": options.trust_remote_code,
        "use_safetensors": None if options.allow_pickle else True,
    }
    quant = quantization_config(options.quantization, dtype)
    if quant is not None:
        kwargs["quantization_config"] = quant
        kwargs["device_map"] = options.device_map or "auto"
    elif options.device_map is not None:
        kwargs["device_map"] = options.device_map
    try:
        model, loading_info = AutoModelForCausalLM.from_pretrained(str(path), output_loading_info=True, **kwargs)
    except (MissingDependencyError, ModelNotFoundError):
        raise
    except Exception as exc:
        raise CheckpointError(
            f"Cannot load the model weights from {path}: {type(exc).__name__}: {exc}. "
            "The checkpoint may be corrupt or incomplete: re-download or re-export it."
        ) from exc
    check_loaded_weights(path, loading_info)
    if "device_map" not in kwargs:
        model.to(device)
    if options.adapter is not None:
        model = _apply_adapter(model, options.adapter)
    model.eval()
    if getattr(model, "hf_device_map", None):
        device = next(model.parameters()).device
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        model_id=str(model_id),
        path=path,
        device=device,
        dtype=dtype,
        aligner_config=aligner_config,
        max_context=_context_length(model, tokenizer),
    )


_cache: dict[tuple[str, LoadOptions], LoadedModel] = {}
_cache_lock = threading.Lock()
_load_locks: dict[tuple[str, LoadOptions], threading.Lock] = {}


def load_model(model_id: str, options: LoadOptions | None = None) -> LoadedModel:
    """Load (or fetch from the process-wide cache) the model and tokenizer for ``model_id``.

    Users of the same (path, dtype, device, adapter, ...) share one copy of the weights.
    """
    options = options or LoadOptions()
    path = resolve_model_path(model_id, revision=options.revision)
    device = resolve_device(options.device)
    key_options = LoadOptions(
        device=str(device) if options.device_map is None else "map",
        dtype=str(resolve_dtype(options.dtype, device)),
        device_map=options.device_map,
        quantization=options.quantization,
        adapter=str(Path(options.adapter).resolve()) if options.adapter else None,
        trust_remote_code=options.trust_remote_code,
        allow_pickle=options.allow_pickle,
        revision=options.revision,
        tokenizer_mode=options.tokenizer_mode,
    )
    key = (str(path), key_options)
    with _cache_lock:
        if key in _cache:
            return _cache[key]
        load_lock = _load_locks.setdefault(key, threading.Lock())
    with load_lock:  # one load per key, even when many threads ask at once
        with _cache_lock:
            if key in _cache:
                return _cache[key]
        loaded = _load_uncached(str(model_id), path, options)
        with _cache_lock:
            _cache[key] = loaded
        return loaded


def clear_model_cache(model_id: str | None = None) -> None:
    """Drop every cached model, or only those loaded from ``model_id`` (frees memory once no Aligner holds them)."""
    path = None if model_id is None else str(resolve_model_path(model_id))
    with _cache_lock:
        for key in [k for k in _cache if path is None or k[0] == path]:
            del _cache[key]
            _load_locks.pop(key, None)


def cached_model_count() -> int:
    """How many distinct models the process-wide cache holds."""
    with _cache_lock:
        return len(_cache)
