"""The quantization of an ONNX model's outputs, read from the file without the onnx package.

A quantized ONNX model (e.g. a TFLite export) may end in ``QuantizeLinear``: its output is
``uint8``/``int8`` and means ``(q - zero_point) * scale``. onnxruntime returns the integers
and does not expose the graph, so this reads the protobuf's wire format directly, as far as
it needs: the graph's nodes (``op_type``, inputs, outputs), its initializers (name, data
type, data) and its outputs' names. Nothing else of the file is decoded::

    quantization = output_quantization(Path("model.onnx"))   # {"out": (0.0039, 0)}

A scale or zero point that is not a one-value initializer (per-axis, or computed) is not
reported: the caller then knows only that the output is integer.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple, Union

Field = Union[int, memoryview]
# GraphProto: node 1, initializer 5, output 12. NodeProto: input 1, output 2, op_type 4.
# TensorProto: dims 1, data_type 2, float_data 4, int32_data 5, name 8, raw_data 9.
# ValueInfoProto: name 1. ModelProto: graph 7.
_FLOAT, _UINT8, _INT8, _INT32 = 1, 2, 3, 6
_RAW_FORMAT = {_FLOAT: "<f", _UINT8: "<B", _INT8: "<b", _INT32: "<i"}


def output_quantization(path: Path) -> Dict[str, Tuple[float, int]]:
    """``{output name: (scale, zero_point)}`` for each graph output made by a
    ``QuantizeLinear`` whose scale and zero point are single-value initializers."""
    try:
        return _read(memoryview(Path(path).read_bytes()))
    except (IndexError, struct.error, OSError):  # not a protobuf after all: nothing known
        return {}


def _read(data: memoryview) -> Dict[str, Tuple[float, int]]:
    graph = next((v for n, v in _fields(data) if n == 7 and isinstance(v, memoryview)), None)
    if graph is None:
        return {}
    nodes: List[memoryview] = []
    tensors: Dict[str, memoryview] = {}
    outputs: List[str] = []
    for number, value in _fields(graph):
        if not isinstance(value, memoryview):
            continue
        if number == 1:
            nodes.append(value)
        elif number == 5:
            name = _text(value, 8)
            tensors[name] = value
        elif number == 12:
            outputs.append(_text(value, 1))
    found: Dict[str, Tuple[float, int]] = {}
    for node in nodes:
        if _text(node, 4) != "QuantizeLinear":
            continue
        made = _texts(node, 2)
        inputs = _texts(node, 1)
        if not made or made[0] not in outputs or len(inputs) < 2:
            continue
        scale = _scalar(tensors.get(inputs[1]))
        zero = _scalar(tensors.get(inputs[2])) if len(inputs) > 2 else 0.0
        if scale is not None and zero is not None:
            found[made[0]] = (float(scale), int(zero))
    return found


def _varint(data: memoryview, at: int) -> Tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7


def _fields(data: memoryview) -> Iterator[Tuple[int, Field]]:
    """``(field number, value)`` of one message: ints for varints and fixed-size fields,
    a view of the bytes for length-delimited ones (nothing is copied)."""
    at = 0
    while at < len(data):
        key, at = _varint(data, at)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, at = _varint(data, at)
            yield number, value
        elif wire == 2:
            size, at = _varint(data, at)
            yield number, data[at : at + size]
            at += size
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            yield number, data[at : at + width]
            at += width
        else:
            return  # groups: not used by ONNX


def _texts(message: memoryview, number: int) -> List[str]:
    return [
        bytes(v).decode("utf-8", "replace")
        for n, v in _fields(message)
        if n == number and isinstance(v, memoryview)
    ]


def _text(message: memoryview, number: int) -> str:
    found = _texts(message, number)
    return found[0] if found else ""


def _scalar(tensor: Optional[memoryview]) -> Optional[float]:
    """The one value of a TensorProto, or None when it holds another number of values."""
    if tensor is None:
        return None
    dtype, raw, floats, ints = 0, None, [], []
    for number, value in _fields(tensor):
        if number == 2 and isinstance(value, int):
            dtype = value
        elif number == 9 and isinstance(value, memoryview):
            raw = bytes(value)
        elif number == 4 and isinstance(value, memoryview):
            floats += [v for (v,) in struct.iter_unpack("<f", bytes(value))]
        elif number == 5 and isinstance(value, memoryview):
            ints += _packed_varints(value)
        elif number == 5 and isinstance(value, int):
            ints.append(value)
    if raw is not None and dtype in _RAW_FORMAT:
        values = [v for (v,) in struct.iter_unpack(_RAW_FORMAT[dtype], raw)]
    else:
        values = floats or [_signed(v, dtype) for v in ints]
    return float(values[0]) if len(values) == 1 else None


def _packed_varints(data: memoryview) -> List[int]:
    values, at = [], 0
    while at < len(data):
        value, at = _varint(data, at)
        values.append(value)
    return values


def _signed(value: int, dtype: int) -> int:
    """int32_data holds int8 values as (two's complement) varints."""
    if dtype == _INT8 and value > 127:
        return value - 256 if value < 256 else value - (1 << 64)
    return value
