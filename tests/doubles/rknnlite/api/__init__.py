"""A faithful double of ``rknnlite.api.RKNNLite`` (rknn-toolkit-lite2 2.3.x-2.5.0, as
observed on the emulated board: tests/emulated/README.md); see ../README.md."""

from __future__ import annotations

import hashlib
import os
import sys
import threading
from typing import Any, List, Optional

import numpy as np

from rkserve.board.rknnfile import RknnInfo, read_rknn
from rkserve.errors import RknnFileError

FAMILIES = {"rk3566": "rk356x", "rk3568": "rk356x", "rk3588": "rk3588", "rk3576": "rk3576"}
MULTI_CORE = {"rk3588", "rk3576"}
FEED_DTYPES = ("uint8", "int8", "int16", "float16", "float32")  # what inference() converts
CORE_MASKS = {0, 1, 2, 4, 3, 7, 0xFFFF}
SDK_BANNER = "=" * 46 + "\nRKNN VERSION:\n  API: {api}\n  DRV: {driver}\n" + "=" * 46 + "\n"


def _log(message: str) -> None:
    """A line of librknnrt's log."""
    print(f"E RKNN: {message}", file=sys.stderr)


def _wheel_log(message: str) -> None:
    """A line of the wheel's own log (no ``RKNN:``)."""
    print(f"E {message}", file=sys.stderr)


class _Frame:
    """Garbage in a reference cycle, holding the outputs: the real wheel leaves such cycles
    behind on every inference (on the emulated board: ~17 unreachable objects per call with
    lite2 2.3.0-2.5.0), which only a collection frees (rkserve.memory.GcGuard)."""

    def __init__(self, outputs: List[np.ndarray]) -> None:
        self.outputs = outputs
        self.me = self


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
        # the wheel checks the mask itself, before librknnrt sees it, and returns -1
        if core_mask != self.NPU_CORE_AUTO and self.soc not in MULTI_CORE:
            _wheel_log(
                "The core_mask is only supported by ['RK3588', 'RK3576']. "
                "Please do not set this parameter on other platforms."
            )
            _wheel_log("Catch exception when set npu core mode.")
            return -1
        if core_mask not in CORE_MASKS:
            _wheel_log(f"The core mode {core_mask} is not supported currently.")
            _wheel_log("Catch exception when set npu core mode.")
            return -1
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
            # the wheel ignores rknn_run's code; the failure shows when it gets the outputs
            _log("failed to submit!, op id: 1, op name: Conv")
            _wheel_log("Catch exception when getting outputs.")
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
        outputs = [rng.standard_normal(o.shape).astype(np.float32) for o in self.info.outputs]
        _Frame(outputs)
        return outputs

    def get_sdk_version(self) -> Optional[str]:
        """A banner, not a version line (as the real wheel returns it)."""
        if not self.runtime:
            _wheel_log(
                "Runtime environment is not inited, please call init_runtime to init it first!"
            )
            return None
        return SDK_BANNER.format(api="2.3.2 (double)", driver="0.9.8")

    def release(self) -> None:
        """As the real wheel (lite2 2.3.0-2.5.0): the runtime goes, the file's bytes that
        ``load_rknn`` read stay for as long as the object does."""
        self.runtime = False


def _nhwc(shape: Any) -> tuple:
    shape = tuple(shape)
    if len(shape) == 4 and shape[1] in (1, 3, 4) and shape[3] not in (1, 3, 4):
        return (shape[0], shape[2], shape[3], shape[1])
    return shape
