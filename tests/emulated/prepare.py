"""The model inputs the runtime must receive for some images, computed on the machine that
runs this, independently of rkserve's pre-processing.

    python3.11 tests/emulated/prepare.py MODEL_DIR OUT.npz IMAGE...

Writes one ``1xHxWx3 uint8`` NHWC tensor per image (keys: the image file names), made the
way Rockchip's examples feed a model converted with mean/std inside: decode, BGR to the
model's colour order (``input.color`` of model.yaml), a plain bilinear resize to
``input.size`` (``input.interpolation``: linear or linear_exact). Run on the emulated board, it gives the bytes the host records the ONNX
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
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    pixels = bgr if color == "bgr" else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    height, width = size
    resized = cv2.resize(pixels, (width, height), interpolation=RESIZE[interpolation])
    return np.ascontiguousarray(resized)[None]


def main() -> None:
    folder, out, images = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
    spec = load_spec(folder)
    if spec.resize != "stretch":
        raise SystemExit(f"{folder}: only the plain resize is reproduced here, not {spec.resize}")
    tensors = {
        Path(i).name: reference_input(
            Path(i).read_bytes(), spec.input_size, spec.color, spec.interpolation
        )
        for i in images
    }
    np.savez(out, **tensors)


if __name__ == "__main__":
    main()
