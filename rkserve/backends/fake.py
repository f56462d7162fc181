"""A deterministic stand-in for the NPU, for tests, benchmarks and users' own tests.

It takes what the NPU takes (``1xHxWx3 uint8`` for an image task), sleeps ``latency_ms``
with the GIL released like a real NPU call, and answers with outputs of the model's shapes
that depend on the input in a documented way, which each task module defines (its
``fake``: :class:`~rkserve.backends.FakeModel`):

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

import os
import time
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import BackendError
from ..spec import ModelSpec
from ..tasks import get_task


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
        self._fault_path = str(self.fault_file)
        self._fault_seen: Optional[Tuple[int, int, int]] = None  # (mtime, size, inode) read
        self._fault_text = ""
        self.leaked: List[bytes] = []
        self._last_buffers: Optional[List[Any]] = None
        self.latency = latency_ms / 1000.0
        self.model = get_task(spec.task).fake(spec, classes)
        self.inputs = self.model.inputs
        self.outputs = self.model.outputs
        self.calls = 0
        self._cached: Optional[List[np.ndarray]] = None
        self._reuse = reuse_outputs
        fault = self._fault()
        if fault.startswith("slow-load:"):
            time.sleep(float(fault[len("slow-load:") :]) / 1000.0)

    def run(self, inputs: Sequence[np.ndarray]) -> List[np.ndarray]:
        self._check(inputs)
        self.calls += 1
        fault = self._fault()
        if fault and self._inject(fault):
            return None  # type: ignore[return-value]  # what a broken runtime hands back
        started = time.perf_counter()
        outputs = self._cached if self._cached is not None else self.model.answer(inputs)
        if self._reuse:
            self._cached = outputs
        remaining = self.latency - (time.perf_counter() - started)
        if remaining > 0:
            time.sleep(remaining)
        return outputs

    def _fault(self) -> str:
        """The fault file's text, "" without one. A stat per call, the file read only when it
        changed: the fake backend's own cost stays out of what benchmarks measure."""
        try:
            stat = os.stat(self._fault_path)
        except OSError:
            self._fault_seen = None
            return ""
        key = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        if key != self._fault_seen:
            try:
                self._fault_text = self.fault_file.read_text().strip()
            except OSError:
                return ""
            self._fault_seen = key
        return self._fault_text

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
        fits = len(inputs) == len(self.inputs) and all(
            i.shape == t.shape and i.dtype == t.dtype for i, t in zip(inputs, self.inputs)
        )  # dtype == "uint8" is 20x cheaper than dtype.name
        if not fits:
            got = [(tuple(i.shape), i.dtype.name) for i in inputs]
            want = [(t.shape, t.dtype) for t in self.inputs]
            raise BackendError(f"fake backend expects one tensor per input {want}, got {got}")

    def close(self) -> None:
        self._cached = None
