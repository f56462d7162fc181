"""The examples of README.md and docs/*.md, as the docs test runs them.

Every fenced block is an example. Its info string says what it is, and an HTML comment on
the line just before it may say more::

    <!-- example: board -->              needs a Rockchip board: not run here (skipped, saying so)
    <!-- example: skip REASON -->        not run, for REASON (e.g. it installs system-wide)
    <!-- example: convert -->            runs in the converter environment (.venv-convert)
    <!-- example: continues -->          a python block that goes on from the previous one
    <!-- example: model.yaml FOLDER -->  a yaml block that is FOLDER's model.yaml (a fragment
                                         without `task:` is merged into it); checked by serving it
    <!-- example: dry-run -->            deploy/push lines, run with --dry-run
    <!-- example: collect -->            a pytest command, run with --collect-only
    <!-- example: setup CODE -->         one line of python run first (what the user already has)

One mark per comment line; several comment lines may stand above one block.

What runs, by info string: ``console`` (``$ `` lines are commands, the lines after them
their output, compared), ``sh`` (``pc$``/``$`` lines, or every line when there are no
prompts; ``board$`` lines need the ``board`` mark; outputs are not compared), ``python``
(run as a script) and ``yaml`` (parsed; with ``model.yaml`` also loaded and served).
Blocks with no info string, or another one (``promql``, diagrams, quoted output), are text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Tuple

RUNNABLE = ("console", "sh", "python", "yaml")
MARKS = (
    "board",
    "skip",
    "convert",
    "continues",
    "model.yaml",
    "dry-run",
    "collect",
    "setup",
)
_MARK = re.compile(r"^\s*<!--\s*example:\s*(.*?)\s*-->\s*$")
_FENCE = re.compile(r"^(\s*)```(\S*)\s*$")


@dataclass
class Example:
    """One fenced block: where it is, its info string, its marks and its text."""

    path: Path
    line: int  # of the opening fence, 1-based
    info: str
    text: str
    marks: List[Tuple[str, str]] = field(default_factory=list)  # (mark, argument)

    @property
    def id(self) -> str:
        return f"{self.path.name}:{self.line}"

    def mark(self, name: str) -> Optional[str]:
        """The argument of mark ``name`` ("" when it has none), or None when not marked."""
        return next((arg for mark, arg in self.marks if mark == name), None)

    @property
    def runnable(self) -> bool:
        return self.info in RUNNABLE


def read_examples(path: Path) -> List[Example]:
    """The fenced blocks of one Markdown file, in order, with the marks just above each."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found: List[Example] = []
    at = 0
    while at < len(lines):
        fence = _FENCE.match(lines[at])
        if not fence:
            at += 1
            continue
        indent, info = fence.group(1), fence.group(2)
        end = next((i for i in range(at + 1, len(lines)) if lines[i].strip() == "```"), len(lines))
        body = [
            line[len(indent) :] if line.startswith(indent) else line for line in lines[at + 1 : end]
        ]
        found.append(Example(path, at + 1, info, "\n".join(body) + "\n", _marks(lines, at, path)))
        at = end + 1
    return found


def _marks(lines: List[str], fence: int, path: Path) -> List[Tuple[str, str]]:
    """The ``<!-- example: ... -->`` comments on the lines just above line ``fence``."""
    marks: List[Tuple[str, str]] = []
    at = fence - 1
    while at >= 0 and _MARK.match(lines[at]):
        name, _, arg = _MARK.match(lines[at]).group(1).partition(" ")  # type: ignore[union-attr]
        if name not in MARKS:
            raise ValueError(f"{path}:{at + 1}: unknown example mark {name!r} (known: {MARKS})")
        marks.append((name, arg.strip()))
        at -= 1
    return marks


@dataclass
class Command:
    """One command of a shell block, and the output the block shows after it."""

    prompt: str  # "$", "pc$", "board$", or "" in a block without prompts
    text: str
    output: List[str]


_PROMPT = re.compile(r"^(\$|pc\$|board\$) (.*)$")


def commands(example: Example) -> List[Command]:
    """A console/sh block's commands (continuation lines joined) and their outputs."""
    lines = example.text.splitlines()
    prompted = any(_PROMPT.match(line) for line in lines)
    found: List[Command] = []
    pending = ""
    for line in lines:
        match = _PROMPT.match(line) if prompted else None
        if pending:
            pending += "\n" + line
        elif match:
            pending = match.group(2)
            found.append(Command(match.group(1), "", []))
        elif not prompted and line.strip() and not line.lstrip().startswith("#"):
            pending = line
            found.append(Command("", "", []))
        elif found:
            found[-1].output.append(line)
            continue
        else:
            continue
        if pending.endswith("\\"):
            continue
        found[-1].text, pending = pending, ""
    return found
