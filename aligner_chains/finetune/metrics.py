"""Per-step training metrics as JSONL (``output_dir/metrics.jsonl``), resume-aware, plus the trainers' shared bits."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from aligner_chains.core.model_files import read_aligner_config, resolve_model_path
from aligner_chains.core.templates import Template, get_template
from aligner_chains.jobs import jsonl_lines, write_atomic

METRICS_FILE = "metrics.jsonl"


class MetricsLog:
    """Appends one JSON object per logged step; on resume, drops entries logged after the checkpoint.

    Only the main process writes (``enabled=False`` elsewhere).
    """

    def __init__(self, output_dir: str | Path, start_step: int, enabled: bool = True) -> None:
        self.path = Path(output_dir) / METRICS_FILE
        self.enabled = enabled
        if not enabled:
            return
        kept = [m for m in read_metrics(self.path) if m.get("step", 0) <= start_step] if start_step else []
        write_atomic(self.path, "".join(json.dumps(m) + "\n" for m in kept))  # a kill here keeps the old log

    def write(self, step: int, values: dict[str, Any]) -> None:
        if self.enabled:
            with self.path.open("a", encoding="utf-8") as sink:
                sink.write(json.dumps({"step": step, **values}) + "\n")


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Entries of a ``metrics.jsonl`` (a run directory is accepted too); [] when there is none.

    A torn last line (the run was killed while writing it) is left out.
    """
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8")
    complete = text[: text.rfind("\n") + 1]
    return [json.loads(line) for _, line in jsonl_lines(complete)]


def json_safe(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by None, so ``json.dumps`` writes valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


def policy_template(template: str | dict[str, Any] | None, base_model: str) -> Template | None:
    """The template to record with the trained model: the configured one, else the base model's own
    (an Aligner stays an Aligner), else None (an upstream model)."""
    if template is not None:
        return get_template(template)
    stored = (read_aligner_config(resolve_model_path(base_model)) or {}).get("template")
    return get_template(stored) if stored is not None else None
