"""Task ``tensor``: the model's inputs and outputs as they are (Triton's raw tensor API).

A request sends one tensor per model input (``inputs``: a list in the model's order, or a
name → tensor map); each is checked against what the model takes before anything runs.
The reply holds every output tensor as the runtime gave it. What a client sends is what the
NPU takes: 4-D image-like inputs are NHWC (an NCHW tensor of the same input is accepted and
transposed here, as RKNNLite's ``data_format="nchw"`` would do on the CPU), with the dtype
the model's ``inputs[].dtype`` declares (default: the model file's). For the ONNX twin the
same tensors get model.yaml's per-input ``(x - mean) / std`` over the channel (last) axis,
are transposed to the twin's NCHW where it has it and cast to its dtype, so both backends
take the same requests.

model.yaml: ``inputs`` (optional; per input ``name``, ``dtype``, ``shape``, ``mean``,
``std``). Params: none. Result: ``{"outputs": [{"name", "dtype", "shape", "data"}, ...]}``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..backends import FakeModel, TensorSpec
from ..errors import BadRequest, BadTensor, ConfigError
from ..kernels.image import nhwc
from ..protocol import INPUT_DTYPES, Inputs, NamedTensor, encode_tensor, show
from ..spec import SpecReader
from .base import Prepared, elapsed_ms, reject_unknown

if TYPE_CHECKING:
    from ..backends import Backend
    from ..spec import ModelSpec

NAME = "tensor"
NOT_USED = ("input", "output", "labels", "palette")  # image-task sections: a mistake here


@dataclass(frozen=True)
class InputSpec:
    """One declared model input; empty fields are taken from the model file."""

    name: str = ""
    dtype: str = ""  # the dtype a client sends: uint8 | int8 | int16 | float16 | float32
    shape: Tuple[int, ...] = ()  # as a client sends it (NHWC for 4-D image-like inputs)
    mean: Tuple[float, ...] = ()  # ONNX twin only: (x - mean) / std over the last axis
    std: Tuple[float, ...] = ()


@dataclass(frozen=True)
class Config:
    """model.yaml's ``inputs`` of a tensor model (optional: the model file has them)."""

    inputs: Tuple[InputSpec, ...] = ()


@dataclass(frozen=True)
class Wire:
    """One model input as a client sends it, and how it becomes the backend's tensor."""

    name: str
    shape: Tuple[int, ...]  # what a client sends (NHWC for 4-D image-like inputs)
    dtype: str  # what a client sends
    backend_dtype: str  # what the backend takes
    to_nchw: bool  # the backend takes NCHW (an ONNX twin): transpose after normalising
    mean: Optional[np.ndarray]  # ONNX twin only; over the last axis
    std: Optional[np.ndarray]

    def describe(self) -> Dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    def nchw(self) -> Optional[Tuple[int, ...]]:
        """The NCHW form of a 4-D NHWC input (also accepted), else None."""
        if len(self.shape) != 4:
            return None
        n, h, w, c = self.shape
        return (n, c, h, w)


# model.yaml --------------------------------------------------------------------------------
def read_spec(top: SpecReader) -> Dict[str, Any]:
    for key in NOT_USED:
        if key in top.data:
            top.fail(key, "not used by task tensor (its inputs are named tensors: docs/MODELS.md)")
    return {"task_config": Config(_declared(top))}


def _declared(top: SpecReader) -> Tuple[InputSpec, ...]:

    value = top.data.get("inputs")
    if value is None:
        return ()
    if isinstance(value, dict):
        items = [(f"inputs.{k}.", _named(k, v)) for k, v in value.items()]
    elif isinstance(value, list):
        items = [(f"inputs[{n}].", v) for n, v in enumerate(value)]
    else:
        top.fail("inputs", "expected a list (in the model's input order) or a map by input name")
    return tuple(_input_spec(SpecReader(top.path, item, prefix)) for prefix, item in items)


def _named(key: Any, value: Any) -> Any:
    """A map entry with its key as the name (anything but a map is left for the reader's
    error)."""
    if value is None:
        value = {}
    return {"name": str(key), **value} if isinstance(value, dict) else value


def _input_spec(section: SpecReader) -> InputSpec:

    shape = section.data.get("shape", [])
    if not (
        isinstance(shape, list)
        and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)
    ):
        section.fail("shape", f"expected a list of positive integers, got {shape!r}")
    dtype = section.data.get("dtype", "")
    if dtype:
        dtype = section.choice("dtype", INPUT_DTYPES)
    mean, std = section.vector("mean"), section.vector("std", positive=True)
    return InputSpec(section.text("name"), dtype, tuple(shape), mean, std)


# load time ---------------------------------------------------------------------------------
def wires(spec: ModelSpec, backend: Backend) -> List[Wire]:
    """The inputs a client sends to this model on this backend, in the model's order."""
    declared = _by_position(spec, backend)
    return [_wire(t, d, backend.raw_input) for t, d in zip(backend.inputs, declared)]


def _by_position(spec: ModelSpec, backend: Backend) -> List[Optional[InputSpec]]:
    declared = spec.task_config.inputs
    if not declared:
        return [None] * len(backend.inputs)
    names = [t.name for t in backend.inputs]
    if all(d.name for d in declared) and set(d.name for d in declared) == set(names):
        named = {d.name: d for d in declared}
        return [named[n] for n in names]
    return list(declared)


def _wire(tensor: Any, declared: Optional[InputSpec], raw: bool) -> Wire:
    shape = tuple(tensor.shape) if raw else nhwc(tensor.shape)
    dtype = (declared.dtype if declared else "") or _client_dtype(tensor.dtype)
    mean = std = None
    if not raw and declared is not None and (declared.mean or declared.std):
        mean = np.asarray(declared.mean or (0.0,), np.float32)
        std = np.asarray(declared.std or (1.0,), np.float32)
    return Wire(tensor.name, shape, dtype, tensor.dtype, shape != tuple(tensor.shape), mean, std)


def _client_dtype(model_dtype: str) -> str:
    """What a client sends by default for an input the model holds as ``model_dtype``."""
    return {"float": "float32", "float64": "float32"}.get(model_dtype, model_dtype)


def check(spec: ModelSpec, backend: Backend) -> None:
    """Every input has a dtype and shape a client can send, and model.yaml agrees."""
    if not backend.inputs:
        raise ConfigError(f"{spec.spec_path}: the {backend.name} backend lists no model inputs")
    declared = spec.task_config.inputs
    if declared and len(declared) != len(backend.inputs):
        raise ConfigError(
            f"{spec.spec_path}: inputs: model.yaml declares {len(declared)} inputs but the "
            f"{backend.name} model has {len(backend.inputs)}: {_listed(_model_inputs(backend))}"
        )
    for n, (wire, declared) in enumerate(zip(wires(spec, backend), _by_position(spec, backend))):
        _check_wire(spec, backend, n, wire, declared)


def _model_inputs(backend: Backend) -> List[Dict[str, Any]]:
    return [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype} for t in backend.inputs]


def _check_wire(
    spec: ModelSpec, backend: Backend, n: int, wire: Wire, declared: Optional[InputSpec]
) -> None:
    where = f"{spec.spec_path}: inputs[{n}] ({wire.name!r})"
    if wire.dtype not in INPUT_DTYPES:
        raise ConfigError(
            f"{where}: the {backend.name} model takes {wire.backend_dtype}; task tensor sends "
            f"{', '.join(INPUT_DTYPES)} (declare inputs[{n}].dtype)"
        )
    if declared is None:
        return
    if declared.name and declared.name != wire.name:
        raise ConfigError(f"{where}: model.yaml names it {declared.name!r}")
    if declared.shape and tuple(declared.shape) != wire.shape:
        raise ConfigError(
            f"{where}: model.yaml says shape {list(declared.shape)} but the {backend.name} "
            f"model takes {list(wire.shape)}"
        )
    channels = wire.shape[-1] if wire.shape else 1
    for key, values in (("mean", declared.mean), ("std", declared.std)):
        if len(values) not in (0, 1, channels):
            raise ConfigError(
                f"{where}: {key} has {len(values)} values; the input has {channels} channels "
                "(its last axis): give 1 or one per channel"
            )


def _listed(items: Sequence[Mapping[str, Any]]) -> str:
    return ", ".join(f"{i['name']} {i['shape']} {i['dtype']}" for i in items)


# per request -------------------------------------------------------------------------------
def parse_params(raw: Mapping[str, Any], spec: ModelSpec) -> None:
    reject_unknown(raw, (), NAME)


def prepare(
    data: Any, spec: ModelSpec, backend: Backend, params: None, max_pixels: int
) -> Prepared:
    """Named tensors → the backend's inputs, every input checked first (bad_tensor)."""
    started = time.perf_counter()
    if isinstance(data, (list, tuple, dict)):
        data = Inputs.of(data)  # in-process use
    if not isinstance(data, Inputs):
        raise BadRequest(
            f"model {spec.name!r} (task tensor) takes named tensors: send inputs, not an image"
        )
    inputs = wires(spec, backend)
    arrays = [_checked(wire, tensor) for wire, tensor in _match(spec, inputs, data)]
    timings = {"decode": elapsed_ms(started)}
    started = time.perf_counter()
    tensors = [_to_backend(w, a, backend.raw_input) for w, a in zip(inputs, arrays)]
    timings["preprocess"] = elapsed_ms(started)
    return Prepared(tensors, params, timings, [t.name for t in backend.outputs])


def _match(spec: ModelSpec, inputs: List[Wire], data: Inputs) -> List[Tuple[Wire, NamedTensor]]:
    """Pair each model input with the tensor sent for it: by name when every tensor has a
    name, else by position."""
    sent = data.tensors
    if len(sent) != len(inputs):
        raise BadTensor(
            f"model {spec.name!r} takes {len(inputs)} inputs "
            f"({_listed([w.describe() for w in inputs])}), got {len(sent)}"
        )
    names = [t.name for t in sent]
    if not all(names):
        if any(names):
            raise BadTensor("inputs: name every tensor or none (none: in the model's order)")
        return list(zip(inputs, sent))
    if len(set(names)) != len(names):
        raise BadTensor(f"inputs: a name appears twice in {[show(n) for n in names]}")
    by_name = {t.name: t for t in sent}
    unknown = [n for n in names if n not in {w.name for w in inputs}]
    if unknown:
        raise BadTensor(
            f"inputs: no input named {show(unknown[0])}; model {spec.name!r} takes "
            f"{', '.join(repr(w.name) for w in inputs)}"
        )
    return [(w, by_name[w.name]) for w in inputs]


def _checked(wire: Wire, tensor: NamedTensor) -> np.ndarray:
    """The tensor as the client sends it for ``wire``: dtype, shape (NCHW → NHWC), finite."""
    array = tensor.array
    where = f"input {wire.name!r}"
    want = f"{list(wire.shape)} {wire.dtype}"
    if array.dtype.name != wire.dtype:
        raise BadTensor(f"{where}: dtype {array.dtype.name}, but the model takes {want}")
    shape = tuple(array.shape)
    if shape != wire.shape:
        if shape != wire.nchw():
            nchw = wire.nchw()
            also = f" (or NCHW {list(nchw)})" if nchw else ""
            raise BadTensor(f"{where}: shape {list(shape)}, but the model takes {want}{also}")
        array = array.transpose(0, 2, 3, 1)  # NCHW → NHWC, as RKNNLite's data_format="nchw"
    if array.dtype.kind == "f":
        bad = array.size - int(np.count_nonzero(np.isfinite(array)))
        if bad:
            raise BadTensor(
                f"{where}: {bad} of {array.size} values are NaN or infinite; inputs must be finite"
            )
    return array


def _to_backend(wire: Wire, array: np.ndarray, raw: bool) -> np.ndarray:
    """NHWC client tensor → the backend's: as is for the NPU; normalised, transposed and
    cast for an ONNX twin."""
    if raw:
        return np.ascontiguousarray(array)
    if wire.mean is not None and wire.std is not None:
        array = (array.astype(np.float32) - wire.mean) / wire.std
    if wire.to_nchw:
        array = array.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(array, dtype=np.dtype(wire.backend_dtype))


def finish(outputs: Sequence[np.ndarray], prepared: Prepared, spec: ModelSpec) -> Dict[str, Any]:
    names: List[str] = prepared.context or []
    return {
        "outputs": [
            encode_tensor(o, names[n] if n < len(names) else f"output{n}")
            for n, o in enumerate(outputs)
        ]
    }


def warmup_input(spec: ModelSpec, backend: Backend) -> Inputs:
    return Inputs([NamedTensor(w.name, np.zeros(w.shape, w.dtype)) for w in wires(spec, backend)])


def review_warmup(outputs: Sequence[np.ndarray], spec: ModelSpec, backend: Backend) -> List[str]:
    return []  # nothing to check beyond what check() did at load


def describe(spec: ModelSpec, backend: Backend) -> Dict[str, Any]:
    """What a client sends and gets back, for ``models``."""
    return {
        "inputs": [w.describe() for w in wires(spec, backend)],
        "outputs": [
            {"name": t.name, "shape": list(t.shape), "dtype": t.dtype} for t in backend.outputs
        ],
    }


def fake(spec: ModelSpec, classes: Optional[int]) -> FakeModel:
    """The inputs model.yaml declares (``inputs[].shape`` and ``dtype``, default float32) and
    one output ``sums``, ``[1, inputs] float32``: the sum of each input's values."""
    declared = spec.task_config.inputs
    if not declared or not all(i.shape for i in declared):
        raise ConfigError(
            f"model {spec.name!r}: the fake backend needs every inputs[].shape in model.yaml"
        )
    inputs = [
        TensorSpec(i.name or f"input{n}", i.shape, i.dtype or "float32")
        for n, i in enumerate(declared)
    ]

    def answer(tensors: Sequence[np.ndarray]) -> List[np.ndarray]:
        sums = [float(np.sum(t, dtype=np.float64)) for t in tensors]
        return [np.asarray([sums], np.float32)]

    return FakeModel(inputs, [TensorSpec("sums", (1, len(inputs)), "float32")], answer)
