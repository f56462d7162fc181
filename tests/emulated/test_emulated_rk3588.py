"""An emulated RK3588 (three NPU cores): the real wheel passes per-core masks to the runtime,
and the stand-in runs each call on the core the mask names (its trace says which); the
daemon serves a model with one RKNNLite instance per core, three inferences at once."""

from __future__ import annotations

import dataclasses
import json
import re
import threading
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest

from rkserve.backends.rknnlite import nhwc
from rkserve.board.rknnfile import read_rknn
from rkserve.spec import ModelSpec
from tests.emuboard import (
    LITE2_RELEASES,
    board,
    board_inputs,
    on_board,
    record,
    record_twin,
    same_answer,
    write_attrs,
)
from tests.helpers import DATA, MODELS, write_model
from tools.harness import Daemon

pytestmark = pytest.mark.emulated

MODEL = DATA / "rknn/rockchip/multiple_input_demo_RK3588_tk1.6.2.rknn"
MASKS = {"core0": 1, "core1": 2, "core2": 4, "auto": None}


@pytest.fixture(scope="module")
def rk3588(tmp_path_factory: Any) -> Dict[str, Any]:
    """Each core mask on the emulated RK3588 with the newest lite2; the stand-in's trace."""
    if not MODEL.is_file():
        pytest.skip(f"{MODEL} not found")
    target = board("rk3588")
    folder = tmp_path_factory.mktemp("rk3588")
    records = folder / "records"
    info = read_rknn(MODEL)
    height, width = nhwc(info.inputs[0].shape)[1:3]
    model = write_model(
        folder / "model", {"task": "classification", "input": {"size": [height, width]}}, rknn=MODEL
    )
    write_attrs(records, MODEL)
    rng = np.random.default_rng(3588)
    inputs = [rng.integers(0, 256, nhwc(t.shape), dtype=np.uint8) for t in info.inputs]
    outputs = [rng.standard_normal(t.shape).astype(np.float32) for t in info.outputs]
    record(records, MODEL, inputs, outputs)
    paths = []
    for i, tensor in enumerate(inputs):
        paths.append(str(folder / f"in{i}.npy"))
        np.save(paths[-1], tensor)
    plan = [
        {"name": name, "model": str(model), "inputs": paths, "runs": 2, "core_mask": mask}
        for name, mask in MASKS.items()
    ]
    plan.append({"name": "core3", "model": str(model), "inputs": paths, "core_mask": 8})
    (folder / "plan.json").write_text(json.dumps(plan), encoding="utf-8")
    trace = folder / "standin.log"
    done = target.run(
        ["tests/emulated/drive.py", str(folder / "plan.json"), str(folder / "out.json")],
        LITE2_RELEASES[-1],
        RKNN_STANDIN_DIR=str(records),
        RKNN_STANDIN_LOG=str(trace),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = {r["name"]: r for r in json.loads((folder / "out.json").read_text())}
    return {"results": results, "trace": trace.read_text(), "outputs": outputs, "log": done.stderr}


def runs_per_init(trace: str) -> List[List[int]]:
    """The core of each successful rknn_run, grouped by the rknn_init before it."""
    groups: List[List[int]] = []
    for line in trace.splitlines():
        if "] rknn_init(" in line:
            groups.append([])
        run = re.search(r"rknn_run\(\d+\) core=(\d+) .* -> 0$", line)
        if run and groups:
            groups[-1].append(int(run.group(1)))
    return groups


def test_each_core_mask_reaches_the_runtime_and_runs_on_its_core(rk3588: Dict[str, Any]):
    results, trace = rk3588["results"], rk3588["trace"]
    for name in ("core0", "core1", "core2", "auto"):
        assert results[name]["error"] is None, (name, results[name]["error"], rk3588["log"][-2000:])
        got = [np.load(o["path"]) for o in results[name]["outputs"]]
        for g, e in zip(got, rk3588["outputs"]):
            np.testing.assert_array_equal(g, e)
    masks = [int(m, 16) for m in re.findall(r"rknn_set_core_mask\(\d+, (0x[0-9a-f]+)\)", trace)]
    assert masks[:3] == [1, 2, 4]  # what the wheel passed for NPU_CORE_0/1/2
    # one context per step, in order: the pinned ones ran every call on their core, the
    # unpinned one wherever the runtime chose
    cores = runs_per_init(trace)
    assert cores[:3] == [[0, 0], [1, 1], [2, 2]]
    assert len(cores[3]) == 2 and set(cores[3]) <= {0, 1, 2}
    assert "soc rk3588 (3 cores)" in trace


def test_a_mask_naming_a_core_the_npu_lacks_fails_init(rk3588: Dict[str, Any]):
    error = rk3588["results"]["core3"]["error"]
    assert error is not None and error.startswith("BackendError: init_runtime for "), error


def shapes_for_rk3588(models: Path) -> Path:
    """models/shapes as if converted for rk3588: its .rknn with the target platform renamed
    (the stand-in and rkserve's checks read it from the file; the graph is never run)."""
    folder = models / "shapes"
    folder.mkdir(parents=True)
    for name in ("model.yaml", "labels.txt", "model.onnx", "samples"):
        (folder / name).symlink_to(MODELS / "shapes" / name)
    data = (MODELS / "shapes" / "model.rknn").read_bytes()
    assert b"rk3568" in data
    (folder / "model.rknn").write_bytes(data.replace(b"rk3568", b"rk3588"))
    return folder


def overlapping(trace: str) -> int:
    """The most rknn_run calls in progress at one time, from the trace's start/end times."""
    spans = [
        (float(a), float(b))
        for a, b in re.findall(
            r"rknn_run\(\d+\) core=\d+ ms=([\d.]+)-([\d.]+) .* -> 0$", trace, re.M
        )
    ]
    events = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


@pytest.mark.process
def test_the_daemon_runs_one_instance_per_core_on_an_rk3588(tmp_path: Path):
    if "instances" not in {f.name for f in dataclasses.fields(ModelSpec)}:
        pytest.skip("model.yaml `instances` (one runner per NPU core) is not in this tree")
    target, lite2 = board("rk3588"), LITE2_RELEASES[-1]
    folder = shapes_for_rk3588(tmp_path / "models")
    images = sorted((MODELS / "shapes" / "samples").glob("*.jpg"))[:3]
    params = {"top_k": 3}
    inputs = board_inputs(target, lite2, folder, images, tmp_path)
    answers = record_twin(tmp_path / "records", folder, inputs, images, params)
    trace = tmp_path / "standin.log"
    d = on_board(
        Daemon(tmp_path, tmp_path / "models", "--backend", "rknnlite", "--workers", "3"),
        target,
        lite2,
        RKNN_STANDIN_DIR=str(tmp_path / "records"),
        RKNN_STANDIN_LOG=str(trace),
        RKNN_STANDIN_RUN_MS="400",  # long enough for the three runners' calls to overlap
    )
    d.start(timeout=180)
    got: Dict[str, Any] = {}
    try:
        with d.client() as client:
            (described,) = client.models()
        assert described["instances"] == 3, described

        def ask(n: int) -> None:
            image = images[n % len(images)]
            with d.client(timeout=60) as client:
                got[f"{n}/{image.name}"] = client.infer("shapes", image.read_bytes(), **params)

        threads = [threading.Thread(target=ask, args=(n,)) for n in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        code = d.stop()
    assert code == 0, d.log()
    assert len(got) == 6
    for key, reply in got.items():
        same_answer(reply.result, answers[key.split("/")[1]])
    text = trace.read_text()
    masks = re.findall(r"rknn_set_core_mask\(\d+, (0x[0-9a-f]+)\)", text)
    assert sorted(masks) == ["0x1", "0x2", "0x4"]  # one runner pinned to each core
    cores = {int(c) for c in re.findall(r"rknn_run\(\d+\) core=(\d) .* -> 0$", text, re.M)}
    assert cores == {0, 1, 2}
    assert overlapping(text) >= 2, "the runners never ran at the same time"
