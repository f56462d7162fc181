"""The documented container examples (docs/CONTAINERS.md, deploy/container/) give a
container what rkserve needs: doctor, in a real subprocess, on the filesystem each example
gives the container on a fixture RK3568, passes; without the device or the device tree it
fails with the option that was forgotten, and the daemon refuses its model for that reason."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest

from rkserve.board.checks import FAIL
from tests.board.test_wild_boards import serve
from tests.boards import AFTER_UPDATE, make_board, write_lite2
from tests.containers import (
    COMPATIBLE,
    NPU_NODE,
    Mapping,
    compose_mappings,
    container_root,
    daemonset_mappings,
    docker_run_mappings,
    without,
)

pytestmark = pytest.mark.process  # doctor and the daemon run in subprocesses
REPO = Path(__file__).resolve().parents[2]
EXAMPLES = {
    "docker run": (docker_run_mappings, "docker"),
    "compose": (compose_mappings, "docker"),
    "daemonset": (daemonset_mappings, "kubernetes"),
}


def doctor(root: Path, tmp_path: Path) -> Dict[str, Any]:
    site = write_lite2(tmp_path / "site", "2.3.0")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(site)])}
    command = [sys.executable, "-m", "rkserve", "doctor", "--root", str(root), "--json"]
    done = subprocess.run(
        [*command, "--models", str(tmp_path / "none")], capture_output=True, text=True, env=env
    )
    report: Dict[str, Any] = json.loads(done.stdout)
    report["exit"] = done.returncode
    return report


def failures(report: Dict[str, Any]) -> List[Dict[str, str]]:
    return [c for c in report["checks"] if c["status"] == FAIL]


def test_the_examples_pass_the_same_paths() -> None:
    compose = sorted(compose_mappings())
    assert sorted(docker_run_mappings()) == compose
    assert sorted(daemonset_mappings()) == compose
    assert (NPU_NODE, NPU_NODE) in compose and (COMPATIBLE, COMPATIBLE) in compose


@pytest.mark.parametrize("example", list(EXAMPLES))
def test_the_example_passes_doctor(tmp_path: Path, example: str) -> None:
    read, engine = EXAMPLES[example]
    board = make_board(tmp_path, **AFTER_UPDATE)
    root = container_root(board, read(), tmp_path / "container", engine=engine)
    report = doctor(root, tmp_path)
    assert report["exit"] == 0, failures(report)
    assert report["board"]["container"] == engine
    assert report["board"]["device"]["path"] == NPU_NODE


def test_forgetting_the_device(tmp_path: Path) -> None:
    board = make_board(tmp_path, **AFTER_UPDATE)
    root = container_root(board, without(compose_mappings(), NPU_NODE), tmp_path / "c")
    report = doctor(root, tmp_path)
    assert report["exit"] == 1
    (device,) = failures(report)
    assert device["name"] == "device" and "this docker container has no" in device["detail"]
    assert f"--device {NPU_NODE}`" in device["fix"]


def test_forgetting_the_device_tree(tmp_path: Path) -> None:
    board = make_board(tmp_path, **AFTER_UPDATE)
    root = container_root(board, without(compose_mappings(), COMPATIBLE), tmp_path / "c")
    report = doctor(root, tmp_path)
    (soc,) = failures(report)
    assert soc["name"] == "soc" and "not visible in this docker container" in soc["detail"]
    assert f"-v {COMPATIBLE}:{COMPATIBLE}:ro" in soc["fix"]


def test_npu_on_renderD128_mapped_to_the_name_lite2_wants(tmp_path: Path) -> None:
    board = make_board(tmp_path, device="dev/dri/renderD128", **AFTER_UPDATE)
    as_is = [("/dev/dri/renderD128", "/dev/dri/renderD128"), *without(compose_mappings(), NPU_NODE)]
    report = doctor(container_root(board, as_is, tmp_path / "as-is"), tmp_path)
    (device,) = failures(report)
    assert "refuses to start without that file" in device["detail"]
    assert "`--device /dev/dri/renderD128:/dev/dri/renderD129`" in device["fix"]
    mapped: List[Mapping] = [("/dev/dri/renderD128", NPU_NODE), *as_is[1:]]
    assert doctor(container_root(board, mapped, tmp_path / "mapped"), tmp_path)["exit"] == 0


@pytest.mark.parametrize("forgotten, check", [(NPU_NODE, "device"), (COMPATIBLE, "soc")])
def test_the_daemon_stops_as_doctor_says(tmp_path: Path, forgotten: str, check: str) -> None:
    board = make_board(tmp_path, **AFTER_UPDATE)
    root = container_root(board, without(compose_mappings(), forgotten), tmp_path / "c")
    (expected,) = failures(doctor(root, tmp_path))
    assert expected["name"] == check
    got = serve(tmp_path, root)
    assert got["exit"] == 1, got
    assert f"{expected['detail']} (fix: {expected['fix']})" in got["line"]


def test_the_daemon_serves_in_the_compose_container(tmp_path: Path) -> None:
    board = make_board(tmp_path, **AFTER_UPDATE)
    root = container_root(board, compose_mappings(), tmp_path / "c")
    assert serve(tmp_path, root).get("state") == "ready"
