"""Acceptance on real third-party models and images (../shared/data), onnx backend."""

from __future__ import annotations

import pytest

from rkserve.backends import open_backend
from rkserve.engine import Engine
from rkserve.tasks import load_spec
from tests.helpers import shared, write_model

IMAGES = {
    "bell.jpg": 494,
    "space_shuttle_224.jpg": 812,
    "dog_224x224.jpg": 155,
    "imagenet_val/ILSVRC2012_val_00000011.JPEG": 109,
    "imagenet_val/ILSVRC2012_val_00004646.JPEG": 920,
    "imagenet_val/ILSVRC2012_val_00017912.JPEG": 472,
}


def _engine(folder):
    spec = load_spec(folder)
    return Engine(spec, open_backend("onnx", spec))


@pytest.fixture(scope="module")
def mobilenet_int8(tmp_path_factory):
    folder = tmp_path_factory.mktemp("m") / "mobilenet-int8"
    write_model(
        folder,
        {
            "task": "classification",
            "input": {"size": [224, 224]},
            "onnx": {"layout": "nhwc", "dtype": "uint8"},
        },
        onnx=shared("onnx", "mobilenet_v2_1.0_224_int8_per_tensor.onnx"),
        labels=shared("labels", "st_labels_imagenet_2012.txt"),
    )
    return _engine(folder)


@pytest.fixture(scope="module")
def mobilenet_fp32(tmp_path_factory):
    folder = tmp_path_factory.mktemp("m") / "mobilenet"
    write_model(
        folder,
        {"task": "classification", "input": {"size": 224}, "onnx": {"mean": 127, "std": 127.5}},
        onnx=shared("onnx", "mobilenet_v2_1.0_224_dequant_fp32.onnx"),
        labels=shared("labels", "synset.txt"),
    )
    return _engine(folder)


@pytest.mark.parametrize("name,expected", [("bell.jpg", 494), ("space_shuttle_224.jpg", 812)])
def test_int8_mobilenet_top1(mobilenet_int8, name, expected):
    result = mobilenet_int8.infer(shared("images", name).read_bytes()).result
    assert result["classes"][0]["index"] == expected


@pytest.mark.parametrize("name,expected", sorted(IMAGES.items()))
def test_fp32_mobilenet_top1(mobilenet_fp32, name, expected):
    result = mobilenet_fp32.infer(shared("images", name).read_bytes(), {"top_k": 5}).result
    top = result["classes"]
    assert top[0]["index"] == expected
    assert len(top) == 5 and top[0]["score"] >= top[1]["score"]


def test_fp32_mobilenet_labels_from_synset(mobilenet_fp32):
    top = mobilenet_fp32.infer(shared("images", "bell.jpg").read_bytes()).result["classes"][0]
    assert top["label"] == "chime, bell, gong"
    assert top["score"] == pytest.approx(0.960, abs=0.005)


def test_deeplab_classes_and_pixel_counts(tmp_path):
    folder = write_model(
        tmp_path / "deeplab",
        {
            "task": "segmentation",
            "input": {"size": [257, 257]},
            "onnx": {"mean": 127.5, "std": 127.5},
        },
        onnx=shared("onnx", "deeplabv3_257_voc_fp32.onnx"),
        labels=shared("labels", "st_labels_pascalvoc.txt"),
    )
    engine = _engine(folder)
    image = shared("images", "deeplabv3_test_image.jpg").read_bytes()
    # counts at the model's 257x257 resolution: resize the source to exactly that size
    import cv2
    import numpy as np

    rgb = cv2.cvtColor(
        cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB
    )
    small = cv2.resize(rgb, (257, 257), interpolation=cv2.INTER_LINEAR)
    result = engine.infer(small, {"mask": "raw"}).result
    counts = {c["label"]: c["pixels"] for c in result["classes"]}
    assert set(counts) == {"background", "bicycle", "person"}
    for label, expected in {"background": 53890, "bicycle": 8684, "person": 3475}.items():
        assert counts[label] == pytest.approx(expected, rel=0.01)
    full = engine.infer(image, {"mask": "raw", "overlay": True}).result
    assert (full["height"], full["width"]) == rgb.shape[:2]
    assert len(full["mask"]["data"]) == rgb.shape[0] * rgb.shape[1]
    assert [c["label"] for c in full["classes"]] == ["background", "bicycle", "person"]
