"""The parts every image task shares: model.yaml's ``input`` section, ``prepare`` from an
image to the model input, the load-time input check and the warm-up image."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from ..backends import FakeModel, TensorSpec
from ..errors import BadRequest, ConfigError, TooLarge
from ..kernels import image
from ..kernels.yolo import explain, read_layout
from .base import Prepared, elapsed_ms

if TYPE_CHECKING:
    from ..backends import Backend
    from ..spec import ModelSpec, SpecReader

RESIZE_MODES = ("stretch", "letterbox")  # every image task
CROP_MODES = (*RESIZE_MODES, "crop")  # tasks whose result does not map back onto the image
MAX_SIDE = 8192  # a model input side, and a crop's shorter side, in pixels
DECODES = ("full", "reduced")  # reduced: a JPEG at 1/2, 1/4 or 1/8 scale that covers the input
JPEG_MAX_SIDE = 65_500  # libjpeg's limit on either side of an overlay (OpenCV refuses more)


@dataclass(frozen=True)
class ImageContext:
    """What ``finish`` needs to map a result back onto the source image."""

    placement: image.Placement
    size: Tuple[int, int]  # the source image's (height, width)
    source: Optional[np.ndarray] = None  # the decoded image, kept only when finish draws on it


def read_input(
    section: SpecReader,
    modes: Sequence[str] = RESIZE_MODES,
    resize: str = "stretch",
    pad: int = image.LETTERBOX_FILL,
) -> Dict[str, Any]:
    """model.yaml's ``input``: ``size`` (required), ``color``, ``resize`` (one of ``modes``),
    ``interpolation``, ``shorter_side`` (``crop`` only), ``pad`` (the letterbox's grey level),
    ``decode`` (``full`` or ``reduced``); ``resize`` and ``pad`` are the task's defaults."""
    size = section.data.get("size")
    if isinstance(size, int) and not isinstance(size, bool):
        size = [size, size]
    if not (
        isinstance(size, list)
        and len(size) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_SIDE for v in size)
    ):
        section.fail("size", f"expected [height, width] in pixels (1..{MAX_SIDE}), got {size!r}")
    input_size = (int(size[0]), int(size[1]))
    resize = section.choice("resize", modes, resize)
    shorter = section.integer("shorter_side", 0, maximum=MAX_SIDE)
    if shorter and resize != "crop":
        section.fail("shorter_side", "only used with resize: crop")
    if shorter and shorter < max(input_size):
        section.fail("shorter_side", f"must be at least the input's sides {list(input_size)}")
    return {
        "input_size": input_size,
        "color": section.choice("color", ("rgb", "bgr"), "rgb"),
        "resize": resize,
        # area averaging is the closest cv2 has to torchvision's antialiased shrink
        "interpolation": section.choice(
            "interpolation", tuple(image.INTERPOLATIONS), "area" if resize == "crop" else "linear"
        ),
        "shorter_side": shorter or (image.crop_side(input_size) if resize == "crop" else 0),
        "pad": _grey(section, "pad", pad),
        "decode": section.choice("decode", DECODES, "full"),
    }


def _grey(section: SpecReader, key: str, default: int) -> int:
    value = section.data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 255:
        section.fail(key, f"expected a grey level 0..255, got {value!r}")
    return int(value)


def prepare_with_overlay(
    data: Any, spec: ModelSpec, backend: Backend, params: Any, max_pixels: int
) -> Prepared:
    """A task's ``prepare`` when its params say ``overlay``: the image is kept only then."""
    return prepare_image(data, spec, backend.raw_input, params, max_pixels, keep=params.overlay)


def prepare_image(
    data: Any, spec: ModelSpec, raw_input: bool, params: Any, max_pixels: int, keep: bool
) -> Prepared:
    """Decode (bytes) or check (``HxWx3 uint8`` RGB array), resize, then make the model input:
    ``1xHxWx3 uint8`` for the NPU, or the ONNX twin's normalised tensor. ``keep`` holds on to
    the decoded image for ``finish`` to draw an overlay JPEG on (refused ``too_large`` with a
    side over JPEG's limit, before inference); otherwise a queued request holds only its model
    input (16 queued 40-megapixel JPEGs of 1 kB each once took the daemon to 2 GB)."""
    started = time.perf_counter()
    pixels, order, factor, size = _decode(data, spec, max_pixels, keep)
    if keep and max(pixels.shape[:2]) > JPEG_MAX_SIDE:
        raise TooLarge(
            f"image is {pixels.shape[1]}x{pixels.shape[0]}: an overlay is a JPEG, whose sides "
            f"are at most {JPEG_MAX_SIDE} px; ask for the results without one"
        )
    timings = {"decode": elapsed_ms(started)}
    started = time.perf_counter()
    resized, placement = image.resize(
        pixels, spec.input_size, spec.resize, spec.interpolation, spec.shorter_side, spec.pad
    )
    resized = image.swap_colour(resized, order, spec.color)
    if raw_input:
        tensor = image.to_raw_input(resized)
    else:
        onnx = spec.onnx
        tensor = image.to_onnx_input(resized, onnx.layout, onnx.dtype, onnx.mean, onnx.std)
    timings["preprocess"] = elapsed_ms(started)
    context = ImageContext(image.unreduce(placement, factor), size, pixels if keep else None)
    return Prepared([tensor], params, timings, context, size[0] * size[1] if keep else 0)


Decoded = Tuple[np.ndarray, str, int, Tuple[int, int]]


def _decode(data: Any, spec: ModelSpec, max_pixels: int, keep: bool) -> Decoded:
    """The image, its channel order, the scale it was decoded at (1/factor) and the source
    image's ``(height, width)``. An image kept for an overlay is decoded whole, in RGB;
    otherwise the colours are swapped after the resize, on the model input's pixels only."""
    if isinstance(data, np.ndarray):
        pixels = image.check_tensor(data, max_pixels)
        return pixels, "rgb", 1, _source_size(pixels, 1, None)
    if not isinstance(data, (bytes, bytearray, memoryview, image.Encoded)):
        raise BadRequest(
            f"model {spec.name!r} ({spec.task}) takes an image: send image (encoded bytes) "
            "or tensor (HxWx3 uint8), not inputs"
        )
    source = image.encoded(data)  # its header: read at admission in the daemon
    if keep:
        pixels = image.decode_image(source, max_pixels)
        return pixels, "rgb", 1, _source_size(pixels, 1, None)
    factor = decode_factor(source, spec)
    pixels = image.decode_bgr(source, max_pixels, factor)
    return pixels, "bgr", factor, _source_size(pixels, factor, source.header)


def decode_factor(data: image.Image, spec: ModelSpec) -> int:
    """1, or with ``input.decode: reduced`` the largest libjpeg reduction of this JPEG that
    still covers what the resize keeps of it."""
    if spec.decode != "reduced":
        return 1
    source = image.encoded(data)
    header = source.header
    if header is None or source.data[:2] != b"\xff\xd8":
        return 1  # only a JPEG decodes reduced; without a header, decode_bgr refuses it
    size = (header.width, header.height)
    # either way round: EXIF orientation may turn the image after decoding
    return min(_factor(width, height, spec) for width, height in (size, size[::-1]))


def _factor(width: int, height: int, spec: ModelSpec) -> int:
    least = image.resized_size(width, height, spec.input_size, spec.resize, spec.shorter_side)
    return image.reduction(width, height, least)


def _source_size(
    pixels: np.ndarray, factor: int, header: Optional[image.Header]
) -> Tuple[int, int]:
    """The source image's ``(height, width)``: the decoded one's, or at reduced scale the
    header's, turned as the decoder turned it (EXIF orientation)."""
    height, width = pixels.shape[:2]
    if factor == 1:
        return height, width
    assert header is not None  # decoded, so its header was read
    full_w, full_h = header.width, header.height
    if (full_h >= full_w) != (height >= width):
        full_w, full_h = full_h, full_w
    return full_h, full_w


def check_input(spec: ModelSpec, backend: Backend) -> None:
    """One image input whose size is model.yaml's ``input.size``."""
    if not backend.inputs:
        return
    if len(backend.inputs) != 1:
        raise ConfigError(
            f"{spec.spec_path}: task {spec.task} feeds one image input, but the "
            f"{backend.name} model has {len(backend.inputs)} inputs "
            f"({shapes(backend.inputs)}); serve it with task: tensor"
        )
    expected = expected_input(spec, backend.raw_input)
    actual = tuple(backend.inputs[0].shape)
    if expected != actual and len(actual) == len(expected):
        raise ConfigError(
            f"{spec.spec_path}: input: model.yaml says {list(expected)} "
            f"but {backend.name} model input is {list(actual)}"
        )


def refuse_detector(spec: ModelSpec, backend: Backend) -> None:
    """A YOLO detector's outputs served as another task: say what the file looks like."""

    outputs = [tuple(t.shape) for t in backend.outputs]
    if read_layout(outputs, spec.input_size) is not None:
        raise ConfigError(
            f"{spec.spec_path}: task: model.yaml says {spec.task}, but the {backend.name} "
            f"model's {explain(outputs, spec.input_size)}"
        )


def expected_input(spec: ModelSpec, raw: bool) -> Tuple[int, ...]:
    height, width = spec.input_size
    if raw or spec.onnx.layout == "nhwc":
        return (1, height, width, 3)
    return (1, 3, height, width)


def warmup_image(spec: ModelSpec) -> np.ndarray:
    height, width = spec.input_size
    return np.zeros((height, width, 3), np.uint8)


def describe(spec: ModelSpec) -> Dict[str, Any]:
    height, width = spec.input_size
    return {"input_shape": [height, width, 3]}


def shapes(tensors: Sequence[Any]) -> str:
    """``"name [1, 3, 8, 8], ..."``: a model's tensors for an error message."""
    return ", ".join(f"{t.name} {list(t.shape)}" for t in tensors)


def fake_image_model(
    spec: ModelSpec,
    classes: int,
    outputs: Sequence[Tuple[int, ...]],
    answer: Callable[[np.ndarray, int], List[np.ndarray]],
) -> FakeModel:
    """The fake backend's model for an image task: a ``1xHxWx3 uint8`` input (the NPU's),
    ``outputs`` float32, and ``answer(tensor, classes)``."""
    if classes < 1:
        raise ConfigError(f"model {spec.name!r}: the fake backend needs labels or classes=N")
    height, width = spec.input_size
    return FakeModel(
        [TensorSpec("input", (1, height, width, 3), "uint8")],
        [TensorSpec(f"output{i}" if i else "output", s, "float32") for i, s in enumerate(outputs)],
        lambda inputs: answer(inputs[0], classes),
    )


def pixel_sum_class(tensor: np.ndarray, classes: int) -> int:
    """The fake backend's class for an image: the sum of its bytes modulo ``classes``.
    OpenCV's sum (float64, exact below 2**53) costs a seventh of numpy's uint64 one: the fake
    stands in for an NPU, whose work costs the CPU nothing."""
    return int(sum(cv2.sumElems(tensor.reshape(-1, tensor.shape[-1])))) % classes
