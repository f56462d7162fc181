"""YOLO output formats of Rockchip's model zoo: what the raw outputs look like, and decoding
them into candidate boxes.

Three formats, named as in ``model.yaml`` (``output.format``):

``yolov5``
    3 outputs ``[1, A*(5+C), H, W]`` at strides 8/16/32, sigmoid inside the model. Per cell
    and anchor: ``x, y, w, h, objectness, C class scores``; centre ``((xy*2 - 0.5) + cell) *
    stride``, size ``(wh*2)**2 * anchor``, score ``objectness * best class score``. YOLOv7's
    anchor exports have the same layout (with their own anchors).
``yolov8``
    The rknn-optimised export of YOLOv8 and YOLO11: per stride a DFL box tensor
    ``[1, 4*16, H, W]`` (per side a distribution over 16 bins; its softmax expectation is the
    distance from the cell centre in cells) and class scores ``[1, C, H, W]`` (sigmoid
    inside), optionally followed by a score sum ``[1, 1, H, W]``: 6 or 9 outputs.
``yolo``
    The single output of YOLOv8/v9/YOLO11's default ONNX export (Frigate's ``yolo-generic``):
    ``[1, 4+C, N]`` or ``[1, N, 4+C]``, centre/size boxes in input pixels and class scores,
    no objectness (:mod:`rkserve.kernels.yolo_single`).

Candidates come out in the order of the model zoo's flattening (stride, then anchor, row,
column) with the zoo's float32 scores, so that :func:`rkserve.kernels.nms.nms` can order
equal scores as the zoo does (the same sort of the same arrays).
Decoding runs on the cells that pass the score threshold only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from .yolo_single import candidates_for, decode_single, single_shape

FORMATS = ("yolov5", "yolov8", "yolo")
STRIDES = (8, 16, 32)
DFL_BINS = 16
# The model zoo's anchors_yolov5.txt, in input pixels: per stride, (width, height) per anchor.
YOLOV5_ANCHORS: Tuple[Tuple[Tuple[float, float], ...], ...] = (
    ((10.0, 13.0), (16.0, 30.0), (33.0, 23.0)),
    ((30.0, 61.0), (62.0, 45.0), (59.0, 119.0)),
    ((116.0, 90.0), (156.0, 198.0), (373.0, 326.0)),
)
Anchors = Sequence[Sequence[Tuple[float, float]]]


@dataclass(frozen=True)
class Candidates:
    """Boxes that passed the score threshold, before NMS, in model-input pixels.

    ``boxes`` ``[N, 4] float64`` as ``x1, y1, x2, y2``; ``scores`` ``[N] float32``;
    ``classes`` ``[N] int64`` (the best class of each cell).
    """

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    def __len__(self) -> int:
        return int(self.scores.shape[0])


def decode(
    outputs: Sequence[np.ndarray],
    format: str,
    conf: float = 0.25,
    strides: Sequence[int] = STRIDES,
    anchors: Optional[Anchors] = None,
    classes: Optional[Sequence[int]] = None,
) -> Candidates:
    """Raw model outputs → the candidates whose score is ``>= conf``.

    ``outputs`` are the model's outputs in order (see the module docstring for their
    shapes); ``strides`` has one entry per scale; ``anchors`` (``yolov5`` only, default
    :data:`YOLOV5_ANCHORS`) one ``(w, h)`` list per scale. ``classes``, when given, keeps only
    cells whose best class is in it (the best class is chosen among all classes first, as
    Ultralytics' ``classes=`` does).
    """
    threshold = np.float32(conf)  # the model zoo compares float32 scores with a float32 bound
    if format == "yolov5":
        found = _yolov5(outputs, threshold, strides, YOLOV5_ANCHORS if anchors is None else anchors)
    elif format == "yolov8":
        found = _yolov8(outputs, threshold, strides)
    elif format == "yolo":
        found = _single(outputs, threshold)
    else:
        raise ValueError(f"unknown detection format {format!r}; known: {', '.join(FORMATS)}")
    return found if classes is None else _only(found, classes)


def _single(outputs: Sequence[np.ndarray], threshold: np.float32) -> Candidates:
    if len(outputs) != 1 or single_shape(outputs[0].shape) is None:
        shapes = [list(o.shape) for o in outputs]
        raise ValueError(f"yolo format: expected one [1, 4+classes, N] output, got {shapes}")
    return Candidates(*decode_single(outputs[0], threshold))


def _only(found: Candidates, classes: Sequence[int]) -> Candidates:
    keep = np.isin(found.classes, np.asarray(classes, np.int64))
    return Candidates(found.boxes[keep], found.scores[keep], found.classes[keep])


def _best_class(scores: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """The best class of the chosen cells: ``scores`` ``[C, N]``, ``cells`` ``[K]`` → ``[K]``.

    argmax over the leading axis of the full map is slow (strided); over the few cells that
    passed the threshold it is not. Ties go to the lowest class, as :func:`numpy.argmax`."""
    return np.argmax(np.take(scores, cells, axis=1), axis=0).astype(np.int64, copy=False)


def _yolov5(
    outputs: Sequence[np.ndarray], threshold: np.float32, strides: Sequence[int], anchors: Anchors
) -> Candidates:
    if len(outputs) != len(strides) or len(anchors) != len(strides):
        raise ValueError(
            f"yolov5 format: {len(outputs)} outputs, {len(strides)} strides and "
            f"{len(anchors)} anchor sets must be as many"
        )
    parts = [
        _yolov5_scale(out, threshold, stride, np.asarray(scale_anchors, np.float64))
        for out, stride, scale_anchors in zip(outputs, strides, anchors)
    ]
    return Candidates(
        np.concatenate([p.boxes for p in parts]),
        np.concatenate([p.scores for p in parts]),
        np.concatenate([p.classes for p in parts]),
    )


def _yolov5_scale(
    output: np.ndarray, threshold: np.float32, stride: int, anchors: np.ndarray
) -> Candidates:
    """One ``[1, A*(5+C), H, W]`` output; ``anchors`` ``[A, 2]`` (w, h) in pixels."""
    count = anchors.shape[0]
    height, width = output.shape[-2:]
    cells = np.asarray(output, np.float32).reshape(count, -1, height * width)  # [A, 5+C, H*W]
    best = cells[:, 5:].max(axis=1)  # [A, H*W]
    scores = (best * cells[:, 4]).reshape(-1)  # float32, objectness x best class: [A*H*W]
    chosen = np.flatnonzero(scores >= threshold)
    anchor, cell = np.divmod(chosen, height * width)
    row, col = np.divmod(cell, width)
    raw = cells[anchor, :4, cell]  # [K, 4] x, y, w, h
    # the model zoo's float32 / float64 steps, so that boxes equal its boxes bit for bit
    centre = raw[:, :2] * 2 - 0.5
    centre = (centre + np.stack([col, row], axis=1).astype(np.float32)) * np.float32(stride)
    size = np.square(raw[:, 2:4] * 2) * anchors[anchor]
    half = size / 2
    boxes = np.concatenate([centre - half, centre + half], axis=1)
    classes = np.argmax(cells[anchor, 5:, cell], axis=1).astype(np.int64)
    return Candidates(boxes, scores[chosen], classes)


def _yolov8(
    outputs: Sequence[np.ndarray], threshold: np.float32, strides: Sequence[int]
) -> Candidates:
    per_scale = len(outputs) // len(strides) if strides else 0
    if per_scale not in (2, 3) or per_scale * len(strides) != len(outputs):
        raise ValueError(
            f"yolov8 format: {len(outputs)} outputs do not make 2 or 3 per stride "
            f"for {len(strides)} strides"
        )
    cells = [
        _yolov8_cells(outputs[i * per_scale], outputs[i * per_scale + 1], threshold)
        for i in range(len(strides))
    ]
    # one decoding for the cells of every stride: fewer, larger array operations
    bins, chosen, scores, classes = (np.concatenate(part, axis=-1) for part in zip(*cells))
    counts = [c[1].size for c in cells]
    widths = np.repeat([out.shape[-1] for out in outputs[1::per_scale]], counts)
    row, col = np.divmod(chosen, widths)
    centres = np.array([col, row], np.float64) + 0.5  # [2, K] in cells
    sides = dfl(bins)  # [4, K]: left, top, right, bottom
    boxes = np.concatenate([centres - sides[:2], centres + sides[2:]])
    boxes *= np.repeat(np.asarray(strides, np.float64), counts)
    return Candidates(boxes.T, scores, classes)


def _yolov8_cells(
    box: np.ndarray, cls: np.ndarray, threshold: np.float32
) -> Tuple[np.ndarray, ...]:
    """The cells of one stride that pass: ``box`` ``[1, 4*16, H, W]`` DFL logits, ``cls``
    ``[1, C, H, W]`` scores → their bins ``[4*16, K]``, flat cell indices, best scores and
    classes ``[K]``."""
    height, width = cls.shape[-2:]
    scores = np.asarray(cls, np.float32).reshape(-1, height * width)  # [C, H*W]
    best = scores.max(axis=0)
    chosen = np.flatnonzero(best >= threshold)
    bins = np.take(np.asarray(box, np.float32).reshape(4 * DFL_BINS, -1), chosen, axis=1)
    return bins, chosen, best[chosen], _best_class(scores, chosen)


def dfl(bins: np.ndarray) -> np.ndarray:
    """Distribution focal loss decoding: ``[4*B, N]`` logits (per side ``B`` bins of ``N``
    distributions) → ``[4, N]`` softmax expectations, in bins (cells).

    Cells run along the rows: the max, exp and sums run over ``N`` contiguous values at a
    time, where reductions over 16 values per row would be slow; cv2's exp of float32 is
    several times numpy's."""
    sides = bins.reshape(4, bins.shape[0] // 4, bins.shape[1])  # [4, B, N]
    shifted = (sides - sides.max(axis=1, keepdims=True)).reshape(bins.shape)
    weights = cv2.exp(shifted).reshape(sides.shape)
    steps = np.arange(sides.shape[1], dtype=np.float32)
    return (steps @ weights) / weights.sum(axis=1)


@dataclass(frozen=True)
class Layout:
    """What a detector's outputs say about it: format, class count, strides."""

    format: str
    classes: int
    strides: Tuple[int, ...]
    anchors: int = 0  # yolov5: anchors per cell
    score_sum: bool = False  # yolov8: the third tensor per stride (9 outputs)
    candidates: int = 0  # yolo: boxes in the single output

    def describe(self) -> str:
        strides = "/".join(str(s) for s in self.strides) or "?"
        if self.format == "yolo":
            return (
                f"yolo single-output detector: {self.classes} classes, {self.candidates} candidates"
            )
        if self.format == "yolov5":
            extra = f"{self.anchors} anchors per cell"
        else:
            extra = "with score sums" if self.score_sum else "no score sums"
        return f"{self.format}-format detector: {self.classes} classes, strides {strides}, {extra}"


Shape = Sequence[int]


def read_layout(shapes: Sequence[Shape], input_size: Optional[Tuple[int, int]]) -> Optional[Layout]:
    """The detection layout ``shapes`` (the outputs, ``[1, C, H, W]`` each) fit, or None.

    ``input_size`` ``(height, width)`` gives the strides (``input / grid``); without it they
    are the model zoo's 8/16/32 when the grids halve from one output to the next."""
    single = single_shape(shapes[0]) if len(shapes) == 1 else None
    if single is not None and anchor_free(single[1], input_size):
        return Layout("yolo", single[0], (), candidates=single[1])
    grids = [tuple(s[2:]) for s in shapes if len(s) == 4]
    if len(grids) != len(shapes) or not shapes:
        return None
    if len(shapes) == 3 and len({s[1] for s in shapes}) == 1:
        channels = int(shapes[0][1])
        for anchors in (3, 4, 2, 1):
            if channels % anchors == 0 and channels // anchors > 5:
                strides = _strides(grids, input_size)
                return (
                    Layout("yolov5", channels // anchors - 5, strides, anchors) if strides else None
                )
    per_scale = len(shapes) // 3
    if len(shapes) in (6, 9):
        boxes, scores = shapes[0::per_scale], shapes[1::per_scale]
        sums_ok = per_scale == 2 or all(s[1] == 1 for s in shapes[2::per_scale])
        same = all(tuple(b[2:]) == tuple(c[2:]) for b, c in zip(boxes, scores))
        if sums_ok and same and all(b[1] == 4 * DFL_BINS for b in boxes):
            classes = {int(c[1]) for c in scores}
            strides = _strides([tuple(b[2:]) for b in boxes], input_size)
            if len(classes) == 1 and strides:
                return Layout("yolov8", classes.pop(), strides, score_sum=per_scale == 3)
    return None


def anchor_free(candidates: int, input_size: Optional[Tuple[int, int]]) -> bool:
    """Whether ``candidates`` is the cell count of strides 8/16/32 (or 8..64) for the input
    ``(height, width)``, or, without it, for some square input (a class map ``[1, H, W]``
    must not pass for a detector)."""
    if input_size is not None:
        return candidates in (candidates_for(input_size, s) for s in ((8, 16, 32), (8, 16, 32, 64)))
    cells = candidates * 16 / 21  # (side / 8) ** 2 of a square input at strides 8/16/32
    return cells == int(cells) and round(cells**0.5) ** 2 == cells


def _strides(
    grids: Sequence[Tuple[int, ...]], input_size: Optional[Tuple[int, int]]
) -> Tuple[int, ...]:
    """Each grid's stride, or () when they are not whole, square, and finest first."""
    if input_size is None:
        halving = all(a[0] == 2 * b[0] and a[1] == 2 * b[1] for a, b in zip(grids, grids[1:]))
        return STRIDES if halving and len(grids) == len(STRIDES) else ()
    height, width = input_size
    strides = []
    for rows, cols in grids:
        if (
            rows <= 0
            or cols <= 0
            or height % rows
            or width % cols
            or height // rows != width // cols
        ):
            return ()
        strides.append(height // rows)
    return tuple(strides) if strides == sorted(strides) else ()


def explain(shapes: Sequence[Shape], input_size: Optional[Tuple[int, int]] = None) -> str:
    """One line on what ``shapes`` (a model's outputs) look like, for ``rkserve inspect``."""
    count = f"{len(shapes)} output{'s' if len(shapes) != 1 else ''}"
    layout = read_layout(shapes, input_size)
    if layout is not None:
        export = {
            "yolov5": "a YOLOv5/YOLOv7 anchor export",
            "yolov8": "a YOLOv8 rknnopt export (also YOLO11)",
            "yolo": "a YOLOv8/v9/YOLO11 default export (one [1, 4+classes, N] output)",
        }[layout.format]
        return f"{count}: looks like {export}: task detection, {layout.describe()}"
    if len(shapes) == 1 and shapes[0] and int(np.prod(shapes[0])) == max(shapes[0]):
        return f"{count}: looks like a classifier ({max(shapes[0])} scores)"
    if len(shapes) == 1 and len(shapes[0]) in (3, 4):
        return f"{count} {list(shapes[0])}: could be a segmenter (per-class scores or a class map)"
    return f"{count}: no task rkserve serves reads this layout"


def output_shapes(
    format: str,
    classes: int,
    input_size: Tuple[int, int],
    strides: Sequence[int] = STRIDES,
    anchors: Optional[Sequence[Sequence[Any]]] = None,
) -> List[Tuple[int, ...]]:
    """The outputs of a ``format`` export (yolov8: without the score sums) for an input of
    ``input_size`` (height, width): yolov5 ``[1, A*(5+C), H, W]`` per stride, yolov8
    ``[1, 64, H, W]`` and ``[1, C, H, W]`` per stride, yolo one ``[1, 4+C, N]``."""
    height, width = input_size
    if format == "yolo":
        return [(1, 4 + classes, candidates_for(input_size, strides))]
    shapes: List[Tuple[int, ...]] = []
    for i, stride in enumerate(strides):
        grid = (height // stride, width // stride)
        if format == "yolov5":
            count = len(anchors[i]) if anchors else 3
            shapes.append((1, count * (5 + classes), *grid))
        else:
            shapes += [(1, 4 * DFL_BINS, *grid), (1, classes, *grid)]
    return shapes
