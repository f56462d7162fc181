"""The model inputs rkserve's engine prepares from images, on whatever machine runs this.

    python3.11 tests/emulated/prepare.py MODEL_DIR OUT.npz IMAGE...

Writes one raw ``1xHxWx3 uint8`` tensor per image (keys: the image file names), exactly as
the rknnlite backend would receive it from the daemon on this machine. Run on the emulated
board, it gives the bytes the host must record the ONNX twin's answers for: OpenCV's
``INTER_LINEAR`` resize is not bit-exact between its x86-64 and aarch64 builds.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Sequence

import numpy as np

from rkserve.backends import TensorSpec
from rkserve.backends.rknnlite import nhwc
from rkserve.engine import Engine
from rkserve.rknnfile import read_rknn
from rkserve.spec import ModelSpec, load_spec


class Capture:
    """A backend with the NPU's interface that keeps the inputs it is given."""

    name = "capture"
    raw_input = True

    def __init__(self, spec: ModelSpec) -> None:
        info = read_rknn(spec.rknn_path)
        self.inputs = [TensorSpec(t.name, nhwc(t.shape), "uint8") for t in info.inputs]
        self.outputs = [TensorSpec(t.name, t.shape, "float32") for t in info.outputs]
        self.seen: List[np.ndarray] = []

    def run(self, inputs: Sequence[np.ndarray]) -> List[np.ndarray]:
        self.seen.append(inputs[0].copy())
        return [np.zeros(o.shape, np.float32) for o in self.outputs]

    def close(self) -> None:
        pass


def main() -> None:
    folder, out, images = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
    spec = load_spec(folder)
    capture = Capture(spec)
    engine = Engine(spec, capture)
    for image in images:
        engine.infer(Path(image).read_bytes())
    np.savez(out, **{Path(i).name: t for i, t in zip(images, capture.seen)})


if __name__ == "__main__":
    main()
