"""Read the metadata of a ``.rknn`` model without any Rockchip runtime.

The container is undocumented; what this module relies on was read from real files of
format versions 1, 2 and 6 and is written down in ``docs/RKNN_FORMAT.md``. In short: a
header (``RKNN``, format version, payload length), a flatbuffer payload whose root table
holds a few metadata strings, then a length-prefixed JSON blob describing the graph's
inputs and outputs. Only the header, those strings and the JSON are read: the payload
(weights, often tens of MB) is skipped with ``seek``.

Example::

    >>> info = read_rknn("models/mobilenet_v2/model.rknn")
    >>> info.toolkit_version, info.target_platforms, info.inputs[0].shape
    ('2.3.2', ('rk3568',), (1, 3, 224, 224))
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from typing import Any, Dict, Mapping, Optional, Tuple, Union

from ..kernels.yolo import explain
from .rknncontainer import Container, read_container

__all__ = ["RknnInfo", "TensorInfo", "describe", "looks_like", "parse_version", "read_rknn"]

# rknn-toolkit2 stores the source model's shapes; these frameworks are channels-first.
_NCHW_SOURCES = ("onnx", "pytorch", "caffe", "darknet")
_VERSION = re.compile(r"(?<![\d.])(\d+)\.(\d+)(?:\.(\d+))?")
_COMPILER = re.compile(r"compiler version:\s*([^\s()]+)")


@dataclass(frozen=True)
class TensorInfo:
    """One model input or output.

    ``shape`` and ``layout`` are the tensor as the model declares it (rknn-toolkit2 keeps
    the source model's shape, NCHW for ONNX). ``dtype`` and ``runtime_layout`` are how the
    NPU runtime holds it (a quantized image input is int8 NHWC; the runtime converts the
    uint8 pixels it is given). Layouts are ``"undefined"`` for tensors that are not 4-D.
    """

    name: str
    shape: Tuple[int, ...]
    dtype: str  # "int8", "uint8", "float16", "float32", "int64", ...; "" if unknown
    layout: str  # "nchw" | "nhwc" | "undefined" | ""
    mean: Optional[Tuple[float, ...]] = None  # inputs only, where the file has them
    std: Optional[Tuple[float, ...]] = None
    runtime_layout: str = ""  # "nhwc" | "nchw" | "undefined" | ""


@dataclass(frozen=True)
class RknnInfo:
    """What a ``.rknn`` file says about itself."""

    path: str
    size: int
    format_version: int
    toolkit_version: str
    compiler_version: str
    target_platforms: Tuple[str, ...]
    inputs: Tuple[TensorInfo, ...]
    outputs: Tuple[TensorInfo, ...]

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-ready dict (tuples become lists)."""
        data = asdict(self)
        data["target_platforms"] = list(self.target_platforms)
        for role in ("inputs", "outputs"):
            data[role] = [_tensor_dict(t) for t in getattr(self, role)]
        data["looks_like"] = looks_like(self)
        return data

    @property
    def toolkit_release(self) -> Tuple[int, int, int]:
        """``"1.6.2-source_code"`` -> ``(1, 6, 2)``; ``(0, 0, 0)`` if unparsable."""
        return parse_version(self.toolkit_version)


def _tensor_dict(tensor: TensorInfo) -> Dict[str, Any]:
    data = asdict(tensor)
    for key in ("shape", "mean", "std"):
        if data[key] is not None:
            data[key] = list(data[key])
    return data


def parse_version(text: str) -> Tuple[int, int, int]:
    """The first ``x.y[.z]`` in ``text``, e.g. from ``"librknnrt version: 2.3.0 (c949ad8...)"``,
    ``"RKNPU driver: v0.8.2"`` or ``"1.6.2-source_code"``; ``(0, 0, 0)`` if there is none."""
    match = _VERSION.search(text or "")
    if not match:
        return (0, 0, 0)
    return (int(match.group(1)), int(match.group(2)), int(match.group(3) or 0))


def read_rknn(path: Union[str, os.PathLike]) -> RknnInfo:
    """Read the metadata of one ``.rknn`` file.

    Raises :class:`~rkserve.errors.RknnFileError` naming the file and what is wrong: not an
    RKNN file, empty, truncated, unreadable.
    """
    box = read_container(path)
    meta, strings = box.meta, box.strings
    toolkit_line = strings.get("toolkit", "")
    toolkit = _text(meta.get("version")) or toolkit_line.split("(")[0].strip()
    compiler = _COMPILER.search(toolkit_line) or _COMPILER.search(strings.get("attrs", ""))
    return RknnInfo(
        path=str(path),
        size=box.size,
        format_version=box.format_version,
        toolkit_version=toolkit,
        compiler_version=compiler.group(1) if compiler else "",
        target_platforms=_platforms(meta.get("target_platform"), strings.get("platform", "")),
        inputs=_tensors(box, "input"),
        outputs=_tensors(box, "output"),
    )


def _platforms(listed: Any, fallback: str) -> Tuple[str, ...]:
    if isinstance(listed, str):
        listed = [listed]
    if not isinstance(listed, list) or not listed:
        listed = [fallback] if fallback else []
    return tuple(str(p).strip().lower() for p in listed if str(p).strip())


def _tensors(box: Container, role: str) -> Tuple[TensorInfo, ...]:
    source = _text(box.meta.get("ori_network_platform") or box.meta.get("network_platform"))
    runtime = box.input_types if role == "input" else box.output_types
    return tuple(
        _tensor(norm, runtime, box.attrs, source.lower(), role == "input")
        for norm in box.norm_tensors(role)
    )


def _tensor(
    norm: Mapping[str, Any],
    runtime: Mapping[str, Any],
    attrs: Mapping[str, Any],
    source: str,
    is_input: bool,
) -> TensorInfo:
    name = _text(norm.get("url"))
    attr = _mapping(attrs.get(name))
    types = _mapping(runtime.get(name))
    shape = _ints(norm.get("size")) or _ints(attr.get("shape")) or ()
    stored = _mapping(norm.get("dtype"))
    dtype = _text(types.get("dtype")) or _text(stored.get("vx_type")) or ""
    declared = _text(attr.get("layout")).lower()
    if not declared and source in _NCHW_SOURCES:
        declared = "nchw"
    return TensorInfo(
        name=name,
        shape=shape,
        dtype=dtype.lower(),
        layout=_layout(shape, declared),
        mean=_floats(attr.get("mean")) if is_input else None,
        std=_floats(attr.get("std")) if is_input else None,
        runtime_layout=_layout(shape, _text(types.get("layout")).lower()),
    )


def _layout(shape: Tuple[int, ...], layout: str) -> str:
    # Like rknn_query, a layout only means something for 4-D tensors.
    if len(shape) != 4:
        return "undefined" if shape else layout
    return layout


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _ints(value: Any) -> Optional[Tuple[int, ...]]:
    if not isinstance(value, (list, tuple)) or not value:
        return None
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return None
    return tuple(value)


def _floats(value: Any) -> Optional[Tuple[float, ...]]:
    if not isinstance(value, (list, tuple)) or not value:
        return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return None
    return tuple(float(v) for v in value)


def looks_like(info: RknnInfo) -> str:
    """One line on what the outputs' shapes say the model is, e.g. ``"6 outputs: looks like
    a YOLOv8 rknnopt export (also YOLO11): task detection, ..."``."""

    if len(info.inputs) != 1:
        return f"{len(info.inputs)} inputs: not a one-image model (the image tasks take one image)"
    return explain([t.shape for t in info.outputs], _input_size(info))


def _input_size(info: RknnInfo) -> Optional[Tuple[int, int]]:
    """The image input's ``(height, width)``, if the model has one 4-D input."""
    if len(info.inputs) != 1 or len(info.inputs[0].shape) != 4:
        return None
    shape = info.inputs[0].shape
    return (shape[1], shape[2]) if info.inputs[0].layout == "nhwc" else (shape[2], shape[3])


def describe(info: RknnInfo) -> str:
    """A multi-line, human-readable summary of ``info``."""
    toolkit = info.toolkit_version or "?"
    if info.compiler_version:
        toolkit += f" (compiler {info.compiler_version})"
    lines = [
        f"{info.path}  ({info.size:,} bytes)",
        f"  format version   {info.format_version}",
        f"  toolkit          {toolkit}",
        f"  target platform  {', '.join(info.target_platforms) or '?'}",
        f"  looks like       {looks_like(info)}",
    ]
    for title, tensors in (("inputs", info.inputs), ("outputs", info.outputs)):
        lines.append(f"  {title} ({len(tensors)}):")
        lines.extend("    " + row for row in _table(tensors, with_norm=title == "inputs"))
    return "\n".join(lines)


def _table(tensors: Tuple[TensorInfo, ...], with_norm: bool) -> Tuple[str, ...]:
    header = ["name", "shape", "dtype", "layout", "runtime"]
    if with_norm:
        header += ["mean", "std"]
    rows = [header]
    for t in tensors:
        row = [t.name, _seq(t.shape), t.dtype or "?", t.layout or "?", t.runtime_layout or "?"]
        if with_norm:
            row += [_seq(t.mean) if t.mean else "-", _seq(t.std) if t.std else "-"]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return tuple("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def _seq(values: Optional[Tuple[Union[int, float], ...]]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values or ()) + "]"
