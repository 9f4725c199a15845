"""One small error hierarchy: every message names the offending value and the fix."""

from __future__ import annotations


class AlignerError(Exception):
    """Base class of every error raised by aligner-chains."""


class TemplateError(AlignerError, ValueError):
    """A prompt template is unknown or malformed."""


class ModelNotFoundError(AlignerError, FileNotFoundError):
    """A model path or hub id could not be resolved to files on this machine."""


class DatasetNotFoundError(AlignerError, FileNotFoundError):
    """A dataset id or path could not be resolved to data files on this machine."""


class CheckpointError(AlignerError):
    """A checkpoint exists but cannot be loaded (corrupt, unsafe format, wrong kind)."""


class MissingDependencyError(AlignerError, ImportError):
    """An optional feature needs a package that is not installed."""


class InputTooLongError(AlignerError, ValueError):
    """Question + answer + max_new_tokens do not fit the model's context window."""

    def __init__(self, message: str, *, prompt_tokens: int, max_new_tokens: int, context: int):
        super().__init__(message)
        self.prompt_tokens = prompt_tokens
        self.max_new_tokens = max_new_tokens
        self.context = context


class ConfigError(AlignerError, ValueError):
    """An option or configuration value is invalid."""


class DataError(AlignerError, ValueError):
    """A dataset file or row is malformed; the message names file, line and field."""


class MissingQuestionError(AlignerError, ValueError):
    """No question could be found for an answer (and the caller asked for an error)."""


class BackendError(AlignerError):
    """A generation server failed or refused a request (HTTP error, unreachable, bad reply)."""

    def __init__(self, message: str, *, status_code: int | None = None, url: str | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.url = url


class BackendTimeoutError(BackendError, TimeoutError):
    """A generation server did not answer in time."""
