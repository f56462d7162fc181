"""The model inputs the runtime must receive for some images, computed on the machine that
runs this, independently of rkserve's pre-processing.

    python3.11 tests/emulated/prepare.py MODEL_DIR OUT.npz IMAGE...

Writes one ``1xHxWx3 uint8`` NHWC tensor per image (keys: the image file names), made the
way Rockchip's examples feed a model converted with mean/std inside, from model.yaml's
``input`` read here: decode (BGR), then ``resize: stretch``: a plain bilinear resize to
``input.size`` (``input.interpolation``: linear or linear_exact); ``resize: letterbox``: the
model zoo's own ``letter_box`` (tools/zoo.py: the aspect kept, padded with ``input.pad``,
default 0 for a detector as the zoo pads), then the model's colour order (``input.color``).
Run on the emulated board, it gives the bytes the host records the ONNX twin's answers for
(OpenCV's ``INTER_LINEAR`` resize is not bit-exact between its x86-64 and aarch64 builds);
because it shares no code with rkserve's data path, a change there that alters what the
runtime receives (colour order, layout, dtype, resize, letterbox) finds no record.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Dict, Tuple

import cv2
import numpy as np
import yaml

from tools import zoo

RESIZE = {"linear": cv2.INTER_LINEAR, "linear_exact": cv2.INTER_LINEAR_EXACT}
PAD = {"detection": 0}  # input.pad's default per task (else the letterbox grey, 114)


def reference_input(data: bytes, spec: Dict[str, Any]) -> np.ndarray:
    """Encoded image -> ``1xHxWx3 uint8`` in the model's colour order, as ``spec`` (a
    model.yaml) says."""
    section = spec.get("input") or {}
    size = section["size"]
    height, width = (size, size) if isinstance(size, int) else size
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    resize = section.get("resize", "letterbox" if spec["task"] == "detection" else "stretch")
    interpolation = section.get("interpolation", "linear")
    if resize == "stretch":
        resized = cv2.resize(bgr, (width, height), interpolation=RESIZE[interpolation])
    elif resize == "letterbox" and interpolation == "linear":  # the zoo resizes INTER_LINEAR
        pad = section.get("pad", PAD.get(spec["task"], 114))
        resized = zoo.letter_box(bgr, (height, width), pad)
    else:
        raise SystemExit(f"no reference for resize {resize} with interpolation {interpolation}")
    pixels = (
        resized
        if section.get("color", "rgb") == "bgr"
        else cv2.cvtColor(resized, cv2.COLOR_BGR2RGB)
    )
    return np.ascontiguousarray(pixels)[None]


def source_size(data: bytes) -> Tuple[int, int]:
    """The decoded image's ``(height, width)``."""
    return tuple(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).shape[:2])  # type: ignore[return-value]


def main() -> None:
    folder, out, images = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
    spec = yaml.safe_load((folder / "model.yaml").read_text(encoding="utf-8"))
    tensors = {Path(i).name: reference_input(Path(i).read_bytes(), spec) for i in images}
    np.savez(out, **tensors)


if __name__ == "__main__":
    main()
