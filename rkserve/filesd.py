"""Prometheus file_sd: the boards found on the LAN as scrape targets, in a file kept current.

Prometheus has no mDNS discovery of its own; it re-reads a ``file_sd_configs`` file when it
changes. The file is a JSON list of target groups, one per board::

    [{"targets": ["192.168.1.21:9464"],
      "labels": {"board": "board1", "soc": "rk3568", "version": "0.1.0"}}]

It is replaced atomically (written beside, then renamed), so Prometheus never reads half a
file; it is rewritten only when its content changes.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

from .discovery import Board


def target_groups(boards: Iterable[Board]) -> List[Dict[str, Any]]:
    """One target group per board that exports metrics, sorted by board name."""
    groups = []
    for board in sorted(boards, key=lambda b: b.name):
        if board.metrics_target is None:
            continue
        labels = {"board": board.name, "soc": board.soc, "version": board.version}
        groups.append({"targets": [board.metrics_target], "labels": labels})
    return groups


def render(boards: Iterable[Board]) -> str:
    return json.dumps(target_groups(boards), indent=2) + "\n"


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` in one rename (a temporary file in the same folder)."""
    folder = path.parent
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=str(folder))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, 0o644)  # Prometheus runs as its own user
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


class FileSd:
    """The file_sd file for a changing set of boards; writes only on a change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.writes = 0
        self._last: Optional[str] = None

    def update(self, boards: Iterable[Board]) -> bool:
        text = render(boards)
        if text == self._last:
            return False
        write_atomic(self.path, text)
        self._last = text
        self.writes += 1
        return True
