"""Rockchip's model zoo post-processing, run as an oracle (files under ../shared/reference).

Only tests import this. The zoo's modules are loaded from their files as they are; their
thresholds are module constants, set per call here. The yolov8 example's ``dfl()`` imports
torch: it is replaced with the same softmax expectation in numpy.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT.parent / "shared" / "reference" / "rknn_model_zoo"
FILES = {
    "yolov5": "examples/yolov5/python/yolov5.py",
    "yolov8": "examples/yolov8/python/yolov8.py",
    "coco_utils": "py_utils/coco_utils.py",
}
_loaded: Dict[str, ModuleType] = {}


def zoo(name: str) -> ModuleType:
    """One of the zoo's modules, or skip the test with the reason."""
    try:
        return load(name)
    except FileNotFoundError as exc:
        import pytest  # only tests get here: benchmarks call load() first

        pytest.skip(str(exc))


def load(name: str) -> ModuleType:
    """One of the zoo's modules (FileNotFoundError when ../shared is absent)."""
    if name not in _loaded:
        path = ZOO / FILES[name]
        if not path.is_file():
            raise FileNotFoundError(f"model zoo reference not found: {path}")
        spec = importlib.util.spec_from_file_location(f"zoo_{name}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if name == "yolov8":
            module.torch_dfl = module.dfl  # type: ignore[attr-defined]  # the zoo's own
            module.dfl = numpy_dfl  # type: ignore[attr-defined]
        _loaded[name] = module
    return _loaded[name]


def numpy_dfl(position: np.ndarray) -> np.ndarray:
    """The zoo's torch ``dfl()`` in numpy: ``[n, 4*B, h, w]`` → ``[n, 4, h, w]``."""
    n, c, h, w = position.shape
    bins = position.reshape(n, 4, c // 4, h, w)
    weights = np.exp(bins - bins.max(axis=2, keepdims=True))
    weights = weights / weights.sum(axis=2, keepdims=True)
    steps = np.arange(c // 4, dtype=np.float32).reshape(1, 1, -1, 1, 1)
    return (weights * steps).sum(axis=2)


Found = Tuple[np.ndarray, np.ndarray, np.ndarray]  # boxes [N, 4], classes [N], scores [N]


def post_process(
    outputs: Sequence[np.ndarray],
    format: str,
    conf: float = 0.25,
    iou: float = 0.45,
    anchors: Optional[Sequence[Sequence[Tuple[float, float]]]] = None,
    input_size: Tuple[int, int] = (640, 640),
) -> Found:
    """The zoo's ``post_process`` (boxes in model-input pixels); empty arrays for none."""
    module = zoo(format)
    module.OBJ_THRESH, module.NMS_THRESH = conf, iou
    module.IMG_SIZE = (input_size[1], input_size[0])
    outputs = [np.array(o) for o in outputs]  # it must not see (or change) ours
    with np.errstate(all="ignore"):  # empty boxes: it divides 0 by 0
        return _post_process(module, outputs, format, anchors)


def _post_process(module: ModuleType, outputs: Sequence[np.ndarray], format: str, anchors) -> Found:
    if format == "yolov5":
        boxes, classes, scores = module.post_process(
            outputs, [[list(a) for a in s] for s in anchors]
        )
    else:
        boxes, classes, scores = module.post_process(outputs)
    if boxes is None:
        return np.zeros((0, 4)), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return boxes, classes, scores


def real_boxes(
    boxes: np.ndarray, source_size: Tuple[int, int], input_size: Tuple[int, int]
) -> np.ndarray:
    """The zoo's ``get_real_box`` after its ``letter_box`` of a ``source_size`` image."""
    helper = zoo("coco_utils").COCO_test_helper(enable_letter_box=True)
    helper.letter_box(np.zeros((*source_size, 3), np.uint8), new_shape=input_size)
    return helper.get_real_box(np.array(boxes, np.float64)) if len(boxes) else boxes


def letter_box(image_bgr: np.ndarray, input_size: Tuple[int, int], pad: int) -> np.ndarray:
    """The zoo's ``letter_box`` of a BGR image."""
    helper = zoo("coco_utils").COCO_test_helper(enable_letter_box=True)
    return helper.letter_box(image_bgr, new_shape=input_size, pad_color=(pad, pad, pad))


def draw(
    image_bgr: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    labels: Sequence[str],
) -> np.ndarray:
    """The zoo's ``draw`` (it prints a line per box) on a copy of a BGR image."""
    module = zoo("yolov8")
    module.CLASSES = tuple(labels)
    canvas = image_bgr.copy()
    module.draw(canvas, boxes, scores, classes)
    return canvas


def same_detections(
    ours: Found, theirs: Found, box_tol: float = 1e-3, score_tol: float = 1e-5
) -> Optional[str]:
    """None when both hold the same boxes (as sets); else what differs."""
    if len(ours[0]) != len(theirs[0]):
        return f"{len(ours[0])} boxes against the zoo's {len(theirs[0])}"
    a, b = _ordered(ours), _ordered(theirs)
    if not np.array_equal(a[1], b[1]):
        return f"classes differ: {a[1].tolist()} vs {b[1].tolist()}"
    if len(a[0]) and np.abs(a[2] - b[2]).max() > score_tol:
        return f"scores differ by up to {np.abs(a[2] - b[2]).max():.3g}"
    if len(a[0]) and np.abs(a[0] - b[0]).max() > box_tol:
        worst = int(np.abs(a[0] - b[0]).max(axis=1).argmax())
        return f"box {a[0][worst].tolist()} vs the zoo's {b[0][worst].tolist()}"
    return None


def _ordered(found: Found) -> Found:
    boxes, classes, scores = (np.asarray(v) for v in found)
    boxes = boxes.reshape(-1, 4)
    order = np.lexsort((boxes[:, 1], boxes[:, 0], -scores, classes))
    return boxes[order].astype(np.float64), classes[order].astype(np.int64), scores[order]
