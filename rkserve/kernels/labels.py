"""Label files in the formats Rockchip's and others' examples use."""

from __future__ import annotations

import re
from pathlib import Path
from typing import List, Union

_SYNSET = re.compile(r"^n\d{8}\s+(.*)$")  # "n01440764 tench, Tinca tinca"
_INDEXED = re.compile(r"^(\d+)\s*:\s*(.*)$")  # "0:tench, Tinca tinca"


def parse_labels(text: str) -> List[str]:
    """One label per line; ``nXXXXXXXX name`` and ``idx:name`` lines are understood.

    For ``idx:name`` files the index decides the position (gaps become ``"<idx>"``);
    otherwise the line number does. Blank trailing lines are ignored.
    """
    lines = [line.strip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    indexed = [_INDEXED.match(line) for line in lines]
    if lines and all(indexed):
        by_index = {int(m.group(1)): m.group(2).strip() for m in indexed if m}
        return [by_index.get(i, str(i)) for i in range(max(by_index) + 1)]
    return [_synset_name(line) for line in lines]


def _synset_name(line: str) -> str:
    match = _SYNSET.match(line)
    return match.group(1).strip() if match else line


def read_labels(path: Union[str, Path]) -> List[str]:
    return parse_labels(Path(path).read_text(encoding="utf-8", errors="replace"))
