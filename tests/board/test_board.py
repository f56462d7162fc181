"""The real RKNNLite on a real board (`pytest -m board` there); skipped elsewhere."""

from __future__ import annotations

import pytest

from rkserve import repository
from rkserve.backends import open_backend
from rkserve.engine import Engine
from rkserve.tasks import load_spec
from tests.helpers import MODELS, shared, write_model

pytestmark = pytest.mark.board


def test_mobilenet_rknn_on_the_npu(tmp_path):
    folder = write_model(
        tmp_path / "mobilenet",
        {"task": "classification", "input": {"size": 224}, "output": {"kind": "probabilities"}},
        rknn=shared("rknn", "built", "mobilenet_v2_1.0_224_rk3568_i8_tk2.3.2.rknn"),
        labels=shared("labels", "st_labels_imagenet_2012.txt"),
    )
    spec = load_spec(folder)
    engine = Engine(spec, open_backend("rknnlite", spec))
    try:
        top = engine.infer(shared("images", "bell.jpg").read_bytes(), {"top_k": 5}).result[
            "classes"
        ]
        assert top[0]["index"] == 494
        top = engine.infer(shared("images", "space_shuttle_224.jpg").read_bytes()).result["classes"]
        assert top[0]["index"] == 812
    finally:
        engine.backend.close()


@pytest.mark.parametrize("name", ["shapes", "shapes-seg"])
def test_demo_model_rknn_agrees_with_onnx(name):
    if not (MODELS / name / "model.rknn").exists():
        pytest.skip(f"models/{name}/model.rknn not built")
    npu = repository.open_engine(MODELS, name, backend="rknnlite")
    cpu = repository.open_engine(MODELS, name, backend="onnx")
    for sample in sorted((MODELS / name / "samples").glob("*.jpg")):
        data = sample.read_bytes()
        a, b = npu.infer(data).result, cpu.infer(data).result
        assert a["classes"][0]["index"] == b["classes"][0]["index"]
