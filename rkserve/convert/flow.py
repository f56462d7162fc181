"""The conversion itself: rknn-toolkit2 build, simulator vs float ONNX, gate, report.

Runs only where rknn-toolkit2 and onnxruntime are installed (``.venv-convert``): both are
imported inside the functions. The flow is the toolkit's one path that works on a PC::

    config → load_onnx → build (or hybrid step1/step2) → export (to a temp file)
           → [accuracy_analysis] → init_runtime() (simulator) → inference per image

The simulator only runs a model built in the same session, so everything happens on one
``RKNN`` object. The temp file becomes ``model.rknn`` only if the gate passes.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, TextIO

import numpy as np

from ..errors import BackendError, ConfigError
from ..spec import ModelSpec
from ..tasks.image import decode_image, resize, to_model_colour, to_onnx_input, to_raw_input
from .gate import Pair, check_gate, compare_classification, compare_segmentation
from .recipe import Recipe, list_images, show_path
from .report import (
    describe_rknn,
    parse_error_analysis,
    render_markdown,
    versions,
    write_json,
)

REPORT_NAME = "conversion_report.md"
REFUSED_NAME = "conversion_report.refused.md"


class Progress:
    """One ``==>`` line per step with the elapsed time, to stand out of the toolkit's logs."""

    def __init__(self, stream: Optional[TextIO] = None) -> None:
        self.stream = stream or sys.stderr
        self.started = time.monotonic()
        self.timings: Dict[str, float] = {}

    def say(self, text: str) -> None:
        _flush_toolkit_output()
        self.stream.write(f"==> [{time.monotonic() - self.started:6.1f}s] {text}\n")
        self.stream.flush()

    @contextmanager
    def step(self, name: str, detail: str = "") -> Iterator[None]:
        self.say(f"{name}: {detail}..." if detail else f"{name}...")
        start = time.monotonic()
        yield
        self.timings[name] = round(time.monotonic() - start, 3)
        self.say(f"{name}: done in {self.timings[name]:.1f}s")


def _flush_toolkit_output() -> None:
    """The toolkit's C code buffers stdout when it is a pipe: flush it so our lines stay in order."""
    sys.stdout.flush()
    with suppress(OSError, AttributeError):
        ctypes.CDLL(None).fflush(None)


@dataclass
class Outcome:
    """What happened: ``accepted`` is False when the gate refused (no model was written)."""

    accepted: bool
    failures: List[str]
    report: Dict[str, Any]
    output: Path
    markdown: Path
    extra: Dict[str, Any] = field(default_factory=dict)


def load_pixels(path: Path, spec: ModelSpec) -> np.ndarray:
    """An image file → ``HxWx3 uint8`` at the input size, in the model's colour order."""
    resized, _ = resize(
        decode_image(path.read_bytes()),
        spec.input_size,
        spec.resize,
        spec.interpolation,
        spec.shorter_side,
        fill=spec.pad,  # a detector's letterbox is black, as the daemon's
    )
    return np.ascontiguousarray(to_model_colour(resized, spec.color))


def convert_model(
    spec: ModelSpec,
    recipe: Recipe,
    onnx_path: Path,
    output: Path,
    json_report: Optional[Path] = None,
    analysis: bool = False,
    progress: Optional[Progress] = None,
) -> Outcome:
    """Convert, compare with the float model on the validation images, gate, report."""
    progress = progress or Progress()
    _check_onnx(onnx_path, spec, recipe)
    images = list_images(recipe.validation)
    with progress.step("float reference", f"onnxruntime on {len(images)} validation images"):
        pixels = [load_pixels(p, spec) for p in images]
        reference = _run_onnx(onnx_path, spec, pixels)
    with tempfile.TemporaryDirectory(prefix="rkserve-convert-") as tmp:
        work = Path(tmp)
        built = work / "model.rknn"
        with _Toolkit(recipe) as kit:
            _build(kit, recipe, spec, onnx_path, work, progress)
            with progress.step("export"):
                kit.check("export_rknn", kit.rknn.export_rknn(str(built)))
            layers = _analyse(kit, pixels[0], work, progress) if analysis else None
            with progress.step("simulate", f"rknn-toolkit2 simulator on {len(images)} images"):
                kit.check("init_runtime", kit.rknn.init_runtime())
                quantized = [kit.infer(p) for p in pixels]
        pairs: List[Pair] = [
            (p.name, r, _like(q, r)) for p, r, q in zip(images, reference, quantized)
        ]
        report = _report(spec, recipe, onnx_path, pairs, built, progress)
        if layers is not None:
            report["analysis"] = layers
        markdown = _write_reports(report, spec, output, json_report)
        if not report["failures"]:
            _move_into_place(built, output)
    return Outcome(not report["failures"], report["failures"], report, output, markdown)


def _check_onnx(path: Path, spec: ModelSpec, recipe: Recipe) -> None:
    import onnx

    if not path.is_file():
        raise ConfigError(f"{path}: ONNX model not found")
    model = onnx.load(str(path), load_external_data=False)
    ops = {node.op_type for node in model.graph.node}
    if recipe.quantize and ops & {"QuantizeLinear", "DequantizeLinear", "QLinearConv"}:
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


def _run_onnx(path: Path, spec: ModelSpec, pixels: List[np.ndarray]) -> List[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    onnx = spec.onnx
    results = []
    for image in pixels:
        tensor = to_onnx_input(image, onnx.layout, onnx.dtype, onnx.mean, onnx.std)
        results.append(np.asarray(session.run(None, {name: tensor})[0]))
    return results


class _Toolkit:
    """One ``RKNN`` object; failed calls (return codes or exceptions) become BackendError."""

    def __init__(self, recipe: Recipe) -> None:
        from rknn.api import RKNN

        self.rknn = RKNN(verbose=False)
        self.recipe = recipe

    def __enter__(self) -> _Toolkit:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.rknn.release()

    def check(self, what: str, ret: Any) -> None:
        if ret != 0:
            raise BackendError(
                f"rknn-toolkit2 {what} failed (returned {ret!r}); its log above says why"
            )

    def call(self, what: str, fn: Callable[..., Any], **kwargs: Any) -> None:
        try:
            ret = fn(**kwargs)
        except Exception as exc:  # the toolkit raises bare ValueError/RuntimeError with a traceback
            last = str(exc).strip().splitlines()[-1:] or [type(exc).__name__]
            raise BackendError(f"rknn-toolkit2 {what} failed: {last[0]}") from None
        self.check(what, ret)

    def infer(self, image: np.ndarray) -> np.ndarray:
        outputs = self.rknn.inference(inputs=[to_raw_input(image)], data_format="nhwc")
        if not outputs:
            raise BackendError(
                "rknn-toolkit2 simulator inference returned nothing; see its log above"
            )
        return np.asarray(outputs[0])


def _build(
    kit: _Toolkit, recipe: Recipe, spec: ModelSpec, onnx_path: Path, work: Path, progress: Progress
) -> None:
    with progress.step("load", f"{onnx_path} for {', '.join(recipe.target_platforms)}"):
        kit.call(
            "config",
            kit.rknn.config,
            mean_values=[list(recipe.mean)],
            std_values=[list(recipe.std)],
            target_platform=recipe.target_platforms[0],
            quantized_dtype=recipe.quantized_dtype,
            quantized_algorithm=recipe.quantized_algorithm,
            quantized_method=recipe.quantized_method,
        )
        kit.call("load_onnx", kit.rknn.load_onnx, model=str(onnx_path))
    dataset = _write_dataset(recipe, spec, work) if recipe.quantize else None
    if recipe.hybrid_fp16_layers:
        from .hybrid import build_hybrid

        with progress.step(
            "build", f"hybrid quantization, {len(recipe.hybrid_fp16_layers)} layers in float16"
        ):
            build_hybrid(kit, recipe, onnx_path, dataset, work, spec)
        return
    detail = (
        f"quantize {recipe.quantized_dtype}/{recipe.quantized_algorithm}"
        if recipe.quantize
        else "float16"
    )
    with progress.step("build", detail):
        kit.call("build", kit.rknn.build, do_quantization=recipe.quantize, dataset=dataset)


def _write_dataset(recipe: Recipe, spec: ModelSpec, work: Path) -> str:
    """Calibration images preprocessed as on the board, as NCHW uint8 .npy files, and their list."""
    folder = work / "calib"
    folder.mkdir()
    lines = []
    for index, path in enumerate(list_images(recipe.dataset)):  # type: ignore[arg-type]
        target = folder / f"{index:05d}.npy"
        np.save(target, load_pixels(path, spec).transpose(2, 0, 1)[None])
        lines.append(str(target))
    listing = work / "dataset.txt"
    listing.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(listing)


def _analyse(
    kit: _Toolkit, image: np.ndarray, work: Path, progress: Progress
) -> List[Dict[str, Any]]:
    sample = work / "analysis_input.npy"
    np.save(sample, image.transpose(2, 0, 1)[None])  # the toolkit wants NCHW .npy
    with progress.step("analysis", "rknn-toolkit2 accuracy_analysis on the first validation image"):
        kit.call(
            "accuracy_analysis",
            kit.rknn.accuracy_analysis,
            inputs=[str(sample)],
            output_dir=str(work / "snapshot"),
        )
        text = (work / "snapshot" / "error_analysis.txt").read_text(
            encoding="utf-8", errors="replace"
        )
        shutil.rmtree(work / "snapshot", ignore_errors=True)  # hundreds of MB of dumps
    return parse_error_analysis(text)


def _like(quantized: np.ndarray, reference: np.ndarray) -> np.ndarray:
    if quantized.shape == reference.shape:
        return quantized
    if quantized.size == reference.size:
        return quantized.reshape(reference.shape)
    raise BackendError(
        f"the simulator's output shape {list(quantized.shape)} does not match the ONNX model's "
        f"{list(reference.shape)}"
    )


def _report(
    spec: ModelSpec,
    recipe: Recipe,
    onnx_path: Path,
    pairs: List[Pair],
    built: Path,
    progress: Progress,
) -> Dict[str, Any]:
    if spec.task == "classification":
        rows, metrics = compare_classification(pairs)
    else:
        rows, metrics = compare_segmentation(pairs, spec.output_layout, spec.output != "class_map")
    failures = check_gate(metrics, recipe.gate)
    progress.timings["total"] = round(time.monotonic() - progress.started, 3)
    return {
        "model": spec.name,
        "onnx": show_path(onnx_path, spec.folder),
        "verdict": "refused" if failures else "accepted",
        "failures": failures,
        "metrics": metrics,
        "gate": recipe.gate,
        "images": rows,
        "rknn": describe_rknn(built),
        "recipe": recipe.to_dict(spec.folder),
        "timings": dict(progress.timings),
        "versions": versions(),
    }


def _write_reports(
    report: Dict[str, Any], spec: ModelSpec, output: Path, json_report: Optional[Path]
) -> Path:
    """``conversion_report.md`` describes the model.rknn beside it; a refusal gets its own file."""
    accepted = report["verdict"] == "accepted"
    markdown = output.parent / (REPORT_NAME if accepted else REFUSED_NAME)
    markdown.parent.mkdir(parents=True, exist_ok=True)
    if accepted:
        (output.parent / REFUSED_NAME).unlink(missing_ok=True)
    markdown.write_text(render_markdown(report, spec.labels, spec.label_offset), encoding="utf-8")
    if json_report is not None:
        write_json(report, json_report)
    return markdown


def _move_into_place(built: Path, output: Path) -> None:
    """Copy next to the destination, then rename: readers never see half a model."""
    staging = output.with_name(f".{output.name}.partial")
    shutil.copyfile(built, staging)
    os.replace(staging, output)
