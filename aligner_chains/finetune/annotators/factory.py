"""Build an annotator from an object (`as_annotator`) or from an OAIF config block (`annotator_from_settings`)."""

from __future__ import annotations

import importlib
from typing import Any

from aligner_chains.core.errors import ConfigError
from aligner_chains.finetune.annotators.base import (
    Annotator,
    CallableAnnotator,
    LengthAnnotator,
)
from aligner_chains.finetune.annotators.llm import DEFAULT_INSTRUCTIONS, LLMAnnotator
from aligner_chains.finetune.annotators.models import AlignerAnnotator, RewardModelAnnotator


def as_annotator(obj: Any) -> Annotator:
    """An `Annotator` from an annotator, a LangChain chat model, an Aligner or a callable."""
    if isinstance(obj, Annotator):
        return obj
    try:
        from langchain_core.language_models import BaseChatModel
    except ImportError:  # pragma: no cover - langchain-core is a dependency
        BaseChatModel = ()  # type: ignore[assignment,misc]
    if isinstance(obj, BaseChatModel):
        return LLMAnnotator(obj)
    from aligner_chains.core.aligner import Aligner

    if isinstance(obj, Aligner):
        return AlignerAnnotator(obj)
    if callable(obj):
        return CallableAnnotator(obj)
    raise TypeError(
        f"Cannot use {type(obj).__name__} as an annotator: pass an Annotator, a LangChain chat model, "
        "an Aligner, or a callable (prompt, response_a, response_b) -> 0 | 1 | None."
    )


def _import_target(target: str) -> Any:
    module, sep, attr = target.partition(":")
    if not sep or not module or not attr:
        raise ConfigError(f"target {target!r} must look like 'package.module:name'.")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"Cannot import {target!r}: {exc}") from exc


def annotator_from_settings(settings: Any) -> Annotator:
    """Build the annotator an `AnnotatorSettings` describes (the ``annotator`` block of an OAIF config)."""
    kind = settings.type
    if kind == "length":
        return LengthAnnotator(settings.prefer, settings.unit)
    if kind == "callable":
        if not settings.target:
            raise ConfigError("annotator type 'callable' needs target: 'module:function'.")
        return CallableAnnotator(_import_target(settings.target), settings.max_concurrency)
    if kind == "llm":
        if settings.target:
            chat_model = _import_target(settings.target)(**settings.kwargs)
        elif settings.model:
            try:
                from langchain.chat_models import init_chat_model
            except ImportError as exc:
                from aligner_chains.core.errors import MissingDependencyError

                raise MissingDependencyError(
                    "annotator model 'provider:name' needs langchain: pip install -e '.[langchain]', "
                    "or give target: 'module:factory' returning a chat model."
                ) from exc
            chat_model = init_chat_model(settings.model, **settings.kwargs)
        else:
            raise ConfigError("annotator type 'llm' needs model: 'provider:name' or target: 'module:factory'.")
        return LLMAnnotator(
            chat_model,
            settings.instructions or DEFAULT_INSTRUCTIONS,
            both_orders=settings.both_orders,
            max_concurrency=settings.max_concurrency,
        )
    if kind == "reward_model":
        if not settings.model:
            raise ConfigError("annotator type 'reward_model' needs model: PATH of a sequence-classification model.")
        return RewardModelAnnotator(settings.model, **settings.kwargs)
    if kind == "aligner":
        return AlignerAnnotator(settings.model, **settings.kwargs)
    raise ConfigError(f"Unknown annotator type {kind!r}.")
