"""deploy/ansible against three board roots on this machine, with the real ansible-playbook.

Each board is a folder (``rkserve_root``: install.sh --root) beside a fixture board tree
for ``rkserve doctor`` (tests/boards.py): the seed board (librknnrt 1.5.0) and two updated
ones (2.3.0). Ansible reaches them with the ``local`` connection; deploy/push copies with
``--via local``; each updated board runs a real daemon on the repository the play fills,
reloaded by SIGHUP. The wheel is installed with ``--no-deps`` (its dependencies are lent
through PYTHONPATH): a board would fetch them from PyPI.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest
import yaml

from rkserve.client import Client
from tests.boards import AFTER_UPDATE, BEFORE_UPDATE, make_board, write_lite2, write_rknn
from tools.harness import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.process, pytest.mark.timeout(1200)]
CI = os.environ.get("CI") == "true"
PLAYBOOK = ROOT / "deploy" / "ansible" / "site.yml"
ANSIBLE = Path(sys.executable).parent / "ansible-playbook"
BOARDS = {"seed": BEFORE_UPDATE, "upd1": AFTER_UPDATE, "upd2": AFTER_UPDATE}
RECAP = re.compile(r"^(\w+)\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


def missing(reason: str) -> None:
    if CI:
        pytest.fail(f"{reason} (CI=true: a missing prerequisite fails the run)")
    pytest.skip(reason)


def snapshot(folder: Path) -> Dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def model_folder(folder: Path, classes: List[str]) -> Path:
    """A classifier for the fake backend with a .rknn of toolkit 2.3.0 for the doctor:
    runtimes 1.3-1.5.0 refuse it, 2.3.0 takes it."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.yaml").write_text(
        "task: classification\nlabels: labels.txt\ninput: {size: 32}\n"
    )
    (folder / "labels.txt").write_text("\n".join(classes) + "\n")
    (folder / "model.onnx").write_bytes(b"placeholder: the fake backend never reads it")
    write_rknn(folder / "model.rknn", toolkit="2.3.0", target="rk3568")
    return folder


class Lab:
    """The board folders, their daemons and the inventory."""

    def __init__(self, folder: Path, wheel: Path) -> None:
        self.folder, self.wheel = folder, wheel
        self.daemons: Dict[str, subprocess.Popen] = {}
        self.site = write_lite2(folder / "lite2", "2.3.0")
        self.boards = {host: make_board(folder / host, **facts) for host, facts in BOARDS.items()}

    def root(self, host: str) -> Path:
        return self.folder / host / "root"

    def models(self, host: str) -> Path:
        return self.root(host) / "var/lib/rkserve/models"

    def source(self, host: str) -> Path:
        return self.folder / "src" / host / "shapes"

    def endpoint(self, host: str) -> str:
        return f"ipc://{self.folder}/{host}.sock"

    def start_daemon(self, host: str) -> None:
        self.models(host).mkdir(parents=True)
        argv = [sys.executable, "-m", "rkserve", "serve", "--backend", "fake"]
        argv += ["--models-dir", str(self.models(host)), "--endpoint", self.endpoint(host)]
        argv += ["--metrics-port", "0"]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with open(self.folder / f"{host}.log", "ab") as log:
            self.daemons[host] = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, env=env
            )

    def log(self, host: str) -> str:
        return (self.folder / f"{host}.log").read_text(errors="replace")

    def host_vars(self, host: str) -> Dict[str, Any]:
        pid = self.daemons[host].pid if host in self.daemons else 0
        return {
            "rkserve_root": str(self.root(host)),
            "rkserve_doctor_root": str(self.boards[host]),
            "rkserve_gate_dir": str(self.folder / host / "gate"),
            "rkserve_models": [str(self.source(host))],
            "rkserve_reload_command": f"kill -HUP {pid}",
            "rkserve_health_endpoint": self.endpoint(host),
        }

    def inventory(self) -> Path:
        deps = sysconfig.get_paths()["purelib"]  # numpy, pyzmq... for the --no-deps venv
        common = {
            "ansible_connection": "local",
            "ansible_python_interpreter": sys.executable,
            "rkserve_wheel": str(self.wheel),
            "rkserve_python": sys.executable,
            "rkserve_install_args": ["--no-deps"],
            "rkserve_pythonpath": f"{self.site}{os.pathsep}{deps}",
            "rkserve_push_via": "local",
            "rkserve_build_dir": str(self.folder / "build"),
            "rkserve_health_retries": 5,
            "rkserve_health_delay": 1,
        }
        hosts = {host: self.host_vars(host) for host in BOARDS}
        data = {"all": {"children": {"rkserve_boards": {"hosts": hosts, "vars": common}}}}
        path = self.folder / "inventory.yml"
        path.write_text(yaml.safe_dump(data))
        return path

    def config(self) -> Path:
        path = self.folder / "ansible.cfg"
        path.write_text("[defaults]\n")
        return path

    def play(self) -> subprocess.CompletedProcess:
        env = {
            **os.environ,
            "ANSIBLE_CONFIG": str(self.config()),  # no ansible.cfg from around here
            "ANSIBLE_LOCAL_TEMP": str(self.folder / "ansible-tmp"),
            "ANSIBLE_REMOTE_TEMP": str(self.folder / "ansible-tmp"),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_RETRY_FILES_ENABLED": "0",
        }
        env.pop("PYTHONPATH", None)
        argv = [str(ANSIBLE), "-i", str(self.inventory()), str(PLAYBOOK)]
        return subprocess.run(
            argv, capture_output=True, text=True, env=env, cwd=str(self.folder), timeout=900
        )

    def models_of(self, host: str) -> Dict[str, Dict[str, Any]]:
        with Client(self.endpoint(host), timeout=5.0, retries=0) as client:
            return {m["name"]: m for m in client.models()}


def recap(done: subprocess.CompletedProcess) -> Dict[str, Dict[str, int]]:
    found = {}
    for host, ok, changed, unreachable, failed in RECAP.findall(done.stdout):
        found[host] = {"ok": int(ok), "changed": int(changed), "failed": int(failed)}
        assert unreachable == "0", done.stdout
    assert sorted(found) == sorted(BOARDS), done.stdout + done.stderr
    return found


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    if sys.version_info < (3, 11):
        pytest.skip("ansible-core 2.19 (the pinned dev dependency) needs Python >= 3.11")
    if not ANSIBLE.exists():
        missing(f"ansible-playbook not found beside {sys.executable} (the dev extra pins it)")
    folder = tmp_path_factory.mktemp("ansible")
    dist = folder / "dist"
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(ROOT)]
    built = subprocess.run(build, capture_output=True, text=True, timeout=600)
    if built.returncode != 0:
        missing(f"cannot build the wheel here: {built.stderr.strip()[-300:]}")
    (wheel,) = dist.glob("rkserve-*.whl")
    lab = Lab(folder, wheel)
    for host in BOARDS:
        model_folder(lab.source(host), ["circle", "square", "triangle", "star"])
    for host in ("upd1", "upd2"):
        lab.start_daemon(host)
    try:
        yield lab
    finally:
        for proc in lab.daemons.values():
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)


def test_first_run_installs_the_updated_boards_and_refuses_the_seed(lab: Lab) -> None:
    seed_before = snapshot(lab.folder / "seed")
    done = lab.play()
    hosts = recap(done)
    assert hosts["seed"]["failed"] == 1, done.stdout
    assert "rkserve doctor failed on this board; nothing was changed on it" in done.stdout
    assert "Invalid RKNN model version 6" in done.stdout  # the doctor's reason, passed on
    assert snapshot(lab.folder / "seed") == seed_before  # not a file added or changed
    assert not lab.root("seed").exists()
    for host in ("upd1", "upd2"):
        assert hosts[host]["failed"] == 0 and hosts[host]["changed"] > 0, done.stdout
        stamp = (lab.root(host) / "opt/rkserve/venv/.rkserve-install-source").read_text()
        assert stamp.startswith(f"wheel {lab.wheel.name} ")
        assert (lab.root(host) / "etc/systemd/system/rkserve.service").is_file()
        assert snapshot(lab.models(host) / "shapes") == snapshot(lab.source(host))
        served = lab.models_of(host)
        assert served["shapes"]["state"] == "ready" and served["shapes"]["labels"] == 4


def test_second_run_changes_nothing(lab: Lab) -> None:
    done = lab.play()
    hosts = recap(done)
    assert {h: c["changed"] for h, c in hosts.items()} == {h: 0 for h in BOARDS}, done.stdout
    assert hosts["seed"]["failed"] == 1 and hosts["upd1"]["failed"] == hosts["upd2"]["failed"] == 0


def test_one_changed_model_resyncs_and_reloads_that_board_only(lab: Lab) -> None:
    passes = {host: lab.log(host).count(" serving ") for host in ("upd1", "upd2")}
    labels = lab.source("upd1") / "labels.txt"
    labels.write_text(labels.read_text() + "cross\n")
    done = lab.play()
    hosts = recap(done)
    assert hosts["upd1"]["changed"] >= 2 and hosts["upd2"]["changed"] == 0, done.stdout
    assert snapshot(lab.models("upd1") / "shapes") == snapshot(lab.source("upd1"))
    assert lab.models_of("upd1")["shapes"]["labels"] == 5  # reloaded: the new labels serve
    assert lab.models_of("upd2")["shapes"]["labels"] == 4
    assert lab.log("upd2").count(" serving ") == passes["upd2"]  # no reload there
    assert lab.log("upd1").count(" serving ") > passes["upd1"]
