"""A small real ONNX detector in the model zoo's yolov8 layout, written without the onnx
package (the protobuf fields by hand), for onnxruntime to run in tests.

What it detects: squares of pure colour on a dark background. Class ``c`` is the colour
channel ``c`` (0 red, 1 green, 2 blue). At each stride a convolution averages that channel
over each cell (kernel = stride) and a sigmoid turns the average into the class score, so
the cells a square covers light up; the DFL tensor is a constant two-hot distribution that
puts every cell's box ``SIDE`` cells from its centre on each side. A square of ``2 * SIDE``
cells at one stride is then found as a box of its size, around the cells it covers.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np

SIDE = 2.0  # cells from a cell's centre to each side of its box
SHARPNESS = 12.0  # sigmoid((mean - 0.5) * SHARPNESS): 0.9975 for a full cell, 0.0025 for none


def _varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:  # length-delimited
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _int(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def _text(number: int, value: str) -> bytes:
    return _field(number, value.encode())


def _tensor(name: str, array: np.ndarray) -> bytes:
    array = np.ascontiguousarray(array, np.float32)
    dims = b"".join(_int(1, d) for d in array.shape)
    return dims + _int(2, 1) + _text(8, name) + _field(9, array.tobytes())  # 1: FLOAT


def _value_info(name: str, shape: Sequence[int]) -> bytes:
    dims = b"".join(_field(1, _int(1, d)) for d in shape)
    tensor_type = _int(1, 1) + _field(2, dims)
    return _text(1, name) + _field(2, _field(1, tensor_type))


def _ints_attribute(name: str, values: Sequence[int]) -> bytes:
    packed = b"".join(_int(8, v) for v in values)
    return _field(5, _text(1, name) + packed + _int(20, 7))  # NodeProto.attribute; 7: INTS


def _node(op: str, inputs: Sequence[str], outputs: Sequence[str], attributes: bytes = b"") -> bytes:
    body = b"".join(_text(1, i) for i in inputs) + b"".join(_text(2, o) for o in outputs)
    return body + _text(4, op) + attributes


def two_hot(distance: float, bins: int = 16) -> np.ndarray:
    """Logits over ``bins`` whose softmax expectation is ``distance``."""
    weights = np.zeros(bins)
    low = int(np.floor(distance))
    weights[low] = 1.0 - (distance - low)
    if low + 1 < bins:
        weights[low + 1] = distance - low
    return np.log(np.maximum(weights, 1e-9))


def detector_onnx(
    size: int = 128, strides: Tuple[int, ...] = (8, 16, 32), score_sums: bool = False
) -> bytes:
    """The model's bytes: input ``images`` ``[1, 3, size, size]`` float (0..1), outputs per
    stride ``[1, 64, h, w]`` and ``[1, 3, h, w]`` (and ``[1, 1, h, w]`` with score sums)."""
    nodes: List[bytes] = []
    inits: List[bytes] = []
    outputs: List[bytes] = []
    for stride in strides:
        grid = size // stride
        mean = np.zeros((3, 3, stride, stride), np.float32)
        for c in range(3):
            mean[c, c] = SHARPNESS / (stride * stride)
        conv = _ints_attribute("kernel_shape", [stride, stride])
        conv += _ints_attribute("strides", [stride, stride])
        inits += [
            _tensor(f"cls_w{stride}", mean),
            _tensor(f"cls_b{stride}", np.full(3, -SHARPNESS / 2, np.float32)),
            _tensor(f"box_w{stride}", np.zeros((64, 3, stride, stride), np.float32)),
            _tensor(f"box_b{stride}", np.tile(two_hot(SIDE), 4).astype(np.float32)),
        ]
        nodes += [
            _node("Conv", ["images", f"cls_w{stride}", f"cls_b{stride}"], [f"logit{stride}"], conv),
            _node("Sigmoid", [f"logit{stride}"], [f"cls{stride}"]),
            _node("Conv", ["images", f"box_w{stride}", f"box_b{stride}"], [f"box{stride}"], conv),
        ]
        outputs += [
            _value_info(f"box{stride}", [1, 64, grid, grid]),
            _value_info(f"cls{stride}", [1, 3, grid, grid]),
        ]
        if score_sums:
            nodes.append(_node("ReduceSum", [f"cls{stride}", "axis1"], [f"sum{stride}"]))
            outputs.append(_value_info(f"sum{stride}", [1, 1, grid, grid]))
    if score_sums:
        inits.append(_tensor_int64("axis1", [1]))
    graph = b"".join(_field(1, n) for n in nodes) + _text(2, "detector")
    graph += b"".join(_field(5, i) for i in inits)
    graph += _field(11, _value_info("images", [1, 3, size, size]))
    graph += b"".join(_field(12, o) for o in outputs)
    opset = _text(1, "") + _int(2, 13)
    return _int(1, 8) + _text(2, "rkserve-tests") + _field(7, graph) + _field(8, opset)


def _tensor_int64(name: str, values: Sequence[int]) -> bytes:
    data = struct.pack(f"<{len(values)}q", *values)
    return _int(1, len(values)) + _int(2, 7) + _text(8, name) + _field(9, data)  # 7: INT64


def write_detector(path: Path, **options) -> Path:
    path.write_bytes(detector_onnx(**options))
    return path


def square_image(size: Tuple[int, int], squares: Sequence[Tuple[int, int, int, int]]) -> np.ndarray:
    """An ``HxWx3`` RGB image, dark grey, with ``(x, y, side, channel)`` squares of pure colour."""
    picture = np.full((*size, 3), 20, np.uint8)
    for x, y, side, channel in squares:
        picture[y : y + side, x : x + side] = 0
        picture[y : y + side, x : x + side, channel] = 255
    return picture
