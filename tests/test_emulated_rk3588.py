"""An emulated RK3588 (three NPU cores): the real wheel passes per-core masks to the runtime,
and the stand-in runs each call on the core the mask names (its trace says which)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest
from emuboard import LITE2_RELEASES, board, record, write_attrs
from helpers import write_model

from rkserve.backends.rknnlite import nhwc
from rkserve.rknnfile import read_rknn

pytestmark = pytest.mark.emulated

MODEL = (
    Path(__file__).resolve().parents[2]
    / "shared/data/rknn/rockchip/multiple_input_demo_RK3588_tk1.6.2.rknn"
)
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
        run = re.search(r"rknn_run\(\d+\) core=(\d+) input=\w+ -> 0$", line)
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
