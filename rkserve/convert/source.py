"""What a conversion starts from: a float ONNX model or a TorchScript ``model.pt``.

The recipe's ``convert.source`` names the file; its suffix says which kind it is. This module
checks the file before the toolkit sees it (each mistake people make gets one message with
the fix), runs it in float as the gate's reference (onnxruntime for ONNX, torch for
TorchScript: never the quantized model against itself), and loads it into rknn-toolkit2
with the toolkit's own loader (``load_onnx``, or ``load_pytorch`` with the input size of
model.yaml as its ``input_size_list``).

Telling a TorchScript archive from a ``state_dict`` or a pickled ``nn.Module`` reads the zip's
names and the pickle's opcodes only (:func:`torch_file_kind`): nothing is unpickled, and
torch is not needed for it. torch and onnxruntime are imported inside the functions that run
a model (they exist in ``.venv-convert``).
"""

from __future__ import annotations

import pickletools
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import ConfigError
from ..kernels.image import to_onnx_input
from ..spec import ModelSpec
from .toolkit import Outputs, Toolkit

ONNX_SUFFIXES = (".onnx",)
TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".torchscript")
# Sizes tried when a TorchScript model refuses model.yaml's input.size, to name one it takes.
PROBE_SIDES = (32, 64, 96, 112, 128, 160, 192, 224, 256, 299, 320, 384, 416, 448, 512, 640)
_TENSOR_GLOBALS = ("collections", "torch._utils", "torch", "__builtin__", "builtins", "_codecs")


@dataclass(frozen=True)
class Source:
    """The float model to convert: ``kind`` is ``onnx`` or ``torchscript``."""

    path: Path
    kind: str

    @property
    def runtime(self) -> str:
        """What runs it in float for the gate."""
        return "onnxruntime" if self.kind == "onnx" else "torch"

    def describe(self) -> str:
        return f"{self.path.name} ({'ONNX' if self.kind == 'onnx' else 'TorchScript'})"


def source_kind(path: Path) -> str:
    """``onnx`` or ``torchscript`` from the file name's suffix; anything else is an error."""
    suffix = Path(path).suffix.lower()
    if suffix in ONNX_SUFFIXES:
        return "onnx"
    if suffix in TORCHSCRIPT_SUFFIXES:
        return "torchscript"
    known = ", ".join(ONNX_SUFFIXES + TORCHSCRIPT_SUFFIXES)
    raise ConfigError(f"{path}: cannot tell the model's kind from its name (known: {known})")


def open_source(path: Path, spec: ModelSpec, quantize: bool) -> Source:
    """The checked source: a float NCHW ONNX model, or TorchScript that runs on the input size."""
    source = Source(Path(path), source_kind(path))
    if not source.path.is_file():
        raise ConfigError(f"{source.path}: model not found")
    if source.kind == "onnx":
        _check_onnx(source.path, spec, quantize)
    else:
        _check_torchscript(source.path, spec)
    return source


def _check_onnx(path: Path, spec: ModelSpec, quantize: bool) -> None:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    ops = {node.op_type for node in model.graph.node}
    if quantize and ops & {"QuantizeLinear", "DequantizeLinear", "QLinearConv"}:
        raise ConfigError(
            f"{path}: already quantized (QDQ) ONNX; rknn-toolkit2 cannot re-quantize it: "
            "convert the float model (or set convert.quantize: false)"
        )
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    if len(dims) == 4 and dims[1] == 3 and all(dims[2:]) and tuple(dims[2:]) != spec.input_size:
        raise ConfigError(
            f"{spec.spec_path}: input.size: {list(spec.input_size)} but {path.name} takes "
            f"[{dims[2]}, {dims[3]}] (NCHW {dims})"
        )


# -- TorchScript ----------------------------------------------------------------------------


def torch_file_kind(path: Path) -> Tuple[str, str]:
    """What a ``.pt`` file holds, without unpickling it: ``(kind, detail)`` with kind one of
    ``torchscript``, ``state_dict`` (tensors only: a state_dict or a checkpoint dict),
    ``module`` (a pickled object; detail names its class), ``legacy`` (torch.save's pre-1.6
    format) or ``unknown``."""
    with open(path, "rb") as handle:
        head = handle.read(2)
    if head == b"\x80\x02":  # a bare pickle: torch.save(..., _use_new_zipfile_serialization=False)
        return "legacy", ""
    if not zipfile.is_zipfile(path):
        return "unknown", ""
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
            return "torchscript", ""
        pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if not pickles:
            return "unknown", ""
        classes = [g for g in _globals(archive.read(pickles[0])) if not _is_tensor_global(g)]
    return ("module", classes[0]) if classes else ("state_dict", "")


def _globals(data: bytes) -> List[str]:
    """``module.name`` of every class or function a pickle refers to, in order."""
    found: List[str] = []
    strings: List[str] = []
    for op, arg, _ in pickletools.genops(data):
        if op.name == "GLOBAL":
            found.append(str(arg).replace(" ", "."))
        elif op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
            strings.append(str(arg))
        elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
            found.append(".".join(strings[-2:]))
    return found


def _is_tensor_global(name: str) -> bool:
    module = name.rsplit(".", 1)[0]
    return module in _TENSOR_GLOBALS


def _export_lines(spec: ModelSpec, load: str) -> str:
    height, width = spec.input_size
    return (
        f"{load}; model.eval(); "
        f"torch.jit.trace(model, torch.zeros(1, 3, {height}, {width})).save('model.pt')"
    )


def _not_torchscript(path: Path, spec: ModelSpec) -> Optional[str]:
    kind, detail = torch_file_kind(path)
    if kind == "torchscript":
        return None
    if kind == "state_dict":
        fix = _export_lines(
            spec, f"model = YourNet(); model.load_state_dict(torch.load('{path.name}'))"
        )
        return (
            f"{path}: a state_dict (weights only, from torch.save(model.state_dict())), not "
            f"TorchScript: rknn-toolkit2 needs the network too. Fix: in the code that defines "
            f"the network, {fix} (docs/CONVERT.md, 'From PyTorch')"
        )
    if kind == "module":
        fix = _export_lines(spec, f"model = torch.load('{path.name}', weights_only=False)")
        return (
            f"{path}: a pickled nn.Module ({detail}, from torch.save(model)), not TorchScript: "
            f"it only loads where its class is importable. Fix: where {detail.rsplit('.', 1)[-1]} "
            f"is importable, {fix} (docs/CONVERT.md, 'From PyTorch')"
        )
    what = "saved with torch.save in the pre-1.6 format" if kind == "legacy" else "not a zip"
    fix = _export_lines(spec, "model = <your trained nn.Module>")
    return (
        f"{path}: not a TorchScript archive ({what}). Fix: {fix} (docs/CONVERT.md, 'From PyTorch')"
    )


def _check_torchscript(path: Path, spec: ModelSpec) -> None:
    problem = _not_torchscript(path, spec)
    if problem:
        raise ConfigError(problem)
    module = load_torchscript(path)
    height, width = spec.input_size
    error = _fails(module, (1, 3, height, width))
    if error is None:
        return
    if _fails(module, (1, height, width, 3)) is None:
        raise ConfigError(
            f"{path}: takes NHWC input [1, {height}, {width}, 3] (channels last); rknn-toolkit2 "
            f"converts NCHW models. Fix: remove the permute from the model's forward and trace "
            f"it with torch.zeros(1, 3, {height}, {width}) (channels first); model.yaml's "
            "onnx.layout stays nchw"
        )
    side = next((s for s in PROBE_SIDES if _fails(module, (1, 3, s, s)) is None), None)
    hint = (
        f" It runs on [1, 3, {side}, {side}]: if it was traced or trained at that size, set "
        f"input.size: [{side}, {side}] in {spec.spec_path.name}."
        if side is not None
        else f" Set input.size in {spec.spec_path.name} to the size it was traced with."
    )
    raise ConfigError(
        f"{path}: does not run on input.size {list(spec.input_size)} of {spec.spec_path} "
        f"(NCHW [1, 3, {height}, {width}]): {error}.{hint}"
    )


def load_torchscript(path: Path) -> Any:
    """``torch.jit.load`` on the CPU, in eval mode."""
    import torch

    try:
        return torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as exc:  # torch raises RuntimeError with its C++ trace appended
        raise ConfigError(f"{path}: torch.jit.load failed: {last_line(exc)}") from None


def _fails(module: Any, shape: Sequence[int]) -> Optional[str]:
    """None if ``module`` runs on zeros of ``shape``, else torch's reason in one line."""
    import torch

    try:
        with torch.no_grad():
            module(torch.zeros(*shape))
    except Exception as exc:
        return last_line(exc)
    return None


def last_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


# -- the float reference and the toolkit's loader -------------------------------------------


def float_inputs(spec: ModelSpec, pixels: Sequence[np.ndarray]) -> List[np.ndarray]:
    """``HxWx3 uint8`` images (model colour order) → the float model's input tensors:
    ``(x - mean) / std`` as model.yaml's ``onnx:`` section says (NCHW float32)."""
    onnx = spec.onnx
    return [to_onnx_input(p, onnx.layout, onnx.dtype, onnx.mean, onnx.std) for p in pixels]


def run_float(source: Source, tensors: Sequence[np.ndarray]) -> List[Outputs]:
    """Every output of the float source model for each input tensor."""
    if source.kind == "onnx":
        return run_onnx(source.path, tensors)
    return run_torchscript(source.path, tensors)


def run_onnx(path: Path, tensors: Sequence[np.ndarray]) -> List[Outputs]:
    """onnxruntime on the CPU, one inference per input tensor."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return [[np.asarray(o) for o in session.run(None, {name: t})] for t in tensors]


def run_torchscript(path: Path, tensors: Sequence[np.ndarray]) -> List[Outputs]:
    """torch on the CPU, one inference per input tensor; tuple or list outputs are flattened."""
    import torch

    module = load_torchscript(path)
    results = []
    with torch.no_grad():
        for tensor in tensors:
            out = module(torch.from_numpy(np.ascontiguousarray(tensor)))
            items = out if isinstance(out, (tuple, list)) else [out]
            results.append([np.asarray(item.numpy()) for item in items])
    return results


def load_into(kit: Toolkit, source: Source, spec: ModelSpec) -> None:
    """The toolkit's own loader for the source's kind (after ``config``; any directory)."""
    if source.kind == "onnx":
        kit.call("load_onnx", kit.rknn.load_onnx, model=str(source.path.absolute()))
        return
    height, width = spec.input_size
    kit.call(
        "load_pytorch",
        kit.rknn.load_pytorch,
        model=str(source.path.absolute()),
        input_size_list=[[1, 3, height, width]],
    )
