"""RKNNLite (rknn-toolkit-lite2) on the board's NPU.

RKNNLite reports failure with return codes and ``None``, not exceptions, and logs the real
reason itself; this wrapper turns each into a :class:`BackendError` that says what to check.
One instance per runner thread: an RKNNLite object is not safe to call from two threads.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence

import numpy as np

from ..board.rknnfile import read_rknn
from ..errors import BackendError
from ..kernels.image import nhwc
from ..spec import ModelSpec
from . import TensorSpec

LOAD_HINT = "is it an RKNN2 file? ('rkserve inspect' reads it)"
INIT_HINT = (
    "check the runtime log above: 'Invalid RKNN model version' means librknnrt is older than "
    "the toolkit that built the model; 'does not match the RKNPU hardware version' means a "
    "model for another SoC; 'failed to open rknpu module' means no access to /dev/dri/renderD129 "
    "(groups video, render); 'missing in the container' means no /dev/dri/renderD129 or no "
    "/proc/device-tree/compatible (the wheel checks both, in a container or not); 'The "
    "core_mask is only supported by' means a core_mask on a single-core NPU; 'rkserve doctor' "
    "checks all of these"
)


def _import_rknnlite() -> Callable[..., Any]:
    try:
        from rknnlite.api import RKNNLite
    except ImportError as exc:
        raise BackendError(
            f"rknn-toolkit-lite2 is not importable ({exc}); install it on the board "
            "(pip install rknn-toolkit-lite2) with /usr/lib/librknnrt.so present"
        ) from None
    return RKNNLite


class RknnLiteBackend:
    name = "rknnlite"
    raw_input = True

    def __init__(self, spec: ModelSpec, core_mask: Optional[int] = None, **_: Any) -> None:
        self.path = spec.rknn_path
        info = read_rknn(self.path)  # a clear error for a non-RKNN or truncated file first
        self.inputs = [TensorSpec(t.name, nhwc(t.shape), feed_dtype(t.dtype)) for t in info.inputs]
        self.outputs = [TensorSpec(t.name, t.shape, "float32") for t in info.outputs]
        self._rknn: Any = _import_rknnlite()(verbose=False)
        try:
            self._start(core_mask)
        except BackendError:
            self._rknn.release()
            raise

    def _start(self, core_mask: Optional[int]) -> None:
        ret = self._rknn.load_rknn(str(self.path))
        if ret != 0:
            raise BackendError(f"load_rknn({self.path}) returned {ret}: {LOAD_HINT}")
        # core_mask only exists on multi-core NPUs (RK3588/RK3576); on RK3566/RK3568 the wheel
        # itself refuses it and init_runtime returns -1 (seen with lite2 2.3.0-2.5.0).
        kwargs = {} if core_mask is None else {"core_mask": core_mask}
        ret = self._rknn.init_runtime(**kwargs)
        if ret != 0:
            raise BackendError(f"init_runtime for {self.path} returned {ret}: {INIT_HINT}")

    def run(self, inputs: Sequence[np.ndarray]) -> List[np.ndarray]:
        if self._rknn is None:
            raise BackendError(f"the RKNNLite backend of {self.path.name} is closed")
        # Read-only views of a message and strided arrays go in as they are: the wheel
        # (lite2 2.3.0-2.5.0, on the emulated board) hands the runtime their exact bytes.
        outputs = self._rknn.inference(inputs=list(inputs), data_format="nhwc")
        if outputs is None:
            raise BackendError(
                f"RKNNLite inference on {self.path.name} returned None "
                "(the runtime logged the reason; 'failed to submit' points at the driver)"
            )
        return [np.asarray(o) for o in outputs]

    def close(self) -> None:
        """Release the runtime and let the RKNNLite object go: ``release()`` keeps the whole
        model file that ``load_rknn`` read (lite2 2.3.0-2.5.0), so whatever still refers to a
        closed backend would otherwise hold the file's size (docs/RELIABILITY.md)."""
        if self._rknn is not None:
            self._rknn.release()
            self._rknn = None


def feed_dtype(model_dtype: str) -> str:
    """What RKNNLite is fed for an input the model holds as ``model_dtype``: raw uint8 for a
    quantized input (the runtime quantizes with the mean/std baked in), float32 for a float
    one, else the model's own (the runtime converts what it is given)."""
    if model_dtype in ("int8", "uint8", ""):
        return "uint8"
    if model_dtype in ("float16", "float32"):
        return "float32"
    return model_dtype
