"""Framework-free core: templates, loading, generation engine, result type and errors."""

from aligner_chains.core.aligner import Aligner
from aligner_chains.core.engine import (
    Backend,
    DecodingStrategy,
    GenerationOutput,
    GenerationParams,
    HFGenerate,
    LocalBackend,
)
from aligner_chains.core.errors import (
    AlignerError,
    CheckpointError,
    ConfigError,
    DataError,
    InputTooLongError,
    MissingDependencyError,
    MissingQuestionError,
    ModelNotFoundError,
    TemplateError,
)
from aligner_chains.core.loading import LoadOptions, clear_model_cache, load_model
from aligner_chains.core.result import Correction, Edit
from aligner_chains.core.templates import Template, get_template, list_templates, register_template

__all__ = [
    "Aligner",
    "AlignerError",
    "Backend",
    "CheckpointError",
    "ConfigError",
    "Correction",
    "DataError",
    "DecodingStrategy",
    "Edit",
    "GenerationOutput",
    "GenerationParams",
    "HFGenerate",
    "InputTooLongError",
    "LoadOptions",
    "LocalBackend",
    "MissingDependencyError",
    "MissingQuestionError",
    "ModelNotFoundError",
    "Template",
    "TemplateError",
    "clear_model_cache",
    "get_template",
    "list_templates",
    "load_model",
    "register_template",
]
