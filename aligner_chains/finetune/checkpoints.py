"""Resumable checkpoints: ``accelerator.save_state`` folders named by optimizer step."""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from aligner_chains.jobs import write_atomic

DONE_MARKER = "step.json"


def checkpoint_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def latest_checkpoint(output_dir: str | Path) -> tuple[Path, int] | None:
    """The newest complete checkpoint (its marker is written last) and its step, or None."""
    found = []
    for path in checkpoint_dir(output_dir).glob("step-*"):
        marker = path / DONE_MARKER
        if marker.is_file():
            try:
                found.append((int(json.loads(marker.read_text())["step"]), path))
            except (ValueError, KeyError, json.JSONDecodeError):
                continue
    if not found:
        return None
    step, path = max(found)
    return path, step


def checkpoint_loss(path: Path) -> float | None:
    """The training loss a checkpoint's marker recorded at its step (None when absent or not a finite number).

    A resumed run that has no step left to train reports this as its final loss, not NaN.
    """
    try:
        loss = json.loads((path / DONE_MARKER).read_text(encoding="utf-8")).get("loss")
    except (OSError, ValueError, AttributeError):
        return None
    if isinstance(loss, (int, float)) and not isinstance(loss, bool) and math.isfinite(loss):
        return float(loss)
    return None


def save_checkpoint(accelerator: Any, output_dir: str | Path, step: int, keep: int, extra: dict[str, Any]) -> Path:
    """Save model, optimizer, scheduler and RNG state; then the marker; then prune old checkpoints."""
    path = checkpoint_dir(output_dir) / f"step-{step:08d}"
    with without_shared_tensor_warning():
        accelerator.save_state(str(path))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_atomic(path / DONE_MARKER, json.dumps({"step": step, **extra}))
        complete = sorted(p for p in checkpoint_dir(output_dir).glob("step-*") if (p / DONE_MARKER).is_file())
        for old in complete[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return path


@contextmanager
def without_shared_tensor_warning() -> Iterator[None]:
    """Drop accelerate's "Removed shared tensor {...} while saving" warnings while saving.

    Models with tied input and output embeddings (the demo's, most small models) hold one tensor under
    two names; safetensors stores it once and ``load_state`` ties it again, so the warning, printed at
    every checkpoint, reports the expected. Every other record of that logger passes.
    """
    source = logging.getLogger("accelerate.utils.other")
    drop = _MessageFilter("Removed shared tensor")
    source.addFilter(drop)
    try:
        yield
    finally:
        source.removeFilter(drop)


class _MessageFilter(logging.Filter):
    """Rejects the log records whose message holds ``text`` (accelerate may prefix ``[RANK 0]``)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()
