"""The synthetic-image generator and the two demo models trained on it (models/shapes*).

The model checks run the committed ONNX files with onnxruntime directly, on fresh images from
seeds the training script never uses (it uses 101-104 and 201-204), preprocessed as each
model.yaml says.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Tuple

import cv2
import numpy as np
import pytest

from rkserve.spec import ModelSpec
from rkserve.tasks import load_spec
from tools.demo import shapes as demo

MODELS = Path(__file__).resolve().parents[2] / "models"
HELD_OUT_IMAGES = 100


def _read(path: Path, flags: int = cv2.IMREAD_COLOR) -> np.ndarray:
    image = cv2.imread(str(path), flags)
    assert image is not None, f"cannot read {path}"
    return image


def _read_rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(_read(path), cv2.COLOR_BGR2RGB)


# --- generator -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sample", [demo.classification_sample, demo.segmentation_sample, demo.detection_sample]
)
def test_same_seed_same_image(sample: Any) -> None:
    first = sample(demo.sample_rng(5, 3))
    again = sample(demo.sample_rng(5, 3))
    other = sample(demo.sample_rng(5, 4))
    assert np.array_equal(first[0], again[0])
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(first, again))
    assert first[0].shape != other[0].shape or not np.array_equal(first[0], other[0])


def test_classification_samples() -> None:
    labels = []
    for index in range(200):
        image, label = demo.classification_sample(demo.sample_rng(11, index))
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        assert 120 <= image.shape[0] <= 640 and 160 <= image.shape[1] <= 640
        assert isinstance(label, int) and 0 <= label < len(demo.CLASSES)
        labels.append(label)
    assert np.bincount(labels, minlength=len(demo.CLASSES)).min() >= 20  # every class, evenly
    sizes = {demo.classification_sample(demo.sample_rng(11, i))[0].shape[:2] for i in range(5)}
    assert len(sizes) > 1 and any(h != w for h, w in sizes)  # arbitrary, non-square


def test_segmentation_samples() -> None:
    seen = np.zeros(len(demo.SEG_CLASSES), np.int64)
    for index in range(100):
        image, mask = demo.segmentation_sample(demo.sample_rng(12, index), size=(150, 230))
        assert image.shape == (150, 230, 3) and image.dtype == np.uint8
        assert mask.shape == (150, 230) and mask.dtype == np.uint8
        assert int(mask.max()) < len(demo.SEG_CLASSES)
        seen += np.bincount(mask.ravel(), minlength=len(demo.SEG_CLASSES))
    assert (seen > 0).all()
    assert 0.02 < seen[1:].sum() / seen.sum() < 0.6  # shapes cover part of the image


def test_shapes_stand_out_where_the_mask_says() -> None:
    """The pixels a mask calls foreground differ from the background around them."""
    image, mask = demo.segmentation_sample(demo.sample_rng(13, 0), size=(240, 320))
    if not mask.any():
        image, mask = demo.segmentation_sample(demo.sample_rng(13, 1), size=(240, 320))
    inside = mask > 0
    ring = cv2.dilate(inside.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool) & ~inside
    gap = np.abs(image[inside].mean(0) - image[ring].mean(0)).max()
    assert gap > 10


def test_detection_samples() -> None:
    counts, seen = [], np.zeros(len(demo.CLASSES), np.int64)
    for index in range(150):
        image, boxes, classes = demo.detection_sample(demo.sample_rng(14, index), size=(150, 230))
        assert image.shape == (150, 230, 3) and image.dtype == np.uint8
        assert boxes.shape == (len(classes), 4) and boxes.dtype == np.float32
        assert classes.dtype == np.int64 and ((classes >= 0) & (classes < len(demo.CLASSES))).all()
        assert (
            (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 230).all() and (boxes[:, 3] <= 150).all()
        )
        assert (boxes[:, 2:] - boxes[:, :2] >= 4).all()  # no slivers: every shape stays in view
        counts.append(len(classes))
        seen += np.bincount(classes, minlength=len(demo.CLASSES))
    assert seen.min() >= 60  # every class, evenly
    assert min(counts) == 0 and max(counts) >= 5 and 2.5 < np.mean(counts) < 4.5


def test_detection_boxes_hold_the_shapes() -> None:
    """Each box frames pixels that stand out from the background just outside it."""
    image, boxes, _ = demo.detection_sample(demo.sample_rng(13, 2), size=(240, 320))
    assert len(boxes) >= 2
    lone = [b for i, b in enumerate(boxes) if all(_apart(b, o) for o in np.delete(boxes, i, 0))]
    assert lone, boxes
    for box in lone:
        x1, y1, x2, y2 = (int(v) for v in box)
        inside = image[y1:y2, x1:x2].reshape(-1, 3).astype(np.float64)
        ring = np.concatenate(
            [
                image[max(0, y1 - 3) : y1, x1:x2].reshape(-1, 3),
                image[y2 : y2 + 3, x1:x2].reshape(-1, 3),
            ]
        ).astype(np.float64)
        if len(ring):
            # the edge rows of a box cut through the shape, the rows just outside do not
            assert np.abs(image[y1, x1:x2].astype(np.float64) - ring.mean(0)).max() > 10
        assert inside.std(0).max() > 5


def _apart(a: np.ndarray, b: np.ndarray, gap: float = 4.0) -> bool:
    return bool(
        a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]
    )


def test_write_samples(tmp_path: Path) -> None:
    paths = demo.write_samples("classification", tmp_path / "c", 4, seed=3)
    assert [p.name.split("_", 1)[0] for p in paths] == ["000", "001", "002", "003"]
    for path in paths:
        assert path.stem.split("_", 1)[1] in demo.CLASSES
        assert _read(path).ndim == 3
    paths = demo.write_samples("segmentation", tmp_path / "s", 3, seed=3, size=(64, 80))
    for path in paths:
        image = _read(path)
        mask = _read(path.with_suffix(".mask.png"), cv2.IMREAD_UNCHANGED)
        assert image.shape == (64, 80, 3) and mask.shape == (64, 80)
        assert int(mask.max()) < len(demo.SEG_CLASSES)
    assert sorted(p.name for p in (tmp_path / "s").iterdir())[:2] == ["000.jpg", "000.mask.png"]
    paths = demo.write_samples("detection", tmp_path / "d", 3, seed=4, size=(90, 120))
    for index, path in enumerate(paths):
        assert _read(path).shape == (90, 120, 3)
        truth = json.loads(path.with_suffix(".boxes.json").read_text("utf-8"))
        _, boxes, classes = demo.detection_sample(demo.sample_rng(4, index), size=(90, 120))
        assert [t["index"] for t in truth] == classes.tolist()
        assert [t["label"] for t in truth] == [demo.CLASSES[c] for c in classes]
        assert np.array_equal(np.array([t["box"] for t in truth]).reshape(-1, 4), boxes)
    with pytest.raises(ValueError, match="task"):
        demo.write_samples("tracking", tmp_path / "t", 1, seed=0)


# --- the committed models ----------------------------------------------------------------------


def _session(spec: ModelSpec) -> Any:
    ort = pytest.importorskip("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(spec.onnx_path), options, providers=["CPUExecutionProvider"])


def _run(session: Any, spec: ModelSpec, rgb: np.ndarray) -> np.ndarray:
    """Preprocess as model.yaml says (stretch resize, colour order, mean/std, NCHW) and run."""
    height, width = spec.input_size
    x = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    if spec.color == "bgr":
        x = x[..., ::-1]
    mean, std = np.array(spec.onnx.mean, np.float32), np.array(spec.onnx.std, np.float32)
    tensor = ((x - mean) / std).transpose(2, 0, 1)[None]
    return np.asarray(session.run(None, {session.get_inputs()[0].name: tensor})[0])


@pytest.fixture(scope="module")
def shapes() -> Tuple[ModelSpec, Any]:
    spec = load_spec(MODELS / "shapes")
    return spec, _session(spec)


@pytest.fixture(scope="module")
def shapes_seg() -> Tuple[ModelSpec, Any]:
    spec = load_spec(MODELS / "shapes-seg")
    return spec, _session(spec)


@pytest.mark.parametrize("name", ["shapes", "shapes-seg"])
def test_model_files(name: str) -> None:
    spec = load_spec(MODELS / name)
    assert spec.onnx_path.stat().st_size < 1_000_000
    assert spec.onnx.layout == "nchw" and spec.onnx.dtype == "float32"
    assert spec.convert.get("dataset") == "calib"
    calib = sorted((spec.folder / "calib").glob("*.jpg"))
    assert len(calib) == 20
    assert sorted((spec.folder / "calib").iterdir()) == calib  # nothing else to calibrate on
    assert all(_read(p).shape[:2] == spec.input_size for p in calib)
    total = sum(p.stat().st_size for p in spec.folder.rglob("*") if p.is_file())
    assert total < 1_600_000


def test_classifier_shapes_match_spec(shapes: Tuple[ModelSpec, Any]) -> None:
    spec, session = shapes
    assert spec.task == "classification" and spec.labels == demo.CLASSES
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert inp.name == "input" and inp.type == "tensor(float)"
    assert inp.shape == [1, 3, *spec.input_size] == [1, 3, 96, 96]
    assert out.shape == [1, len(spec.labels)]


def test_segmenter_shapes_match_spec(shapes_seg: Tuple[ModelSpec, Any]) -> None:
    spec, session = shapes_seg
    assert spec.task == "segmentation" and spec.labels == demo.SEG_CLASSES
    assert spec.task_config.kind == "logits" and spec.task_config.layout == "nchw"
    assert spec.task_config.palette is not None
    assert len(spec.task_config.palette) == len(spec.labels)
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert inp.name == "input" and inp.type == "tensor(float)"
    assert inp.shape == [1, 3, *spec.input_size] == [1, 3, 128, 128]
    assert out.shape == [1, len(spec.labels), *spec.input_size]


@pytest.mark.process
def test_classifier_accuracy_on_held_out_images(shapes: Tuple[ModelSpec, Any]) -> None:
    spec, session = shapes
    right = 0
    for index in range(HELD_OUT_IMAGES):
        image, label = demo.classification_sample(demo.sample_rng(7001, index))
        logits = _run(session, spec, image)
        assert logits.shape == (1, len(spec.labels)) and np.isfinite(logits).all()
        right += int(np.argmax(logits[0]) == label)
    assert right / HELD_OUT_IMAGES >= 0.9


@pytest.mark.process
def test_segmenter_iou_on_held_out_images(shapes_seg: Tuple[ModelSpec, Any]) -> None:
    spec, session = shapes_seg
    k = len(spec.labels)
    confusion = np.zeros((k, k), np.int64)
    for index in range(HELD_OUT_IMAGES):
        image, mask = demo.segmentation_sample(demo.sample_rng(7002, index))
        classes = np.argmax(_run(session, spec, image)[0], axis=0).astype(np.uint8)
        classes = cv2.resize(classes, mask.shape[::-1], interpolation=cv2.INTER_NEAREST)
        pairs = mask.astype(np.int64).ravel() * k + classes.ravel()
        confusion += np.bincount(pairs, minlength=k * k).reshape(k, k)
    hit = np.diag(confusion).astype(np.float64)
    iou = hit / (confusion.sum(0) + confusion.sum(1) - hit)
    assert iou[1:].mean() >= 0.7, iou
    assert hit.sum() / confusion.sum() >= 0.9


@pytest.mark.process
def test_shipped_samples_are_recognised(shapes: Tuple[ModelSpec, Any]) -> None:
    spec, session = shapes
    paths = sorted((spec.folder / "samples").glob("*.jpg"))
    assert len(paths) >= 4
    right = 0
    for path in paths:
        image = _read_rgb(path)
        predicted = spec.labels[int(np.argmax(_run(session, spec, image)[0]))]
        right += int(predicted == path.stem.split("_", 1)[1])
    assert right >= len(paths) - 1


@pytest.mark.process
def test_shipped_segmentation_samples_have_masks(shapes_seg: Tuple[ModelSpec, Any]) -> None:
    spec, session = shapes_seg
    paths = sorted((spec.folder / "samples").glob("*.jpg"))
    assert len(paths) >= 4
    agree = []
    for path in paths:
        image = _read_rgb(path)
        mask = _read(path.with_suffix(".mask.png"), cv2.IMREAD_UNCHANGED)
        assert mask.shape == image.shape[:2]
        classes = np.argmax(_run(session, spec, image)[0], axis=0).astype(np.uint8)
        classes = cv2.resize(classes, mask.shape[::-1], interpolation=cv2.INTER_NEAREST)
        agree.append(float((classes == mask).mean()))
    assert np.mean(agree) >= 0.9
