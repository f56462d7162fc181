"""The boards people really have: the NPU on renderD128, /dev/rknpu only, the mainline rocket
driver, an rk3588f SoC, containers without the device tree or the device. For each fixture
board: what the probes read, doctor's verdict and message (in a real subprocess), and the
daemon (``--backend rknnlite``, the lite2 double) refusing or serving the model as doctor
says."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict

import pytest

from rkserve.board import probes
from rkserve.board.checks import FAIL, OK, WARN, Check, board_checks, model_checks, probe_board
from tests.boards import AFTER_UPDATE, make_board, rknn_info, write_lite2
from tests.helpers import MODELS
from tools.harness import DOUBLES, Daemon

REPO = Path(__file__).resolve().parents[2]
LITE2_REFUSES = "rknn-toolkit-lite2 (2.3.0-2.5.0) refuses to start without that file"

# name → make_board arguments (on top of the updated seed board: librknnrt 2.3.0)
BOARDS: Dict[str, Dict[str, Any]] = {
    "renderD129": {},
    "renderD128": {"device": "dev/dri/renderD128"},
    "rknpu": {"device": "dev/rknpu"},
    "rocket": {
        "soc": "rk3588",
        "driver": None,
        "device": "dev/accel/accel0",
        "npu_driver": "rocket",
        "librknnrt": "2.3.2",
        "rknn_server": None,
    },
    "rk3588f": {
        "soc": "rk3588f",
        "compatible": "radxa,rock-5c",
        "driver": "0.9.8",
        "librknnrt": "2.3.2",
        "rknn_server": None,
    },
    "container": {"container": "docker"},
    "container-no-device-tree": {"container": "docker", "soc": None},
    "container-no-device": {"container": "docker", "device": None, "sysfs": "dev/dri/renderD129"},
    "pod-no-npu": {"container": "kubernetes", "device": None, "sysfs": None},
}
# name → (the board check that fails, or None), doctor's exit status
VERDICTS = {
    "renderD129": (None, 0),
    "renderD128": ("device", 1),
    "rknpu": ("device", 1),
    "rocket": ("driver", 1),
    "rk3588f": (None, 0),
    "container": (None, 0),
    "container-no-device-tree": ("soc", 1),
    "container-no-device": ("device", 1),
    "pod-no-npu": ("device", 1),
}


def fixture(tmp_path: Path, name: str) -> Path:
    return make_board(tmp_path / name, **{**AFTER_UPDATE, **BOARDS[name]})


def checks(root: Path) -> Dict[str, Check]:
    board = replace(probe_board(root), toolkit_lite2="2.3.0")
    return {c.name: c for c in board_checks(board)}


# ------------------------------------------------------------------------- the probes


def test_sysfs_names_the_npu_node(tmp_path: Path) -> None:
    nodes = {name: probes.npu_nodes(fixture(tmp_path, name)) for name in BOARDS}
    assert [(n.path, n.driver) for n in nodes["renderD129"]] == [("/dev/dri/renderD129", "rknpu")]
    assert nodes["renderD129"][0].evidence == "/sys/class/drm/renderD129"
    assert [(n.path, n.driver) for n in nodes["renderD128"]] == [("/dev/dri/renderD128", "rknpu")]
    assert [(n.path, n.driver) for n in nodes["rknpu"]] == [("/dev/rknpu", "rknpu")]
    assert [(n.path, n.driver) for n in nodes["rocket"]] == [("/dev/accel/accel0", "rocket")]
    assert nodes["pod-no-npu"] == []


def test_the_device_librknnrt_would_open(tmp_path: Path) -> None:
    d128 = probes.npu_device(fixture(tmp_path, "renderD128"))
    assert (d128.path, d128.present, d128.lite2_node) == ("/dev/dri/renderD128", True, False)
    gone = probes.npu_device(fixture(tmp_path, "container-no-device"))
    assert (gone.path, gone.present, gone.exists) == ("/dev/dri/renderD129", False, False)
    rocket = probes.npu_device(fixture(tmp_path, "rocket"))
    assert rocket.path is None
    bare = probes.npu_device(make_board(tmp_path / "bare", sysfs=None))
    assert (bare.path, bare.evidence, bare.lite2_node) == ("/dev/dri/renderD129", "", True)


def test_a_renderD129_link_to_the_npu_satisfies_the_wheel(tmp_path: Path) -> None:
    root = fixture(tmp_path, "renderD128")
    (root / "dev/dri/renderD129").symlink_to("renderD128")
    device = probes.npu_device(root)
    assert (device.path, device.lite2_node) == ("/dev/dri/renderD128", True)
    check = checks(root)["device"]
    assert check.status == OK and "named by /sys/class/drm/renderD128" in check.detail


@pytest.mark.parametrize(
    "compatible, soc, family, cores",
    [
        ("radxa,rock-5c\0rockchip,rk3588f\0", "rk3588f", "rk3588", 3),
        ("xunlong,orangepi-5\0rockchip,rk3588s\0", "rk3588s", "rk3588", 3),
        ("friendlyarm,nanopi-r5s\0rockchip,rk3568\0", "rk3568", "rk356x", 1),
        ("rockchip,rk3562-evb1-v10\0rockchip,rk3562\0", "rk3562", "rk3562", 1),
        ("armsom,sige5\0rockchip,rk3576\0", "rk3576", "rk3576", 2),
        ("radxa,rock-2a\0rockchip,rk3528\0", "rk3528", "rk3528", 1),
    ],
)
def test_soc_variants_match_their_family(
    tmp_path: Path, compatible: str, soc: str, family: str, cores: int
) -> None:
    root = make_board(tmp_path, soc=None)
    (root / "proc/device-tree").mkdir(parents=True)
    (root / "proc/device-tree/compatible").write_bytes(compatible.encode())
    assert probes.soc(root) == soc
    assert probes.npu_family(soc) == family
    assert probes.npu_cores(soc) == cores
    assert probes.supported_soc(soc) == (soc != "rk3528")


@pytest.mark.parametrize(
    "marker, engine",
    [
        (".dockerenv", "docker"),
        ("run/.containerenv", "podman"),
        ("var/run/secrets/kubernetes.io/serviceaccount/token", "kubernetes"),
    ],
)
def test_container_markers(tmp_path: Path, marker: str, engine: str) -> None:
    root = make_board(tmp_path)
    assert probes.container(root) is None
    (root / marker).parent.mkdir(parents=True, exist_ok=True)
    (root / marker).write_bytes(b"")
    assert probes.container(root) == engine


def test_container_from_cgroup(tmp_path: Path) -> None:
    root = make_board(tmp_path)
    cgroup = "0::/kubepods/besteffort/pod1f3c/5a7e0c1d\n"
    (root / "proc/1").mkdir(parents=True)
    (root / "proc/1/cgroup").write_text(cgroup)
    assert probes.container(root) == "kubernetes"


# ------------------------------------------------------------------------- the checks


def test_npu_on_renderD128(tmp_path: Path) -> None:
    check = checks(fixture(tmp_path, "renderD128"))["device"]
    assert check.status == FAIL
    assert check.detail.startswith("the NPU is /dev/dri/renderD128 (named by /sys/class/drm/")
    assert LITE2_REFUSES in check.detail and "init_runtime returns -1" in check.detail
    assert 'SUBSYSTEM=="drm", KERNEL=="renderD128", SYMLINK+="dri/renderD129"' in check.fix
    assert "sudo ln -s /dev/dri/renderD128 /dev/dri/renderD129" in check.fix


def test_rknpu_misc_device_only(tmp_path: Path) -> None:
    check = checks(fixture(tmp_path, "rknpu"))["device"]
    assert check.status == FAIL and check.detail.startswith("the NPU is /dev/rknpu")
    assert LITE2_REFUSES in check.detail
    assert "misc device" in check.fix and "unverified" in check.fix


def test_mainline_rocket_driver(tmp_path: Path) -> None:
    found = checks(fixture(tmp_path, "rocket"))
    driver, device = found["driver"], found["device"]
    assert driver.status == FAIL
    assert "mainline rocket driver (/dev/accel/accel0, /sys/class/accel/accel0)" in driver.detail
    assert "librknnrt, and so rknn-toolkit-lite2, cannot use it" in driver.detail
    assert "vendor (BSP) kernel with the rknpu driver" in driver.fix and "Teflon" in driver.fix
    assert device.status == FAIL and "/dev/accel/accel0, the rocket driver's" in device.detail
    assert found["soc"].status == OK


def test_rk3588f_is_an_rk3588(tmp_path: Path) -> None:
    root = fixture(tmp_path, "rk3588f")
    found = checks(root)
    assert found["soc"].detail == "rk3588f (NPU family rk3588, a variant of rk3588)"
    assert FAIL not in {c.status for c in found.values()}, found
    board = probe_board(root)
    assert [c.status for c in model_checks(board, rknn_info("2.3.2", "rk3588"))] == [OK, OK]
    assert model_checks(board, rknn_info("2.3.2", "rk3568"))[0].status == FAIL


def test_unknown_rockchip_soc_is_named(tmp_path: Path) -> None:
    check = checks(make_board(tmp_path, soc="rk3528"))["soc"]
    assert check.status == FAIL
    assert check.detail.startswith("rk3528 is a Rockchip SoC without an NPU")


def test_container_without_device_tree(tmp_path: Path) -> None:
    check = checks(fixture(tmp_path, "container-no-device-tree"))["soc"]
    assert check.status == FAIL
    assert "not visible in this docker container" in check.detail
    assert "-v /proc/device-tree/compatible:/proc/device-tree/compatible:ro" in check.fix


def test_container_without_the_device(tmp_path: Path) -> None:
    check = checks(fixture(tmp_path, "container-no-device"))["device"]
    assert check.status == FAIL
    assert check.detail.startswith(
        "the NPU is /dev/dri/renderD129 (/sys/class/drm/renderD129 names it) but this docker "
        "container has no /dev/dri/renderD129"
    )
    assert "hw_version=-1" in check.detail
    assert "`--device /dev/dri/renderD129`" in check.fix
    d128 = make_board(
        tmp_path / "d128", device=None, sysfs="dev/dri/renderD128", container="docker"
    )
    assert "`--device /dev/dri/renderD128:/dev/dri/renderD129`" in checks(d128)["device"].fix


def test_pod_without_npu_or_sysfs(tmp_path: Path) -> None:
    found = checks(fixture(tmp_path, "pod-no-npu"))
    assert found["device"].status == FAIL
    assert "no NPU device node in this kubernetes container" in found["device"].detail
    assert "device plugin or a hostPath" in found["device"].fix


def test_container_driver_version_hint(tmp_path: Path) -> None:
    root = make_board(tmp_path, driver=None, container="docker")
    check = checks(root)["driver"]
    assert check.status == WARN and "debugfs is not mounted in containers" in check.detail
    assert "-v /sys/kernel/debug/rknpu:/sys/kernel/debug/rknpu:ro" in check.fix


# ------------------------------------------------------------------------- doctor and daemon


def run_doctor(root: Path, site: Path, models: Path) -> Dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(site)])}
    command = [sys.executable, "-m", "rkserve", "doctor", "--root", str(root), "--json"]
    done = subprocess.run(
        [*command, "--models", str(models)], capture_output=True, text=True, env=env, timeout=60
    )
    report: Dict[str, Any] = json.loads(done.stdout)
    report["exit"] = done.returncode
    return report


@pytest.mark.process
@pytest.mark.parametrize("name", list(BOARDS))
def test_doctor_verdict(tmp_path: Path, name: str) -> None:
    site = write_lite2(tmp_path / "site", "2.3.0")
    report = run_doctor(fixture(tmp_path, name), site, tmp_path / "no-models")
    failing, code = VERDICTS[name]
    board = {c["name"]: c for c in report["checks"] if c["scope"] == "board"}
    failed = [n for n, c in board.items() if c["status"] == FAIL]
    assert report["exit"] == code, report
    assert failed[:1] == ([failing] if failing else []), failed


def serve(tmp_path: Path, root: Path, **env: str) -> Dict[str, Any]:
    """``rkserve serve --backend rknnlite`` on the board ``root`` (the lite2 double, lite2
    "installed"): ``{"exit": 1, "line": ...}`` when it stops at start-up, else the demo
    classifier's ``models`` entry."""
    models = tmp_path / "models"
    models.mkdir()
    (models / "shapes").symlink_to(MODELS / "shapes")
    site = write_lite2(tmp_path / "site", "2.3.0")
    path = os.pathsep.join([str(REPO), str(DOUBLES), str(site)])
    flags = ["--backend", "rknnlite", "--sysroot", str(root), "--workers", "1"]
    daemon = Daemon(tmp_path, models, *flags, env={"PYTHONPATH": path, **env})
    daemon.start(wait_ready=False)
    assert daemon.proc is not None
    try:
        daemon.wait(lambda h: h["status"] == "serving", timeout=60)
    except AssertionError:
        code = daemon.proc.wait(10)
        daemon.stop()
        return {"exit": code, "line": daemon.log().strip()}
    try:
        with daemon.client() as client:
            (model,) = client.models()
    finally:
        assert daemon.stop() == 0, daemon.log()
    return dict(model)


@pytest.mark.process
@pytest.mark.parametrize("name", ["renderD129", "renderD128", "rocket", "container-no-device"])
def test_daemon_serves_or_stops_as_doctor_says(tmp_path: Path, name: str) -> None:
    """``backend: rknnlite`` where doctor FAILs the board: one line at start-up, exit 1,
    with doctor's reason and fix; where it passes, the model is served."""
    root = fixture(tmp_path, name)
    board = replace(probe_board(root), toolkit_lite2="2.3.0")
    failed = [c for c in board_checks(board) if c.status == FAIL]
    got = serve(tmp_path, root, RKNNLITE_DOUBLE_SOC=probes.soc(root) or "")
    if not failed:
        assert got.get("state") == "ready", got
        return
    assert got["exit"] == 1 and len(got["line"].splitlines()) == 1, got
    assert got["line"].startswith("rkserve serve: error: backend rknnlite: "), got
    for check in failed:
        assert f"{check.detail} (fix: {check.fix})" in got["line"]
