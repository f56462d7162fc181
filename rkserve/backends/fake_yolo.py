"""Raw YOLO outputs that show given boxes: the inverse of :func:`rkserve.kernels.yolo.decode`.

For the fake backend, benchmarks and tests: each box is written into the cell holding its
centre and the cells around it (``spread``), as a trained model lights up a cluster of
neighbouring cells, with scores falling off away from the centre; every other cell gets a
low background score. ``jitter`` moves the neighbours' boxes by up to that many pixels, so
that NMS has overlapping, not identical, boxes to sort out::

    outputs = yolo_outputs("yolov8", [[100, 120, 300, 280]], [2], [0.9], classes=80)
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..kernels.yolo import DFL_BINS, STRIDES, YOLOV5_ANCHORS, Anchors

BACKGROUND = 1e-3  # the class score of an empty cell


def grid_shapes(input_size: Tuple[int, int], strides: Sequence[int]) -> List[Tuple[int, int]]:
    """``(rows, columns)`` of each stride's grid for an input of ``(height, width)``."""
    return [(input_size[0] // s, input_size[1] // s) for s in strides]


def yolo_outputs(
    format: str,
    boxes: Sequence[Sequence[float]],
    labels: Sequence[int],
    scores: Sequence[float],
    classes: int,
    input_size: Tuple[int, int] = (640, 640),
    strides: Sequence[int] = STRIDES,
    anchors: Optional[Anchors] = None,
    spread: int = 1,
    jitter: float = 0.0,
    score_sum: bool = False,
    rng: Optional[np.random.Generator] = None,
) -> List[np.ndarray]:
    """Outputs of a ``format`` model (``yolov5`` | ``yolov8`` | ``yolo``) seeing ``boxes`` ``[N, 4]``
    (``x1, y1, x2, y2`` input pixels) of class ``labels[i]`` with score ``scores[i]``.

    Each box goes to the stride that can represent it best (yolov8: the smallest whose 16
    bins reach its sides; yolov5: the anchor closest in size). ``score_sum`` adds the
    yolov8 export's third tensor per stride (9 outputs)."""
    rng = rng or np.random.default_rng(0)
    grids = grid_shapes(input_size, strides)
    if format == "yolo":
        return _single(boxes, labels, scores, classes, grids, strides, spread, jitter, rng)
    if format == "yolov8":
        return _yolov8(
            boxes, labels, scores, classes, grids, strides, spread, jitter, score_sum, rng
        )
    chosen = YOLOV5_ANCHORS if anchors is None else anchors
    return _yolov5(boxes, labels, scores, classes, grids, strides, chosen, spread, jitter, rng)


def _cells(
    centre: Tuple[float, float], stride: int, grid: Tuple[int, int], spread: int
) -> List[Tuple[int, int, int]]:
    """``(row, column, distance)`` of the cells around the one holding ``centre``."""
    row, col = int(centre[1] // stride), int(centre[0] // stride)
    found = []
    for dr in range(-spread, spread + 1):
        for dc in range(-spread, spread + 1):
            r, c = row + dr, col + dc
            if 0 <= r < grid[0] and 0 <= c < grid[1]:
                found.append((r, c, max(abs(dr), abs(dc))))
    return found


def _moved(box: Sequence[float], jitter: float, rng: np.random.Generator) -> np.ndarray:
    moved = np.asarray(box, np.float64)
    if jitter:
        moved = moved + rng.uniform(-jitter, jitter, 4)
    return moved


def _falloff(score: float, far: int, rng: np.random.Generator) -> float:
    """A neighbour's score: lower further out, and never equal to another's."""
    return score if far == 0 else score * 0.9**far * rng.uniform(0.95, 1.0)


def _yolov8(
    boxes: Sequence[Sequence[float]],
    labels: Sequence[int],
    scores: Sequence[float],
    classes: int,
    grids: List[Tuple[int, int]],
    strides: Sequence[int],
    spread: int,
    jitter: float,
    score_sum: bool,
    rng: np.random.Generator,
) -> List[np.ndarray]:
    dfl = [rng.normal(0, 1, (4, DFL_BINS, h, w)).astype(np.float32) for h, w in grids]
    cls = [rng.uniform(0, BACKGROUND, (classes, h, w)).astype(np.float32) for h, w in grids]
    for box, label, score in zip(boxes, labels, scores):
        x1, y1, x2, y2 = box
        reach = max(x2 - x1, y2 - y1) / 2
        scale = next((i for i, s in enumerate(strides) if reach / s < DFL_BINS - 2), -1)
        stride = strides[scale]
        for row, col, far in _cells(((x1 + x2) / 2, (y1 + y2) / 2), stride, grids[scale], spread):
            mx1, my1, mx2, my2 = _moved(box, jitter if far else 0.0, rng)
            cx, cy = (col + 0.5) * stride, (row + 0.5) * stride
            sides = np.array([cx - mx1, cy - my1, mx2 - cx, my2 - cy]) / stride
            dfl[scale][:, :, row, col] = _two_hot(sides)
            cls[scale][label, row, col] = _falloff(score, far, rng)
    outputs: List[np.ndarray] = []
    for box_logits, class_scores in zip(dfl, cls):
        outputs += [box_logits.reshape(1, 4 * DFL_BINS, *box_logits.shape[2:]), class_scores[None]]
        if score_sum:
            outputs.append(np.minimum(class_scores.sum(axis=0), 1.0)[None, None])
    return outputs


def _single(
    boxes: Sequence[Sequence[float]],
    labels: Sequence[int],
    scores: Sequence[float],
    classes: int,
    grids: List[Tuple[int, int]],
    strides: Sequence[int],
    spread: int,
    jitter: float,
    rng: np.random.Generator,
) -> List[np.ndarray]:
    """The single output ``[1, 4+C, N]``: each box on the finest stride's cells around its
    centre, as ``cx, cy, w, h``."""
    starts = np.cumsum([0] + [h * w for h, w in grids])
    pred = np.zeros((4 + classes, int(starts[-1])), np.float32)
    pred[4:] = rng.uniform(0, BACKGROUND, (classes, pred.shape[1]))
    for box, label, score in zip(boxes, labels, scores):
        x1, y1, x2, y2 = box
        for row, col, far in _cells(((x1 + x2) / 2, (y1 + y2) / 2), strides[0], grids[0], spread):
            mx1, my1, mx2, my2 = _moved(box, jitter if far else 0.0, rng)
            cell = int(starts[0]) + row * grids[0][1] + col
            pred[:4, cell] = [(mx1 + mx2) / 2, (my1 + my2) / 2, mx2 - mx1, my2 - my1]
            pred[4 + label, cell] = _falloff(score, far, rng)
    return [pred[None]]


def _two_hot(sides: np.ndarray) -> np.ndarray:
    """DFL logits ``[4, 16]`` whose softmax expectation is ``sides`` (clipped to the bins)."""
    sides = np.clip(sides, 0.0, DFL_BINS - 1.0)
    low = np.minimum(np.floor(sides), DFL_BINS - 2).astype(int)
    weight = np.zeros((4, DFL_BINS))
    weight[np.arange(4), low] = 1.0 - (sides - low)
    weight[np.arange(4), low + 1] = sides - low
    return np.log(np.maximum(weight, 1e-20)).astype(np.float32)


def _yolov5(
    boxes: Sequence[Sequence[float]],
    labels: Sequence[int],
    scores: Sequence[float],
    classes: int,
    grids: List[Tuple[int, int]],
    strides: Sequence[int],
    anchors: Anchors,
    spread: int,
    jitter: float,
    rng: np.random.Generator,
) -> List[np.ndarray]:
    count = len(anchors[0])
    maps = [rng.uniform(0, 1, (count, 5 + classes, h, w)).astype(np.float32) for h, w in grids]
    for out in maps:
        out[:, 4] *= BACKGROUND
    sizes = np.array([[a for a in scale] for scale in anchors], np.float64)  # [S, A, 2]
    for box, label, score in zip(boxes, labels, scores):
        x1, y1, x2, y2 = box
        fit = np.abs(np.log(sizes / [max(x2 - x1, 1.0), max(y2 - y1, 1.0)])).sum(axis=2)
        scale, anchor = (int(i) for i in np.unravel_index(int(np.argmin(fit)), fit.shape))
        stride = strides[scale]
        for row, col, far in _cells(((x1 + x2) / 2, (y1 + y2) / 2), stride, grids[scale], spread):
            mx1, my1, mx2, my2 = _moved(box, jitter if far else 0.0, rng)
            raw = np.array(
                [
                    ((mx1 + mx2) / 2 / stride - col + 0.5) / 2,
                    ((my1 + my2) / 2 / stride - row + 0.5) / 2,
                    np.sqrt(max(mx2 - mx1, 0.0) / sizes[scale, anchor, 0]) / 2,
                    np.sqrt(max(my2 - my1, 0.0) / sizes[scale, anchor, 1]) / 2,
                ]
            )
            cell = maps[scale][anchor, :, row, col]
            cell[:4] = np.clip(raw, 0.0, 1.0)
            cell[4] = _falloff(score, far, rng)
            cell[5:] = BACKGROUND
            cell[5 + label] = 1.0
    return [m.reshape(1, -1, *m.shape[2:]) for m in maps]
