"""Task ``segmentation``: an image in, a class per pixel at the source size out.

model.yaml: ``input`` (:mod:`.vision`), ``output.kind`` (``logits`` | ``probabilities``:
``[1,C,H,W]`` or ``[1,H,W,C]`` scores per ``output.layout``; ``class_map``: an already
argmaxed ``[1,H,W]`` integer map), ``palette``. Params: ``mask`` (png | raw | none),
``overlay``. Result: ``width``, ``height``, ``classes``, ``mask``, ``overlay``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..errors import BadRequest
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
    vision.check_input(spec, backend)


def parse_params(raw: Mapping[str, Any], spec: ModelSpec) -> Params:
    reject_unknown(raw, PARAMS, NAME)
    mask = raw.get("mask", "png")
    if mask not in MASK_FORMATS:
        raise BadRequest(f"params.mask must be one of {', '.join(MASK_FORMATS)}, got {show(mask)}")
    overlay = raw.get("overlay", False)
    if not isinstance(overlay, bool):
        raise BadRequest(f"params.overlay must be true or false, got {show(overlay)}")
    return Params(mask, overlay)


def prepare(
    data: Any, spec: ModelSpec, backend: Backend, params: Params, max_pixels: int
) -> Prepared:
    return vision.prepare_image(
        data, spec, backend.raw_input, params, max_pixels, keep=params.overlay
    )


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


def describe(spec: ModelSpec, backend: Backend) -> Dict[str, Any]:
    return vision.describe(spec)


@functools.lru_cache(maxsize=64)
def _palette(palette: Optional[Tuple[Tuple[int, int, int], ...]]) -> np.ndarray:
    table = segment.palette_array(palette)
    table.flags.writeable = False  # shared by every request of the model
    return table
