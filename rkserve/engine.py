"""Model spec + backend + task → ``infer()``, with per-stage timings.

The three stages are separate methods so the daemon can run them on different threads
(decode/preprocess and postprocess on a CPU pool, ``run`` on the NPU runner)::

    engine = Engine(spec, open_backend("onnx", spec))
    result = engine.infer(jpeg_bytes, {"top_k": 3})
    result.result["classes"][0]["label"], result.timings["inference"]
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .backends import Backend
from .errors import BackendError, BadRequest, ConfigError
from .protocol import show
from .spec import ModelSpec
from .tasks import classify, image, segment

ImageInput = Union[bytes, bytearray, memoryview, np.ndarray]
MASK_FORMATS = ("png", "raw", "none")


@dataclass(frozen=True)
class Params:
    """Per-request options (the wire's ``params``)."""

    top_k: int = 5
    mask: str = "png"  # segmentation: png (indexed, palette) | raw (uint8 HxW) | none
    overlay: bool = False  # segmentation: also return a JPEG of the classes over the image


@dataclass
class Prepared:
    """A request after decode and preprocess, ready for the NPU."""

    tensors: List[np.ndarray]
    source: Optional[np.ndarray]  # the decoded image, kept only when an overlay is drawn on it
    placement: image.Placement
    params: Params
    timings: Dict[str, float] = field(default_factory=dict)
    size: Tuple[int, int] = (0, 0)  # the source image's (height, width)


@dataclass
class Result:
    result: Dict[str, Any]
    timings: Dict[str, float]  # milliseconds per stage


def _elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0


class Engine:
    def __init__(
        self, spec: ModelSpec, backend: Backend, max_pixels: int = image.MAX_PIXELS
    ) -> None:
        self.spec = spec
        self.backend = backend
        self.max_pixels = max_pixels
        self.palette = segment.palette_array(spec.palette)
        check_compatible(spec, backend)

    @property
    def task(self) -> str:
        return self.spec.task

    def parse_params(self, raw: Optional[Mapping[str, Any]] = None) -> Params:
        """Validate the wire's ``params`` map; unknown keys are an error (typos must not pass)."""
        raw = dict(raw or {})
        # keys may mix str and bytes (msgpack allows both): sort their names, not the keys
        unknown = sorted(str(k)[:40] for k in set(raw) - {"top_k", "mask", "overlay"})[:10]
        if unknown:
            raise BadRequest(f"unknown params {unknown}; known: top_k, mask, overlay")
        top_k = raw.get("top_k", self.spec.top_k)
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= 1000:
            raise BadRequest(f"params.top_k must be an integer 1..1000, got {show(top_k)}")
        mask = raw.get("mask", "png")
        if mask not in MASK_FORMATS:
            raise BadRequest(
                f"params.mask must be one of {', '.join(MASK_FORMATS)}, got {show(mask)}"
            )
        overlay = raw.get("overlay", False)
        if not isinstance(overlay, bool):
            raise BadRequest(f"params.overlay must be true or false, got {show(overlay)}")
        return Params(top_k, mask, overlay)

    def prepare(self, data: ImageInput, params: Params) -> Prepared:
        """Decode (bytes) or check (``HxWx3 uint8`` RGB array), then make the model input."""
        started = time.perf_counter()
        if isinstance(data, np.ndarray):
            rgb = image.check_tensor(data, self.max_pixels)
        else:
            rgb = image.decode_image(bytes(data), self.max_pixels)
        timings = {"decode": _elapsed_ms(started)}
        started = time.perf_counter()
        resized, placement = image.resize(rgb, self.spec.input_size, self.spec.resize)
        resized = image.to_model_colour(resized, self.spec.color)
        if self.backend.raw_input:
            tensor = image.to_raw_input(resized)
        else:
            onnx = self.spec.onnx
            tensor = image.to_onnx_input(resized, onnx.layout, onnx.dtype, onnx.mean, onnx.std)
        timings["preprocess"] = _elapsed_ms(started)
        # a queued request holds its model input, not a full-size image it no longer needs:
        # 16 queued 40-megapixel JPEGs of 1 kB each once took the daemon to 2 GB
        keep = self.task == "segmentation" and params.overlay
        height, width = rgb.shape[:2]
        return Prepared(
            [tensor], rgb if keep else None, placement, params, timings, (height, width)
        )

    def run(self, prepared: Prepared) -> List[np.ndarray]:
        started = time.perf_counter()
        outputs = self.backend.run(prepared.tensors)
        prepared.timings["inference"] = _elapsed_ms(started)
        if not outputs or any(o is None for o in outputs):
            raise BackendError(
                f"{self.backend.name} backend returned no outputs for {self.spec.name!r}"
            )
        return outputs

    def finish(self, prepared: Prepared, outputs: Sequence[np.ndarray]) -> Result:
        started = time.perf_counter()
        if self.task == "classification":
            result = self._classification(outputs[0], prepared.params)
        else:
            result = self._segmentation(outputs[0], prepared)
        prepared.timings["postprocess"] = _elapsed_ms(started)
        return Result(result, prepared.timings)

    def infer(
        self, data: ImageInput, params: Union[Params, Mapping[str, Any], None] = None
    ) -> Result:
        """All three stages on the calling thread."""
        if not isinstance(params, Params):
            params = self.parse_params(params)
        prepared = self.prepare(data, params)
        return self.finish(prepared, self.run(prepared))

    def _classification(self, output: np.ndarray, params: Params) -> Dict[str, Any]:
        scores = classify.class_scores(output, self.spec.output)
        top = classify.top_k(scores, params.top_k, self.spec.labels, self.spec.label_offset)
        return {"classes": top}

    def _segmentation(self, output: np.ndarray, prepared: Prepared) -> Dict[str, Any]:
        height, width = prepared.size
        at_model = segment.class_map(output, self.spec.output, self.spec.output_layout)
        classes = segment.to_source(at_model, prepared.placement, (height, width))
        result: Dict[str, Any] = {
            "width": width,
            "height": height,
            "classes": segment.class_stats(classes, self.spec.labels),
        }
        params = prepared.params
        if params.mask == "png":
            result["mask"] = {"format": "png", "data": segment.indexed_png(classes, self.palette)}
        elif params.mask == "raw":
            result["mask"] = {
                "format": "raw",
                "dtype": "uint8",
                "shape": [height, width],
                "data": classes.tobytes(),
            }
        if params.overlay:
            source = prepared.source
            assert source is not None
            result["overlay"] = {
                "format": "jpeg",
                "data": segment.encode_jpeg(segment.overlay(source, classes, self.palette)),
            }
        return result


def check_compatible(spec: ModelSpec, backend: Backend) -> None:
    """Refuse at load time a model.yaml that does not fit the model file."""
    if backend.inputs:
        expected = _expected_input(spec, backend.raw_input)
        actual = tuple(backend.inputs[0].shape)
        if expected != actual and len(actual) == len(expected):
            raise ConfigError(
                f"{spec.spec_path}: input: model.yaml says {list(expected)} "
                f"but {backend.name} model input is {list(actual)}"
            )
    if spec.task == "classification" and spec.labels and backend.outputs:
        size = int(np.prod(backend.outputs[0].shape))
        if size != len(spec.labels) + spec.label_offset:
            raise ConfigError(
                f"{spec.spec_path}: labels: {len(spec.labels)} labels (+ label_offset "
                f"{spec.label_offset}) but the model outputs {size} scores"
            )


def _expected_input(spec: ModelSpec, raw: bool) -> Tuple[int, ...]:
    height, width = spec.input_size
    if raw or spec.onnx.layout == "nhwc":
        return (1, height, width, 3)
    return (1, 3, height, width)
