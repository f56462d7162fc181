"""The demo detector models/shapes-det: its files, its outputs and whether it finds the shapes.

The checks load the committed model as the daemon does (``repository.open_engine`` with the
onnx backend: model.yaml's letterbox, normalisation and the project's detection
post-processing) and run it on fresh synthetic images from seeds the training script never
uses (it uses 301-304). test_detection.py serves it with the daemon (same answers as the
engine, the shapes of its samples found) and checks its outputs against the model zoo's
post-processing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterator, List, Sequence

import numpy as np
import pytest

from rkserve import repository
from rkserve.tasks import load_spec
from tools.demo import shapes as demo

detect = pytest.importorskip("rkserve.kernels.detect", reason="no detection post-processing")
read_layout = pytest.importorskip("rkserve.kernels.yolo").read_layout

MODELS = Path(__file__).resolve().parents[2] / "models"
FOLDER = MODELS / "shapes-det"
HELD_OUT_IMAGES = 60
# Bounds well inside what the README measured on 500 images (recall 0.91, precision 0.82)
MIN_RECALL = 0.8
MIN_PRECISION = 0.7


@pytest.fixture(scope="module")
def engine() -> Iterator[Any]:
    pytest.importorskip("onnxruntime")
    loaded = repository.open_engine(MODELS, "shapes-det", backend="onnx")
    yield loaded
    loaded.backend.close()


def test_model_files() -> None:
    spec = load_spec(FOLDER)
    assert spec.task == "detection" and spec.labels == demo.CLASSES
    assert spec.resize == "letterbox" and spec.pad == 0 and spec.input_size == (160, 160)
    assert spec.task_config.format == "yolov8" and spec.task_config.strides == (8, 16, 32)
    assert spec.onnx_path.stat().st_size < 1_500_000
    calib = sorted((FOLDER / "calib").iterdir())
    assert len(calib) == 20 and all(p.suffix == ".jpg" for p in calib)
    samples = sorted((FOLDER / "samples").glob("*.jpg"))
    assert len(samples) >= 6 and all(p.with_suffix(".boxes.json").is_file() for p in samples)


def test_outputs_are_the_yolov8_rknnopt_layout(engine: Any) -> None:
    inputs, outputs = engine.backend.inputs, engine.backend.outputs
    assert [list(i.shape) for i in inputs] == [[1, 3, 160, 160]]
    shapes = [list(o.shape) for o in outputs]
    assert shapes == [[1, c, g, g] for g in (20, 10, 5) for c in (64, len(demo.CLASSES))]
    layout = read_layout(shapes, (160, 160))
    assert layout is not None and layout.format == "yolov8"
    assert layout.classes == len(demo.CLASSES) and layout.strides == (8, 16, 32)
    image, _, _ = demo.detection_sample(demo.sample_rng(7003, 0))
    raw = _raw_outputs(engine, image)
    scores = np.concatenate([o.ravel() for o in raw[1::2]])
    assert scores.min() >= 0 and scores.max() <= 1  # sigmoid inside the graph


def test_finds_the_shapes_in_held_out_images(engine: Any) -> None:
    truths = hits = found = 0
    for index in range(HELD_OUT_IMAGES):
        image, boxes, classes = demo.detection_sample(demo.sample_rng(7003, index))
        detections = engine.infer(image).result["detections"]
        matched = _hits(detections, boxes, classes)
        truths, hits, found = truths + len(boxes), hits + sum(matched), found + len(matched)
    assert truths > 100
    assert hits / truths >= MIN_RECALL, (hits, truths)
    assert hits / found >= MIN_PRECISION, (hits, found)


def test_a_blank_image_has_no_shapes(engine: Any) -> None:
    assert engine.infer(np.full((120, 200, 3), 90, np.uint8)).result["detections"] == []


def _raw_outputs(engine: Any, rgb: np.ndarray) -> List[np.ndarray]:
    """The model's raw outputs for ``rgb``, fed as the engine feeds it."""
    return list(engine.run(engine.prepare(rgb, engine.parse_params(None))))


def _hits(
    detections: Sequence[Dict[str, Any]], boxes: np.ndarray, classes: np.ndarray
) -> List[bool]:
    """Which detections (best first) match a not yet matched true box of their class at
    IoU >= 0.5 (the VOC / COCO rule)."""
    found = np.array([d["box"] for d in detections], np.float64).reshape(-1, 4)
    iou = detect.box_iou(found, boxes)
    taken = np.zeros(len(boxes), bool)
    hits = []
    for i, d in enumerate(detections):
        row = np.where((classes == d["index"]) & ~taken, iou[i], 0.0)
        hit = bool(row.size and row.max() >= 0.5)
        if hit:
            taken[int(np.argmax(row))] = True
        hits.append(hit)
    return hits
