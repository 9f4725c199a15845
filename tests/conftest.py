"""Shared fixtures: tiny Llama checkpoints built on the spot; nothing is downloaded."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path

import pytest
import torch

from aligner_chains.testing import build_tiny_llama

# Tiny models run fastest on one thread; OpenMP threads on a busy 2-core machine spin for seconds.
torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:  # a notebook run (tests/test_*_notebook.py) is marked, so `make test-fast` leaves it out
        if item.path.stem.endswith("_notebook"):
            item.add_marker(pytest.mark.notebook)
            item.add_marker(pytest.mark.slow)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama whose tokenizer has no pad token (like Llama's), template aligner-v2."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_pad_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama whose tokenizer has its own pad token, template aligner-v1."""
    return build_tiny_llama(
        tmp_path_factory.mktemp("tiny_pad") / "model", template="aligner-v1", pad_token=True, seed=1
    )


@pytest.fixture(scope="session")
def tiny_aligner(tiny_model_dir: Path):
    from aligner_chains import Aligner

    return Aligner.from_pretrained(str(tiny_model_dir), max_new_tokens=8)
