"""Task ``detection``: an image in, boxes with classes and scores in source pixels out.

model.yaml: ``input`` (:mod:`.vision`; detection letterboxes with ``pad`` 0 by default, as the
model zoo), ``labels``, ``output``: ``format`` (``yolov5`` | ``yolov8`` | ``yolo``, see
:mod:`.yolo`), ``classes`` (the class count, if no labels), ``strides``, ``anchors`` (yolov5),
``nms`` (``classwise`` | ``agnostic``), and the defaults of the params ``conf``, ``iou``,
``max_det``. Params: ``conf``, ``iou``,
``max_det``, ``classes`` (an allow-list of class indices), ``overlay``. Result:
``{"detections": [{"index", "label", "score", "box": [x1, y1, x2, y2]}], "width",
"height"}``, best first, plus ``overlay`` (a JPEG with the boxes drawn) when asked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..backends.fake_yolo import yolo_outputs
from ..errors import BadRequest, ConfigError
from ..kernels import detect, segment
from ..kernels.yolo import FORMATS, STRIDES, YOLOV5_ANCHORS, explain, output_shapes
from ..kernels.yolo_single import single_shape
from ..protocol import show
from ..spec import is_number
from . import vision
from .base import Prepared, reject_unknown

if TYPE_CHECKING:
    from ..backends import Backend, FakeModel
    from ..spec import ModelSpec, SpecReader

NAME = "detection"
PARAMS = ("conf", "iou", "max_det", "classes", "overlay")
MAX_DET = 10_000  # the most boxes a reply may carry
PAD = 0  # the model zoo letterboxes with black: RGA initialises its buffers with 0
NMS_MODES = ("classwise", "agnostic")  # a box suppresses boxes of its own class, or of any


@dataclass(frozen=True)
class Config:
    """model.yaml's ``output`` section of a detector."""

    format: str  # yolov5 | yolov8 | yolo
    classes: int  # 0: as many as labels
    strides: Tuple[int, ...] = STRIDES
    anchors: Optional[Tuple[Tuple[Tuple[float, float], ...], ...]] = None  # yolov5: per stride
    conf: float = 0.25
    iou: float = 0.45
    max_det: int = 100
    nms: str = "classwise"  # classwise | agnostic


@dataclass(frozen=True)
class Params:
    conf: float = 0.25  # keep boxes scoring at least this
    iou: float = 0.45  # a box overlapping a better one of its class by more is dropped
    max_det: int = 100  # the most boxes returned
    classes: Optional[Tuple[int, ...]] = None  # only these class indices
    overlay: bool = False  # also return a JPEG of the boxes drawn over the image


def read_spec(top: SpecReader) -> Dict[str, Any]:
    section = top.section("output")
    fmt = section.choice("format", FORMATS)
    strides = _strides(section)
    config = Config(
        format=fmt,
        classes=section.integer("classes", 0, minimum=0),
        strides=strides,
        anchors=_anchors(section, fmt, len(strides)),
        conf=_fraction(section, "conf", 0.25),
        iou=_fraction(section, "iou", 0.45),
        max_det=_max_det(section),
        nms=section.choice("nms", NMS_MODES, "classwise"),
    )
    fields = vision.read_input(top.section("input"), resize="letterbox", pad=PAD)
    return {**fields, "task_config": config}


def _fraction(section: SpecReader, key: str, default: float) -> float:
    value = section.data.get(key, default)
    if not is_number(value) or not 0.0 <= value <= 1.0:
        section.fail(key, f"expected a number 0..1, got {value!r}")
    return float(value)


def _max_det(section: SpecReader) -> int:
    value = section.integer("max_det", 100, minimum=1)
    if value > MAX_DET:
        section.fail("max_det", f"expected an integer 1..{MAX_DET}, got {value}")
    return value


def _strides(section: SpecReader) -> Tuple[int, ...]:
    value = section.data.get("strides", list(STRIDES))
    ok = isinstance(value, list) and value and all(_whole(v) and v > 0 for v in value)
    if not ok or value != sorted(set(value)):
        section.fail("strides", f"expected increasing positive integers, got {value!r}")
    return tuple(int(v) for v in value)


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _anchors(
    section: SpecReader, fmt: str, scales: int
) -> Optional[Tuple[Tuple[Tuple[float, float], ...], ...]]:
    """``anchors``: per stride a list of ``w, h`` pairs (``[[10, 13, 16, 30, 33, 23], ...]``),
    or all of them in one list as in the model zoo's anchors_yolov5.txt."""
    value = section.data.get("anchors")
    if fmt != "yolov5":
        if value is not None:
            section.fail("anchors", "only the yolov5 format has anchors")
        return None
    if value is None:
        return YOLOV5_ANCHORS if scales == len(YOLOV5_ANCHORS) else _no_anchors(section, scales)
    flat = [v for row in value for v in row] if _rows(value) else value
    ok = isinstance(flat, list) and flat and all(is_number(v) and v > 0 for v in flat)
    if not ok or len(flat) % (2 * scales):
        section.fail(
            "anchors",
            f"expected {scales} lists (one per stride) of positive width, height pairs, got {value!r}",
        )
    pairs = np.asarray(flat, np.float64).reshape(scales, -1, 2)
    return tuple(tuple((float(w), float(h)) for w, h in scale) for scale in pairs)


def _rows(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, list) for v in value)


def _no_anchors(section: SpecReader, scales: int) -> Any:
    section.fail("anchors", f"{scales} strides: give anchors for each (the defaults are for 3)")


def class_count(spec: ModelSpec) -> int:
    """``output.classes``, else the number of labels."""
    output: Config = spec.task_config
    return output.classes or len(spec.labels)


def check(spec: ModelSpec, backend: Backend) -> None:
    """The outputs are the format's, with the yaml's class count and strides."""
    vision.check_input(spec, backend)
    output: Config = spec.task_config
    classes = class_count(spec)
    if not classes:
        raise ConfigError(f"{spec.spec_path}: output.classes: give the class count, or labels")
    if output.classes and spec.labels and output.classes != len(spec.labels):
        raise ConfigError(
            f"{spec.spec_path}: output.classes: {output.classes}, but labels has "
            f"{len(spec.labels)} labels"
        )
    shapes = [tuple(int(d) for d in t.shape) for t in backend.outputs]
    if shapes and not _fits(shapes, expected_shapes(spec), output.format):
        expected = expected_shapes(spec)
        extra = " (or 9 with a [1, 1, H, W] score sum after each pair)" * (
            output.format == "yolov8"
        )
        raise ConfigError(
            f"{spec.spec_path}: output: model.yaml expects {output.format} outputs "
            f"{[list(s) for s in expected]}{extra} ({classes} classes, strides "
            f"{'/'.join(map(str, output.strides))}), but the {backend.name} model's "
            f"{explain(shapes, spec.input_size)}: {[list(s) for s in shapes]}"
        )


def expected_shapes(spec: ModelSpec) -> List[Tuple[int, ...]]:
    """The outputs model.yaml describes (yolov8: without score sums)."""
    output: Config = spec.task_config
    return output_shapes(
        output.format, class_count(spec), spec.input_size, output.strides, output.anchors
    )


def _fits(shapes: Sequence[Tuple[int, ...]], expected: Sequence[Tuple[int, ...]], fmt: str) -> bool:
    if list(shapes) == list(expected):
        return True
    if fmt == "yolo":  # either orientation, any candidate count (other strides, P2 heads)
        single = single_shape(shapes[0]) if len(shapes) == 1 else None
        return single is not None and single[0] + 4 == expected[0][1]
    if len(shapes) != len(expected) * 3 // 2 or len(expected) % 2:  # yolov8 with score sums
        return False
    pairs = [s for i, s in enumerate(shapes) if i % 3 != 2]
    sums = [s for i, s in enumerate(shapes) if i % 3 == 2]
    return pairs == list(expected) and all(s == (1, 1, *p[2:]) for s, p in zip(sums, pairs[::2]))


def parse_params(raw: Mapping[str, Any], spec: ModelSpec) -> Params:
    reject_unknown(raw, PARAMS, NAME)
    output: Config = spec.task_config
    overlay = raw.get("overlay", False)
    if not isinstance(overlay, bool):
        raise BadRequest(f"params.overlay must be true or false, got {show(overlay)}")
    return Params(
        conf=_param_fraction(raw, "conf", output.conf),
        iou=_param_fraction(raw, "iou", output.iou),
        max_det=_param_max_det(raw.get("max_det", output.max_det)),
        classes=_param_classes(raw.get("classes"), class_count(spec)),
        overlay=overlay,
    )


def _param_fraction(raw: Mapping[str, Any], key: str, default: float) -> float:
    value = raw.get(key, default)
    if not is_number(value) or not 0.0 <= value <= 1.0:
        raise BadRequest(f"params.{key} must be a number 0..1, got {show(value)}")
    return float(value)


def _param_max_det(value: Any) -> int:
    if not _whole(value) or not 1 <= value <= MAX_DET:
        raise BadRequest(f"params.max_det must be an integer 1..{MAX_DET}, got {show(value)}")
    return int(value)


def _param_classes(value: Any, count: int) -> Optional[Tuple[int, ...]]:
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or not value or len(value) > count:
        raise BadRequest(
            f"params.classes must be a list of 1..{count} class indices, got {show(value)}"
        )
    for index in value:
        if not _whole(index) or not 0 <= index < count:
            raise BadRequest(
                f"params.classes: {show(index)} is not a class index of this model (0..{count - 1})"
            )
    return tuple(int(i) for i in value)


prepare = vision.prepare_with_overlay


def finish(outputs: Sequence[np.ndarray], prepared: Prepared, spec: ModelSpec) -> Dict[str, Any]:
    context: vision.ImageContext = prepared.context
    params: Params = prepared.params
    output: Config = spec.task_config
    found = detect.postprocess(
        outputs,
        output.format,
        context.placement,
        spec.input_size,
        context.size,
        params.conf,
        params.iou,
        params.max_det,
        params.classes,
        output.strides,
        output.anchors,
        agnostic=output.nms == "agnostic",
    )
    height, width = context.size
    result: Dict[str, Any] = {
        "detections": detect.to_wire(found, spec.labels),
        "width": width,
        "height": height,
    }
    if params.overlay:
        assert context.source is not None
        drawn = detect.draw(context.source, found, spec.labels)
        result["overlay"] = {"format": "jpeg", "data": segment.encode_jpeg(drawn)}
    return result


def warmup_input(spec: ModelSpec, backend: Backend) -> np.ndarray:
    return vision.warmup_image(spec)


def review_warmup(outputs: Sequence[np.ndarray], spec: ModelSpec, backend: Backend) -> List[str]:
    return []  # nothing to check beyond what check() did at load


def describe(spec: ModelSpec, backend: Backend) -> Dict[str, Any]:
    """For ``models``: the input, and the output format with its class count."""
    output: Config = spec.task_config
    return {**vision.describe(spec), "format": output.format, "classes": class_count(spec)}


def fake(spec: ModelSpec, classes: Optional[int]) -> FakeModel:
    """One box around the pixels brighter than mid-grey (none if there are none), of class
    ``sum(input bytes) % classes``, score 0.9, in model.yaml's output format."""
    config: Config = spec.task_config
    count = classes or class_count(spec)
    shapes = output_shapes(config.format, count, spec.input_size, config.strides, config.anchors)

    def answer(tensor: np.ndarray, count: int) -> List[np.ndarray]:
        rows, cols = np.nonzero(tensor[0].mean(axis=2, dtype=np.float32) > 128)
        boxes = [[cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]] if rows.size else []
        winner = vision.pixel_sum_class(tensor, count)
        return yolo_outputs(
            config.format,
            boxes,
            [winner] * len(boxes),
            [0.9] * len(boxes),
            count,
            spec.input_size,
            config.strides,
            config.anchors,
            rng=np.random.default_rng(0),
        )

    return vision.fake_image_model(spec, count, shapes, answer)
