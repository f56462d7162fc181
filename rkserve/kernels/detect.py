"""Detection post-processing: raw YOLO outputs → boxes in source-image pixels, best first.

The steps are those of Rockchip's model zoo (decode, score threshold, class-wise NMS, boxes
back through the letterbox and clipped) and give the same boxes, vectorised, as long as at
most :data:`MAX_NMS` candidates pass the threshold (the zoo has no such bound)::

    placement = Placement(...)  # from image.resize(rgb, (640, 640), "letterbox")
    found = postprocess(outputs, "yolov8", placement, (640, 640), rgb.shape[:2])
    found.boxes[0], found.scores[0], found.classes[0]   # the best detection

A gate or a test can also call the steps alone: :func:`decode` (candidates in model-input
pixels), :func:`nms`, :func:`box_iou`, :func:`to_source`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from .image import Placement
from .nms import box_iou, nms
from .yolo import FORMATS, STRIDES, YOLOV5_ANCHORS, Anchors, Candidates, decode

__all__ = [
    "FORMATS",
    "MAX_NMS",
    "STRIDES",
    "YOLOV5_ANCHORS",
    "Candidates",
    "Detections",
    "box_iou",
    "decode",
    "draw",
    "nms",
    "postprocess",
    "to_source",
    "to_wire",
]


# The most candidates NMS takes, the best by score (Ultralytics takes 30 000 with torchvision's
# NMS in C++). NMS compares every kept box with the candidates after it: its cost grows with
# candidates x kept boxes, so this and max_det bound one request's. conf 0 makes every cell a
# candidate: 25 200 on a 640x640 yolov5, which cost 2.5 s of CPU with max_det 10 000.
MAX_NMS = 3000


@dataclass(frozen=True)
class Detections:
    """Kept boxes, best first: ``boxes`` ``[K, 4] float64`` (``x1, y1, x2, y2``),
    ``scores`` ``[K] float32``, ``classes`` ``[K] int64``."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    def __len__(self) -> int:
        return int(self.scores.shape[0])


def to_source(
    boxes: np.ndarray,
    placement: Placement,
    input_size: Tuple[int, int],
    source_size: Tuple[int, int],
) -> np.ndarray:
    """Boxes ``[N, 4]`` in model-input pixels → source-image pixels, clipped to the image.

    ``input_size`` and ``source_size`` are ``(height, width)``. As the model zoo's
    ``get_real_box``: subtract the letterbox's half padding (a float: 2.5 px when 5 px are
    left, though the image sits 2 px in), divide by the scale, clip to ``[0, width]`` and
    ``[0, height]``.
    """
    input_h, input_w = input_size
    pad_x = (input_w - (placement.width or input_w)) / 2
    pad_y = (input_h - (placement.height or input_h)) / 2
    offset = np.array([pad_x, pad_y, pad_x, pad_y])
    scale = np.array([placement.scale_x, placement.scale_y] * 2)
    height, width = source_size
    inside = np.maximum((np.asarray(boxes, np.float64) - offset) / scale, 0.0)
    return np.minimum(inside, [width, height] * 2, out=inside)  # np.clip, without its overhead


def postprocess(
    outputs: Sequence[np.ndarray],
    format: str,
    placement: Placement,
    input_size: Tuple[int, int],
    source_size: Tuple[int, int],
    conf: float = 0.25,
    iou: float = 0.45,
    max_det: int = 100,
    classes: Optional[Sequence[int]] = None,
    strides: Sequence[int] = STRIDES,
    anchors: Optional[Anchors] = None,
    agnostic: bool = False,
) -> Detections:
    """Decode, keep scores ``>= conf`` (of ``classes`` only, if given), the best
    :data:`MAX_NMS` of them, class-wise NMS at ``iou`` (``agnostic``: any box suppresses any
    other), the best ``max_det``, boxes in source pixels. Arguments as :func:`decode` and
    :func:`to_source`."""
    found = best_candidates(decode(outputs, format, conf, strides, anchors, classes), MAX_NMS)
    keep = nms(found.boxes, found.scores, None if agnostic else found.classes, iou, max_det)
    return Detections(
        to_source(found.boxes[keep], placement, input_size, source_size),
        found.scores[keep],
        found.classes[keep],
    )


def best_candidates(found: Candidates, limit: int) -> Candidates:
    """The ``limit`` best-scoring candidates (equal scores: the earlier ones), still in
    candidate order (the order NMS breaks ties in); all of them when there are no more."""
    if len(found) <= limit:
        return found
    chosen = np.sort(np.argsort(-found.scores, kind="stable")[:limit])
    return Candidates(found.boxes[chosen], found.scores[chosen], found.classes[chosen])


def to_wire(found: Detections, labels: Sequence[str] = ()) -> List[Dict[str, Any]]:
    """``[{"index", "label", "score", "box": [x1, y1, x2, y2]}]``, best first."""
    return [
        {
            "index": int(index),
            "label": _label(int(index), labels),
            "score": float(score),
            "box": [float(v) for v in box],
        }
        for box, score, index in zip(found.boxes.tolist(), found.scores.tolist(), found.classes)
    ]


def _label(index: int, labels: Sequence[str]) -> str:
    return labels[index] if 0 <= index < len(labels) else str(index)


BOX_RGB = (0, 0, 255)  # the model zoo draws in BGR: blue boxes, red text
TEXT_RGB = (255, 0, 0)
FONT, FONT_SCALE, THICKNESS = cv2.FONT_HERSHEY_SIMPLEX, 0.6, 2  # the zoo's
LABEL_GAP = 6  # the zoo's: the text's baseline 6 px above the box


def draw(image: np.ndarray, found: Detections, labels: Sequence[str] = ()) -> np.ndarray:
    """A copy of the ``HxWx3`` RGB ``image`` with each box and ``"label score"`` drawn as the
    model zoo's ``draw`` does (2 px boxes, corners truncated to whole pixels, the label above
    the box), except that a label is always inside the image: under the box's top edge when
    there is no room above it (the zoo draws it off the image), moved left at the right
    edge."""
    canvas = image.copy()
    for box, score, index in zip(found.boxes.tolist(), found.scores.tolist(), found.classes):
        x1, y1, x2, y2 = (int(v) for v in box)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), BOX_RGB, THICKNESS)
        text = f"{_label(int(index), labels)} {score:.2f}"
        origin = label_origin(text, x1, y1, canvas.shape[:2])
        cv2.putText(canvas, text, origin, FONT, FONT_SCALE, TEXT_RGB, THICKNESS)
    return canvas


def label_origin(text: str, x1: int, y1: int, size: Tuple[int, int]) -> Tuple[int, int]:
    """Where ``text``'s baseline starts for a box whose top-left corner is ``x1, y1`` in an
    image of ``size`` ``(height, width)``: the zoo's place (``x1, y1 - 6``) if the whole
    text fits there, else the nearest place inside the image (below the box's top edge)."""
    (width, height), baseline = cv2.getTextSize(text, FONT, FONT_SCALE, THICKNESS)
    rows, cols = size
    x, y = x1, y1 - LABEL_GAP
    if y - height - THICKNESS < 0:  # no room above the box: under its top edge
        y = y1 + THICKNESS + LABEL_GAP + height
    y = max(height + THICKNESS, min(y, rows - 1 - baseline))
    x = max(0, min(x, cols - width - THICKNESS))
    return x, y
