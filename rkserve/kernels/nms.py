"""Box overlap and class-wise greedy non-maximum suppression, vectorised.

The suppression rule is the model zoo's ``nms_boxes``: boxes are visited best score first and
a box is dropped when its overlap with a kept box of the same class is not ``<= iou``. Its
overlap adds ``1e-5`` to the intersection's width and height (:data:`NMS_EPS`); so does
:func:`nms`, so that the same boxes survive. Equal scores are visited in candidate order (the
model zoo's ``argsort()[::-1]`` leaves their order to numpy's sort, which is not stable).
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

NMS_EPS = 1e-5  # the model zoo's nms_boxes adds this to the intersection's sides
# NMS by chunks settles a chunk at a time ([chunk, chunk] overlaps), then the boxes still to come
# are checked against the chunk's kept ones. Chunks start small and double: the first boxes
# decide most of the rest.
FIRST_CHUNK = 16
CHUNK = 256
BLOCK = 1 << 18  # the most elements of one overlap matrix (2 MB of float64)
PAIRS = 1 << 16  # the most same-class pairs NMS by pairs takes on (~6 MB of arrays)
PASSES = 32  # the most fixed-point passes NMS by pairs makes before it leaves it to chunks
_AFTER = np.triu(np.ones((CHUNK, CHUNK), bool), k=1)  # [i, j]: box j comes after box i
_AFTER.flags.writeable = False  # shared by every request's thread


def box_iou(a: np.ndarray, b: np.ndarray, eps: float = 0.0) -> np.ndarray:
    """Intersection over union of every box in ``a`` ``[N, 4]`` with every box in ``b``
    ``[M, 4]`` (``x1, y1, x2, y2``) → ``[N, M] float64``.

    ``eps`` is added to the intersection's width and height where they are not negative
    (:data:`NMS_EPS` gives the model zoo's NMS overlap). Two empty boxes give NaN.
    """
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    ax1, ay1, ax2, ay2 = (side[:, None] for side in a.T)  # [N, 1] each
    inter = _overlap(ax1, ax2, b[:, 0], b[:, 2], eps)
    inter *= _overlap(ay1, ay2, b[:, 1], b[:, 3], eps)
    union = (ax2 - ax1) * (ay2 - ay1) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union -= inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.divide(inter, union, out=inter)


def _overlap(
    low_a: np.ndarray, high_a: np.ndarray, low_b: np.ndarray, high_b: np.ndarray, eps: float
) -> np.ndarray:
    """``[N, M]``: ``max(0, min(high) - max(low) + eps)`` along one axis (in place: the
    matrices are the cost of NMS)."""
    side = np.minimum(high_a, high_b)
    side -= np.maximum(low_a, low_b)
    if eps:
        side += eps
    return np.maximum(side, 0.0, out=side)


def pair_iou(a: np.ndarray, b: np.ndarray, eps: float = 0.0) -> np.ndarray:
    """Intersection over union of ``a[i]`` with ``b[i]`` (``[N, 4]`` each) → ``[N]``: the
    same arithmetic as :func:`box_iou`, pair by pair."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    inter = _overlap(a[:, 0], a[:, 2], b[:, 0], b[:, 2], eps)
    inter *= _overlap(a[:, 1], a[:, 3], b[:, 1], b[:, 3], eps)
    union = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union -= inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.divide(inter, union, out=inter)


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

    Greedy NMS is sequential: whether a box stays depends on the boxes kept before it. Both
    ways below find its answer as a fixed point: ``keep[j] = no kept box before j suppresses
    j``, iterated from "all kept" (suppression only points forward, so it settles in as many
    passes as the longest chain of boxes suppressing the next: a handful for real outputs).

    - By pairs (:func:`_by_pairs`): the overlaps of every two boxes of one class, when there
      are at most :data:`PAIRS` such pairs: classes never suppress each other, so a scene of
      many classes has few pairs.
    - By chunks (:func:`_by_chunks`), for crowds of one class or chains too long: a chunk of
      boxes at a time in score order (:data:`FIRST_CHUNK`, doubling up to :data:`CHUNK`),
      settled among themselves, then every box still to come that a newly kept box
      suppresses is dropped. Work stops once ``max_det`` boxes are kept.
    """
    count = int(scores.shape[0])
    limit = count if max_det is None else min(count, max_det)
    labels = np.zeros(count, np.int64) if classes is None else np.asarray(classes)
    order = np.argsort(-np.asarray(scores), kind="stable")  # best first, ties in order
    kept = _by_pairs(boxes, labels, order, iou)
    if kept is None:
        kept = _by_chunks(boxes, labels, order, iou, limit)
    return kept[:limit]


def _by_pairs(
    boxes: np.ndarray, labels: np.ndarray, order: np.ndarray, iou: float
) -> Optional[np.ndarray]:
    """The greedy answer (best first) from the same-class pairs; None when there are more
    than :data:`PAIRS` of them or the fixed point takes more than :data:`PASSES` passes."""
    pairs = _same_class_pairs(labels, order)
    if pairs is None:
        return None
    first, second = pairs
    # np.take: several times faster than fancy indexing for rows of a 2-D array
    overlaps = pair_iou(np.take(boxes, first, axis=0), np.take(boxes, second, axis=0), NMS_EPS)
    hits = ~(overlaps <= iou)  # NaN suppresses, as in the model zoo
    earlier, later = first[hits], second[hits]
    keep = np.ones(boxes.shape[0], bool)
    for _ in range(PASSES):
        settled = np.ones(boxes.shape[0], bool)
        settled[later[keep[earlier]]] = False
        if np.array_equal(settled, keep):
            return order[keep[order]]
        keep = settled
    return None


def _same_class_pairs(
    labels: np.ndarray, order: np.ndarray
) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """Every two boxes of one class as ``(earlier, later)`` indices (in ``order``), or None
    when there are more than :data:`PAIRS`."""
    grouped = order[np.argsort(labels[order], kind="stable")]  # by class, best first in each
    cls = labels[grouped]
    starts = np.flatnonzero(np.r_[True, cls[1:] != cls[:-1]])
    ends = np.r_[starts[1:], cls.size]
    after = np.repeat(ends, ends - starts) - np.arange(cls.size) - 1  # later boxes of its class
    total = int(after.sum())
    if total > PAIRS:
        return None
    first = np.repeat(np.arange(cls.size), after)
    second = first + 1 + np.arange(total) - np.repeat(np.cumsum(after) - after, after)
    return grouped[first], grouped[second]


def _by_chunks(
    boxes: np.ndarray, labels: np.ndarray, order: np.ndarray, iou: float, limit: int
) -> np.ndarray:
    """The greedy answer a chunk at a time (see :func:`nms`), at most ``limit`` boxes."""
    rest = order  # not yet suppressed, best first
    kept = []
    found, size = 0, FIRST_CHUNK
    while rest.size and found < limit:
        chunk, rest = rest[:size], rest[size:]
        new = chunk[_settle(boxes[chunk], labels[chunk], iou)]
        kept.append(new)
        found += new.size
        if rest.size and found < limit:
            rest = rest[~_suppressed(boxes[new], labels[new], boxes[rest], labels[rest], iou)]
        size = min(2 * size, CHUNK)
    return np.concatenate(kept)[:limit] if kept else np.empty(0, np.int64)


def _suppresses(
    a: np.ndarray, a_cls: np.ndarray, b: np.ndarray, b_cls: np.ndarray, iou: float
) -> np.ndarray:
    """``[N, M]`` bool: box ``a[i]`` would suppress box ``b[j]`` if ``a[i]`` were kept."""
    overlap = ~(box_iou(a, b, NMS_EPS) <= iou)  # NaN overlaps suppress, as in the model zoo
    return overlap & (a_cls[:, None] == b_cls[None, :])


def _suppressed(
    kept: np.ndarray, kept_cls: np.ndarray, boxes: np.ndarray, cls: np.ndarray, iou: float
) -> np.ndarray:
    """``[M]`` bool: boxes suppressed by any of the ``kept`` ones; the overlap matrix is
    built a block of boxes at a time, at most :data:`BLOCK` elements."""
    step = max(1, BLOCK // max(1, kept.shape[0]))
    if boxes.shape[0] == 0:
        return np.zeros(0, bool)
    return np.concatenate(
        [
            _suppresses(kept, kept_cls, boxes[i : i + step], cls[i : i + step], iou).any(axis=0)
            for i in range(0, boxes.shape[0], step)
        ]
    )


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
