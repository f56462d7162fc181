"""onnxruntime on the CPU: serves a model's ONNX twin on a PC without an NPU."""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import BackendError
from ..spec import ModelSpec
from . import TensorSpec
from .onnxquant import output_quantization


class OnnxBackend:
    name = "onnx"
    raw_input = False

    def __init__(self, spec: ModelSpec, threads: Optional[int] = None, **_: Any) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        # idle intra-op threads must sleep, not spin: spinning took the core a CPU-pool
        # thread was decoding on (half the decodes 3.4x slower on 2 cores), no faster inference
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            options.intra_op_num_threads = threads
        try:
            self._session = ort.InferenceSession(
                str(spec.onnx_path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise BackendError(f"onnxruntime cannot load {spec.onnx_path}: {exc}") from None
        self.inputs = [_spec(i) for i in self._session.get_inputs()]
        quantized = output_quantization(spec.onnx_path)  # onnxruntime does not say
        self.outputs = [_spec(o, quantized.get(o.name)) for o in self._session.get_outputs()]

    def run(self, inputs: Sequence[np.ndarray]) -> List[np.ndarray]:
        feed = {spec.name: tensor for spec, tensor in zip(self.inputs, inputs)}
        try:
            return list(self._session.run(None, feed))
        except Exception as exc:
            raise BackendError(f"onnxruntime inference failed: {exc}") from None

    def close(self) -> None:
        self._session = None


def _spec(node: Any, quantization: Optional[Tuple[float, int]] = None) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) else 1 for d in node.shape)
    dtype = str(node.type)[len("tensor(") : -1]  # "tensor(float)" -> "float"
    return TensorSpec(node.name, shape, _DTYPES.get(dtype, dtype), quantization)


_DTYPES = {"float": "float32", "double": "float64", "float16": "float16"}
