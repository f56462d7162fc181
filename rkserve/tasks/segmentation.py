"""Task ``segmentation``: an image in, a class per pixel at the source size out.

model.yaml: ``input`` (:mod:`.vision`), ``output.kind`` (``logits`` | ``probabilities``:
``[1,C,H,W]`` or ``[1,H,W,C]`` scores per ``output.layout``; ``class_map``: an already
argmaxed ``[1,H,W]`` integer map), ``palette``. Params: ``mask`` (png | raw | none),
``overlay``. Result: ``width``, ``height``, ``classes``, ``mask``, ``overlay``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..errors import BadRequest, ConfigError
from ..protocol import show
from . import segment, vision
from .base import Prepared, reject_unknown

if TYPE_CHECKING:
    from ..backends import Backend
    from ..spec import ModelSpec, SpecReader

NAME = "segmentation"
PARAMS = ("mask", "overlay")
MASK_FORMATS = ("png", "raw", "none")


@dataclass(frozen=True)
class Params:
    mask: str = "png"  # png (indexed, palette) | raw (uint8 HxW) | none
    overlay: bool = False  # also return a JPEG of the classes over the image


def read_spec(top: SpecReader) -> Dict[str, Any]:
    output = top.section("output")
    return {
        **vision.read_input(top.section("input")),
        "output": output.choice("kind", ("probabilities", "logits", "class_map"), "logits"),
        "output_layout": output.choice("layout", ("nchw", "nhwc"), "nchw"),
    }


def check(spec: ModelSpec, backend: Backend) -> None:
    """One image input; one output: ``[1,C,H,W]`` (or ``[1,H,W,C]``) scores with C equal to
    the labels when model.yaml has labels, or with ``output.kind: class_map`` an argmaxed
    ``[1,H,W]`` map."""
    vision.check_input(spec, backend)
    if not backend.outputs:
        return
    vision.refuse_detector(spec, backend)
    problem = _output_problem(spec, backend.outputs)
    if problem:
        raise ConfigError(
            f"{spec.spec_path}: task segmentation reads {problem}, but the {backend.name} "
            f"model has {len(backend.outputs)} output(s): {vision.shapes(backend.outputs)}"
        )
    if spec.output != "class_map" and spec.labels:
        shape = backend.outputs[0].shape
        classes = shape[1] if spec.output_layout == "nchw" else shape[-1]
        if classes != len(spec.labels):
            raise ConfigError(
                f"{spec.spec_path}: labels: {len(spec.labels)} labels but the model scores "
                f"{classes} classes (output {list(shape)}, layout {spec.output_layout})"
            )


def _output_problem(spec: ModelSpec, outputs: Sequence[Any]) -> str:
    """What the task needs, when the model's outputs are not that; "" when they fit."""
    shape = tuple(outputs[0].shape)
    if spec.output == "class_map":
        need = "one class map [1, H, W] (output.kind: class_map)"
        fits = len(shape) == 3 or (len(shape) == 4 and shape[1] == 1)
        return need if len(outputs) != 1 or not fits or shape[0] != 1 else ""
    layout = "[1, C, H, W]" if spec.output_layout == "nchw" else "[1, H, W, C]"
    need = f"one output of class scores {layout} (output.layout: {spec.output_layout})"
    if len(outputs) == 1 and len(shape) == 3 and shape[0] == 1:
        return need + " or, with output.kind: class_map, an argmaxed [1, H, W] map"
    if len(outputs) != 1 or len(shape) != 4 or shape[0] != 1:
        return need
    classes = shape[1] if spec.output_layout == "nchw" else shape[3]
    if not 2 <= classes <= segment.MAX_CLASSES:
        return need + f" with 2..{segment.MAX_CLASSES} classes"
    return ""


def parse_params(raw: Mapping[str, Any], spec: ModelSpec) -> Params:
    reject_unknown(raw, PARAMS, NAME)
    mask = raw.get("mask", "png")
    if mask not in MASK_FORMATS:
        raise BadRequest(f"params.mask must be one of {', '.join(MASK_FORMATS)}, got {show(mask)}")
    overlay = raw.get("overlay", False)
    if not isinstance(overlay, bool):
        raise BadRequest(f"params.overlay must be true or false, got {show(overlay)}")
    return Params(mask, overlay)


prepare = vision.prepare_with_overlay


def finish(outputs: Sequence[np.ndarray], prepared: Prepared, spec: ModelSpec) -> Dict[str, Any]:
    context: vision.ImageContext = prepared.context
    params: Params = prepared.params
    height, width = context.size
    at_model = segment.class_map(outputs[0], spec.output, spec.output_layout)
    classes = segment.to_source(at_model, context.placement, (height, width))
    result: Dict[str, Any] = {
        "width": width,
        "height": height,
        "classes": segment.class_stats(classes, spec.labels),
    }
    palette = _palette(spec.palette)
    if params.mask == "png":
        result["mask"] = {"format": "png", "data": segment.indexed_png(classes, palette)}
    elif params.mask == "raw":
        result["mask"] = {
            "format": "raw",
            "dtype": "uint8",
            "shape": [height, width],
            "data": classes.tobytes(),
        }
    if params.overlay:
        assert context.source is not None
        drawn = segment.overlay(context.source, classes, palette)
        result["overlay"] = {"format": "jpeg", "data": segment.encode_jpeg(drawn)}
    return result


def warmup_input(spec: ModelSpec, backend: Backend) -> np.ndarray:
    return vision.warmup_image(spec)


def review_warmup(outputs: Sequence[np.ndarray], spec: ModelSpec, backend: Backend) -> List[str]:
    return []  # nothing to check beyond what check() did at load


def describe(spec: ModelSpec, backend: Backend) -> Dict[str, Any]:
    return vision.describe(spec)


@functools.lru_cache(maxsize=64)
def _palette(palette: Optional[Tuple[Tuple[int, int, int], ...]]) -> np.ndarray:
    table = segment.palette_array(palette)
    table.flags.writeable = False  # shared by every request of the model
    return table
