"""systemd/rkserve-discover.service: systemd's own verifier accepts it, and what it runs."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "rkserve-discover.service"
EXEC = "/opt/rkserve-discover/bin/rkserve"
SYSTEM_UNITS = Path("/usr/lib/systemd/system")
CI = os.environ.get("CI") == "true"


def test_it_runs_discover_into_its_state_directory() -> None:
    lines = [line for line in UNIT.read_text().splitlines() if not line.startswith("#")]
    start = next(line for line in lines if line.startswith("ExecStart="))
    assert (
        start == f"ExecStart={EXEC} discover --prometheus-sd /var/lib/rkserve-discover/targets.json"
    )
    assert "StateDirectory=rkserve-discover" in lines
    assert "StateDirectoryMode=0755" in lines  # Prometheus, another user, reads the file


@pytest.mark.process
def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None or not SYSTEM_UNITS.is_dir():
        if CI:
            pytest.fail("systemd-analyze is missing in CI (.ci/run installs systemd)")
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    root = tmp_path / "root"
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copyfile(UNIT, root / "etc/systemd/system" / UNIT.name)
    (root / "usr/lib/systemd").mkdir(parents=True)
    shutil.copytree(SYSTEM_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    program = root / EXEC.lstrip("/")
    program.parent.mkdir(parents=True)
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(program.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    result = subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", "--man=no", UNIT.name],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == "" and result.stdout == ""
