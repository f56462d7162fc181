"""YOLO's single-output layout: one tensor of centre/size boxes and per-class scores.

The default ONNX export of YOLOv8, YOLOv9 and YOLO11 (and Frigate's ``yolo-generic``) ends in
one output ``[1, 4 + C, N]`` (or ``[1, N, 4 + C]``): per candidate ``cx, cy, w, h`` in
input pixels, then ``C`` class scores (already sigmoided; no objectness). ``N`` is the
candidate count of every stride together (8400 at 640x640 for strides 8/16/32)::

    found = decode_single(output, conf=0.25)   # candidates, x1 y1 x2 y2 in input pixels

The class axis is the shorter of the two (as Frigate reads it): a model with more classes
plus four than candidates does not exist at useful sizes.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np

BOX_FIELDS = 4  # cx, cy, w, h


def single_shape(shape: Sequence[int]) -> Optional[Tuple[int, int]]:
    """``(classes, candidates)`` of a ``[1, 4+C, N]`` or ``[1, N, 4+C]`` output, or None
    when ``shape`` is not that layout (at least one class, more candidates than channels)."""
    dims = [int(d) for d in shape]
    if len(dims) != 3 or dims[0] != 1 or min(dims[1:]) <= BOX_FIELDS:
        return None
    channels, candidates = sorted(dims[1:])
    if channels == candidates:
        return None
    return channels - BOX_FIELDS, candidates


def candidates_for(input_size: Tuple[int, int], strides: Sequence[int]) -> int:
    """The candidates an anchor-free head has at ``strides`` for ``(height, width)``."""
    height, width = input_size
    return sum((height // s) * (width // s) for s in strides)


def channels_first(output: np.ndarray) -> np.ndarray:
    """``[1, 4+C, N]`` or ``[1, N, 4+C]`` → ``[4+C, N]`` float32 (a view when it can be)."""
    pred = np.asarray(output, np.float32)
    pred = pred.reshape(pred.shape[-2], pred.shape[-1])
    return pred if pred.shape[0] < pred.shape[1] else pred.T


def decode_single(
    output: np.ndarray, threshold: np.float32
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One single-layout output → the candidates scoring ``>= threshold``: ``boxes``
    ``[K, 4] float64`` (``x1, y1, x2, y2`` input pixels), ``scores`` ``[K] float32``,
    ``classes`` ``[K] int64`` (the best class; ties to the lowest), in candidate order.

    The corners are computed in float32, as the reference decoders do (``cx - w / 2``)."""
    pred = channels_first(output)
    scores = pred[BOX_FIELDS:]  # [C, N]
    best = scores.max(axis=0)
    chosen = np.flatnonzero(best >= threshold)
    classes = np.argmax(np.take(scores, chosen, axis=1), axis=0).astype(np.int64, copy=False)
    centre_x, centre_y, width, height = np.take(pred[:BOX_FIELDS], chosen, axis=1)
    half_w, half_h = width / 2, height / 2
    boxes = np.stack(
        [centre_x - half_w, centre_y - half_h, centre_x + half_w, centre_y + half_h], axis=1
    )
    return boxes.astype(np.float64), best[chosen], classes
