"""A model Frigate sends (``model_data``): checked, written atomically into the repository,
loaded, answered (:class:`Uploads`, one at a time on a thread of their own).

Only with ``frigate_uploads`` on, only for a name no model has, only a file the backend
serves (``.rknn`` on the NPU, ``.onnx`` on a PC) whose outputs are a detector layout rkserve
reads (:func:`rkserve.tasks.yolo.read_layout`). The folder is named after the file (its
stem, checked against :data:`NAME`: never a path) and gets a generated ``model.yaml``;
everything is written into a hidden folder first (the repository scan skips those), then
renamed into place in one step. The loader serves it on its next pass.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

from prometheus_client import Counter

from .board.rknnfile import read_rknn
from .config import Settings
from .errors import RknnFileError
from .frigate import Refused, reply, stem
from .kernels.yolo import Layout, read_layout
from .loader import Loader

log = logging.getLogger("rkserve")
WAIT_S = 25.0  # for the saved model to load, inside the plugin's 30 s
REFUSED = reply({"model_saved": False, "model_loaded": False})
Answer = Callable[[List[bytes], bytes, str], None]  # (envelope, reply, the model it names)
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


class Uploads:
    """Models Frigate sends, one at a time, on a thread of their own: checked and saved
    (:func:`save`), loaded by the loader's next pass, then answered through ``answer``."""

    def __init__(
        self,
        settings: Settings,
        loader: Loader,
        refusals: Counter,
        backend_of: Callable[[], str],
        answer: Answer,
    ) -> None:
        self.settings = settings
        self.loader = loader
        self.refusals = refusals  # rkserve_frigate_refused_total
        self.backend_of = backend_of
        self.answer = answer
        self.busy = threading.Lock()  # held while one upload is checked, saved and loaded

    def take(self, envelope: List[bytes], name: str, data: memoryview) -> Optional[bytes]:
        """Start on an upload (None), or the refusal to answer with at once."""
        if not self.settings.frigate_uploads:
            return self._refuse("upload_off", name, "uploads are off (frigate_uploads)")
        if not self.busy.acquire(blocking=False):
            return self._refuse("upload_busy", name, "another upload is in progress")
        args = (envelope, name, bytes(data))
        threading.Thread(target=self._save, args=args, name="frigate-upload", daemon=True).start()
        return None

    def _refuse(self, reason: str, name: str, why: str) -> bytes:
        self.refusals.labels(reason).inc()
        log.warning("frigate: refused the model %r it sent: %s", name, why)
        return REFUSED

    def _save(self, envelope: List[bytes], name: str, data: bytes) -> None:
        answer = {"model_saved": False, "model_loaded": False}
        model = ""
        try:
            settings = self.settings
            model = save(
                name,
                data,
                Path(settings.models_dir),
                self.backend_of(),
                settings.frigate_input_dtype,
                settings.frigate_pixel_format,
            )
            answer["model_saved"] = True
            log.info("frigate: saved the model %r it sent as %s", name, model)
            answer["model_loaded"] = self._wait_loaded(model)
        except Refused as exc:
            self._refuse(exc.reason, name, str(exc))
        except Exception as exc:
            log.error("frigate: saving the model %r failed", name, exc_info=exc)
        finally:
            self.busy.release()
        self.answer(envelope, reply(answer), model)

    def _wait_loaded(self, model: str) -> bool:
        self.loader.reload()
        until = time.monotonic() + WAIT_S
        while time.monotonic() < until:
            host = self.loader.table.hosts.get(model)
            if host is not None and host.state != "loading":
                if not host.ready:
                    log.warning("frigate: the model %s it sent did not load: %s", model, host.error)
                return host.ready
            time.sleep(0.05)
        return False
