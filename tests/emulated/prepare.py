"""The model inputs the runtime must receive for some images, computed on the machine that
runs this, independently of rkserve's pre-processing.

    python3.11 tests/emulated/prepare.py MODEL_DIR OUT.npz IMAGE...

Writes one ``1xHxWx3 uint8`` NHWC tensor per image (keys: the image file names), made the
way Rockchip's examples feed a model converted with mean/std inside: decode, BGR to the
model's colour order (``input.color`` of model.yaml), a plain bilinear resize to
``input.size`` (``input.interpolation``: linear or linear_exact), or for ``resize:
letterbox`` the model zoo's ``letter_box`` (aspect kept, the rest padded with ``input.pad``,
the image centred with the odd pixel below and right). Run on the emulated board, it gives the bytes the host records the ONNX
twin's answers for (OpenCV's ``INTER_LINEAR`` resize is not bit-exact between its x86-64 and
aarch64 builds); because it shares no code with rkserve's data path, a change there that
alters what the runtime receives (colour order, layout, dtype, resize) finds no record.
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np

from rkserve.tasks import load_spec

RESIZE = {"linear": cv2.INTER_LINEAR, "linear_exact": cv2.INTER_LINEAR_EXACT}


def reference_input(data: bytes, size: tuple, color: str, interpolation: str) -> np.ndarray:
    """Encoded image -> ``1xHxWx3 uint8`` in the model's colour order."""
    pixels = decoded(data, color)
    height, width = size
    resized = cv2.resize(pixels, (width, height), interpolation=RESIZE[interpolation])
    return np.ascontiguousarray(resized)[None]


def decoded(data: bytes, color: str) -> np.ndarray:
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert bgr is not None, "not an image"
    return bgr if color == "bgr" else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def letterboxed(data: bytes, size: tuple, color: str, interpolation: str, pad: int) -> np.ndarray:
    """rknn_model_zoo's ``letter_box``: ratio min(h'/h, w'/w), the scaled image rounded to
    whole pixels, ``round(d / 2 - 0.1)`` pixels of padding above and left."""
    pixels = decoded(data, color)
    height, width = size
    ratio = min(height / pixels.shape[0], width / pixels.shape[1])
    new_w, new_h = round(pixels.shape[1] * ratio), round(pixels.shape[0] * ratio)
    left, top = round((width - new_w) / 2 - 0.1), round((height - new_h) / 2 - 0.1)
    canvas = np.full((height, width, 3), pad, np.uint8)
    scaled = cv2.resize(pixels, (new_w, new_h), interpolation=RESIZE[interpolation])
    canvas[top : top + new_h, left : left + new_w] = scaled
    return canvas[None]


def main() -> None:
    folder, out, images = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
    spec = load_spec(folder)
    if spec.resize not in ("stretch", "letterbox"):
        raise SystemExit(
            f"{folder}: only stretch and letterbox are reproduced here, not {spec.resize}"
        )
    args = (spec.input_size, spec.color, spec.interpolation)
    tensors = {
        Path(i).name: letterboxed(Path(i).read_bytes(), *args, spec.pad)
        if spec.resize == "letterbox"
        else reference_input(Path(i).read_bytes(), *args)
        for i in images
    }
    np.savez(out, **tensors)


if __name__ == "__main__":
    main()
