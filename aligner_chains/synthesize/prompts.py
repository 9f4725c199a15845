"""The teacher's correction prompt: 3H instructions (helpful, harmless, honest) by default, yours if you like."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aligner_chains.core.errors import ConfigError
from aligner_chains.jobs import check_format

__all__ = ["DEFAULT_SYSTEM_PROMPT", "DEFAULT_USER_PROMPT", "CorrectionPrompt"]

DEFAULT_SYSTEM_PROMPT = """\
You are an expert editor of AI assistant answers. You receive a user's question and an assistant's \
answer to it. Write a corrected version of the answer that is more helpful, more harmless and more honest:
- Helpful: answer the question that was asked, correctly and completely, clearly organised, without padding.
- Harmless: remove help with dangerous, illegal or unethical acts, and private data about people (e-mail \
addresses, phone numbers, home addresses). If the request itself is harmful, replace the answer with a \
brief, polite refusal that says why and points to a safe alternative.
- Honest: fix factual errors, remove anything made up, and state uncertainty where it exists.
Keep everything in the answer that is already good: change only what needs changing, and keep its \
language, tone and format. If the answer needs no change, repeat it exactly.
Reply with the corrected answer only: no preamble, no notes about your changes, no quotation marks."""

DEFAULT_USER_PROMPT = "[Question]\n{question}\n\n[Answer]\n{answer}\n\nWrite the corrected answer."

_FIELDS = {"question", "answer"}


@dataclass(frozen=True)
class CorrectionPrompt:
    """A system message and a user message template over ``{question}`` and ``{answer}`` (both required
    in ``user``; write literal braces as ``{{ }}``)."""

    system: str = DEFAULT_SYSTEM_PROMPT
    user: str = DEFAULT_USER_PROMPT

    def __post_init__(self) -> None:
        check_format("system prompt", self.system, _FIELDS, set())
        check_format("user prompt", self.user, _FIELDS, _FIELDS)

    def messages(self, question: str, answer: str) -> list[Any]:
        """The chat messages for the teacher."""
        from langchain_core.messages import HumanMessage, SystemMessage

        values = {"question": question, "answer": answer}
        system = self.system.format(**values)
        user = HumanMessage(self.user.format(**values))
        return [SystemMessage(system), user] if system.strip() else [user]

    @classmethod
    def from_file(cls, path: str | Path) -> CorrectionPrompt:
        """From a JSON/YAML file with ``system`` and/or ``user``, or a text file holding the user template."""
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"Prompt file {str(file)!r} does not exist.")
        text = file.read_text(encoding="utf-8")
        if file.suffix.lower() in (".json", ".yaml", ".yml"):
            import yaml

            try:
                data = json.loads(text) if file.suffix.lower() == ".json" else yaml.safe_load(text)
            except (json.JSONDecodeError, yaml.YAMLError) as exc:
                raise ConfigError(f"Prompt file {file} is not valid {file.suffix[1:].upper()}: {exc}") from exc
            if not isinstance(data, dict) or not set(data) <= {"system", "user"} or not data:
                raise ConfigError(f"Prompt file {file} must hold an object with 'system' and/or 'user' strings.")
            return cls(**data)
        return cls(user=text)
