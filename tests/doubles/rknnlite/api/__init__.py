"""A faithful double of ``rknnlite.api.RKNNLite`` (rknn-toolkit-lite2 2.3.2); see ../README.md."""

from __future__ import annotations

import hashlib
import os
import sys
import threading
from typing import Any, List, Optional

import numpy as np

from rkserve.errors import RknnFileError
from rkserve.rknnfile import RknnInfo, read_rknn

FAMILIES = {"rk3566": "rk356x", "rk3568": "rk356x", "rk3588": "rk3588", "rk3576": "rk3576"}
MULTI_CORE = {"rk3588", "rk3576"}
FEED_DTYPES = ("uint8", "int8", "int16", "float16", "float32")  # what inference() converts


def _log(message: str) -> None:
    print(f"E RKNN: {message}", file=sys.stderr)


class RKNNLite:
    NPU_CORE_AUTO = 0
    NPU_CORE_0 = 1
    NPU_CORE_1 = 2
    NPU_CORE_2 = 4
    NPU_CORE_0_1 = 3
    NPU_CORE_0_1_2 = 7
    NPU_CORE_ALL = 0xFFFF

    instances: List[RKNNLite] = []

    def __init__(self, verbose: bool = False, verbose_file: Optional[str] = None) -> None:
        self.rknn_data: Optional[bytes] = None
        self.info: Optional[RknnInfo] = None
        self.runtime = False
        self.calls = 0
        self._busy = threading.Lock()
        self.soc = os.environ.get("RKNNLITE_DOUBLE_SOC", "rk3568")
        self.fail = os.environ.get("RKNNLITE_DOUBLE_FAIL", "")
        RKNNLite.instances.append(self)

    def load_rknn(self, path: str) -> int:
        if not os.path.exists(path) or self.fail == "load":
            _log(f"Invalid RKNN model path: {path}")
            return -1
        with open(path, "rb") as f:
            self.rknn_data = f.read()
        self.path = path
        return 0

    def init_runtime(
        self,
        target: Any = None,
        device_id: Any = None,
        async_mode: bool = False,
        core_mask: int = 0,
    ) -> int:
        if self.rknn_data is None:
            _log("Model is not loaded yet, this interface should be called after load_rknn!")
            return -1
        if self.rknn_data[:4] != b"RKNN" or self.fail == "init":
            _log("parseRKNN: invalid RKNN_MAGIC!")
            return -1
        try:
            self.info = read_rknn(self.path)
        except RknnFileError as exc:
            _log(f"rknn_init, load model failed: {exc}")
            return -1
        family = FAMILIES.get(self.soc)
        if not any(FAMILIES.get(t) == family for t in self.info.target_platforms):
            _log("The rknn model does not match the RKNPU hardware version!")
            return -1
        if core_mask != self.NPU_CORE_AUTO and self.soc not in MULTI_CORE:
            _log(f"rknn_set_core_mask: failed to set core mask: {core_mask}! ret=-13")
            return -13
        self.runtime = True
        return 0

    def inference(
        self,
        inputs: Any,
        data_type: Any = None,
        data_format: Any = None,
        inputs_pass_through: Any = None,
        get_frame_id: bool = False,
    ) -> Optional[List[np.ndarray]]:
        if not self.runtime or self.info is None:
            _log("Runtime environment is not inited, please call init_runtime to init it first!")
            return None
        if not self._busy.acquire(blocking=False):
            _log("failed to submit!, op id: 0, op name: (concurrent call on one context)")
            return None
        try:
            return self._outputs(inputs, data_format)
        finally:
            self._busy.release()

    def _outputs(self, inputs: Any, data_format: Any) -> Optional[List[np.ndarray]]:
        assert self.info is not None
        if self.fail == "inference":
            _log("failed to submit!, op id: 1, op name: Conv")
            return None
        if not isinstance(inputs, list) or len(inputs) != len(self.info.inputs):
            _log(f"The input number is not match, expect {len(self.info.inputs)}")
            return None
        for tensor, spec in zip(inputs, self.info.inputs):
            want = _nhwc(spec.shape) if data_format in (None, "nhwc") else spec.shape
            if (
                not isinstance(tensor, np.ndarray)
                or tuple(tensor.shape) != want
                or tensor.dtype.name not in FEED_DTYPES
            ):
                _log(
                    f"The input {getattr(tensor, 'shape', None)} {getattr(tensor, 'dtype', None)} does not match {want} {'/'.join(FEED_DTYPES)}"
                )
                return None
        self.calls += 1
        digest = hashlib.sha256()
        for tensor in inputs:
            digest.update(tensor.tobytes())
        seed = int.from_bytes(digest.digest()[:4], "little")
        rng = np.random.default_rng(seed)
        return [rng.standard_normal(o.shape).astype(np.float32) for o in self.info.outputs]

    def get_sdk_version(self) -> Optional[str]:
        if not self.runtime:
            return None
        return "librknnrt version: 2.3.2 (double)"

    def release(self) -> None:
        self.runtime = False
        self.rknn_data = None


def _nhwc(shape: Any) -> tuple:
    shape = tuple(shape)
    if len(shape) == 4 and shape[1] in (1, 3, 4) and shape[3] not in (1, 3, 4):
        return (shape[0], shape[2], shape[3], shape[1])
    return shape
