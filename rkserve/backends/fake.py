"""A deterministic stand-in for the NPU, for tests, benchmarks and users' own tests.

It takes what the NPU takes (``1xHxWx3 uint8``), sleeps ``latency_ms`` with the GIL
released like a real NPU call, and answers with outputs of the model's shapes that depend
on the input in a documented way:

- classification: the winning class is ``sum(input bytes) % classes``;
- segmentation: each pixel's class is its grey level split into ``classes`` equal bands;
- tensor: the inputs model.yaml declares (``inputs[].shape`` and ``dtype``, default float32),
  and one output ``sums``, ``[1, inputs] float32``: the sum of each input's values.
- detection: one box around the pixels brighter than mid-grey (none if there are none), of
  class ``sum(input bytes) % classes``, score 0.9, in model.yaml's output format
  (:mod:`rkserve.backends.fake_yolo`).

Faults can be injected while it runs, from another process, by writing a word into the file
``fault_file`` (default ``<model folder>/fake-fault``): ``raise`` (a runtime error),
``none`` (the runtime returns None, as RKNNLite does), ``hang`` (the call does not return
until the file changes), ``leak:<bytes>`` (each call keeps that much memory for good),
``cycle-leak:<bytes>`` (each call leaves that much in a reference cycle that only the cycle
collector frees, held until the next call as a runtime holds its last buffers: like
RKNNLite's ~42 kB per call), ``slow-load:<ms>`` (opening the model takes that long, as a
large model on an SD card does). No file, no fault.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, List, Optional, Sequence

import numpy as np

from ..errors import BackendError, ConfigError
from ..kernels.classify import softmax
from ..kernels.yolo import output_shapes
from ..spec import ModelSpec
from . import TensorSpec
from .fake_yolo import yolo_outputs


class FakeBackend:
    name = "fake"
    raw_input = True

    def __init__(
        self,
        spec: ModelSpec,
        latency_ms: float = 0.0,
        classes: Optional[int] = None,
        reuse_outputs: bool = False,
        fault_file: Optional[str] = None,
        **_: Any,
    ) -> None:
        self.spec = spec
        self.fault_file = Path(fault_file) if fault_file else spec.folder / "fake-fault"
        self.leaked: List[bytes] = []
        self._last_buffers: Optional[List[Any]] = None
        self.latency = latency_ms / 1000.0
        if spec.task == "tensor":
            self.classes = 0
            self.inputs = _declared_inputs(spec)
            self.outputs = [TensorSpec("sums", (1, len(self.inputs)), "float32")]
        else:
            self.classes = classes or _class_count(spec)
            if self.classes < 1:
                raise ConfigError(
                    f"model {spec.name!r}: the fake backend needs labels or classes=N"
                )
            height, width = spec.input_size
            self.inputs = [TensorSpec("input", (1, height, width, 3), "uint8")]
            self.outputs = [
                TensorSpec(f"output{i}" if i else "output", shape, "float32")
                for i, shape in enumerate(self._output_shapes())
            ]
        self.calls = 0
        self._cached: Optional[List[np.ndarray]] = None
        self._reuse = reuse_outputs
        fault = self._fault()
        if fault.startswith("slow-load:"):
            time.sleep(float(fault[len("slow-load:") :]) / 1000.0)

    def _output_shapes(self) -> List[tuple]:
        height, width = self.spec.input_size
        if self.spec.task == "detection":
            output = self.spec.detection
            return output_shapes(
                output.format, self.classes, self.spec.input_size, output.strides, output.anchors
            )
        if self.spec.task == "classification":
            return [(1, self.classes)]
        if self.spec.output == "class_map":
            return [(1, height, width)]
        if self.spec.output_layout == "nhwc":
            return [(1, height, width, self.classes)]
        return [(1, self.classes, height, width)]

    def run(self, inputs: Sequence[np.ndarray]) -> List[np.ndarray]:
        self._check(inputs)
        self.calls += 1
        fault = self._fault()
        if fault and self._inject(fault):
            return None  # type: ignore[return-value]  # what a broken runtime hands back
        started = time.perf_counter()
        outputs = self._cached if self._cached is not None else self._compute(inputs)
        if self._reuse:
            self._cached = outputs
        remaining = self.latency - (time.perf_counter() - started)
        if remaining > 0:
            time.sleep(remaining)
        return outputs

    def _fault(self) -> str:
        try:
            return self.fault_file.read_text().strip()
        except OSError:
            return ""

    def _inject(self, fault: str) -> bool:
        """Apply an injected fault; True when the call must return None."""
        if fault == "raise":
            raise BackendError("fake backend: injected runtime failure")
        if fault == "hang":
            while self._fault() == "hang":
                time.sleep(0.05)
        elif fault.startswith("leak:"):
            self.leaked.append(bytes(int(fault[5:])))
        elif fault.startswith("cycle-leak:"):
            buffers: List[Any] = [b"\xa5" * int(fault[11:])]  # touched pages, not lazy zeros
            buffers.append(buffers)
            self._last_buffers = buffers  # the previous call's cycle becomes garbage
        return fault == "none"

    def _check(self, inputs: Sequence[np.ndarray]) -> None:
        got = [(tuple(i.shape), i.dtype.name) for i in inputs]
        want = [(t.shape, t.dtype) for t in self.inputs]
        if got != want:
            raise BackendError(f"fake backend expects one tensor per input {want}, got {got}")

    def _compute(self, inputs: Sequence[np.ndarray]) -> List[np.ndarray]:
        if self.spec.task == "tensor":
            sums = [float(np.sum(i, dtype=np.float64)) for i in inputs]
            return [np.asarray([sums], np.float32)]
        tensor = inputs[0]
        if self.spec.task == "detection":
            return self._boxes(tensor)
        if self.spec.task == "classification":
            return [self._scores(int(tensor.sum(dtype=np.uint64)) % self.classes)]
        grey = tensor[0].mean(axis=2, dtype=np.float32)
        classes = np.minimum(grey * (self.classes / 256.0), self.classes - 1).astype(np.uint8)
        if self.spec.output == "class_map":
            return [classes[None].astype(np.int64)]
        onehot = (classes[None] == np.arange(self.classes, dtype=np.uint8)[:, None, None]).astype(
            np.float32
        )
        if self.spec.output_layout == "nhwc":
            onehot = np.ascontiguousarray(onehot.transpose(1, 2, 0))
        return [onehot[None]]

    def _boxes(self, tensor: np.ndarray) -> List[np.ndarray]:
        rows, cols = np.nonzero(tensor[0].mean(axis=2, dtype=np.float32) > 128)
        boxes = [[cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]] if rows.size else []
        winner = int(tensor.sum(dtype=np.uint64)) % self.classes
        output = self.spec.detection
        return yolo_outputs(
            output.format,
            boxes,
            [winner] * len(boxes),
            [0.9] * len(boxes),
            self.classes,
            self.spec.input_size,
            output.strides,
            output.anchors,
            rng=np.random.default_rng(0),
        )

    def _scores(self, winner: int) -> np.ndarray:
        logits = np.linspace(0.0, 1.0, self.classes, dtype=np.float32)[::-1].copy()
        logits[winner] = 4.0
        scores = softmax(logits) if self.spec.output == "probabilities" else logits
        return scores[None]

    def close(self) -> None:
        self._cached = None


def _declared_inputs(spec: ModelSpec) -> List[TensorSpec]:
    """A tensor model's inputs from its model.yaml: the fake backend has no model file."""
    if not spec.inputs or not all(i.shape for i in spec.inputs):
        raise ConfigError(
            f"model {spec.name!r}: the fake backend needs every inputs[].shape in model.yaml"
        )
    return [
        TensorSpec(i.name or f"input{n}", i.shape, i.dtype or "float32")
        for n, i in enumerate(spec.inputs)
    ]


def _class_count(spec: ModelSpec) -> int:
    if spec.task == "detection":
        return int(spec.detection.classes) or len(spec.labels)
    return len(spec.labels) + spec.label_offset
