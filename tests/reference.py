"""Independent references for the answers of a model folder: its ONNX twin run by
onnxruntime itself, fed the way model.yaml's ``onnx`` section says, and the documented
post-processing written here in plain numpy/OpenCV (classification, segmentation) or taken
from Rockchip's model zoo (detection, :mod:`zoo`). Nothing here runs rkserve's data path:
a test that compares the daemon with these fails when the daemon's pre- or post-processing
is broken, where a comparison with rkserve's own engine would break along with it.

    twin = Twin(folder)
    outputs = twin.run(nhwc_uint8)                        # [1, H, W, 3] model input
    want = answer(folder, outputs, (height, width), {"top_k": 5})
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import cv2
import numpy as np
import yaml

from tools import zoo

YOLOV5_ANCHORS = [
    [(10, 13), (16, 30), (33, 23)],
    [(30, 61), (62, 45), (59, 119)],
    [(116, 90), (156, 198), (373, 326)],
]


def model_yaml(folder: Path) -> Dict[str, Any]:
    return yaml.safe_load((folder / "model.yaml").read_text(encoding="utf-8"))


def labels(folder: Path) -> List[str]:
    name = model_yaml(folder).get("labels")
    if not name:
        return []
    return [
        line.strip()
        for line in (folder / name).read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]


class Twin:
    """The model's ONNX twin (``onnx.file``), run by onnxruntime on the raw ``[1, H, W, 3]
    uint8`` input the NPU takes: ``(x - mean) / std`` per channel as float32, NCHW unless
    ``onnx.layout`` says nhwc (what conversion baked into the .rknn)."""

    def __init__(self, folder: Path) -> None:
        import onnxruntime

        onnx = model_yaml(folder).get("onnx") or {}
        self.mean = np.asarray(onnx.get("mean", 0.0), np.float32)
        self.std = np.asarray(onnx.get("std", 1.0), np.float32)
        self.layout = onnx.get("layout", "nchw")
        self.dtype = onnx.get("dtype", "float32")
        self.session = onnxruntime.InferenceSession(
            str(folder / onnx.get("file", "model.onnx")), providers=["CPUExecutionProvider"]
        )

    def run(self, nhwc: np.ndarray) -> List[np.ndarray]:
        assert nhwc.dtype == np.uint8 and nhwc.ndim == 4 and nhwc.shape[3] == 3, nhwc.shape
        fed = nhwc if self.dtype == "uint8" else (nhwc.astype(np.float32) - self.mean) / self.std
        if self.layout == "nchw":
            fed = fed.transpose(0, 3, 1, 2)
        name = self.session.get_inputs()[0].name
        return [np.asarray(o) for o in self.session.run(None, {name: np.ascontiguousarray(fed)})]


def answer(
    folder: Path, outputs: Sequence[np.ndarray], size: Tuple[int, int], params: Mapping[str, Any]
) -> Dict[str, Any]:
    """The ``result`` a daemon must answer for an image of ``size`` ``(height, width)``
    whose model input gave ``outputs``, by the task of ``folder``."""
    spec = model_yaml(folder)
    task = spec["task"]
    if task == "classification":
        return classification(outputs[0], labels(folder), spec, params)
    if task == "segmentation":
        return segmentation(outputs[0], labels(folder), size, params)
    if task == "detection":
        return detection(outputs, labels(folder), spec, size, params)
    raise ValueError(f"no reference for task {task}")


def classification(
    output: np.ndarray, names: Sequence[str], spec: Mapping[str, Any], params: Mapping[str, Any]
) -> Dict[str, Any]:
    """Softmax of logits (probabilities as they are), the best ``top_k`` first, equal
    scores by the lower index (PROTOCOL.md)."""
    scores = np.asarray(output, np.float64).reshape(-1)
    if (spec.get("output") or {}).get("kind", "probabilities") == "logits":
        scores = np.exp(scores - scores.max())
        scores /= scores.sum()
    top_k = params.get("top_k", (spec.get("output") or {}).get("top_k", 5))
    order = np.lexsort((np.arange(scores.size), -scores))[:top_k]
    return {
        "classes": [
            {
                "index": int(i),
                "label": names[i] if i < len(names) else "",
                "score": float(scores[i]),
            }
            for i in order
        ]
    }


def segmentation(
    output: np.ndarray, names: Sequence[str], size: Tuple[int, int], params: Mapping[str, Any]
) -> Dict[str, Any]:
    """Per-pixel argmax over the classes of ``[1, C, H, W]``, the class map resized to the
    source with nearest neighbour (stretch), classes by pixel count (ties: the lower index);
    the raw mask (``mask: raw``)."""
    assert params.get("mask") == "raw", "the reference compares raw masks"
    height, width = size
    classes = np.argmax(output[0], axis=0).astype(np.uint8)
    classes = cv2.resize(classes, (width, height), interpolation=cv2.INTER_NEAREST)
    counts = np.bincount(classes.reshape(-1), minlength=256)
    present = sorted(np.flatnonzero(counts).tolist(), key=lambda i: (-counts[i], i))
    return {
        "width": width,
        "height": height,
        "classes": [
            {
                "index": i,
                "label": names[i] if i < len(names) else "",
                "pixels": int(counts[i]),
                "ratio": float(counts[i]) / classes.size,
            }
            for i in present
        ],
        "mask": {
            "format": "raw",
            "dtype": "uint8",
            "shape": [height, width],
            "data": classes.tobytes(),
        },
    }


def detection(
    outputs: Sequence[np.ndarray],
    names: Sequence[str],
    spec: Mapping[str, Any],
    size: Tuple[int, int],
    params: Mapping[str, Any],
) -> Dict[str, Any]:
    """The model zoo's ``post_process`` (its decoding, threshold and class-wise NMS) and
    ``get_real_box`` after its letterbox of a ``size`` image; as zoo tuples, best first."""
    output = spec.get("output") or {}
    conf = params.get("conf", output.get("conf", 0.25))
    iou = params.get("iou", output.get("iou", 0.45))
    height, width = input_size(spec)
    anchors = output.get("anchors")
    if anchors is not None:
        anchors = [list(zip(row[0::2], row[1::2])) for row in anchors]
    boxes, classes, scores = zoo.post_process(
        outputs, output["format"], conf, iou, anchors or YOLOV5_ANCHORS, (height, width)
    )
    real = zoo.real_boxes(boxes, size, (height, width))
    return {
        "zoo": (np.asarray(real, np.float64).reshape(-1, 4), classes, scores),
        "width": size[1],
        "height": size[0],
        "labels": list(names),
    }


def input_size(spec: Mapping[str, Any]) -> Tuple[int, int]:
    size = spec["input"]["size"]
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def same_answer(got: Dict[str, Any], want: Dict[str, Any]) -> None:
    """A daemon's (or engine's) ``result`` is the reference's (:func:`answer`); scores may
    differ in the last bits (numpy's exp on NEON vs AVX), boxes by 1e-3 px."""
    import pytest

    if "zoo" in want:  # detection: the zoo's boxes, class by class in its order
        found = got["detections"]
        ours = (
            np.array([d["box"] for d in found], np.float64).reshape(-1, 4),
            np.array([d["index"] for d in found], np.int64),
            np.array([d["score"] for d in found], np.float32),
        )
        assert (got["width"], got["height"]) == (want["width"], want["height"])
        assert len(found) == len(want["zoo"][0]) > 0, (found, want["zoo"])
        assert zoo.same_per_class(ours, want["zoo"]) is None, zoo.same_per_class(ours, want["zoo"])
        assert [d["label"] for d in found] == [want["labels"][d["index"]] for d in found]
    elif "outputs" in want:  # tensor: every output as recorded, exactly
        assert [o["name"] for o in got["outputs"]] == want["names"]
        for out, expected in zip(got["outputs"], want["outputs"]):
            array = np.frombuffer(out["data"], out["dtype"]).reshape(out["shape"])
            np.testing.assert_array_equal(array, expected)
        assert len(got["outputs"]) == len(want["outputs"])
    elif "mask" not in want:  # classification
        assert [c["index"] for c in got["classes"]] == [c["index"] for c in want["classes"]]
        assert [c["label"] for c in got["classes"]] == [c["label"] for c in want["classes"]]
        for g, w in zip(got["classes"], want["classes"]):
            assert g["score"] == pytest.approx(w["score"], rel=1e-6, abs=1e-9)
    else:
        assert got == want
