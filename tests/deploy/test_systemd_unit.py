"""systemd/rkserve.service: systemd's own verifier accepts it, and its key settings hold."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Dict, List

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "rkserve.service"
EXEC_START = "/opt/rkserve/venv/bin/rkserve"
SYSTEM_UNITS = Path("/usr/lib/systemd/system")


def _unit_settings() -> Dict[str, List[str]]:
    """``Section.Key`` → every value given, in order (keys may repeat in unit files)."""
    settings: Dict[str, List[str]] = {}
    section = ""
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        settings.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return settings


def _seconds(value: str) -> float:
    units = {"ms": 0.001, "s": 1.0, "min": 60.0}
    for suffix, factor in units.items():
        if value.endswith(suffix) and value[: -len(suffix)].isdigit():
            return int(value[: -len(suffix)]) * factor
    return float(value)


def _fake_root(tmp_path: Path) -> Path:
    """A filesystem root holding the unit where install.sh puts it, and its binaries.

    The unit file is copied byte for byte; only the daemon's executable is a stand-in (the
    package is not installed on this machine). systemd's own units come from the host so
    the default dependencies (sysinit.target, ...) resolve.
    """
    root = tmp_path / "root"
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copyfile(UNIT, root / "etc/systemd/system/rkserve.service")
    (root / "usr/lib/systemd").mkdir(parents=True)
    shutil.copytree(SYSTEM_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    (root / "usr/bin").mkdir(parents=True)
    os.symlink("usr/bin", root / "bin")
    kill = shutil.which("kill", path="/usr/bin:/bin")
    assert kill, "no kill binary to copy"
    shutil.copy(kill, root / "usr/bin/kill")
    daemon = root / EXEC_START.lstrip("/")
    daemon.parent.mkdir(parents=True)
    daemon.write_text("#!/bin/sh\nexit 0\n")
    daemon.chmod(daemon.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return root


def _verify(root: Path, name: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", "--man=no", name],
        capture_output=True,
        text=True,
        timeout=60,
    )


needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None or not SYSTEM_UNITS.is_dir(),
    reason="systemd-analyze is not installed (apt-get install systemd)",
)


@pytest.mark.process
@needs_analyze
def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    root = _fake_root(tmp_path)
    result = _verify(root, "rkserve.service")
    assert result.returncode == 0, result.stderr
    # Unknown keys and bad values are only warnings (exit 0): none are allowed either.
    assert result.stderr == "" and result.stdout == ""


@pytest.mark.process
@needs_analyze
def test_verify_catches_what_this_test_relies_on(tmp_path: Path) -> None:
    """The check above can fail: a misspelt key and a missing binary are both reported."""
    root = _fake_root(tmp_path)
    bad = root / "etc/systemd/system/bad.service"
    bad.write_text(UNIT.read_text().replace("WatchdogSec=", "WatchdogSecs="))
    assert "Unknown key" in _verify(root, "bad.service").stderr
    (root / EXEC_START.lstrip("/")).unlink()
    result = _verify(root, "rkserve.service")
    assert result.returncode != 0
    assert EXEC_START in result.stderr


def test_notify_watchdog_and_restart() -> None:
    unit = _unit_settings()
    assert unit["Service.Type"] == ["notify"]
    assert unit["Service.NotifyAccess"] == ["main"]
    assert _seconds(unit["Service.WatchdogSec"][0]) == 30
    assert unit["Service.Restart"] == ["on-failure"]
    assert _seconds(unit["Service.RestartSec"][0]) > 0
    assert unit["Install.WantedBy"] == ["multi-user.target"]


def test_start_and_reload_commands() -> None:
    unit = _unit_settings()
    assert unit["Service.ExecStart"] == [f"{EXEC_START} serve --config /etc/rkserve/rkserve.yaml"]
    assert unit["Service.ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert unit["Service.EnvironmentFile"] == ["-/etc/rkserve/rkserve.env"]


def test_stop_timeout_covers_the_drain() -> None:
    from rkserve.config import FIELDS

    default = FIELDS["drain_timeout_s"].default
    config = yaml.safe_load((REPO / "deploy" / "rkserve.yaml").read_text())
    drain = max(default, config["drain_timeout_s"])
    assert _seconds(_unit_settings()["Service.TimeoutStopSec"][0]) >= drain + 3


def test_user_groups_and_directories() -> None:
    unit = _unit_settings()
    assert unit["Service.User"] == ["rkserve"]
    assert unit["Service.SupplementaryGroups"][0].split() == ["video", "render"]
    assert unit["Service.StateDirectory"] == ["rkserve"]
    assert unit["Service.ConfigurationDirectory"] == ["rkserve"]


def test_hardening_leaves_the_npu_reachable() -> None:
    unit = _unit_settings()
    assert "Service.PrivateDevices" not in unit  # would hide /dev/dri
    assert "Service.PrivateUsers" not in unit  # would unmap the video/render groups
    assert "Service.ProcSubset" not in unit  # would hide /proc/device-tree
    assert "Service.MemoryDenyWriteExecute" not in unit
    assert unit["Service.DevicePolicy"] == ["closed"]
    assert "char-drm rw" in unit["Service.DeviceAllow"]
    assert "/dev/rknpu rw" in unit["Service.DeviceAllow"]
    assert unit["Service.ProtectSystem"] == ["strict"]
    assert unit["Service.NoNewPrivileges"] == ["yes"]
    families = unit["Service.RestrictAddressFamilies"][0].split()
    assert families == ["AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"]


def test_example_config_and_environment_are_valid_settings() -> None:
    """deploy/rkserve.yaml and the names in rkserve.env are what the daemon accepts."""
    from rkserve.config import FIELDS, load_settings

    example = REPO / "deploy" / "rkserve.yaml"
    settings = load_settings(example, environ={})
    assert settings.models_dir == "/var/lib/rkserve/models"
    commented = [
        line.lstrip("#").strip()
        for line in example.read_text().splitlines()
        if line.startswith("#") and ": " in line and line[1:2].islower()
    ]
    assert commented, "the example lists the less common settings, commented out"
    for line in commented:
        assert line.split(":")[0] in FIELDS, line
    assignments = [
        line.lstrip("#").strip()
        for line in (REPO / "systemd" / "rkserve.env").read_text().splitlines()
        if line.startswith("#RKSERVE_")
    ]
    environ = dict(line.split("=", 1) for line in assignments)
    assert len(environ) >= 5
    for key in environ:
        assert key[len("RKSERVE_") :].lower() in FIELDS, key
    load_settings(example, environ=environ)
