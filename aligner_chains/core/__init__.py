"""Framework-free core: the `Aligner` facade, templates, `Correction`, errors and micro-batching.

Nothing here imports torch, transformers, LangChain, LlamaIndex or an HTTP client; the backends
that run models live in ``aligner_chains.backends``.
"""

from aligner_chains.core.aligner import Aligner
from aligner_chains.core.errors import (
    AlignerError,
    BackendError,
    BackendTimeoutError,
    CheckpointError,
    ConfigError,
    DataError,
    DatasetNotFoundError,
    InputTooLongError,
    MissingDependencyError,
    MissingQuestionError,
    ModelNotFoundError,
    TemplateError,
)
from aligner_chains.core.generation import Backend, GenerationOutput, GenerationParams
from aligner_chains.core.model_files import DEFAULT_MODEL_ENV, default_model
from aligner_chains.core.options import LOADING_OPTIONS
from aligner_chains.core.resolve import resolve_aligner
from aligner_chains.core.result import Correction, Diff, Edit
from aligner_chains.core.templates import Template, get_template, list_templates, register_template

__all__ = [
    "DEFAULT_MODEL_ENV",
    "LOADING_OPTIONS",
    "Aligner",
    "AlignerError",
    "Backend",
    "BackendError",
    "BackendTimeoutError",
    "CheckpointError",
    "ConfigError",
    "Correction",
    "DataError",
    "DatasetNotFoundError",
    "Diff",
    "Edit",
    "GenerationOutput",
    "GenerationParams",
    "InputTooLongError",
    "MissingDependencyError",
    "MissingQuestionError",
    "ModelNotFoundError",
    "Template",
    "TemplateError",
    "default_model",
    "get_template",
    "list_templates",
    "register_template",
    "resolve_aligner",
]
