"""deploy/push with stand-in ssh, scp, adb and systemctl executables first on PATH.

The stand-ins are real programs: they log their arguments and behave like the real tools
against a local "board" directory (ssh/adb shell run the command with sh, scp/adb push
copy), so the test sees both the exact commands and what they do to the model repository.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

import pytest

pytestmark = pytest.mark.process  # every test here starts a process

REPO = Path(__file__).resolve().parents[2]
PUSH = REPO / "deploy" / "push"

FAKE_TOOL = """#!{python}
import json, os, shutil, subprocess, sys
tool, args = os.path.basename(sys.argv[0]), sys.argv[1:]
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps([tool, *args]) + "\\n")
if tool in os.environ.get("FAKE_FAIL", "").split(","):
    sys.exit(1)

def copy(src, dest):
    dest = dest.split(":", 1)[1] if tool == "scp" else dest
    if os.path.isdir(src):
        shutil.copytree(src, dest)
    else:
        shutil.copy(src, dest)

if tool == "ssh":
    sys.exit(subprocess.call(["sh", "-c", args[1]]))
if tool == "scp":
    copy(args[-2], args[-1])
if tool == "adb":
    if args[0] == "-s":
        args = args[2:]
    if args[0] == "shell":
        sys.exit(subprocess.call(["sh", "-c", args[1]]))
    if args[0] == "push":
        copy(args[1], args[2])
"""


@pytest.fixture
def board(tmp_path: Path) -> Path:
    """The board's model repository, with one model already served."""
    models = tmp_path / "board" / "var" / "lib" / "rkserve" / "models"
    (models / "mobilenet").mkdir(parents=True)
    (models / "mobilenet" / "model.yaml").write_text("old\n")
    (models / "mobilenet" / "stale.bin").write_text("from the old version\n")
    return models


@pytest.fixture
def model(tmp_path: Path) -> Path:
    folder = tmp_path / "pc" / "mobilenet"
    folder.mkdir(parents=True)
    (folder / "model.yaml").write_text("task: classify\n")
    (folder / "labels.txt").write_text("cat\ndog\n")
    return folder


@pytest.fixture
def env(tmp_path: Path) -> Dict[str, str]:
    fakes = tmp_path / "fakes"
    fakes.mkdir()
    for tool in ("ssh", "scp", "adb", "systemctl"):
        path = fakes / tool
        path.write_text(FAKE_TOOL.format(python=sys.executable))
        path.chmod(0o755)
    return dict(os.environ, PATH=f"{fakes}:{os.environ['PATH']}", FAKE_LOG=str(tmp_path / "log"))


def push(
    env: Dict[str, str], *args: str, fail: Optional[str] = None
) -> subprocess.CompletedProcess:
    environ = dict(env, FAKE_FAIL=fail or "")
    return subprocess.run(
        [str(PUSH), *args], capture_output=True, text=True, env=environ, timeout=60
    )


def logged(env: Dict[str, str]) -> List[List[str]]:
    log = Path(env["FAKE_LOG"])
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def incoming_of(commands: List[List[str]]) -> str:
    """The board-side staging folder, named after the time and pid of the push."""
    found = re.search(r"(/\S+/\.incoming/push-\d{14}-\d+)", " ".join(commands[0]))
    assert found, commands[0]
    return found.group(1)


def test_help(env: Dict[str, str]) -> None:
    result = push(env, "--help")
    assert result.returncode == 0
    for option in ("--via ssh|adb", "--host", "--dry-run", "--serial", "--sudo"):
        assert option in result.stdout
    assert logged(env) == []


def test_model_over_ssh_lands_atomically_and_reloads(
    env: Dict[str, str], board: Path, model: Path
) -> None:
    result = push(env, "--host", "root@rk3568", "--models-dir", str(board), str(model))
    assert result.returncode == 0, result.stderr
    commands = logged(env)
    inc = incoming_of(commands)
    assert inc == f"{board.parent}/.incoming/" + inc.rsplit("/", 1)[1]
    target = f"{board}/mobilenet"
    assert commands == [
        ["ssh", "root@rk3568", f"install -d {inc}"],
        ["scp", "-r", "-q", str(model), f"root@rk3568:{inc}/mobilenet"],
        [
            "ssh",
            "root@rk3568",
            f"set -e; if id rkserve >/dev/null 2>&1; then chown -R rkserve:rkserve "
            f"{inc}/mobilenet; fi; if [ -e {target} ]; then mv {target} {inc}/replaced; fi; "
            f"mv {inc}/mobilenet {target}; rm -rf {inc}",
        ],
        ["ssh", "root@rk3568", "systemctl reload rkserve"],
        ["systemctl", "reload", "rkserve"],  # run "on the board" by the ssh stand-in
    ]
    served = board / "mobilenet"
    assert sorted(p.name for p in served.iterdir()) == ["labels.txt", "model.yaml"]
    assert (served / "model.yaml").read_text() == "task: classify\n"
    assert not Path(inc).exists()
    assert "model mobilenet is in" in result.stdout


def test_dry_run_prints_the_commands_and_runs_none(
    env: Dict[str, str], board: Path, model: Path
) -> None:
    args = ("--dry-run", "--host", "pi@b", "--sudo", "--name", "mnv2", str(model))
    result = push(env, *args, "--models-dir", str(board))
    assert result.returncode == 0, result.stderr
    assert logged(env) == []
    assert (board / "mobilenet" / "stale.bin").exists()
    lines = result.stdout.splitlines()
    inc = re.search(r"(/\S+/\.incoming/push-\d{14}-\d+)", lines[0])
    assert inc
    inc_dir = inc.group(1)
    assert lines[0] == f"ssh pi@b 'sudo install -d -o \"$(id -un)\" {inc_dir}'"
    assert lines[1] == f"scp -r -q {model} pi@b:{inc_dir}/mnv2"
    assert lines[2].startswith("ssh pi@b 'sudo sh -c '\\''set -e; ")
    assert f"mv {inc_dir}/mnv2 {board}/mnv2; rm -rf {inc_dir}'\\'''" in lines[2]
    assert lines[3] == "ssh pi@b 'sudo systemctl reload rkserve'"
    assert len(lines) == 4


def test_dry_run_output_is_what_a_shell_runs(
    tmp_path: Path, env: Dict[str, str], board: Path
) -> None:
    """Run by sh, the printed lines pass the same arguments as the push itself (quoting)."""
    folder = tmp_path / 'it\'s a "model" $HOME'
    folder.mkdir()
    (folder / "model.yaml").write_text("task: classify\n")
    args = ("--host", "root@b", "--name", "quoted", "--models-dir", str(board), str(folder))
    printed = push(env, "--dry-run", *args).stdout
    subprocess.run(["sh", "-e", "-c", printed], env=env, check=True, timeout=60)
    through_shell = logged(env)
    Path(env["FAKE_LOG"]).unlink()
    assert push(env, *args).returncode == 0
    direct = logged(env)

    def untagged(commands: List[List[str]]) -> List[List[str]]:
        tag = incoming_of(commands)
        return [[arg.replace(tag, "INC") for arg in command] for command in commands]

    assert untagged(through_shell) == untagged(direct)
    assert direct[1][3] == str(folder)
    assert (board / "quoted" / "model.yaml").exists()


def test_model_over_adb(env: Dict[str, str], board: Path, model: Path) -> None:
    result = push(env, "--via", "adb", "--serial", "0123ab", "--models-dir", str(board), str(model))
    assert result.returncode == 0, result.stderr
    commands = logged(env)
    inc = incoming_of(commands)
    assert commands[0] == ["adb", "-s", "0123ab", "shell", f"install -d {inc}"]
    assert commands[1] == ["adb", "-s", "0123ab", "push", str(model), f"{inc}/mobilenet"]
    assert commands[2][:4] == ["adb", "-s", "0123ab", "shell"]
    assert commands[3] == ["adb", "-s", "0123ab", "shell", "systemctl reload rkserve"]
    assert (board / "mobilenet" / "labels.txt").exists()
    assert not (board / "mobilenet" / "stale.bin").exists()


def test_wheel_is_installed_into_the_venv_and_the_daemon_restarted(
    tmp_path: Path, env: Dict[str, str], board: Path
) -> None:
    wheel = tmp_path / "rkserve-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"PK\x05\x06" + bytes(18))
    venv = tmp_path / "board" / "opt" / "rkserve" / "venv"
    (venv / "bin").mkdir(parents=True)
    pip_log = tmp_path / "pip.log"
    (venv / "bin" / "python").write_text(f'#!/bin/sh\necho "$*" >> {pip_log}\n')
    (venv / "bin" / "python").chmod(0o755)
    args = ("--host", "root@b", "--models-dir", str(board), "--venv", str(venv), str(wheel))
    result = push(env, *args)
    assert result.returncode == 0, result.stderr
    commands = logged(env)
    inc = incoming_of(commands)
    assert commands[1] == ["scp", "-r", "-q", str(wheel), f"root@b:{inc}/{wheel.name}"]
    assert commands[-2:] == [
        ["ssh", "root@b", "systemctl restart rkserve"],
        ["systemctl", "restart", "rkserve"],
    ]
    pip = "-m pip install -q --disable-pip-version-check"
    assert pip_log.read_text().splitlines() == [
        f"{pip} --force-reinstall --no-deps {inc}/{wheel.name}",
        f"{pip} {inc}/{wheel.name}",
    ]
    assert not Path(inc).exists()


def test_failed_upload_cleans_the_board_and_keeps_the_old_model(
    env: Dict[str, str], board: Path, model: Path
) -> None:
    result = push(env, "--host", "root@b", "--models-dir", str(board), str(model), fail="scp")
    assert result.returncode != 0
    commands = logged(env)
    inc = incoming_of(commands)
    assert commands[-1] == ["ssh", "root@b", f"rm -rf {inc}"]
    assert not Path(inc).exists()
    assert (board / "mobilenet" / "stale.bin").exists()
    assert ["ssh", "root@b", "systemctl reload rkserve"] not in commands


def test_failed_reload_is_reported(env: Dict[str, str], board: Path, model: Path) -> None:
    result = push(env, "--host", "root@b", "--models-dir", str(board), str(model), fail="systemctl")
    assert result.returncode != 0
    assert 'copied, but "systemctl reload rkserve" failed' in result.stderr
    assert (board / "mobilenet" / "labels.txt").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--host", "root@b"], "missing PATH"),
        (["MODEL"], "--via ssh needs --host"),
        (["--via", "usb", "MODEL"], "--via must be ssh or adb"),
        (["--host", "b", "--name", "../etc", "MODEL"], "model name must be"),
        (["--host", "b", "--models-dir", "relative", "MODEL"], "plain absolute path"),
        (["--host", "b", "--models-dir", "/var/lib/x;reboot", "MODEL"], "plain absolute path"),
        (["--host", "b", "NOTAMODEL"], "is not a model folder"),
        (["--host", "b", "--bogus", "MODEL"], "unknown option: --bogus"),
    ],
)
def test_bad_arguments(
    tmp_path: Path, env: Dict[str, str], model: Path, args: List[str], message: str
) -> None:
    (tmp_path / "empty").mkdir()
    paths = {"MODEL": str(model), "NOTAMODEL": str(tmp_path / "empty")}
    result = push(env, *[paths.get(a, a) for a in args])
    assert result.returncode != 0
    assert message in result.stderr
    assert logged(env) == []
