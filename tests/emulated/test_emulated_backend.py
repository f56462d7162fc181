"""rkserve's rknnlite backend with the real rknn-toolkit-lite2 on the emulated board.

For each lite2 release, one emulated process (tests/emulated/drive.py) runs every step below
through the real wheel and the stand-in librknnrt; the tests then check each step's result.
The demo models' answers are replayed from their ONNX twin, computed here on the host for the
exact inputs rkserve's engine prepares, so a board answer equal to the twin's means the bytes
the runtime received were exactly those.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest

from rkserve.backends import open_backend
from rkserve.engine import Engine
from rkserve.errors import BackendError
from rkserve.tasks import load_spec
from tests.emuboard import (
    LITE2_RELEASES,
    NO_RECORD_LINE,
    RecordingBackend,
    board,
    record,
    write_attrs,
)
from tests.helpers import DATA, MODELS, write_model

pytestmark = pytest.mark.emulated

RKNN = DATA / "rknn"
# .rknn files of other projects that target rk3566/rk3568 (the custom-op demo needs its op
# library registered, which the Python runtime cannot do: left out)
SHARED = [
    "built/mobilenet_v2_1.0_224_rk3568_i8_tk2.3.2.rknn",
    "built/deeplabv3_257_voc_rk3568_i8_tk2.3.2.rknn",
    "built/multiple_input_demo_rk3568_i8_tk2.3.2.rknn",
    "rockchip/multiple_input_demo_RK356X_tk1.1.0.rknn",
    "rockchip/multiple_input_demo_RK3566_RK3568_tk1.3.4.rknn",
    "rockchip/multiple_input_demo_RK3566_RK3568_tk1.6.2.rknn",
    "rockchip/pp_human_segv2_custom_argmax_RK3566_RK3568_tk2.3.1.rknn",
    "thirdparty/yolov5n-640-640-rk3568_tk2.3.2_thirdparty.rknn",
]
RK3588_MODEL = "rockchip/multiple_input_demo_RK3588_tk1.6.2.rknn"
SAMPLES = 2  # images per demo model


class Plan:
    """Steps for drive.py, with what the host expects of each."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.records = folder / "records"
        self.steps: List[Dict[str, Any]] = []
        self.expected: Dict[str, List[np.ndarray]] = {}

    def tensor(self, name: str, array: np.ndarray) -> str:
        path = self.folder / f"{name}.npy"
        np.save(path, array)
        return str(path)

    def add(self, name: str, model: Path, inputs: List[np.ndarray], **options: Any) -> None:
        paths = [self.tensor(f"{name}-in{i}", x) for i, x in enumerate(inputs)]
        self.steps.append({"name": name, "model": str(model), "inputs": paths, **options})

    def demo(self, name: str, samples: int = SAMPLES) -> List[np.ndarray]:
        """Steps for a demo model's first samples; returns their raw inputs."""
        spec = load_spec(MODELS / name)
        engine = Engine(spec, RecordingBackend(spec, self.records))
        raws = []
        for sample in sorted((MODELS / name / "samples").glob("*.jpg"))[:samples]:
            prepared = engine.prepare(sample.read_bytes(), engine.parse_params())
            step = f"{name}-{sample.stem}"
            self.expected[step] = engine.run(prepared)
            self.add(step, MODELS / name, prepared.tensors)
            raws.append(prepared.tensors[0])
        return raws

    def shared(self, relative: str, tag: str) -> Path:
        """A model folder for a shared .rknn, with a recorded answer to a random input."""
        rknn = RKNN / relative
        folder = _model_folder(self.folder / "models" / tag, rknn)
        write_attrs(self.records, rknn)
        rng = np.random.default_rng(len(self.steps))
        backend_inputs = _runtime_inputs(rknn)
        inputs = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in backend_inputs]
        from rkserve.board.rknnfile import read_rknn

        outputs = [rng.standard_normal(t.shape).astype(np.float32) for t in read_rknn(rknn).outputs]
        record(self.records, rknn, inputs, outputs)
        self.expected[tag] = outputs
        self.add(tag, folder, inputs)
        return folder


def _model_folder(folder: Path, rknn: Path) -> Path:
    """A model folder serving ``rknn`` (the backend reads only ``model.rknn``)."""
    height, width = _runtime_inputs(rknn)[0][1:3]
    return write_model(
        folder, {"task": "classification", "input": {"size": [height, width]}}, rknn=rknn
    )


def _runtime_inputs(rknn: Path) -> List[tuple]:
    from rkserve.backends.rknnlite import nhwc
    from rkserve.board.rknnfile import read_rknn

    return [nhwc(t.shape) for t in read_rknn(rknn).inputs]


def _plan(folder: Path) -> Plan:
    plan = Plan(folder)
    shapes = plan.demo("shapes")
    plan.demo("shapes-seg")
    good = shapes[0]
    model = MODELS / "shapes"
    # every error path of the backend, through the real wheel
    plan.add("init-fails", model, [good], fail="rknn_init=-1")
    plan.add("run-fails", model, [good], fail="rknn_run=-1")
    plan.add("outputs-fail", model, [good], fail="rknn_outputs_get=-1")
    plan.add("core-mask-on-one-core", model, [good], core_mask=1)
    plan.add("read-only-input", model, [good], readonly=True)
    # a broken data path: the runtime gets bytes nobody recorded, and says so
    plan.add("bgr-instead-of-rgb", model, [np.ascontiguousarray(good[..., ::-1])])
    plan.add("nchw-instead-of-nhwc", model, [np.ascontiguousarray(good.transpose(0, 3, 1, 2))])
    plan.add("float-instead-of-uint8", model, [good.astype(np.float32)])
    # the garbage guard with the real wheel's objects: off, then every 10 calls
    plan.add("gc-guard-off", model, [good], runs=40, gc_every=0)
    plan.add("gc-guard-10", model, [good], runs=40, gc_every=10)
    for relative in SHARED:
        if (RKNN / relative).is_file():
            plan.shared(relative, Path(relative).stem)
    if (RKNN / RK3588_MODEL).is_file():
        folder = _model_folder(folder / "models" / "rk3588", RKNN / RK3588_MODEL)
        write_attrs(plan.records, RKNN / RK3588_MODEL)
        plan.add("wrong-target-platform", folder, [np.zeros((1, 128, 128, 1), np.uint8)] * 2)
    return plan


def _split_log(stderr: str) -> Dict[str, str]:
    """The runtime's stderr, per step (drive.py marks each step's start)."""
    parts = re.split(r"^=== step (\S+)\n", stderr, flags=re.M)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}


@pytest.fixture(scope="module")
def launched(tmp_path_factory: Any) -> Dict[str, Any]:
    """The plan, run by one emulated process per lite2 release, all started at once."""
    rk3568 = board("rk3568")
    folder = tmp_path_factory.mktemp("drive")
    plan = _plan(folder)
    (folder / "plan.json").write_text(json.dumps(plan.steps), encoding="utf-8")
    runs = {}
    for release in LITE2_RELEASES:
        out, log = folder / f"results-{release}.json", folder / f"lite2-{release}.log"
        args = ["tests/emulated/drive.py", str(folder / "plan.json"), str(out)]
        process = rk3568.start(args, release, log, RKNN_STANDIN_DIR=str(plan.records))
        runs[release] = (process, out, log)
    yield {"plan": plan, "runs": runs}
    for process, _, _ in runs.values():
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.fixture(scope="module", params=LITE2_RELEASES)
def drive(request: Any, launched: Dict[str, Any]) -> Dict[str, Any]:
    """Every step's result with rknn-toolkit-lite2 ``param`` on the emulated RK3568."""
    process, out, log = launched["runs"][request.param]
    process.wait(timeout=280)
    stderr = log.read_text(errors="replace")
    assert process.returncode == 0, stderr[-3000:]
    results = {r["name"]: r for r in json.loads(out.read_text())}
    logs = _split_log(stderr)
    for name, result in results.items():
        result["log"] = logs.get(name, "")
    plan = launched["plan"]
    steps = {step["name"]: step for step in plan.steps}
    return {"results": results, "expected": plan.expected, "release": request.param, "steps": steps}


def _outputs(result: Dict[str, Any]) -> List[np.ndarray]:
    assert result["error"] is None, result["error"] + "\n" + result["log"][-2000:]
    return [np.load(o["path"]) for o in result["outputs"]]


@pytest.mark.parametrize("model", ["shapes", "shapes-seg"])
def test_demo_models_answer_what_their_onnx_twin_answers(drive: Dict[str, Any], model: str):
    steps = [name for name in drive["expected"] if name.startswith(model + "-")]
    steps = [s for s in steps if not (model == "shapes" and s.startswith("shapes-seg"))]
    assert len(steps) == SAMPLES
    for step in steps:
        got = _outputs(drive["results"][step])
        expected = drive["expected"][step]
        assert [o.dtype for o in got] == [np.float32] * len(expected)
        assert [o.shape for o in got] == [e.shape for e in expected]
        for g, e in zip(got, expected):
            np.testing.assert_array_equal(g, e)


@pytest.mark.parametrize("relative", SHARED)
def test_shared_rknn_files_for_rk356x_load_answer_and_release(drive: Dict[str, Any], relative):
    if not (RKNN / relative).is_file():
        pytest.skip(f"{RKNN / relative} not found")
    name = Path(relative).stem
    got = _outputs(drive["results"][name])
    for g, e in zip(got, drive["expected"][name]):
        np.testing.assert_array_equal(g, e.reshape(g.shape))


def test_a_read_only_input_reaches_the_runtime_as_it_is(drive: Dict[str, Any]):
    """A tensor request's read-only view of the message needs no copy."""
    got = _outputs(drive["results"]["read-only-input"])
    np.testing.assert_array_equal(got[0], drive["expected"]["shapes-" + _first("shapes")][0])


def test_an_init_failure_is_a_backend_error_with_the_runtimes_reason(drive: Dict[str, Any]):
    result = drive["results"]["init-fails"]
    assert result["error"].startswith("BackendError: init_runtime for ")
    assert "returned -1" in result["error"] and "rkserve doctor" in result["error"]
    assert "RKNN init failed" in result["log"]  # the wheel's own traceback names the C call


@pytest.mark.parametrize("step", ["run-fails", "outputs-fail"])
def test_inference_returning_none_is_a_backend_error(drive: Dict[str, Any], step: str):
    result = drive["results"][step]
    assert result["error"].startswith(
        "BackendError: RKNNLite inference on model.rknn returned None"
    )
    assert "Get outputs failed" in result["log"]


def test_a_model_for_another_npu_fails_init_with_the_runtimes_message(drive: Dict[str, Any]):
    if "wrong-target-platform" not in drive["results"]:
        pytest.skip(f"{RKNN / RK3588_MODEL} not found")
    result = drive["results"]["wrong-target-platform"]
    assert result["error"].startswith("BackendError: init_runtime for ")
    assert "does not match the RKNPU hardware version" in result["log"]


def test_core_mask_on_a_single_core_npu_fails_init(drive: Dict[str, Any]):
    result = drive["results"]["core-mask-on-one-core"]
    assert result["error"].startswith("BackendError: init_runtime for "), result
    assert "core_mask is only supported by" in result["log"]


@pytest.mark.parametrize(
    "step", ["bgr-instead-of-rgb", "nchw-instead-of-nhwc", "float-instead-of-uint8"]
)
def test_a_broken_data_path_fails_loudly_instead_of_answering(drive: Dict[str, Any], step: str):
    result = drive["results"][step]
    assert result["error"] is not None, f"{step} was answered: the replay did not notice"
    assert result["error"].startswith("BackendError: RKNNLite inference"), result["error"]
    assert NO_RECORD_LINE in result["log"] or "Catch exception when setting inputs" in result["log"]


def test_the_garbage_guard_collects_the_real_wheels_cycles(drive: Dict[str, Any]):
    off, on = drive["results"]["gc-guard-off"], drive["results"]["gc-guard-10"]
    assert off["error"] is None and on["error"] is None, (off, on)
    assert on["collections"] == 4 and off["collections"] == 0
    assert off["garbage_left"] >= 40, "the real wheel leaves reference cycles on every call"
    # with the collector off, 40 calls leave cycles behind; the guard leaves at most what
    # the calls since its last collection made (none here: 40 is a multiple of 10)
    assert on["garbage_left"] <= off["garbage_left"] // 4 + 50
    np.testing.assert_array_equal(
        _outputs(on)[0], drive["expected"]["shapes-" + _first("shapes")][0]
    )


def _first(model: str) -> str:
    return sorted((MODELS / model / "samples").glob("*.jpg"))[0].stem


@pytest.mark.parametrize(
    "step,fail", [("init-fails", "init"), ("core-mask-on-one-core", ""), ("run-fails", "inference")]
)
def test_the_double_fails_as_the_real_wheel_did(drive, step, fail, monkeypatch):
    """tests/doubles/rknnlite, given the same step, ends in the same BackendError."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "doubles"))
    for name in [m for m in sys.modules if m.startswith("rknnlite")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setenv("RKNNLITE_DOUBLE_FAIL", fail)
    planned = drive["steps"][step]
    spec = load_spec(Path(planned["model"]))
    with pytest.raises(BackendError) as raised:
        backend = open_backend("rknnlite", spec, core_mask=planned.get("core_mask"))
        try:
            backend.run([np.load(p) for p in planned["inputs"]])
        finally:
            backend.close()
    assert f"BackendError: {raised.value}" == drive["results"][step]["error"]
