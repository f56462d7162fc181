"""deploy/install.sh, run for real into a staging root (--root): never touches this machine.

The script runs from a copy of the source tree, so that edits in the working tree while the
tests run cannot make a "nothing changed" run change something.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest

pytestmark = pytest.mark.process  # every test here starts a process

REPO = Path(__file__).resolve().parents[2]
TREE = (
    "etc/rkserve/rkserve.env",
    "etc/rkserve/rkserve.yaml",
    "etc/systemd/system/rkserve.service",
    "var/lib/rkserve/.install-manifest",
    "var/lib/rkserve/models/demo/labels.txt",
    "var/lib/rkserve/models/demo/model.yaml",
)
Snapshot = Dict[str, Tuple[int, int, str]]


@pytest.fixture
def src(tmp_path: Path) -> Path:
    """A copy of the parts of the source tree the script uses, with one demo model."""
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "rkserve", src / "rkserve", ignore=ignore)
    shutil.copytree(REPO / "systemd", src / "systemd")
    (src / "deploy").mkdir()
    for name in ("install.sh", "rkserve.yaml"):
        shutil.copy2(REPO / "deploy" / name, src / "deploy" / name)
    shutil.copy2(REPO / "pyproject.toml", src / "pyproject.toml")
    demo = src / "models" / "demo"
    demo.mkdir(parents=True)
    (demo / "model.yaml").write_text("task: classify\n")
    (demo / "labels.txt").write_text("cat\ndog\n")
    (src / "models" / "not-a-model").mkdir()  # no model.yaml: not copied
    return src


def clean_env() -> Dict[str, str]:
    """PYTHONPATH would make a venv import the working tree instead of what was installed."""
    return {k: v for k, v in os.environ.items() if k not in ("DESTDIR", "PYTHONPATH")}


def run(
    src: Path, *args: str, env: Optional[Dict[str, str]] = None, check: bool = True
) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(src / "deploy" / "install.sh"), *args],
        capture_output=True,
        text=True,
        env={**clean_env(), **(env or {})},
        cwd=src,
        timeout=600,
    )
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def files(root: Path) -> List[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir())


def snapshot(root: Path) -> Snapshot:
    """Every path under root: mode, mtime and content digest (directories included)."""
    state: Snapshot = {}
    for path in [root, *root.rglob("*")]:
        info = path.lstat()
        digest = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
        if path.is_symlink():
            digest = "-> " + os.readlink(path)
        state[str(path.relative_to(root))] = (info.st_mode, info.st_mtime_ns, digest)
    return state


def test_help_lists_the_options(src: Path) -> None:
    out = run(src, "--help").stdout
    for option in ("--wheel", "--root", "--no-venv", "--no-deps", "--uninstall", "--purge"):
        assert option in out


def test_unknown_option_is_an_error(src: Path) -> None:
    result = run(src, "--frobnicate", check=False)
    assert result.returncode != 0
    assert "unknown option: --frobnicate" in result.stderr


def test_install_lays_out_the_documented_tree(src: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    out = run(src, "--root", str(root), "--no-venv").stdout
    assert files(root) == sorted(TREE)
    etc = root / "etc"
    assert (etc / "rkserve/rkserve.yaml").read_bytes() == (src / "deploy/rkserve.yaml").read_bytes()
    assert (etc / "rkserve/rkserve.env").read_bytes() == (src / "systemd/rkserve.env").read_bytes()
    unit = etc / "systemd/system/rkserve.service"
    assert unit.read_bytes() == (src / "systemd/rkserve.service").read_bytes()
    assert (etc / "rkserve/rkserve.env").stat().st_mode & 0o777 == 0o640
    assert unit.stat().st_mode & 0o777 == 0o644
    # The real system is left alone, and the output says what a real install would do.
    assert "would run  useradd --system --user-group -G video,render rkserve" in out
    assert "would run  systemctl enable --now rkserve" in out
    assert "rkserve: installed (" in out


def test_manifest_lists_what_was_installed(src: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    run(src, "--root", str(root), "--no-venv")
    manifest = (root / "var/lib/rkserve/.install-manifest").read_text().splitlines()
    assert manifest == [
        "config /etc/rkserve/rkserve.env",
        "config /etc/rkserve/rkserve.yaml",
        "data /var/lib/rkserve/models",
        "file /etc/systemd/system/rkserve.service",
    ]


def test_destdir_is_the_same_as_root(src: Path, tmp_path: Path) -> None:
    root = tmp_path / "staged"
    run(src, "--no-venv", env={"DESTDIR": str(root)})
    assert files(root) == sorted(TREE)


def test_second_run_changes_nothing(src: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    run(src, "--root", str(root), "--no-venv")
    before = snapshot(root)
    out = run(src, "--root", str(root), "--no-venv").stdout
    assert snapshot(root) == before
    assert out.rstrip().endswith("rkserve: unchanged (everything was already in place)")
    assert "installed" not in out and "created" not in out


def test_config_and_models_of_the_admin_are_kept(src: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    run(src, "--root", str(root), "--no-venv")
    config = root / "etc/rkserve/rkserve.yaml"
    config.write_text("workers: 3\n")
    models = root / "var/lib/rkserve/models"
    shutil.rmtree(models / "demo")
    (models / "pushed").mkdir()
    out = run(src, "--root", str(root), "--no-venv").stdout
    assert config.read_text() == "workers: 3\n"
    assert sorted(p.name for p in models.iterdir()) == ["pushed"]  # demo models: first time only
    assert "rkserve: unchanged" in out


def test_a_new_unit_replaces_the_old_one(src: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    run(src, "--root", str(root), "--no-venv")
    unit = src / "systemd/rkserve.service"
    unit.write_text(unit.read_text().replace("RestartSec=5s", "RestartSec=7s"))
    out = run(src, "--root", str(root), "--no-venv").stdout
    assert "updated    /etc/systemd/system/rkserve.service" in out
    assert "would run  systemctl daemon-reload" in out
    assert "RestartSec=7s" in (root / "etc/systemd/system/rkserve.service").read_text()


def test_uninstall_keeps_config_and_models_then_purge_removes_all(
    src: Path, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    run(src, "--root", str(root), "--no-venv")
    (root / "var/lib/rkserve/models/pushed").mkdir()
    out = run(src, "--root", str(root), "--uninstall").stdout
    assert "removed    /etc/systemd/system/rkserve.service" in out
    assert files(root) == [
        "etc/rkserve/rkserve.env",
        "etc/rkserve/rkserve.yaml",
        "var/lib/rkserve/.install-manifest",
        "var/lib/rkserve/models/demo/labels.txt",
        "var/lib/rkserve/models/demo/model.yaml",
    ]
    assert (root / "var/lib/rkserve/models/pushed").is_dir()
    assert not (root / "opt/rkserve").exists()
    # Installing again keeps the configuration, and purging afterwards still knows it.
    assert "rkserve.yaml (exists: kept as is)" in run(src, "--root", str(root), "--no-venv").stdout
    run(src, "--root", str(root), "--purge")
    assert files(root) == []
    for gone in ("etc/rkserve", "var/lib/rkserve", "opt/rkserve"):
        assert not (root / gone).exists()


def test_uninstall_deletes_nothing_outside_rkserve(src: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    run(src, "--root", str(root), "--no-venv")
    (root / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    manifest = root / "var/lib/rkserve/.install-manifest"
    manifest.write_text("file /etc/passwd\nconfig /etc/rkserve/../passwd\n")
    result = run(src, "--root", str(root), "--purge", check=False)
    assert result.returncode != 0
    assert "outside rkserve's directories: /etc/passwd" in result.stderr
    assert (root / "etc/passwd").exists()


def test_uninstall_without_manifest_is_an_error(src: Path, tmp_path: Path) -> None:
    result = run(src, "--root", str(tmp_path / "empty"), "--uninstall", check=False)
    assert result.returncode != 0
    assert "no install manifest" in result.stderr


def test_python_older_than_38_is_refused(src: Path, tmp_path: Path) -> None:
    old = tmp_path / "python3.7"
    old.write_text('#!/bin/sh\n[ "$1" = -V ] && echo "Python 3.7.3" && exit 0\nexit 1\n')
    old.chmod(0o755)
    result = run(src, "--root", str(tmp_path / "root"), "--python", str(old), check=False)
    assert result.returncode != 0
    assert "needs Python >= 3.8" in result.stderr and "Python 3.7.3" in result.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="as root this would install on this machine")
def test_a_real_install_needs_root(src: Path) -> None:
    result = run(src, "--no-venv", check=False)
    assert result.returncode != 0
    assert "run as root" in result.stderr


def in_venv(command: List[str], cwd: Path) -> str:
    """Run outside the working tree (python -c puts the current directory on sys.path)."""
    return subprocess.run(command, capture_output=True, text=True, env=clean_env(), cwd=cwd).stdout


def _install_or_skip(src: Path, *args: str) -> str:
    result = run(src, *args, check=False)
    if result.returncode != 0 and "Could not find a version" in result.stderr:
        pytest.skip("pip cannot reach a package index to get setuptools for the build")
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.slow
def test_venv_from_the_source_tree(src: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    args = ("--root", str(root), "--no-deps", "--python", sys.executable)
    out = _install_or_skip(src, *args)
    assert "installed  rkserve in /opt/rkserve/venv (from source)" in out
    venv = root / "opt/rkserve/venv"
    assert os.access(venv / "bin/rkserve", os.X_OK)
    # where the package would be imported from (--no-deps: numpy and pyzmq are not there)
    find = "import importlib.util; print(importlib.util.find_spec('rkserve').origin)"
    where = [str(venv / "bin/python"), "-c", find]
    assert in_venv(where, tmp_path).startswith(str(venv))
    assert not (src / "build").exists() and not list(src.glob("*.egg-info"))
    before = snapshot(root)
    second = run(src, *args).stdout
    assert "rkserve: unchanged" in second, second
    assert snapshot(root) == before
    # New code in the tree is installed again, although the version number is the same.
    (src / "rkserve" / "_install_probe.py").write_text("VALUE = 42\n")
    assert "installed  rkserve in /opt/rkserve/venv" in run(src, *args).stdout
    installed = "pathlib.Path(importlib.util.find_spec('rkserve').origin).parent"
    show = f"import importlib.util, pathlib; print(({installed} / '_install_probe.py').read_text())"
    assert in_venv([str(venv / "bin/python"), "-c", show], tmp_path) == "VALUE = 42\n\n"
    run(src, "--root", str(root), "--uninstall")
    assert not (root / "opt/rkserve").exists()


@pytest.mark.slow
def test_venv_from_a_wheel(src: Path, tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(src)]
    built = subprocess.run(build, capture_output=True, text=True, env=clean_env(), timeout=600)
    if built.returncode != 0:
        pytest.skip(f"cannot build a wheel here: {built.stderr.strip()[-200:]}")
    (wheel,) = dist.glob("rkserve-*.whl")
    root = tmp_path / "root"
    args = ("--root", str(root), "--no-deps", "--python", sys.executable, "--wheel", str(wheel))
    assert "installed  rkserve in /opt/rkserve/venv (from wheel)" in run(src, *args).stdout
    stamp = (root / "opt/rkserve/venv/.rkserve-install-source").read_text()
    assert stamp.startswith(f"wheel {wheel.name} ")
    second = run(src, *args).stdout
    assert "rkserve: unchanged" in second, second


def _can_unshare() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("useradd"):
        return False
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True, timeout=30)
    return probe.returncode == 0


# Runs in a private mount namespace over copies of /etc, /opt and /var/lib: useradd,
# groupadd, chown and userdel act for real, and nothing outside the namespace changes.
REAL_INSTALL = """
set -eu
mount --make-rprivate /
mount --bind "$ETC_COPY" /etc
mount -t tmpfs none /opt
mount -t tmpfs none /var/lib
# Hide a running systemd: systemctl must not reach this machine's service manager.
if [ -d /run/systemd ]; then mount -t tmpfs none /run/systemd; fi
"$INSTALL" --no-venv
echo "groups: $(id -nG rkserve)"
echo "models owner: $(stat -c %U:%G /var/lib/rkserve/models/demo/model.yaml)"
echo "second: $("$INSTALL" --no-venv | tail -n 1)"
"$INSTALL" --purge
getent passwd rkserve || echo "user removed"
ls -A /opt /var/lib
"""


@pytest.mark.skipif(not _can_unshare(), reason="needs root and unshare -m (mount namespaces)")
def test_real_install_in_a_private_mount_namespace(src: Path, tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    subprocess.run(["cp", "-a", "/etc", str(etc)], check=True)
    env = {**clean_env(), "ETC_COPY": str(etc), "INSTALL": str(src / "deploy/install.sh")}
    result = subprocess.run(
        ["unshare", "-m", "bash", "-c", REAL_INSTALL],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "created    user rkserve" in out
    groups = out.split("groups: ", 1)[1].split("\n", 1)[0].split()
    assert {"rkserve", "video", "render"} <= set(groups)
    assert "models owner: rkserve:rkserve" in out
    assert "second: rkserve: unchanged (everything was already in place)" in out
    assert "removed    user rkserve" in out and "user removed" in out
    assert "skipped    systemctl (systemd is not running here)" in out
    assert out.rstrip().endswith("/var/lib:")  # both directories left empty
    assert "rkserve:" not in (etc / "passwd").read_text()  # purged from the copy too
