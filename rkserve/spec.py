"""``model.yaml``: what a model is and how to feed and read it, validated at load.

The schema is documented field by field in ``docs/MODELS.md``. Every error names the file
and the dotted field, e.g. ``models/shapes/model.yaml: input.size: expected [height, width]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, NoReturn, Optional, Sequence, Tuple

import yaml

from .errors import ConfigError
from .kernels.labels import read_labels

SPEC_FILE = "model.yaml"
MAX_INSTANCES = 16  # runtime objects (and runner threads) per model: a few per NPU core


@dataclass(frozen=True)
class OnnxInput:
    """How the ONNX twin wants its input (the .rknn takes raw NHWC uint8: mean/std are baked in)."""

    file: str = "model.onnx"
    layout: str = "nchw"  # nchw | nhwc
    dtype: str = "float32"  # float32 | uint8
    mean: Tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: Tuple[float, float, float] = (1.0, 1.0, 1.0)


@dataclass(frozen=True)
class ModelSpec:
    """One model folder, as described by its model.yaml.

    The fields every model has, the image input the image tasks share (zero for ``tensor``),
    and ``task_config``: the task's own sections, a frozen dataclass its module defines
    (``rkserve.tasks.classification.Config``...), read by that module alone."""

    name: str
    folder: Path
    task: str
    input_size: Tuple[int, int] = (0, 0)  # (height, width) of an image task's input
    color: str = "rgb"  # channel order the model was trained on: rgb | bgr
    resize: str = "stretch"  # stretch | letterbox | crop (classification)
    interpolation: str = "linear"  # nearest | linear | area (cv2's, for every resize)
    shorter_side: int = 0  # resize: crop: the shorter side before the centre crop
    pad: int = 114  # the letterbox's grey level (the model zoo's detectors: 0)
    decode: str = (
        "full"  # full | reduced (a JPEG decoded at 1/2, 1/4 or 1/8 when that covers the input)
    )
    labels: Tuple[str, ...] = ()
    labels_file: str = ""  # the labels file named by model.yaml (part of the reload fingerprint)
    description: str = ""
    rknn_file: str = "model.rknn"
    onnx: OnnxInput = field(default_factory=OnnxInput)
    convert: Dict[str, Any] = field(default_factory=dict)
    task_config: Any = None  # the task's own sections (its module's Config dataclass)
    instances: int = 0  # runtime objects serving the model at once; 0: one per NPU core
    aliases: Tuple[str, ...] = ()  # other names a front end may ask for it by (Frigate's file name)

    @property
    def rknn_path(self) -> Path:
        return self.folder / self.rknn_file

    @property
    def onnx_path(self) -> Path:
        return self.folder / self.onnx.file

    @property
    def spec_path(self) -> Path:
        return self.folder / SPEC_FILE


class SpecReader:
    """Typed access to one YAML mapping with errors that name the file and the field."""

    def __init__(self, path: Path, data: Any, prefix: str = "") -> None:
        self.path, self.prefix = path, prefix
        if not isinstance(data, dict):
            self.fail("", f"expected a mapping, got {type(data).__name__}")
        self.data: Dict[str, Any] = data

    def fail(self, key: str, why: str) -> NoReturn:
        where = f"{self.prefix}{key}" if key else (self.prefix.rstrip(".") or "top level")
        raise ConfigError(f"{self.path}: {where}: {why}")

    def section(self, key: str) -> SpecReader:
        return SpecReader(self.path, self.data.get(key) or {}, f"{self.prefix}{key}.")

    def choice(self, key: str, choices: Sequence[str], default: Optional[str] = None) -> str:
        value = self.data.get(key, default)
        if value not in choices:
            self.fail(key, f"expected one of {', '.join(choices)}, got {value!r}")
        return str(value)

    def integer(
        self, key: str, default: int, minimum: int = 0, maximum: Optional[int] = None
    ) -> int:
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.fail(key, f"expected an integer >= {minimum}, got {value!r}")
        if maximum is not None and value > maximum:
            self.fail(key, f"expected an integer {minimum}..{maximum}, got {value!r}")
        return int(value)

    def text(self, key: str, default: str = "") -> str:
        value = self.data.get(key, default)
        if not isinstance(value, str):
            self.fail(key, f"expected a string, got {value!r}")
        return str(value)

    def numbers(
        self, key: str, count: int, default: Any, positive: bool = False
    ) -> Tuple[float, ...]:
        value = self.data.get(key, default)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value] * count
        ok = isinstance(value, (list, tuple)) and len(value) == count
        ok = ok and all(is_number(v) and (v > 0 or not positive) for v in value)
        if not ok:
            kind = "positive numbers" if positive else "numbers"
            self.fail(key, f"expected {count} {kind} (or one for all), got {value!r}")
        return tuple(float(v) for v in value)

    def vector(self, key: str, positive: bool = False) -> Tuple[float, ...]:
        """A number or a list of numbers of any length (``()`` when absent)."""
        value = self.data.get(key, [])
        if is_number(value):
            value = [value]
        ok = isinstance(value, list) and all(
            is_number(v) and (v > 0 or not positive) for v in value
        )
        if not ok:
            kind = "positive numbers" if positive else "numbers"
            self.fail(key, f"expected a number or a list of {kind}, got {value!r}")
        return tuple(float(v) for v in value)


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool): what every numeric model.yaml field takes."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_yaml(folder: Path) -> SpecReader:
    """``folder/model.yaml``, parsed, behind a reader whose errors name the file."""
    path = Path(folder) / SPEC_FILE
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return SpecReader(path, data)


def common_fields(top: SpecReader, folder: Path) -> Dict[str, Any]:
    """The fields every task shares, as ``ModelSpec`` keyword arguments; the folder name is
    the model name."""
    folder = Path(folder)
    return dict(
        name=folder.name,
        folder=folder,
        description=top.text("description"),
        rknn_file=top.section("rknn").text("file", "model.rknn"),
        onnx=_onnx_input(top.section("onnx")),
        convert=dict(top.data.get("convert") or {}),
        instances=top.integer("instances", 0, maximum=MAX_INSTANCES),
        aliases=_aliases(top),
        labels=_labels(top, folder),
        labels_file=top.text("labels"),
    )


def _onnx_input(section: SpecReader) -> OnnxInput:
    return OnnxInput(
        file=section.text("file", "model.onnx"),
        layout=section.choice("layout", ("nchw", "nhwc"), "nchw"),
        dtype=section.choice("dtype", ("float32", "uint8"), "float32"),
        mean=section.numbers("mean", 3, 0.0),  # type: ignore[arg-type]
        std=section.numbers("std", 3, 1.0, positive=True),  # type: ignore[arg-type]
    )


def _labels(top: SpecReader, folder: Path) -> Tuple[str, ...]:
    name = top.text("labels")
    if not name:
        return ()
    try:
        labels = tuple(read_labels(folder / name))
    except OSError as exc:
        top.fail("labels", f"cannot read {folder / name}: {exc.strerror or exc}")
    if not labels:
        top.fail("labels", f"{folder / name} holds no labels (one per line)")
    return labels


def _aliases(top: SpecReader) -> Tuple[str, ...]:
    value = top.data.get("aliases", [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        top.fail("aliases", f"expected a list of names, got {value!r}")
    return tuple(v.strip() for v in value)


def check_files(top: SpecReader, spec: ModelSpec) -> None:
    """A model needs a ``.rknn`` or an ONNX twin."""
    if not spec.rknn_path.is_file() and not spec.onnx_path.is_file():
        top.fail(
            "",
            f"neither {spec.rknn_file} (rknn.file) nor {spec.onnx.file} (onnx.file) exists in "
            f"{spec.folder}: a model needs at least one (rkserve convert makes them from a "
            "TorchScript model.pt: docs/CONVERT.md)",
        )


def model_files(spec: ModelSpec) -> List[Path]:
    """The files whose change means the model must be reloaded."""
    paths = [spec.spec_path, spec.rknn_path, spec.onnx_path]
    if spec.labels_file:
        paths.append(spec.folder / spec.labels_file)
    return [p for p in paths if p.exists()]
