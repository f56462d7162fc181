"""A model Frigate sends (``model_data``): checked, written atomically into the repository.

Only with ``frigate_uploads`` on, only for a name no model has, only a file the backend
serves (``.rknn`` on the NPU, ``.onnx`` on a PC) whose outputs are a detector layout rkserve
reads (:func:`rkserve.tasks.yolo.read_layout`). The folder is named after the file (its
stem, checked against :data:`NAME`: never a path) and gets a generated ``model.yaml``;
everything is written into a hidden folder first (the repository scan skips those), then
renamed into place in one step. The loader serves it on its next pass.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence, Tuple

from .board.rknnfile import read_rknn
from .errors import RknnFileError
from .frigate import Refused, stem
from .kernels.yolo import Layout, read_layout

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
EXTENSIONS = {".rknn": "rknnlite", ".onnx": "onnx"}


@dataclass(frozen=True)
class Shapes:
    """What a model file says: its one image input's ``(height, width)`` and layout, and
    its outputs' shapes."""

    input_size: Tuple[int, int]
    layout: str  # nchw | nhwc
    outputs: List[Tuple[int, ...]]


def check_name(name: str, models_dir: Path, backend: str) -> Tuple[str, str]:
    """``(model name, file extension)`` for an upload called ``name``, or :class:`Refused`."""
    if not NAME.fullmatch(name) or ".." in name:
        raise Refused("upload_name", f"model name {name[:60]!r} is not a plain file name")
    extension = os.path.splitext(name)[1].lower()
    if EXTENSIONS.get(extension) != backend:
        wanted = next(e for e, b in EXTENSIONS.items() if b == backend)
        raise Refused("upload_kind", f"{name}: the {backend} backend serves {wanted} files")
    model = stem(name)
    if (models_dir / model).exists():
        raise Refused("upload_exists", f"{models_dir / model} exists; rkserve never replaces it")
    return model, extension


def onnx_shapes(path: Path) -> Shapes:
    """The input and outputs of an ONNX file, as onnxruntime reads them (nothing is run)."""
    import onnxruntime as ort  # the PC backend's runtime; never imported on a board

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own unrelated types
        raise Refused("upload_invalid", f"not a model onnxruntime loads: {exc}") from None
    inputs = [tuple(i.shape) for i in session.get_inputs()]
    outputs = [tuple(o.shape) for o in session.get_outputs()]
    return _shapes(inputs, outputs, "nchw")


def rknn_shapes(path: Path) -> Shapes:
    try:
        info = read_rknn(path)
    except RknnFileError as exc:
        raise Refused("upload_invalid", str(exc)) from None
    layout = info.inputs[0].layout if len(info.inputs) == 1 else "nhwc"
    return _shapes([t.shape for t in info.inputs], [t.shape for t in info.outputs], layout)


def _shapes(
    inputs: Sequence[Sequence[object]], outputs: Sequence[Sequence[object]], layout: str
) -> Shapes:
    if len(inputs) != 1 or len(inputs[0]) != 4 or not all(isinstance(d, int) for d in inputs[0]):
        raise Refused("upload_layout", f"expected one fixed-size image input, got {list(inputs)}")
    shape = [int(d) for d in inputs[0]]  # type: ignore[call-overload]
    if shape[1] == 3 and shape[3] != 3:
        layout = "nchw"
    elif shape[3] == 3:
        layout = "nhwc"
    size = (shape[2], shape[3]) if layout == "nchw" else (shape[1], shape[2])
    if not all(all(isinstance(d, int) for d in o) for o in outputs):
        raise Refused("upload_layout", f"outputs of dynamic size: {list(outputs)}")
    return Shapes(size, layout, [tuple(int(d) for d in o) for o in outputs])  # type: ignore[call-overload]


def model_yaml(name: str, shapes: Shapes, layout: Layout, input_dtype: str, pixels: str) -> str:
    """The generated model.yaml: Frigate's conventions (the region stretched to the input;
    a float ONNX input scaled as Frigate's ``input_dtype``), the layout read from the file,
    class-agnostic NMS for the single-output layout as Frigate's ``yolo-generic``."""
    height, width = shapes.input_size
    std = 255 if input_dtype == "float" else 1
    strides = f", strides: [{', '.join(map(str, layout.strides))}]" if layout.strides else ""
    nms = "agnostic" if layout.format == "yolo" else "classwise"
    return (
        "task: detection\n"
        f"description: sent by Frigate as {name}\n"
        f"aliases: [{name!r}]\n"
        f"input: {{size: [{height}, {width}], color: {pixels}, resize: stretch}}\n"
        f"onnx: {{layout: {shapes.layout}, dtype: float32, mean: 0, std: {std}}}\n"
        f"output: {{format: {layout.format}, classes: {layout.classes}{strides}, nms: {nms}}}\n"
    )


def save(
    name: str, data: bytes, models_dir: Path, backend: str, input_dtype: str, pixels: str
) -> str:
    """Check and write the upload ``name``; returns the model's name, or :class:`Refused`."""
    model, extension = check_name(name, models_dir, backend)
    staging = models_dir / f".upload-{model}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        target = staging / f"model{extension}"
        _write(target, data)
        shapes = rknn_shapes(target) if extension == ".rknn" else onnx_shapes(target)
        layout = read_layout(shapes.outputs, shapes.input_size)
        if layout is None:
            raise Refused(
                "upload_layout",
                f"{name}: outputs {[list(o) for o in shapes.outputs]} are no detector layout "
                "rkserve reads (yolov5, yolov8 rknnopt, or one [1, 4+classes, N] output)",
            )
        text = model_yaml(name, shapes, layout, input_dtype, pixels)
        _write(staging / "model.yaml", text.encode("utf-8"))
        os.rename(staging, models_dir / model)  # the model appears whole, or not at all
        return model
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
