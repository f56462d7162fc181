"""The boards people really have, emulated: the NPU on renderD128, /dev/rknpu only, the
mainline rocket driver, a Rock 5C's rk3588f, and containers started as docs/CONTAINERS.md
says (or without the device or the device tree). The real rknn-toolkit-lite2 wheels show
what they do on each; ``rkserve doctor`` on the board says what it says of a fixture tree
of the same board; the daemon serves or refuses as doctor says.

qemu's ``-L`` falls back to the host's files for paths a board root lacks, so a board sees
this machine's ``/.dockerenv`` when it has one: the host fixtures are given the same marker.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import pytest

from rkserve.backends.rknnlite import nhwc
from rkserve.board import probes
from rkserve.board.checks import FAIL
from rkserve.board.rknnfile import read_rknn
from tests.boards import make_board, write_lite2
from tests.containers import COMPATIBLE, NPU_NODE, compose_mappings, container_root, without
from tests.emuboard import (
    EMULATED,
    LITE2_RELEASES,
    ROOT,
    Board,
    board,
    on_board,
    record,
    record_twin,
    write_attrs,
)
from tests.helpers import DATA, MODELS, write_model
from tools.harness import Daemon

pytestmark = [pytest.mark.emulated, pytest.mark.process]

LITE2 = "2.3.0"
MISSING = "It is detected that some necessary files are missing in the container"
LEAK = probes.container(Path("/"))  # what qemu shows the boards of this machine's own files
# emulated board → (its fixture, as tests/boards.py make_board arguments; the failing check)
WILD: Dict[str, Any] = {
    "rk3568-renderD128": (
        dict(driver="0.8.2", librknnrt="2.3.0", device="dev/dri/renderD128"),
        "device",
    ),
    "rk3568-rknpu": (dict(driver="0.8.2", librknnrt="2.3.0", device="dev/rknpu"), "device"),
    "rk3588-rocket": (
        dict(
            soc="rk3588",
            driver=None,
            librknnrt="2.3.2",
            rknn_server="2.3.2",
            device="dev/accel/accel0",
            npu_driver="rocket",
        ),
        "driver",
    ),
    "rk3588f": (
        dict(
            soc="rk3588f",
            compatible="radxa,rock-5c",
            driver="0.9.8",
            librknnrt="2.3.2",
            rknn_server="2.3.2",
        ),
        None,
    ),
}
RK3588_MODEL = DATA / "rknn/rockchip/multiple_input_demo_RK3588_tk1.6.2.rknn"


def board_doctor(target: Board, models: Path, root: str = "/") -> Dict[str, Any]:
    args = ["-m", "rkserve", "doctor", "--root", root, "--models", str(models), "--json"]
    done = target.run(args, LITE2)
    assert done.returncode in (0, 1), done.stderr[-3000:]
    report: Dict[str, Any] = json.loads(done.stdout)
    report["exit"] = done.returncode
    return report


def host_doctor(root: Path, site: Path, models: Path) -> Dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(site)])}
    command = [sys.executable, "-m", "rkserve", "doctor", "--root", str(root), "--json"]
    done = subprocess.run(
        [*command, "--models", str(models)], capture_output=True, text=True, env=env, timeout=60
    )
    return json.loads(done.stdout)


def first_failure(report: Dict[str, Any]) -> Optional[Dict[str, str]]:
    return next((c for c in report["checks"] if c["status"] == FAIL), None)


@pytest.mark.parametrize("name", list(WILD))
def test_doctor_on_the_board_says_what_it_says_of_its_fixture(tmp_path: Path, name: str) -> None:
    fixture, failing = WILD[name]
    root = make_board(tmp_path, container=LEAK, **{"rknn_server": "2.3.0", **fixture})
    site = write_lite2(tmp_path / "site", LITE2)
    emulated = board_doctor(board(name), tmp_path / "none")
    host = host_doctor(root, site, tmp_path / "none")
    assert emulated["checks"] == host["checks"]
    found = first_failure(emulated)
    assert (found or {}).get("name") == failing, emulated["checks"]
    assert emulated["exit"] == (1 if failing else 0)


def drive(target: Board, lite2: str, folder: Path, steps: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Run ``steps`` through rkserve's backend and the real wheel on ``target``; the results,
    the process's stderr and the stand-in runtime's trace (empty: librknnrt never called)."""
    plan, out, trace = folder / "plan.json", folder / "out.json", folder / "trace.log"
    plan.write_text(json.dumps(steps), encoding="utf-8")
    done = target.run(
        ["tests/emulated/drive.py", str(plan), str(out)],
        lite2,
        RKNN_STANDIN_DIR=str(folder / "records"),
        RKNN_STANDIN_LOG=str(trace),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = {r["name"]: r for r in json.loads(out.read_text())}
    return {
        "results": results,
        "log": done.stdout + done.stderr,  # the wheel prints its container hint to stdout
        "trace": trace.read_text() if trace.exists() else "",
    }


def shapes_step(folder: Path) -> Dict[str, Any]:
    """The demo classifier on a random input, its outputs recorded for the stand-in."""
    rknn = MODELS / "shapes" / "model.rknn"
    info = read_rknn(rknn)
    rng = np.random.default_rng(128)
    tensor = rng.integers(0, 256, nhwc(info.inputs[0].shape), dtype=np.uint8)
    outputs = [rng.standard_normal(t.shape).astype(np.float32) for t in info.outputs]
    write_attrs(folder / "records", rknn)
    record(folder / "records", rknn, [tensor], outputs)
    np.save(folder / "input.npy", tensor)
    return {
        "name": "shapes",
        "model": str(MODELS / "shapes"),
        "inputs": [str(folder / "input.npy")],
    }


@pytest.mark.parametrize("lite2", LITE2_RELEASES)
def test_the_wheel_refuses_an_npu_on_renderD128(tmp_path: Path, lite2: str) -> None:
    """Every release checks for /dev/dri/renderD129 and stops before loading librknnrt."""
    ran = drive(board("rk3568-renderD128"), lite2, tmp_path, [shapes_step(tmp_path)])
    error = ran["results"]["shapes"]["error"]
    assert error.startswith("BackendError: init_runtime for "), error
    assert MISSING in ran["log"] and "-v /dev/dri/renderD129:/dev/dri/renderD129" in ran["log"]
    assert "rknn_init" not in ran["trace"]  # the runtime was never called


def test_the_wheel_refuses_dev_rknpu_alone(tmp_path: Path) -> None:
    ran = drive(board("rk3568-rknpu"), LITE2, tmp_path, [shapes_step(tmp_path)])
    assert ran["results"]["shapes"]["error"].startswith("BackendError: init_runtime for ")
    assert MISSING in ran["log"] and "rknn_init" not in ran["trace"]


def test_a_renderD129_link_gets_past_the_wheel(tmp_path: Path) -> None:
    """doctor's fix for renderD128 (a udev SYMLINK, or `ln -s`), on a copy of the board."""
    source = board("rk3568-renderD128")
    copy = tmp_path / "board"
    subprocess.run(["cp", "-al", str(source.root), str(copy)], check=True)
    (copy / "dev/dri/renderD129").symlink_to("renderD128")
    linked = Board("rk3568-linked", copy)
    report = board_doctor(linked, tmp_path / "none")
    assert report["exit"] == 0, first_failure(report)
    ran = drive(linked, LITE2, tmp_path, [shapes_step(tmp_path)])
    assert ran["results"]["shapes"]["error"] is None
    assert MISSING not in ran["log"] and "rknn_init" in ran["trace"]


def test_rk3588f_runs_rk3588_models_on_three_cores(tmp_path: Path) -> None:
    if not RK3588_MODEL.is_file():
        pytest.fail(f"{RK3588_MODEL} not found (set RKSERVE_SHARED_DATA)")
    info = read_rknn(RK3588_MODEL)
    records = tmp_path / "records"
    write_attrs(records, RK3588_MODEL)
    rng = np.random.default_rng(5)
    inputs = [rng.integers(0, 256, nhwc(t.shape), dtype=np.uint8) for t in info.inputs]
    outputs = [rng.standard_normal(t.shape).astype(np.float32) for t in info.outputs]
    record(records, RK3588_MODEL, inputs, outputs)
    paths = []
    for i, tensor in enumerate(inputs):
        paths.append(str(tmp_path / f"in{i}.npy"))
        np.save(paths[-1], tensor)
    height, width = nhwc(info.inputs[0].shape)[1:3]
    spec = {"task": "classification", "input": {"size": [height, width]}}
    model = write_model(tmp_path / "model", spec, rknn=RK3588_MODEL)
    steps = [
        {"name": f"core{core}", "model": str(model), "inputs": paths, "core_mask": 1 << core}
        for core in range(3)
    ]
    ran = drive(board("rk3588f"), LITE2_RELEASES[-1], tmp_path, steps)
    for core in range(3):
        result = ran["results"][f"core{core}"]
        assert result["error"] is None, (result, ran["log"][-2000:])
        got = np.load(result["outputs"][0]["path"])
        np.testing.assert_array_equal(got, outputs[0].reshape(got.shape))


# ------------------------------------------------------------------------- containers


def served(target: Board, folder: Path, models: Path) -> Dict[str, Any]:
    """The daemon on ``target`` with the demo classifier: its ``models`` entry, or
    ``{"exit": 1, "line": ...}`` when it stops at start-up."""
    records = folder / "records"
    record_twin(records, MODELS / "shapes", {}, [], {})  # the loader's warm-up
    flags = ["--backend", "rknnlite", "--workers", "1"]
    daemon = on_board(Daemon(folder, models, *flags), target, LITE2, RKNN_STANDIN_DIR=str(records))
    daemon.start(wait_ready=False)
    assert daemon.proc is not None
    try:
        daemon.wait(lambda h: h["status"] == "serving", timeout=240)
    except AssertionError:
        code = daemon.proc.wait(30)
        daemon.stop()
        return {"exit": code, "line": daemon.log().strip().splitlines()[-1]}
    try:
        with daemon.client(timeout=60) as client:
            (model,) = client.models()
    finally:
        assert daemon.stop(timeout=60) == 0, daemon.log()
    return dict(model)


@pytest.fixture(scope="module")
def shapes_only(tmp_path_factory: Any) -> Path:
    models = tmp_path_factory.mktemp("models")
    (models / "shapes").symlink_to(MODELS / "shapes")
    return models


@pytest.mark.parametrize("forgotten", [None, NPU_NODE, COMPATIBLE])
def test_a_container_started_from_compose(
    tmp_path: Path, shapes_only: Path, forgotten: Optional[str]
) -> None:
    """compose.yaml on the emulated RK3568: doctor passes and the daemon serves; without the
    device or the device tree, doctor fails and the daemon stops at start-up with doctor's
    reason and fix."""
    rk3568 = board("rk3568")
    pairs = compose_mappings() if forgotten is None else without(compose_mappings(), forgotten)
    root = container_root(rk3568.root, pairs, tmp_path / "container", EMULATED / "userland")
    inside = Board("rk3568-container", root)
    report = board_doctor(inside, tmp_path / "none")
    assert report["board"]["container"] == "docker"
    model = served(inside, tmp_path, shapes_only)
    if forgotten is None:
        assert report["exit"] == 0, first_failure(report)
        assert model["state"] == "ready", model
    else:
        failure = first_failure(report)
        assert failure is not None
        assert failure["name"] == ("device" if forgotten == NPU_NODE else "soc")
        assert model["exit"] == 1, model
        assert f"{failure['detail']} (fix: {failure['fix']})" in model["line"]
