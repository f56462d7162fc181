"""The emulated board: real rknn-toolkit-lite2 wheels on aarch64 CPython under qemu-user.

``tests/emulated/build.sh`` builds (and caches in ``.emulated/``) an arm64 Debian userland,
the aarch64 wheels and board roots holding a real board's files plus the stand-in
``librknnrt.so`` of ``tests/emulated/standin``. This module is the host's half:

- :func:`board` returns a built :class:`Board` (or skips the test, saying why);
- :func:`write_attrs` and :func:`record` write what the stand-in reads: the tensor attributes
  of a ``.rknn`` (from rkserve's own reader) and, for an exact input, the outputs to replay;
- :class:`RecordingBackend` is the ONNX twin behind rkserve's engine that records, for every
  raw NHWC input the engine prepares, the twin's outputs: the answers the board must give.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Sequence

import numpy as np

from rkserve.board.rknnfile import TensorInfo, read_rknn

ROOT = Path(__file__).resolve().parents[1]
EMULATED = Path(os.environ.get("RKSERVE_EMULATED", ROOT / ".emulated"))
BUILD = ROOT / "tests" / "emulated" / "build.sh"
DRIVER = ROOT / "tests" / "emulated" / "drive.py"
LITE2_RELEASES = ("2.3.0", "2.3.2", "2.5.0")
NO_RECORD = -1001  # the stand-in's code for an input it has no record of
NO_RECORD_LINE = "rknn-standin: NO RECORD for input"
_TYPES = {"int8": "INT8", "uint8": "UINT8", "float16": "FP16", "float32": "FP32", "int64": "INT64"}
_built: Dict[str, str] = {}


@dataclass(frozen=True)
class Board:
    """One board root (``rk3568``, ``rk3568-seed``, ``rk3588``) of the emulated board."""

    name: str
    root: Path

    @property
    def python(self) -> List[str]:
        """The command that runs the board's CPython 3.11 under emulation."""
        return ["qemu-aarch64-static", "-L", str(self.root), str(self.root / "usr/bin/python3.11")]

    def env(self, lite2: str, **extra: str) -> Dict[str, str]:
        """The environment of a board process: rkserve from this tree, the aarch64 wheels."""
        site = EMULATED / "site"
        paths = [ROOT, site / "deps", site / f"lite2-{lite2}"]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "RKNN_"))}
        env.update(PYTHONPATH=os.pathsep.join(map(str, paths)), PYTHONDONTWRITEBYTECODE="1")
        env["LD_PRELOAD"] = "/usr/lib/qemu-access.so"  # see tests/emulated/standin/qemu_access.c
        env.update(extra)
        return env

    def start(self, args: Sequence[str], lite2: str, log: Path, **env: str) -> subprocess.Popen:
        """Start ``python3.11 ARGS`` on the board, its stdout and stderr going to ``log``."""
        with open(log, "wb") as out:
            return subprocess.Popen(
                [*self.python, *args],
                env=self.env(lite2, **env),
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=str(ROOT),
            )

    def run(
        self, args: Sequence[str], lite2: str, timeout: float = 240, **env: str
    ) -> subprocess.CompletedProcess:
        """Run ``python3.11 ARGS`` on the board; stdout and stderr captured as text."""
        return subprocess.run(
            [*self.python, *args],
            env=self.env(lite2, **env),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=str(ROOT),
        )


def board(name: str = "rk3568") -> Board:
    """The built board ``name``; skips the calling test when it cannot be built here."""
    import pytest

    if "error" not in _built and "ok" not in _built:
        _built.update(_build())
    if "error" in _built:
        pytest.skip(f"emulated board unavailable: {_built['error']}")
    return Board(name, EMULATED / "boards" / name)


def _build() -> Dict[str, str]:
    if shutil.which("qemu-aarch64-static") is None:
        return {"error": "qemu-aarch64-static not installed (apt-get install qemu-user-static)"}
    try:
        done = subprocess.run(
            ["bash", str(BUILD), "--out", str(EMULATED)],
            capture_output=True,
            text=True,
            timeout=900,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"{BUILD} took more than 15 minutes"}
    if done.returncode != 0:
        return {"error": f"{BUILD} failed: {(done.stderr or done.stdout).strip()[-500:]}"}
    return {"ok": "built"}


# --------------------------------------------------------------------------- replay records


def model_key(rknn: Path) -> str:
    """The stand-in's name for a model: the SHA-256 of its bytes."""
    return hashlib.sha256(Path(rknn).read_bytes()).hexdigest()


def input_key(inputs: Sequence[np.ndarray]) -> str:
    """The stand-in's name for uint8 inputs: the SHA-256 of their NHWC bytes, in order."""
    digest = hashlib.sha256()
    for tensor in inputs:
        assert tensor.dtype == np.uint8, "records are of uint8 inputs, as the daemon sends"
        digest.update(np.ascontiguousarray(tensor).tobytes())
    return digest.hexdigest()


def runtime_shape(tensor: TensorInfo, is_input: bool) -> List[int]:
    """The dims ``rknn_query`` reports: image inputs in NHWC, outputs as the model has them."""
    from rkserve.backends.rknnlite import nhwc

    return list(nhwc(tensor.shape) if is_input else tensor.shape)


def _attr_line(role: str, tensor: TensorInfo) -> str:
    dims = runtime_shape(tensor, role == "input")
    layout = "nhwc" if role == "input" and len(dims) == 4 else tensor.runtime_layout
    fmt = {"nchw": "NCHW", "nhwc": "NHWC"}.get(layout, "UNDEFINED")
    dtype = _TYPES.get(tensor.dtype, "FP32")
    qnt = "AFFINE" if dtype in ("INT8", "UINT8") else "NONE"
    fields = [role, tensor.name, fmt, dtype, qnt, "0", "1.0", ",".join(map(str, dims))]
    return "\t".join(fields)


def write_attrs(records: Path, rknn: Path) -> str:
    """Write ``<model-sha>.model``: target platforms, toolkit and tensors of ``rknn``."""
    info = read_rknn(rknn)
    lines = [
        "platform\t" + ",".join(info.target_platforms),
        "toolkit\t" + info.toolkit_version,
        *(_attr_line("input", t) for t in info.inputs),
        *(_attr_line("output", t) for t in info.outputs),
    ]
    key = model_key(rknn)
    records.mkdir(parents=True, exist_ok=True)
    (records / f"{key}.model").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return key


def record(
    records: Path, rknn: Path, inputs: Sequence[np.ndarray], outputs: Sequence[np.ndarray]
) -> str:
    """Record ``outputs`` (in the model's order and shapes) as the answer to ``inputs``."""
    info = read_rknn(rknn)
    for tensor, out in zip(info.outputs, outputs):
        assert tuple(out.shape) == tuple(tensor.shape), (tensor.name, out.shape, tensor.shape)
    key = input_key(inputs)
    folder = records / model_key(rknn)
    folder.mkdir(parents=True, exist_ok=True)
    data = b"".join(np.ascontiguousarray(o, np.float32).tobytes() for o in outputs)
    (folder / f"{key}.out").write_bytes(data)
    return key


class RecordingBackend:
    """The ONNX twin with the NPU's interface: takes the raw ``1xHxWx3 uint8`` input the
    rknnlite backend gets, answers with the twin's outputs, and records them for replay."""

    name = "recording"
    raw_input = True

    def __init__(self, spec, records: Path) -> None:  # type: ignore[no-untyped-def]
        from rkserve.backends import TensorSpec
        from rkserve.backends.onnx import OnnxBackend
        from rkserve.backends.rknnlite import nhwc

        self.spec, self.records = spec, records
        self.twin = OnnxBackend(spec)
        info = read_rknn(spec.rknn_path)
        self.inputs = [TensorSpec(t.name, nhwc(t.shape), "uint8") for t in info.inputs]
        self.outputs = [TensorSpec(t.name, t.shape, "float32") for t in info.outputs]
        write_attrs(records, spec.rknn_path)

    def run(self, inputs: Sequence[np.ndarray]) -> List[np.ndarray]:
        from rkserve.kernels import image

        onnx = self.spec.onnx
        fed = [
            image.to_onnx_input(t[0], onnx.layout, onnx.dtype, onnx.mean, onnx.std) for t in inputs
        ]
        outputs = self.twin.run(fed)
        record(self.records, self.spec.rknn_path, inputs, outputs)
        return outputs

    def close(self) -> None:
        self.twin.close()


# --------------------------------------------------------------------------- the daemon


def board_inputs(
    target: Board, lite2: str, model: Path, images: Sequence[Path], work: Path
) -> Dict[str, np.ndarray]:
    """The inputs the runtime must receive for ``images`` on the board: a reference
    pre-processing run there (tests/emulated/prepare.py), keyed by image file name."""
    out = work / f"{model.name}-board-inputs.npz"
    args = ["tests/emulated/prepare.py", str(model), str(out), *map(str, images)]
    done = target.run(args, lite2)
    assert done.returncode == 0, done.stderr[-3000:]
    with np.load(out) as saved:
        return {name: saved[name] for name in saved.files}


def record_twin(
    records: Path,
    model: Path,
    inputs: Dict[str, np.ndarray],
    images: Sequence[Path],
    params: Dict[str, Any],
) -> Dict[str, Dict[str, Any]]:
    """Record the ONNX twin's outputs for the board's ``inputs`` and for the loader's
    warm-up; returns, per image name, the answer the host computes from those outputs."""
    from rkserve.engine import Engine
    from rkserve.tasks import load_spec

    spec = load_spec(model)
    recording = Engine(spec, RecordingBackend(spec, records))
    height, width = spec.input_size
    recording.infer(np.zeros((height, width, 3), np.uint8))  # the loader's warm-up
    answers = {}
    for image in images:
        prepared = recording.prepare(image.read_bytes(), recording.parse_params(params))
        prepared.tensors = [inputs[image.name]]
        answers[image.name] = recording.finish(prepared, recording.run(prepared)).result
    return answers


def on_board(daemon: Any, target: Board, lite2: str, **env: str) -> Any:
    """Make a ``tools/harness.py`` Daemon run on the emulated board instead of the host."""
    assert daemon.args[1:3] == ["-m", "rkserve"]
    daemon.args[:1] = target.python
    daemon.env = target.env(lite2, **env)
    return daemon


def same_answer(got: Dict[str, Any], want: Dict[str, Any]) -> None:
    """Equal results; scores may differ in the last bits (numpy's exp on NEON vs AVX)."""
    import pytest

    if "mask" not in want:  # classification
        assert [c["index"] for c in got["classes"]] == [c["index"] for c in want["classes"]]
        assert [c["label"] for c in got["classes"]] == [c["label"] for c in want["classes"]]
        for g, w in zip(got["classes"], want["classes"]):
            assert g["score"] == pytest.approx(w["score"], rel=1e-6, abs=1e-9)
    else:
        assert got == want
