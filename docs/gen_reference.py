"""MkDocs hook: fills the CLI and config reference pages from the code, so they cannot drift from it.

A page holding ``<!-- cli-reference -->`` gets the ``--help`` of every ``aligner-chains`` command, from the
argparse parsers `aligner_chains.cli.commands.build_parser` builds; ``<!-- config-reference -->`` gets a
table (field, type, default, description) per config model of `_config_models` (the trainers' and the server's).
"""

from __future__ import annotations

import argparse
import ast
import inspect
import os
import re
import textwrap
import typing
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel

CLI_MARKER = "<!-- cli-reference -->"
CONFIG_MARKER = "<!-- config-reference -->"
#: The width ``--help`` is wrapped to on the page.
HELP_COLUMNS = 100


def _config_models() -> list[type[BaseModel]]:
    from aligner_chains.finetune.config import DPOConfig, OAIFConfig, SFTConfig
    from aligner_chains.server.config import ServerConfig

    return [SFTConfig, DPOConfig, OAIFConfig, ServerConfig]


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    """MkDocs event: replace the markers of a page by the references they stand for."""
    if CLI_MARKER in markdown:
        markdown = markdown.replace(CLI_MARKER, cli_reference())
    if CONFIG_MARKER in markdown:
        markdown = markdown.replace(CONFIG_MARKER, config_reference())
    return markdown


# ----------------------------------------------------------------------------- CLI


def _commands(parser: argparse.ArgumentParser, depth: int = 0) -> Iterator[tuple[int, argparse.ArgumentParser]]:
    """``parser`` and every subcommand parser under it, depth first, in the order ``--help`` lists them."""
    yield depth, parser
    seen: set[int] = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                if id(sub) not in seen:  # aliases map to the same parser
                    seen.add(id(sub))
                    yield from _commands(sub, depth + 1)


def cli_reference() -> str:
    """One section per command: its name as a heading and its ``--help`` verbatim."""
    from aligner_chains.cli.commands import build_parser

    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(HELP_COLUMNS)  # argparse wraps to the terminal's width
    try:
        sections = [
            f"{'#' * min(2 + depth, 4)} `{parser.prog}`\n\n```text\n{parser.format_help().rstrip()}\n```\n"
            for depth, parser in _commands(build_parser())
        ]
    finally:
        if previous is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = previous
    return "\n".join(sections)


# ----------------------------------------------------------------------------- config models


def _attribute_docs(model: type[BaseModel]) -> dict[str, str]:
    """The docstrings written under fields (``x: int = 1`` then ``\"\"\"What x is.\"\"\"``), base classes first.

    For models without ``use_attribute_docstrings``, whose fields then carry no description.
    """
    docs: dict[str, str] = {}
    for cls in reversed(model.__mro__):
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)) or cls is BaseModel:
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, after in zip(body, [*body[1:], None], strict=True):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[node.target.id] = inspect.cleandoc(after.value.value)
    return docs


def _field(model: type[BaseModel], key: str) -> Any:
    """The pydantic field a dotted config key (``lora.r``, aliases allowed) names."""
    head, _, rest = key.partition(".")
    field = next(f for name, f in model.model_fields.items() if head in (name, f.alias))
    if not rest:
        return field
    nested = next(a for a in typing.get_args(field.annotation) or (field.annotation,) if isinstance(a, type))
    return _field(nested, rest)


def _bounds(field: Any) -> str:
    """``≥ 1``, ``> 0, < 1``: the numeric bounds pydantic checks."""
    signs = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}
    return ", ".join(
        f"{sign} {getattr(item, key)}"
        for item in field.metadata
        for key, sign in signs.items()
        if getattr(item, key, None) is not None
    )


_CODE_SPAN = re.compile(r"(``.*?``|`[^`]*`)")


def _cell(text: str) -> str:
    """Text fit for one table cell: one line, pipes outside code spans escaped (the table reads those in spans)."""
    parts = _CODE_SPAN.split(" ".join(text.split()))
    return "".join(part if i % 2 else part.replace("|", "\\|") for i, part in enumerate(parts))


def config_table(model: type[BaseModel]) -> str:
    """A Markdown table of ``model``'s settings as a config file spells them (nested blocks as ``lora.r``).

    The rows are `aligner_chains.finetune.config.field_docs`, what the trainers' ``--help`` lists, plus the
    numeric bounds each field checks.
    """
    from aligner_chains.finetune.config import field_docs

    docs = _attribute_docs(model)
    rows = ["| field | type | default | description |", "|---|---|---|---|"]
    for row in field_docs(model):
        field = _field(model, row.name)
        bounds = _bounds(field)
        kind = f"`{row.type}`" + (f" ({bounds})" if bounds else "")
        default = row.default if row.default == "required" else f"`{row.default}`"
        doc = row.doc or docs.get(row.name, "")
        rows.append(f"| `{row.name}` | {_cell(kind)} | {_cell(default)} | {_cell(doc)} |")
    return "\n".join(rows)


def config_reference() -> str:
    """One section per config model: its name, its docstring and the table of its fields."""
    sections = []
    for model in _config_models():
        doc = inspect.getdoc(model) or ""
        sections.append(f"## `{model.__name__}`\n\n{doc}\n\n{config_table(model)}\n")
    return "\n".join(sections)
