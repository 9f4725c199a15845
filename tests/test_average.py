"""Weight averaging of exports (`aligner_chains.finetune.average`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from aligner_chains import Aligner
from aligner_chains.core.errors import CheckpointError
from aligner_chains.finetune.average import average_exports
from aligner_chains.testing import build_tiny_llama


def test_average_is_the_mean_and_loads(tmp_path: Path) -> None:
    a = build_tiny_llama(tmp_path / "a", seed=0)
    b = build_tiny_llama(tmp_path / "b", seed=1)
    out = average_exports([a, b], tmp_path / "avg")
    wa, wb, wm = (load_file(p / "model.safetensors") for p in (a, b, out))
    assert set(wm) == set(wa)
    for name in wa:
        assert wm[name].dtype == wa[name].dtype
        torch.testing.assert_close(wm[name], (wa[name] + wb[name]) / 2)
    assert json.loads((out / "aligner_config.json").read_text())["averaged_from"] == [str(a), str(b)]
    assert Aligner.from_pretrained(str(out), max_new_tokens=4, micro_batching=False).correct("Q?", "An answer.")


def test_average_refuses_mismatched_or_missing_models(tmp_path: Path) -> None:
    a = build_tiny_llama(tmp_path / "a")
    wide = build_tiny_llama(tmp_path / "wide", hidden_size=64)
    with pytest.raises(CheckpointError, match="shape"):
        average_exports([a, wide], tmp_path / "avg")
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        average_exports([a, tmp_path / "missing"], tmp_path / "avg")
    with pytest.raises(CheckpointError, match="at least one"):
        average_exports([], tmp_path / "avg")
