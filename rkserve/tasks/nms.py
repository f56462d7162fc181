"""Box overlap and class-wise greedy non-maximum suppression, vectorised.

The suppression rule is the model zoo's ``nms_boxes``: boxes are visited best score first and
a box is dropped when its overlap with a kept box of the same class is not ``<= iou``. Its
overlap adds ``1e-5`` to the intersection's width and height (:data:`NMS_EPS`); so does
:func:`nms`, so that the same boxes survive. Equal scores are visited in candidate order (the
model zoo's ``argsort()[::-1]`` leaves their order to numpy's sort, which is not stable).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

NMS_EPS = 1e-5  # the model zoo's nms_boxes adds this to the intersection's sides
# Boxes are suppressed a chunk at a time: a [chunk, kept] and a [chunk, chunk] overlap matrix.
# Chunks start small and double: the first boxes decide most of the rest.
FIRST_CHUNK = 32
CHUNK = 256
_AFTER = np.triu(np.ones((CHUNK, CHUNK), bool), k=1)  # [i, j]: box j comes after box i


def box_iou(a: np.ndarray, b: np.ndarray, eps: float = 0.0) -> np.ndarray:
    """Intersection over union of every box in ``a`` ``[N, 4]`` with every box in ``b``
    ``[M, 4]`` (``x1, y1, x2, y2``) → ``[N, M] float64``.

    ``eps`` is added to the intersection's width and height where they are not negative
    (:data:`NMS_EPS` gives the model zoo's NMS overlap). Two empty boxes give NaN.
    """
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    width = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    height = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.maximum(0.0, width + eps) * np.maximum(0.0, height + eps)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    with np.errstate(divide="ignore", invalid="ignore"):
        return inter / (area_a[:, None] + area_b[None, :] - inter)


def nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    classes: Optional[np.ndarray] = None,
    iou: float = 0.45,
    max_det: Optional[int] = None,
) -> np.ndarray:
    """Greedy NMS within each class: ``boxes`` ``[N, 4]``, ``scores`` ``[N]``, ``classes``
    ``[N]`` (None: one class) → indices ``[K] int64`` of the kept boxes, best first,
    at most ``max_det``.

    Greedy NMS is sequential: whether a box stays depends on the boxes kept before it.
    Boxes are taken a chunk at a time (:data:`FIRST_CHUNK` boxes, doubling up to
    :data:`CHUNK`), in score order: first every box overlapping an already kept box is
    dropped (one matrix), then the rest of the chunk is settled by iterating
    ``keep = ~any(suppresses[keep])`` to its fixed point
    (which is the greedy answer: suppression only points forward). That takes as many
    passes as the longest chain of boxes suppressing the next, a handful for real outputs.
    Work stops once ``max_det`` boxes are kept: later boxes cannot change them.
    """
    count = int(scores.shape[0])
    limit = count if max_det is None else min(count, max_det)
    labels = np.zeros(count, np.int64) if classes is None else np.asarray(classes)
    order = np.argsort(-np.asarray(scores), kind="stable")
    kept = np.empty(0, np.int64)
    start, size = 0, FIRST_CHUNK
    while start < count and kept.size < limit:
        chunk = order[start : start + size]
        chunk = chunk[~_suppressed(boxes[kept], labels[kept], boxes[chunk], labels[chunk], iou)]
        kept = np.concatenate([kept, chunk[_settle(boxes[chunk], labels[chunk], iou)]])
        start, size = start + size, min(2 * size, CHUNK)
    return kept[:limit]


def _suppresses(
    a: np.ndarray, a_cls: np.ndarray, b: np.ndarray, b_cls: np.ndarray, iou: float
) -> np.ndarray:
    """``[N, M]`` bool: box ``a[i]`` would suppress box ``b[j]`` if ``a[i]`` were kept."""
    overlap = ~(box_iou(a, b, NMS_EPS) <= iou)  # NaN overlaps suppress, as in the model zoo
    return overlap & (a_cls[:, None] == b_cls[None, :])


def _suppressed(
    kept: np.ndarray, kept_cls: np.ndarray, boxes: np.ndarray, cls: np.ndarray, iou: float
) -> np.ndarray:
    """``[M]`` bool: boxes suppressed by any already kept box."""
    if kept.shape[0] == 0:
        return np.zeros(boxes.shape[0], bool)
    return np.asarray(_suppresses(kept, kept_cls, boxes, cls, iou).any(axis=0))


def _settle(boxes: np.ndarray, cls: np.ndarray, iou: float) -> np.ndarray:
    """Greedy NMS among one chunk of boxes in score order: ``[M]`` bool of the kept ones."""
    count = boxes.shape[0]
    forward = _suppresses(boxes, cls, boxes, cls, iou) & _AFTER[:count, :count]
    keep: np.ndarray = np.ones(count, bool)
    while True:
        settled = np.asarray(~forward[keep].any(axis=0))
        if np.array_equal(settled, keep):
            return keep
        keep = settled
