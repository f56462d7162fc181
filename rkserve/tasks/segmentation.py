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
from ..kernels import segment
from ..protocol import show
from . import vision
from .base import Prepared, reject_unknown

if TYPE_CHECKING:
    from ..backends import Backend, FakeModel
    from ..spec import ModelSpec, SpecReader

NAME = "segmentation"
PARAMS = ("mask", "overlay")
MASK_FORMATS = ("png", "raw", "none")


@dataclass(frozen=True)
class Config:
    """model.yaml's ``output`` section and ``palette`` of a segmenter."""

    kind: str = "logits"  # logits | probabilities (scores per class) | class_map (argmaxed)
    layout: str = "nchw"  # the scores: nchw [1,C,H,W] | nhwc [1,H,W,C]
    palette: Optional[Tuple[Tuple[int, int, int], ...]] = None  # RGB per class


@dataclass(frozen=True)
class Params:
    mask: str = "png"  # png (indexed, palette) | raw (uint8 HxW) | none
    overlay: bool = False  # also return a JPEG of the classes over the image


def read_spec(top: SpecReader) -> Dict[str, Any]:
    output = top.section("output")
    config = Config(
        kind=output.choice("kind", ("probabilities", "logits", "class_map"), "logits"),
        layout=output.choice("layout", ("nchw", "nhwc"), "nchw"),
        palette=_read_palette(top),
    )
    return {**vision.read_input(top.section("input")), "task_config": config}


def _read_palette(top: SpecReader) -> Optional[Tuple[Tuple[int, int, int], ...]]:
    value = top.data.get("palette")
    if value is None:
        return None
    ok = isinstance(value, list) and all(
        isinstance(c, list) and len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c)
        for c in value
    )
    if not ok or not value:
        top.fail("palette", "expected a list of [r, g, b] triples with values 0..255")
    return tuple((int(c[0]), int(c[1]), int(c[2])) for c in value)


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
    config: Config = spec.task_config
    if config.kind != "class_map" and spec.labels:
        shape = backend.outputs[0].shape
        classes = shape[1] if config.layout == "nchw" else shape[-1]
        if classes != len(spec.labels):
            raise ConfigError(
                f"{spec.spec_path}: labels: {len(spec.labels)} labels but the model scores "
                f"{classes} classes (output {list(shape)}, layout {config.layout})"
            )


def _output_problem(spec: ModelSpec, outputs: Sequence[Any]) -> str:
    """What the task needs, when the model's outputs are not that; "" when they fit."""
    shape = tuple(outputs[0].shape)
    config: Config = spec.task_config
    if config.kind == "class_map":
        need = "one class map [1, H, W] (output.kind: class_map)"
        fits = len(shape) == 3 or (len(shape) == 4 and shape[1] == 1)
        return need if len(outputs) != 1 or not fits or shape[0] != 1 else ""
    layout = "[1, C, H, W]" if config.layout == "nchw" else "[1, H, W, C]"
    need = f"one output of class scores {layout} (output.layout: {config.layout})"
    if len(outputs) == 1 and len(shape) == 3 and shape[0] == 1:
        return need + " or, with output.kind: class_map, an argmaxed [1, H, W] map"
    if len(outputs) != 1 or len(shape) != 4 or shape[0] != 1:
        return need
    classes = shape[1] if config.layout == "nchw" else shape[3]
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


def prepare(
    data: Any, spec: ModelSpec, backend: Backend, params: Params, max_pixels: int
) -> Prepared:
    prepared = vision.prepare_with_overlay(data, spec, backend, params, max_pixels)
    height, width = prepared.context.size
    prepared.finish_pixels = height * width  # the class map is resized to the source image
    return prepared


def finish(outputs: Sequence[np.ndarray], prepared: Prepared, spec: ModelSpec) -> Dict[str, Any]:
    context: vision.ImageContext = prepared.context
    params: Params = prepared.params
    height, width = context.size
    config: Config = spec.task_config
    at_model = segment.class_map(outputs[0], config.kind, config.layout)
    classes = segment.to_source(at_model, context.placement, (height, width))
    result: Dict[str, Any] = {
        "width": width,
        "height": height,
        "classes": segment.class_stats(classes, spec.labels),
    }
    palette = _palette(config.palette)
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


def fake(spec: ModelSpec, classes: Optional[int]) -> FakeModel:
    """Each pixel's class is its grey level split into ``classes`` equal bands: one-hot
    scores in the configured layout, or the class map itself."""
    config: Config = spec.task_config
    count = classes or len(spec.labels)
    height, width = spec.input_size
    shape = {
        "class_map": (1, height, width),
        "nhwc": (1, height, width, count),
        "nchw": (1, count, height, width),
    }["class_map" if config.kind == "class_map" else config.layout]

    def answer(tensor: np.ndarray, count: int) -> List[np.ndarray]:
        grey = tensor[0].mean(axis=2, dtype=np.float32)
        bands = np.minimum(grey * (count / 256.0), count - 1).astype(np.uint8)
        if config.kind == "class_map":
            return [bands[None].astype(np.int64)]
        onehot = (bands[None] == np.arange(count, dtype=np.uint8)[:, None, None]).astype(np.float32)
        if config.layout == "nhwc":
            onehot = np.ascontiguousarray(onehot.transpose(1, 2, 0))
        return [onehot[None]]

    return vision.fake_image_model(spec, count, [shape], answer)
