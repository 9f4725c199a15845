"""Weight averaging of exported Aligners that share one architecture (a checkpoint "soup").

Averaging the exports of consecutive fine-tuning phases often generalises better than any one of
them; the demo recipe uses it for its last phases.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from aligner_chains.core.errors import CheckpointError
from aligner_chains.jobs import write_atomic

WEIGHTS = "model.safetensors"


def average_exports(models: Sequence[str | Path], output_dir: str | Path) -> Path:
    """Write the element-wise mean of ``models``' weights to ``output_dir`` (other files from the last one).

    Every model must be a single-file safetensors export (as `train_sft` writes) with the same
    tensor names and shapes; otherwise a `CheckpointError` names the first mismatch.
    """
    paths = [Path(m) for m in models]
    if not paths:
        raise CheckpointError("average_exports needs at least one model directory.")
    for path in paths:
        if not (path / WEIGHTS).is_file():
            raise CheckpointError(f"{path} has no {WEIGHTS}: pass directories written by train_sft's export.")
    total: dict[str, torch.Tensor] = {}
    dtypes: dict[str, torch.dtype] = {}
    for path in paths:
        weights = load_file(path / WEIGHTS)
        if total and set(weights) != set(total):
            raise CheckpointError(f"{path} has other tensors than {paths[0]}: only one architecture can be averaged.")
        for name, tensor in weights.items():
            if name in total and total[name].shape != tensor.shape:
                want = tuple(total[name].shape)
                raise CheckpointError(f"{path}: {name} has shape {tuple(tensor.shape)}, not {want}.")
            dtypes[name] = tensor.dtype
            total[name] = total.get(name, torch.zeros(tensor.shape, dtype=torch.float64)) + tensor.double()
    out = Path(output_dir)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(paths[-1], out)
    save_file(
        {name: (t / len(paths)).to(dtypes[name]).contiguous() for name, t in total.items()},
        out / WEIGHTS,
        metadata={"format": "pt"},
    )
    config_path = out / "aligner_config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text(encoding="utf-8"))
        config["averaged_from"] = [str(p) for p in paths]
        write_atomic(config_path, json.dumps(config, indent=2) + "\n")
    return out
