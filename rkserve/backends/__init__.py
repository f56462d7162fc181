"""Runtimes behind one small protocol.

A backend only wraps its runtime: it loads a model, runs already-prepared input tensors,
turns the runtime's failures into :class:`~rkserve.errors.BackendError`, and closes. No
pre/post-processing, no downloads, no ``__del__``. Implementations are imported lazily by
name, so a board never imports onnxruntime::

    backend = open_backend("onnx", spec)
    outputs = backend.run([tensor])
    backend.close()
"""

from __future__ import annotations

import importlib
import importlib.util
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..board.devices import npu_device
from ..errors import ConfigError, ModelUnavailable
from ..spec import ModelSpec

try:  # Python 3.8 has Protocol in typing
    from typing import Protocol
except ImportError:  # pragma: no cover
    from typing_extensions import Protocol  # type: ignore[assignment]

BACKENDS: Dict[str, str] = {
    "rknnlite": "rkserve.backends.rknnlite:RknnLiteBackend",
    "onnx": "rkserve.backends.onnx:OnnxBackend",
    "fake": "rkserve.backends.fake:FakeBackend",
}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: Tuple[int, ...]
    dtype: str
    # an integer tensor's (scale, zero_point): its values mean (q - zero_point) * scale
    quantization: Optional[Tuple[float, int]] = None


@dataclass(frozen=True)
class FakeModel:
    """What the fake backend plays for one model: its tensors and how outputs follow from
    inputs. Each task module says it for its models (``fake``), so the fake backend knows
    no task."""

    inputs: List[TensorSpec]
    outputs: List[TensorSpec]
    answer: Callable[[Sequence[np.ndarray]], List[np.ndarray]]


class Backend(Protocol):
    """What the engine needs of a runtime."""

    name: str
    raw_input: bool  # True: takes 1xHxWx3 uint8 raw pixels (the NPU); False: model.yaml's onnx form
    inputs: Sequence[TensorSpec]
    outputs: Sequence[TensorSpec]

    def run(self, inputs: Sequence[np.ndarray]) -> List[np.ndarray]: ...

    def close(self) -> None: ...


def open_backend(kind: str, spec: ModelSpec, **options: Any) -> Backend:
    """Load ``spec`` with backend ``kind`` (``auto`` chooses, see :func:`choose_backend`)."""
    if kind == "auto":
        kind = choose_backend(spec)
    if kind not in BACKENDS:
        raise ConfigError(f"unknown backend {kind!r}; choose one of auto, {', '.join(BACKENDS)}")
    module_name, class_name = BACKENDS[kind].split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    backend: Backend = cls(spec, **options)
    return backend


def npu_present(root: Path = Path("/")) -> bool:
    """An aarch64 machine with rknn-toolkit-lite2 importable and a device node of the vendor
    NPU driver (wherever sysfs puts it: a board whose NPU is renderD128 picks rknnlite, and
    the board checks then say why the wheel would refuse it)."""
    if platform.machine() != "aarch64" or importlib.util.find_spec("rknnlite") is None:
        return False
    return npu_device(root).exists


def choose_backend(spec: ModelSpec, root: Path = Path("/")) -> str:
    """``rknnlite`` where the runtime, an NPU and ``model.rknn`` are present, else ``onnx``
    where ``model.onnx`` exists and onnxruntime imports, else a clear error."""
    on_npu = npu_present(root)
    if on_npu and spec.rknn_path.is_file():
        return "rknnlite"
    if spec.onnx_path.is_file() and importlib.util.find_spec("onnxruntime") is not None:
        return "onnx"
    reasons = []
    if not on_npu:
        reasons.append(
            "no NPU runtime here (needs aarch64, rknn-toolkit-lite2 and the rknpu driver's "
            "device node; `rkserve doctor` says which is missing)"
        )
    elif not spec.rknn_path.is_file():
        reasons.append(f"{spec.rknn_path} is missing")
    if not spec.onnx_path.is_file():
        reasons.append(f"{spec.onnx_path} is missing")
    else:
        reasons.append("onnxruntime is not installed (pip install 'rkserve[onnx]')")
    raise ModelUnavailable(f"model {spec.name!r}: no backend can serve it: " + "; ".join(reasons))
