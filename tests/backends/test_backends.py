"""Backends: fake, onnx, rknnlite (against the RKNNLite double in tests/doubles), auto."""

from __future__ import annotations

import gc
import threading
import time
import types
from pathlib import Path
from typing import List

import numpy as np
import pytest

from rkserve import backends
from rkserve.backends import choose_backend, open_backend
from rkserve.engine import Engine
from rkserve.errors import BackendError, ConfigError, ModelUnavailable, RknnFileError
from rkserve.tasks import load_spec
from tests.helpers import shared, write_model

DOUBLES = Path(__file__).resolve().parents[1] / "doubles"
CLASSIFIER = {
    "task": "classification",
    "input": {"size": [224, 224]},
    "output": {"kind": "probabilities"},
}


@pytest.fixture
def mobilenet_rknn(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"class {i}" for i in range(1000)))
    folder = write_model(
        tmp_path / "mnv2",
        CLASSIFIER,
        rknn=shared("rknn", "built", "mobilenet_v2_1.0_224_rk3568_i8_tk2.3.2.rknn"),
        labels=labels,
    )
    return load_spec(folder)


def test_fake_is_deterministic_and_follows_the_input(tmp_path):
    folder = write_model(
        tmp_path / "m", {"task": "classification", "input": {"size": 8}}, onnx=Path(__file__)
    )
    spec = load_spec(folder)
    fake = open_backend("fake", spec, classes=7)
    tensor = np.full((1, 8, 8, 3), 3, np.uint8)
    out = fake.run([tensor])
    assert out[0].shape == (1, 7) and int(np.argmax(out[0])) == (3 * 8 * 8 * 3) % 7
    assert np.array_equal(out[0], fake.run([tensor.copy()])[0])
    with pytest.raises(BackendError, match="expects one"):
        fake.run([tensor.astype(np.float32)])


def test_fake_latency_releases_the_gil(tmp_path):
    folder = write_model(
        tmp_path / "m", {"task": "classification", "input": {"size": 8}}, onnx=Path(__file__)
    )
    fakes = [open_backend("fake", load_spec(folder), classes=3, latency_ms=150) for _ in range(2)]
    tensor = np.zeros((1, 8, 8, 3), np.uint8)
    threads = [threading.Thread(target=f.run, args=([tensor],)) for f in fakes]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert time.perf_counter() - started < 0.28  # serial would take 0.30 s


def test_fake_segmentation_bands(tmp_path):
    folder = write_model(
        tmp_path / "s", {"task": "segmentation", "input": {"size": 4}}, onnx=Path(__file__)
    )
    fake = open_backend("fake", load_spec(folder), classes=4)
    tensor = np.zeros((1, 4, 4, 3), np.uint8)
    tensor[0, :2] = 255
    (out,) = fake.run([tensor])
    assert out.shape == (1, 4, 4, 4)
    assert np.argmax(out[0], axis=0).tolist() == [[3] * 4] * 2 + [[0] * 4] * 2


def test_rknnlite_runs_through_the_runtime_contract(rknnlite_double, mobilenet_rknn):
    backend = open_backend("rknnlite", mobilenet_rknn)
    assert backend.inputs[0].shape == (1, 224, 224, 3) and backend.outputs[0].shape == (1, 1000)
    engine = Engine(mobilenet_rknn, backend)
    image = np.random.default_rng(0).integers(0, 255, (300, 400, 3), np.uint8)
    result = engine.infer(image, {"top_k": 3})
    assert len(result.result["classes"]) == 3 and result.timings["inference"] >= 0
    runtime = rknnlite_double.instances[-1]
    assert runtime.calls == 1 and runtime.runtime
    backend.close()
    assert not runtime.runtime


def reachable(root: object, limit: int = 10_000) -> List[object]:
    """What ``root`` refers to, directly or not (classes and modules not followed)."""
    seen, todo, found = {id(root)}, [root], []
    while todo and len(found) < limit:
        for ref in gc.get_referents(todo.pop()):
            if id(ref) not in seen and not isinstance(ref, (type, types.ModuleType)):
                seen.add(id(ref))
                found.append(ref)
                todo.append(ref)
    return found


def test_a_closed_rknnlite_backend_no_longer_holds_the_model_file(rknnlite_double, mobilenet_rknn):
    """RKNNLite's ``release()`` keeps the bytes ``load_rknn`` read (the double does as the
    wheel): a closed backend that stayed referenced held the whole file."""
    backend = open_backend("rknnlite", mobilenet_rknn)
    data = rknnlite_double.instances[-1].rknn_data
    assert data is not None and any(ref is data for ref in reachable(backend))
    backend.close()
    assert not rknnlite_double.instances[-1].runtime
    assert not any(ref is data for ref in reachable(backend))
    with pytest.raises(BackendError, match="closed"):
        backend.run([np.zeros((1, 224, 224, 3), np.uint8)])
    backend.close()  # a second close does nothing


def test_rknnlite_never_passes_core_mask_on_rk3568(rknnlite_double, mobilenet_rknn):
    open_backend("rknnlite", mobilenet_rknn).close()
    with pytest.raises(BackendError, match="init_runtime .* returned -1"):
        open_backend("rknnlite", mobilenet_rknn, core_mask=1)


@pytest.mark.parametrize(
    "fail,words",
    [("load", "load_rknn.*returned -1"), ("init", "init_runtime.*returned -1.*rkserve doctor")],
)
def test_rknnlite_return_codes_become_errors(
    rknnlite_double, mobilenet_rknn, monkeypatch, fail, words
):
    monkeypatch.setenv("RKNNLITE_DOUBLE_FAIL", fail)
    with pytest.raises(BackendError, match=words):
        open_backend("rknnlite", mobilenet_rknn)


def test_rknnlite_none_from_inference_becomes_an_error(rknnlite_double, mobilenet_rknn):
    backend = open_backend("rknnlite", mobilenet_rknn)
    rknnlite_double.instances[-1].fail = "inference"
    with pytest.raises(BackendError, match="returned None"):
        backend.run([np.zeros((1, 224, 224, 3), np.uint8)])


def test_rknnlite_refuses_a_model_for_another_npu(rknnlite_double, tmp_path):
    folder = write_model(
        tmp_path / "m",
        {"task": "segmentation", "input": {"size": 128}},
        rknn=shared("rknn", "rockchip", "multiple_input_demo_RK3588_tk1.6.2.rknn"),
    )
    with pytest.raises(BackendError, match="does not match the RKNPU hardware"):
        open_backend("rknnlite", load_spec(folder))


def test_rknnlite_refuses_a_non_rknn_file_before_the_runtime(rknnlite_double, tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model.rknn").write_bytes(b"\x08\x07" + b"\0" * 100)
    (folder / "model.yaml").write_text("task: classification\ninput: {size: 8}\n")
    with pytest.raises(RknnFileError, match="not an RKNN model"):
        open_backend("rknnlite", load_spec(folder))
    assert rknnlite_double.instances == []


def test_onnx_backend_reports_shapes_and_wraps_errors(tmp_path):
    folder = write_model(
        tmp_path / "m", CLASSIFIER, onnx=shared("onnx", "mobilenet_v2_1.0_224_dequant_fp32.onnx")
    )
    backend = open_backend("onnx", load_spec(folder))
    assert backend.inputs[0].shape == (1, 3, 224, 224) and backend.outputs[0].shape[-1] == 1000
    with pytest.raises(BackendError, match="onnxruntime inference failed"):
        backend.run([np.zeros((1, 3, 10, 10), np.float32)])


def test_onnx_backend_refuses_a_corrupt_file(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"garbage")
    (folder / "model.yaml").write_text("task: classification\ninput: {size: 8}\n")
    with pytest.raises(BackendError, match="cannot load"):
        open_backend("onnx", load_spec(folder))


def test_engine_refuses_a_model_yaml_that_does_not_fit(tmp_path):
    onnx = shared("onnx", "mobilenet_v2_1.0_224_dequant_fp32.onnx")
    folder = write_model(tmp_path / "m", {**CLASSIFIER, "input": {"size": 96}}, onnx=onnx)
    spec = load_spec(folder)
    with pytest.raises(ConfigError, match=r"input: model.yaml says \[1, 3, 96, 96\]"):
        Engine(spec, open_backend("onnx", spec))
    labels = tmp_path / "five.txt"
    labels.write_text("a\nb\nc\nd\ne\n")
    folder = write_model(tmp_path / "n", CLASSIFIER, onnx=onnx, labels=labels)
    spec = load_spec(folder)
    with pytest.raises(ConfigError, match="5 labels .* outputs 1000 scores"):
        Engine(spec, open_backend("onnx", spec))


def test_auto_prefers_the_npu_then_onnx_then_explains(tmp_path, monkeypatch, rknnlite_double):
    folder = write_model(tmp_path / "m", CLASSIFIER, onnx=Path(__file__))
    spec = load_spec(folder)
    assert choose_backend(spec) == "onnx"  # x86: no NPU whatever is importable
    monkeypatch.setattr(backends.platform, "machine", lambda: "aarch64")
    (tmp_path / "dev" / "dri").mkdir(parents=True)
    (tmp_path / "dev" / "dri" / "renderD129").touch()
    assert choose_backend(spec, root=tmp_path) == "onnx"  # no model.rknn
    (folder / "model.rknn").write_bytes(b"RKNN")
    assert choose_backend(spec, root=tmp_path) == "rknnlite"
    (folder / "model.rknn").unlink()
    (folder / "model.onnx").unlink()
    (folder / "model.rknn").write_bytes(b"RKNN")
    monkeypatch.setattr(backends.platform, "machine", lambda: "x86_64")
    with pytest.raises(ModelUnavailable, match="no backend can serve it.*model.onnx is missing"):
        choose_backend(spec)


def test_unknown_backend_name(tmp_path):
    folder = write_model(tmp_path / "m", CLASSIFIER, onnx=Path(__file__))
    with pytest.raises(ConfigError, match="unknown backend 'tpu'"):
        open_backend("tpu", load_spec(folder))
