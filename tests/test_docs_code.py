"""Every code block of README.md and docs/ works as written.

``python`` blocks run, each page in a fresh namespace, its blocks in order, in a temporary directory, offline.
A block marked ``<!-- skip: REASON -->`` on the line before it (it needs a GPU, a network or a server of
yours) is reported as skipped with that reason. ``bash`` blocks are not run; their ``aligner-chains`` lines
must parse with the real parser, so a renamed option or command shows up here.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w-]*)")
SKIP = re.compile(r"^\s*<!--\s*skip:\s*(?P<reason>.+?)\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced code block of a page."""

    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    skip: str | None  # the reason of a `<!-- skip: ... -->` marker on the line before

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def code_blocks(page: Path) -> list[Block]:
    """The fenced blocks of ``page``, dedented (blocks inside list items are indented)."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, start = opening["indent"], i
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            i += 1
        body = textwrap.dedent("\n".join(line.removeprefix(indent) for line in lines[start + 1 : i]))
        marker = SKIP.match(lines[start - 1]) if start > 0 else None
        blocks.append(Block(page, start + 1, opening["lang"], body + "\n", marker["reason"] if marker else None))
        i += 1
    return blocks


BLOCKS = [block for page in PAGES for block in code_blocks(page)]
PYTHON = [b for b in BLOCKS if b.lang in ("python", "py")]
BASH = [b for b in BLOCKS if b.lang in ("bash", "sh", "shell", "console")]


class PageRun:
    """The shared namespace and working directory of one page's python blocks, run in order."""

    def __init__(self, workdir: Path) -> None:
        self.namespace: dict[str, Any] = {"__name__": "__docs__"}
        self.workdir = workdir
        self.done: set[int] = set()

    def run(self, block: Block) -> None:
        if block.line in self.done:
            return
        self.done.add(block.line)
        previous = Path.cwd()
        os.chdir(self.workdir)
        try:
            exec(compile(block.code, block.id, "exec"), self.namespace)
        finally:
            os.chdir(previous)


_RUNS: dict[Path, PageRun] = {}


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.delenv("ALIGNER_MODEL", raising=False)


# Pages whose blocks train models (seconds each, on tiny ones): left out of `make test-fast`.
SLOW_PAGES = {"finetuning.md", "preference.md"}
PYTHON_PARAMS = [pytest.param(b, marks=[pytest.mark.slow] if b.page.name in SLOW_PAGES else []) for b in PYTHON]


@pytest.mark.parametrize("block", PYTHON_PARAMS, ids=lambda b: b.id)
def test_python_block_runs(block: Block, offline: None, tmp_path_factory: pytest.TempPathFactory) -> None:
    if block.skip:
        pytest.skip(block.skip)
    if block.page not in _RUNS:
        _RUNS[block.page] = PageRun(tmp_path_factory.mktemp(block.page.stem))
    run = _RUNS[block.page]
    for earlier in PYTHON:  # the page's earlier blocks first, when this one is run alone (-k)
        if earlier.page == block.page and earlier.line < block.line and not earlier.skip:
            run.run(earlier)
    run.run(block)


def _commands(block: Block) -> list[list[str]]:
    """The ``aligner-chains`` command lines of a shell block, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", block.code)
    commands = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        while words and re.fullmatch(r"\w+=\S*", words[0]):  # VAR=value prefixes
            words.pop(0)
        while words and words[-1] in ("&", ";"):  # run in the background, or ended with a semicolon
            words.pop()
        if words and words[0] == "aligner-chains":
            commands.append(words[1:])
    return commands


CLI_LINES = [(block, argv) for block in BASH for argv in _commands(block)]


@pytest.mark.parametrize(("block", "argv"), CLI_LINES, ids=[f"{b.id}:{' '.join(a[:2])}" for b, a in CLI_LINES])
def test_cli_line_parses(block: Block, argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    from aligner_chains.cli.commands import build_parser

    parser = build_parser()
    if argv in (["--help"], ["-h"], ["--version"]):
        return
    try:
        args, rest = parser.parse_known_args(argv)
    except SystemExit as exc:
        pytest.fail(f"{block.id}: `aligner-chains {' '.join(argv)}` does not parse: {capsys.readouterr().err}")
        raise AssertionError from exc
    assert not rest or getattr(args, "accepts_overrides", False), f"{block.id}: unknown arguments {rest}"


def test_every_page_is_found() -> None:
    assert ROOT / "README.md" in PAGES and len(PYTHON) >= 5
    assert all(b.lang for b in BLOCKS), [b.id for b in BLOCKS if not b.lang]  # say what a block is


def _reference_hook() -> Any:
    spec = importlib.util.spec_from_file_location("gen_reference", ROOT / "docs" / "gen_reference.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gen_reference", module)
    spec.loader.exec_module(module)
    return module


def test_references_cover_every_command_and_field() -> None:
    hook = _reference_hook()
    cli = hook.on_page_markdown(hook.CLI_MARKER)
    for command in ("demo", "correct", "templates", "train sft", "train dpo", "train oaif", "eval", "serve"):
        assert f"`aligner-chains {command}`" in cli, command
    config = hook.on_page_markdown(hook.CONFIG_MARKER)
    from aligner_chains.finetune import SFTConfig

    for name, field in SFTConfig.model_fields.items():
        assert f"| `{field.alias or name}` |" in config, name
