"""Lazy module attributes (PEP 562): a package names its exports, their modules load on first use.

This keeps ``import aligner_chains`` free of LangChain, FastAPI and the trainers, and lets
``python -m aligner_chains.finetune.sft`` run without its package having imported it first.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_getattr(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``exports[name]`` (a module path) and returns its ``name``."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module), name)

    return __getattr__


def lazy_dir(package: str, exports: dict[str, str]) -> Callable[[], list[str]]:
    """A module ``__dir__`` listing its own names and the lazily exported ones, as ``dir()`` users expect."""
    import sys

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *exports})

    return __dir__
