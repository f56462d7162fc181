"""Frigate's ``zmq`` detector protocol (Frigate 0.17+), translated to rkserve's terms.

Pure functions; the socket is :mod:`rkserve.frigate_frontend`. Frigate's plugin speaks over a
REQ socket, one JSON frame or ``[header_json, bytes]`` per request:

- ``{"model_request": true, "model_name": NAME}`` → ``{"model_available", "model_loaded"}``
- ``[{"model_data": true, "model_name": NAME}, FILE]`` → ``{"model_saved", "model_loaded"}``
- ``[{"shape", "dtype", "model_type"}, TENSOR]`` → one 480-byte frame: ``[20, 6]`` float32
  rows ``class, score, y1, x1, y2, x2`` normalised to the model input, best first, zero
  padded. The tensor is Frigate's region already stretched to the model's size, ``uint8``
  or ``float32``, NHWC or NCHW; its pixel format and float scale are configuration.

Frigate has no error reply: what cannot be served is answered with zeros (no detections).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .modelhost import ModelHost
from .repository import Entry, scan
from .spec import ModelSpec

ROWS, COLUMNS = 20, 6
ZEROS = bytes(ROWS * COLUMNS * 4)  # no detections: the reply to anything Frigate cannot get
MAX_HEADER = 4096  # bytes of a request's JSON frame
DTYPES = ("uint8", "float32")
PIXEL_RANGE = (-0.5, 255.5)  # a float tensor's values, once scaled, round into 0..255
# Why a request got zeros (rkserve_frigate_refused_total{reason}), besides the pipeline's codes
REASONS = (
    "bad_message",
    "bad_shape",
    "bad_dtype",
    "bad_size",
    "wrong_size",
    "not_finite",
    "out_of_range",
    "model_unavailable",
    "no_handshake",
)
ANSWERS = ("ready", "not_loaded", "unknown")  # rkserve_frigate_handshakes_total{answer}


class Refused(Exception):
    """A request answered with zeros; ``reason`` labels the metric, the message the log.
    ``answer=False``: not answered at all, so that the plugin times out, opens a new socket
    and makes its handshake again."""

    def __init__(self, reason: str, message: str, answer: bool = True) -> None:
        super().__init__(message)
        self.reason = reason
        self.answer = answer


@dataclass(frozen=True)
class Message:
    """One request from the plugin: ``kind`` is ``model_request``, ``model_data`` or
    ``infer``; ``header`` its JSON map; ``payload`` the second frame (model file or tensor)."""

    kind: str
    header: Dict[str, Any]
    payload: Optional[memoryview] = None

    @property
    def model_name(self) -> str:
        name = self.header.get("model_name")
        return name if isinstance(name, str) else ""


def parse(frames: Sequence[memoryview]) -> Message:
    """The plugin's frames (after the REQ envelope) → a :class:`Message`, or :class:`Refused`."""
    if not frames or len(frames) > 2:
        raise Refused("bad_message", f"expected 1 or 2 frames, got {len(frames)}")
    if len(frames[0]) > MAX_HEADER:
        raise Refused("bad_message", f"header frame of {len(frames[0])} bytes (most {MAX_HEADER})")
    try:
        header = json.loads(bytes(frames[0]).decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise Refused("bad_message", "the first frame is not a JSON object") from None
    if not isinstance(header, dict):
        raise Refused("bad_message", "the first frame is not a JSON object")
    payload = frames[1] if len(frames) == 2 else None
    for kind in ("model_request", "model_data"):
        if header.get(kind) is True:
            if kind == "model_data" and payload is None:
                raise Refused("bad_message", "model_data without the model file frame")
            return Message(kind, header, payload)
    if payload is None:
        raise Refused("bad_message", "an inference request needs the tensor frame")
    return Message("infer", header, payload)


def tensor(message: Message) -> np.ndarray:
    """The request's tensor as its header says (a view of the frame), or :class:`Refused`."""
    shape, dtype = message.header.get("shape"), message.header.get("dtype")
    if not isinstance(shape, list) or not _sizes(shape):
        raise Refused("bad_shape", f"header shape {str(shape)[:60]} is not a list of 1-4 sizes")
    if dtype not in DTYPES:
        raise Refused(
            "bad_dtype", f"dtype {str(dtype)[:20]!r}: rkserve takes {' or '.join(DTYPES)}"
        )
    assert message.payload is not None
    expected = int(np.prod(shape, dtype=np.int64)) * np.dtype(str(dtype)).itemsize
    if len(message.payload) != expected:
        raise Refused(
            "bad_size", f"{len(message.payload)} bytes for shape {shape} {dtype} ({expected})"
        )
    return np.frombuffer(message.payload, dtype).reshape(shape)


def _sizes(shape: Any) -> bool:
    if not isinstance(shape, list) or not 0 < len(shape) <= 4:
        return False
    return all(isinstance(d, int) and not isinstance(d, bool) and 0 < d < 2**31 for d in shape)


def image_size(array: np.ndarray) -> Optional[Tuple[int, int]]:
    """``(height, width)`` of a ``[1, H, W, 3]`` or ``[1, 3, H, W]`` tensor, else None."""
    shape = array.shape
    if len(shape) != 4 or shape[0] != 1:
        return None
    if shape[3] == 3:
        return int(shape[1]), int(shape[2])
    return (int(shape[2]), int(shape[3])) if shape[1] == 3 else None


def to_pixels(
    array: np.ndarray, input_size: Tuple[int, int], input_dtype: str, pixel_format: str
) -> np.ndarray:
    """Frigate's tensor → the ``HxWx3 uint8`` RGB image the detection task takes.

    ``array`` is ``[1, H, W, 3]`` or ``[1, 3, H, W]``, ``uint8``, or ``float32`` scaled as
    ``input_dtype`` says (``float``: pixels / 255; ``float_denorm``: pixels); its size must
    be the model's ``input_size`` ``(height, width)`` (nothing is resized). Floats are
    rounded back to the pixels Frigate made them from; a non-finite value, or one outside
    0..255 once scaled (Frigate's ``input_dtype`` is not ``frigate_input_dtype``), is
    :class:`Refused`."""
    size = image_size(array)
    if size is None:
        raise Refused(
            "bad_shape", f"shape {list(array.shape)}: expected [1, H, W, 3] or [1, 3, H, W]"
        )
    if size != tuple(input_size):
        raise Refused(
            "wrong_size",
            f"a {size[1]}x{size[0]} tensor for a model of {input_size[1]}x{input_size[0]}: set "
            f"Frigate's model width: {input_size[1]} and height: {input_size[0]}",
        )
    image = array[0] if array.shape[3] == 3 else array[0].transpose(1, 2, 0)
    if array.dtype != np.uint8:
        image = _pixels_of_floats(image, input_dtype)
    if pixel_format == "bgr":
        image = image[..., ::-1]
    return np.ascontiguousarray(image)


def _pixels_of_floats(image: np.ndarray, input_dtype: str) -> np.ndarray:
    scaled = image * np.float32(255.0) if input_dtype == "float" else image
    low, high = float(scaled.min()), float(scaled.max())
    if not (math.isfinite(low) and math.isfinite(high)):
        raise Refused("not_finite", "the float tensor holds NaN or infinite values")
    if low < PIXEL_RANGE[0] or high > PIXEL_RANGE[1]:
        other = "float_denorm" if input_dtype == "float" else "float"
        raise Refused(
            "out_of_range",
            f"float values {low:g}..{high:g} after scaling as {input_dtype}: is Frigate's "
            f"input_dtype {other}? (rkserve's frigate_input_dtype must match it)",
        )
    return np.rint(scaled).astype(np.uint8)


def rows(result: Mapping[str, Any]) -> bytes:
    """A detection result (boxes in pixels of an image of ``width`` x ``height``, best
    first) → Frigate's reply: ``[20, 6]`` float32 ``class, score, y1, x1, y2, x2``, the box
    normalised 0..1, the first 20, zero padded."""
    found = result["detections"][:ROWS]
    table = np.zeros((ROWS, COLUMNS), np.float32)
    if found:
        scale = np.array([result["height"], result["width"]] * 2, np.float64)
        boxes = np.array([d["box"] for d in found], np.float64)[:, [1, 0, 3, 2]] / scale
        table[: len(found), 0] = [d["index"] for d in found]
        table[: len(found), 1] = [d["score"] for d in found]
        table[: len(found), 2:] = boxes
    return table.tobytes()


def stem(name: str) -> str:
    """Frigate's model file name without its extension: ``yolov8n.onnx`` → ``yolov8n``."""
    base = name.rsplit("/", 1)[-1]
    return base.rsplit(".", 1)[0] if "." in base[1:] else base


def named(name: str, specs: Mapping[str, Optional[ModelSpec]]) -> Optional[str]:
    """The model Frigate's ``model_name`` means among ``specs`` (model name → spec): the one
    whose model.yaml ``aliases`` hold the file name (as Frigate has it, or without its
    extension), else the one whose folder is the file name without extension."""
    wanted = {name, stem(name)}
    for model, spec in specs.items():
        if spec is not None and wanted & set(spec.aliases):
            return model
    return stem(name) if stem(name) in specs else None


def find_model(name: str, hosts: Mapping[str, ModelHost]) -> Optional[ModelHost]:
    """The served model for Frigate's ``model_name`` (:func:`named`)."""
    model = named(name, {n: h.entry.spec for n, h in hosts.items()})
    return hosts[model] if model is not None else None


def find_entry(name: str, models_dir: Path) -> Optional[Entry]:
    """The same on the repository's folders (no daemon)."""
    entries = scan(models_dir)
    model = named(name, {n: e.spec for n, e in entries.items()})
    return entries[model] if model is not None else None


def detectors_of_size(hosts: Mapping[str, ModelHost], size: Tuple[int, int]) -> List[str]:
    """Ready detection models whose input is ``(height, width)``."""
    return [
        name
        for name, host in hosts.items()
        if host.ready
        and host.entry.spec is not None
        and host.entry.spec.task == "detection"
        and tuple(host.entry.spec.input_size) == tuple(size)
    ]


def handshake(host: Optional[ModelHost]) -> Dict[str, bool]:
    """The answer to ``model_request``: available when the name is a model, loaded when
    that model is a ready detector."""
    if host is None:
        return {"model_available": False, "model_loaded": False}
    spec = host.entry.spec
    detector = spec is not None and spec.task == "detection"
    return {"model_available": True, "model_loaded": bool(host.ready and detector)}


def reply(data: Mapping[str, Any]) -> bytes:
    return json.dumps(dict(data)).encode("utf-8")


def labelmap(labels: Sequence[str], classes: int = 0) -> str:
    """The labelmap file Frigate's ``labelmap_path`` reads: ``"<class id> <label>"`` per line,
    class ids as the model's outputs number them (``classes`` ids when there are no labels:
    the id stands for the label)."""
    names = list(labels) or [str(i) for i in range(classes)]
    return "".join(f"{index} {name}\n" for index, name in enumerate(names))
