"""Prompt templates of the released Aligner checkpoints, and the registry users extend.

A template is the whole prompt text with ``{question}`` and ``{answer}`` placeholders. Rendering
substitutes both in one pass, so braces or placeholder-like text inside a question or answer are
kept verbatim.
"""

from __future__ import annotations

import re
import threading
from typing import Any

from pydantic import BaseModel, ConfigDict

from aligner_chains.core.errors import TemplateError

_PLACEHOLDER = re.compile(r"\{(question|answer)\}")

_PREFIX = "BEGINNING OF CONVERSATION: USER: "
_SUFFIX = " ASSISTANT:"


class Template(BaseModel):
    """A named prompt format: the text an Aligner was trained to read."""

    model_config = ConfigDict(frozen=True)

    name: str
    prompt: str
    description: str = ""

    def __init__(self, name: str | None = None, prompt: str | None = None, **data: Any) -> None:
        if name is not None:
            data["name"] = name
        if prompt is not None:
            data["prompt"] = prompt
        super().__init__(**data)
        self._check_placeholders()

    def _check_placeholders(self) -> None:
        if not self.name or not self.name.strip():
            raise TemplateError("Template name is empty: give it a name, e.g. Template('my-aligner', prompt=...)")
        found = _PLACEHOLDER.findall(self.prompt)
        for key in ("question", "answer"):
            count = found.count(key)
            if count != 1:
                raise TemplateError(
                    f"Template {self.name!r} must contain the placeholder {{{key}}} exactly once, "
                    f"found it {count} times in {self.prompt!r}. Write both {{question}} and {{answer}}."
                )

    def render(self, question: str, answer: str) -> str:
        """Return the full prompt for one (question, answer) pair."""
        values = {"question": question, "answer": answer}
        return _PLACEHOLDER.sub(lambda m: values[m.group(1)], self.prompt)

    def render_split(self, question: str, answer: str) -> tuple[str, str, str, str, str]:
        """Return the prompt as (head, question, middle, answer, tail), whatever the placeholder order."""
        parts = _PLACEHOLDER.split(self.prompt)
        # parts = [head, key1, middle, key2, tail]
        values = {"question": question, "answer": answer}
        return parts[0], values[parts[1]], parts[2], values[parts[3]], parts[4]


def _wrap(user_input: str) -> str:
    return _PREFIX + user_input + _SUFFIX


BUILTIN_TEMPLATES: tuple[Template, ...] = (
    Template(
        "aligner-v1",
        prompt=_wrap(
            "Edit the following Question-Answer pair to make it more helpful and harmless: {question} | {answer}"
        ),
        description="aligner/aligner-7b-v1.0 and the first released checkpoints",
    ),
    Template(
        "aligner-v2",
        prompt=_wrap("##Question: {question}\n##Answer: {answer}\n##Correction: "),
        description="reference training code since Dec 2024; default for new models",
    ),
    Template(
        "aligner-revision",
        prompt=_wrap("##Question: {question} ##Answer: {answer} ##Revision: "),
        description="the Aligner-2B used on AlpacaEval",
    ),
)

# Hub ids of released checkpoints whose repositories carry no aligner_config.json.
KNOWN_MODELS: dict[str, str] = {
    "aligner/aligner-7b-v1.0": "aligner-v1",
}

DEFAULT_TEMPLATE = "aligner-v2"

_registry: dict[str, Template] = {t.name: t for t in BUILTIN_TEMPLATES}
_lock = threading.Lock()


def register_template(template: Template, *, overwrite: bool = False) -> Template:
    """Add a user template to the registry so it can be named by string everywhere."""
    if not isinstance(template, Template):
        raise TypeError(f"register_template expects a Template, got {type(template).__name__}")
    with _lock:
        existing = _registry.get(template.name)
        if existing is not None and existing != template and not overwrite:
            raise TemplateError(
                f"A different template named {template.name!r} is already registered; "
                "pick another name or pass overwrite=True."
            )
        _registry[template.name] = template
    return template


def get_template(template: str | Template | dict[str, Any]) -> Template:
    """Resolve a template name, a dict (as stored in aligner_config.json) or a Template."""
    if isinstance(template, Template):
        return template
    if isinstance(template, dict):
        try:
            return Template(**template)
        except TemplateError:
            raise
        except Exception as exc:  # pydantic validation of a stored dict
            raise TemplateError(f"Invalid template definition {template!r}: {exc}") from exc
    if isinstance(template, str):
        with _lock:
            found = _registry.get(template)
        if found is None:
            raise TemplateError(
                f"Unknown template {template!r}. Known: {', '.join(list_templates())}. "
                "Register your own with register_template(Template(name, prompt='...{question}...{answer}...'))."
            )
        return found
    raise TypeError(f"template must be a name, a dict or a Template, got {type(template).__name__}")


def list_templates() -> list[str]:
    """Names of all registered templates, built-in first."""
    with _lock:
        return list(_registry)


def template_for_model(model_id: str) -> str | None:
    """Template name of a known released checkpoint, or None."""
    return KNOWN_MODELS.get(model_id.strip().rstrip("/"))
