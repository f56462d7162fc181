"""Box overlap and class-wise greedy non-maximum suppression, vectorised.

The suppression rule is the model zoo's ``nms_boxes``: boxes are visited best score first and
a box is dropped when its overlap with a kept box of the same class is not ``<= iou``. Its
overlap adds ``1e-5`` to the intersection's width and height (:data:`NMS_EPS`); so does
:func:`nms`, so that the same boxes survive.

Equal scores are visited in the zoo's order too (:func:`class_order`): it sorts each class's
scores, in candidate order, with ``argsort()[::-1]``, numpy's default sort, which is not
stable, and whose order for equal values changes with numpy's version and the CPU's SIMD
(numpy 2.4 with AVX2 reverses two equal values, numpy 1.24 keeps up to 16 in order). Doing
the same sort on the same array gives the same order: the same boxes as the zoo run with the
same numpy on the same machine, ties included.
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
# NMS by heads keeps the best box of every class left per round, at most HEADS rounds, while a
# round keeps at least one box per HEAD_SHARE boxes left: a round costs as many box overlaps
# as there are boxes left, and a few classes of many boxes go faster by chunks.
HEADS = 16
HEAD_SHARE = 256
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


def _pair_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The model zoo's NMS overlap of ``a[:, i]`` with ``b[:, i]`` (``[5, N]`` each: ``x1, y1,
    x2, y2`` and the area, see :func:`_with_areas`) → ``[N]``: :func:`box_iou`'s arithmetic
    with :data:`NMS_EPS`, pair by pair. Two empty boxes give NaN (call it under
    ``np.errstate``)."""
    inter = _overlap(a[0], a[2], b[0], b[2], NMS_EPS)
    inter *= _overlap(a[1], a[3], b[1], b[3], NMS_EPS)
    union = a[4] + b[4]
    union -= inter
    return np.divide(inter, union, out=inter)


def _with_areas(boxes: np.ndarray) -> np.ndarray:
    """``[N, 4]`` boxes → ``[5, N]``: ``x1, y1, x2, y2`` and the area, one row each."""
    sides = np.asarray(boxes, np.float64).T
    return np.concatenate([sides, [(sides[2] - sides[0]) * (sides[3] - sides[1])]])


def nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    classes: Optional[np.ndarray] = None,
    iou: float = 0.45,
    max_det: Optional[int] = None,
) -> np.ndarray:
    """Greedy NMS within each class: ``boxes`` ``[N, 4]``, ``scores`` ``[N]``, ``classes``
    ``[N]`` (None: one class) → indices ``[K] int64`` of the kept boxes, best first (equal
    scores: lower class first, each class in the zoo's order), at most ``max_det``.

    The boxes are taken by class, each class in the order the zoo visits it
    (:func:`class_order`); two ways then find the greedy answer, one after the other:

    - By heads (:func:`_by_heads`), every class at once: the best box left in each class is
      kept and drops the boxes of its class that it overlaps; one round per box a class
      keeps, a handful in a scene of many classes (at most :data:`HEADS`), fewer when
      ``max_det`` boxes are found first.
    - By chunks (:func:`_by_chunks`), for what is left: crowds of one or a few classes,
      a chunk of boxes at a time in score order (:data:`FIRST_CHUNK`, doubling up to
      :data:`CHUNK`), settled among themselves, then every box still to come that a newly
      kept box suppresses is dropped. Work stops once ``max_det`` boxes are kept.
    """
    count = int(scores.shape[0])
    limit = count if max_det is None else min(count, max_det)
    labels = np.zeros(count, np.int64) if classes is None else np.asarray(classes)
    grouped, cls, ordered = class_order(np.asarray(scores), labels)
    box = np.take(np.asarray(boxes, np.float64), grouped, axis=0)
    # from here on, boxes are named by their place in ``grouped``
    kept, rest = _by_heads(box, cls, ordered, iou, limit)
    if rest.size:
        rest = _best_first(rest, ordered)
        kept = np.concatenate([kept, _by_chunks(box, cls, rest, iou, limit)])
    return grouped[_best_first(kept, ordered)[:limit]]


def class_order(
    scores: np.ndarray, labels: np.ndarray
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices ``[N]`` by class, each class in the order the model zoo's ``nms_boxes`` visits
    it, and the classes and scores in that order.

    The zoo visits ``argsort()[::-1]`` of a class's scores taken in candidate order: best
    first, and equal scores as that sort leaves them. A class without equal scores is sorted
    here once with the others; a class with some goes through the zoo's very expression."""
    grouped = np.lexsort((-scores, labels))  # by class, best first
    cls, ordered = labels[grouped], scores[grouped]
    tied = (cls[1:] == cls[:-1]) & (ordered[1:] == ordered[:-1])
    for value in set(cls[1:][tied].tolist()):  # the classes with equal scores
        places = np.flatnonzero(cls == value)  # one run: the class's
        members = np.sort(grouped[places])  # candidate order
        grouped[places] = members[scores[members].argsort()[::-1]]
    return grouped, cls, ordered  # the same scores: only equal ones changed places


def _best_first(places: np.ndarray, ordered: np.ndarray) -> np.ndarray:
    """``places`` (in :func:`class_order`'s order) best score first, equal scores in that
    order."""
    return places[np.lexsort((places, -ordered[places]))]


def _by_heads(
    box: np.ndarray, cls: np.ndarray, ordered: np.ndarray, iou: float, limit: int
) -> Tuple[np.ndarray, np.ndarray]:
    """Rounds of greedy NMS in every class at once (see :func:`nms` and :data:`HEADS`) on
    boxes in :func:`class_order`'s order (``ordered``: their scores): the places of the kept
    boxes, and of the boxes still undecided (none once ``limit`` kept boxes outscore them
    all: they cannot be among the best ``limit``)."""
    rest = np.arange(cls.size)
    sides = _with_areas(box)
    kept = rest[:0]
    with np.errstate(divide="ignore", invalid="ignore"):
        for _ in range(HEADS):
            head = _starts(cls)
            heads = head.nonzero()[0]
            if not rest.size or heads.size * HEAD_SHARE < rest.size:
                break
            kept = np.concatenate([kept, rest[heads]])
            leader = heads[head.cumsum() - 1]  # the head of each box's class
            # np.take and np.compress: a third of the time of indexing [5, N] with arrays
            stays = _pair_iou(sides, np.take(sides, leader, axis=1)) <= iou  # NaN: dropped
            stays[heads] = False
            rest, cls = rest[stays], cls[stays]
            sides = np.compress(stays, sides, axis=1)
            enough = kept.size >= limit and rest.size > 0
            if enough and np.count_nonzero(ordered[kept] > ordered[rest].max()) >= limit:
                return kept, rest[:0]  # the best limit are kept: the rest cannot be among them
    return kept, rest


def _starts(cls: np.ndarray) -> np.ndarray:
    """``[N]`` bool: where each class starts in ``cls`` (grouped by class)."""
    return np.concatenate((cls[:1] == cls[:1], cls[1:] != cls[:-1]))  # [True] unless empty


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
