"""docs/BOARD.md shows only options that deploy/install.sh and deploy/push really have."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import List

import pytest

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "BOARD.md"


def _options_used(script: str) -> List[str]:
    used = []
    for line in DOC.read_text().splitlines():
        if f"{script} " in line and line.lstrip().startswith(("pc$", "board$")):
            command = line.split(script, 1)[1].split("#")[0]
            used += re.findall(r"(?<![\w-])--[a-z][a-z-]*", command)
    return used


@pytest.mark.process
@pytest.mark.parametrize("script", ["deploy/install.sh", "deploy/push"])
def test_documented_options_exist(script: str) -> None:
    used = _options_used(script)
    assert used, f"BOARD.md shows no {script} command line"
    helptext = subprocess.run(
        [str(REPO / script), "--help"], capture_output=True, text=True, check=True
    ).stdout
    for option in used:
        assert re.search(rf"(?<![\w-]){option}(?![\w-])", helptext), f"{script} has no {option}"


def test_documented_paths_match_the_unit_and_installer() -> None:
    doc = DOC.read_text()
    unit = (REPO / "systemd" / "rkserve.service").read_text()
    installer = (REPO / "deploy" / "install.sh").read_text()
    for path in ("/opt/rkserve/venv", "/etc/rkserve/rkserve.yaml", "/etc/rkserve/rkserve.env"):
        assert path in doc and path in unit
    for setting in ("WatchdogSec=30s", "TimeoutStopSec=20s", "TimeoutStartSec=120s"):
        assert setting in unit and setting.split("=")[0] in doc
    assert "STATE=/var/lib/rkserve" in installer and "/var/lib/rkserve/models" in doc
    assert "MANIFEST=$STATE/.install-manifest" in installer
    assert "/var/lib/rkserve/.install-manifest" in doc
