"""Name Python objects on the command line: ``module:attr``, ``path/to/file.py:attr``, or ``provider:model``."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any

from aligner_chains.core.errors import ConfigError, MissingDependencyError

__all__ = ["load_object"]


def _takes_no_arguments(obj: Any) -> bool:
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return False
    return all(
        p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in signature.parameters.values()
    )


def _import_attr(spec: str) -> Any:
    """The object named by ``module:attr`` or ``file.py:attr``; LookupError when it cannot be found."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr or not all(part.isidentifier() for part in attr.split(".")):
        raise LookupError(spec)
    if module_name.endswith(".py"):
        path = Path(module_name).expanduser()
        if not path.is_file():
            raise ConfigError(f"{spec!r}: no Python file {str(path)!r}.")
        name = f"_aligner_chains_spec_{abs(hash(str(path.resolve())))}"
        module = sys.modules.get(name)
        if module is None:
            loader_spec = importlib.util.spec_from_file_location(name, path)
            if loader_spec is None or loader_spec.loader is None:
                raise ConfigError(f"{spec!r}: cannot load {str(path)!r} as a Python module.")
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[name] = module
            loader_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and module_name.split(".")[0] == exc.name.split(".")[0]:
                raise LookupError(spec) from exc
            raise
    target = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise LookupError(spec)
        target = getattr(target, part)
    return target


def load_object(spec: str, *, what: str = "model") -> Any:
    """Resolve a command-line ``spec`` to an object.

    - ``module:attr`` or ``path/to/file.py:attr``: the attribute. A function or class that takes no
      required arguments is a *factory*: it is called and its result used. Anything else (a chat model,
      a judge, a list, a function of several arguments such as a judge function) is used as it is.
    - ``provider:model`` (e.g. ``openai:gpt-4o-mini``), when no such module attribute exists: a chat model
      from ``langchain.chat_models.init_chat_model`` (needs the ``langchain`` package and the provider's
      integration package).
    """
    if not isinstance(spec, str) or ":" not in spec:
        raise ConfigError(
            f"{what} spec {spec!r}: use 'module:factory' (a Python callable returning a chat model), "
            "'path/to/file.py:factory', or 'provider:model' such as 'openai:gpt-4o-mini'."
        )
    try:
        obj = _import_attr(spec)
    except LookupError:
        return _init_chat_model(spec, what)
    if (inspect.isfunction(obj) or inspect.isclass(obj) or inspect.ismethod(obj)) and _takes_no_arguments(obj):
        return obj()
    return obj


def _init_chat_model(spec: str, what: str) -> Any:
    try:
        from langchain.chat_models import init_chat_model
    except ImportError as exc:
        raise MissingDependencyError(
            f"{what} spec {spec!r} names no importable 'module:attr', and reading it as 'provider:model' "
            "needs the langchain package: pip install -e '.[langchain]' plus the provider's package "
            "(e.g. langchain-openai), or write a factory function and pass 'module:factory'."
        ) from exc
    try:
        return init_chat_model(spec)
    except ImportError as exc:
        raise MissingDependencyError(f"{what} spec {spec!r}: {exc}") from exc
    except ValueError as exc:
        raise ConfigError(
            f"{what} spec {spec!r} is neither an importable 'module:attr' nor a 'provider:model' that "
            f"init_chat_model accepts ({exc})."
        ) from exc
