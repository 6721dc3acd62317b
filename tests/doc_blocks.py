"""The fenced code blocks of the README and of the documentation site (docs/*.md), split into what the tests run.

A python block is run or parsed whole; a bash block is split into its commands (continued lines and quoted strings
spanning lines joined, comments dropped), each of which some test must run or check
(tests/unit/test_doc_blocks.py fails on a block or command that none claims)."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
_FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", flags=re.S | re.M)


@dataclass(frozen=True)
class Block:
    path: str  # relative to the repository root
    line: int  # of the opening fence
    lang: str
    code: str

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


@dataclass(frozen=True)
class Command:
    block: Block
    text: str  # one command, continuation lines joined, comments dropped

    @property
    def words(self) -> list[str]:
        return shlex.split(self.text)


def document_blocks(path: Path) -> list[Block]:
    text = path.read_text()
    name = str(path.relative_to(ROOT))
    return [
        Block(name, text.count("\n", 0, match.start()) + 1, match.group(1), match.group(2))
        for match in _FENCE.finditer(text)
    ]


def all_blocks(lang: str | None = None) -> list[Block]:
    found = [block for path in DOCUMENTS for block in document_blocks(path)]
    return [block for block in found if lang is None or block.lang == lang]


def split_commands(block: Block) -> list[Command]:
    """The commands of a bash block: a line ending in ``\\`` or inside an open quote continues on the next."""
    commands: list[Command] = []
    pending = ""
    for line in block.code.splitlines():
        pending = f"{pending}\n{line}" if pending else line
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        try:
            words = shlex.split(pending, comments=True)
        except ValueError:  # an open quote: the command goes on
            continue
        if words:
            commands.append(Command(block, _without_comment(pending)))
        pending = ""
    assert not pending, f"{block.where}: unterminated command {pending!r}"
    return commands


def _without_comment(command: str) -> str:
    """``command`` without a trailing ``# comment`` (a ``#`` inside quotes or a word stays)."""
    quote = ""
    for index, char in enumerate(command):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or command[index - 1].isspace()):
            return command[:index].strip()
    return command.strip()


def all_commands() -> list[Command]:
    return [command for block in all_blocks("bash") for command in split_commands(block)]


def commands_starting(*words: str) -> list[Command]:
    return [command for command in all_commands() if command.words[: len(words)] == list(words)]


def exported(prefix: str) -> dict[str, str]:
    """``NAME=value`` pairs of the documents' ``export`` commands whose names start with ``prefix``."""
    pairs = {}
    for command in commands_starting("export"):
        for word in command.words[1:]:
            name, _, value = word.partition("=")
            if name.startswith(prefix):
                pairs[name] = value
    return pairs


def section(path: str, title: str) -> str:
    """The text of a ``## title`` section of a document (to the next ``## ``)."""
    return (ROOT / path).read_text().split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
