"""The conversion itself: rknn-toolkit2 build, simulator vs the float source, gate, report.

Runs only where rknn-toolkit2, onnxruntime and torch are installed (``.venv-convert``): they
are imported inside the functions. The flow is the toolkit's one path that works on a PC::

    check the source → float reference (onnxruntime or torch) → [ONNX twin of a .pt]
    → config → load_onnx | load_pytorch → build (or hybrid step1/step2) → export (to a temp
    file) → [accuracy_analysis] → init_runtime() (simulator) → inference per image

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
from typing import Any, Dict, Iterator, List, Optional, TextIO

import numpy as np

from ..errors import BackendError
from ..kernels.image import decode_image, resize, to_model_colour
from ..spec import ModelSpec
from .gate import Named, check_gate, measure, nothing_to_compare
from .hybrid import build_hybrid
from .recipe import Recipe, list_images, show_path
from .report import describe_rknn, parse_error_analysis, render_markdown, versions, write_json
from .source import Outputs, Source, float_inputs, load_into, open_source, run_float
from .toolkit import Toolkit
from .twin import export_twin, place_twin, twin_needed

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
    output: Path,
    json_report: Optional[Path] = None,
    analysis: bool = False,
    progress: Optional[Progress] = None,
) -> Outcome:
    """Convert ``recipe.source``, compare with the float model on the validation images,
    gate, report; a TorchScript source without an ONNX twin beside it also gets one
    (:mod:`.twin`)."""
    progress = progress or Progress()
    source = open_source(recipe.source, spec, recipe.quantize)
    images = list_images(recipe.validation)
    with progress.step("float reference", f"{source.runtime} on {len(images)} validation images"):
        pixels = [load_pixels(p, spec) for p in images]
        tensors = float_inputs(spec, pixels)
        reference = run_float(source, tensors)
    with tempfile.TemporaryDirectory(prefix="rkserve-convert-") as tmp:
        work = Path(tmp)
        twin = None
        if twin_needed(source, spec):
            with progress.step("ONNX twin", f"torch.onnx.export to {spec.onnx.file}, checked"):
                twin = export_twin(source, spec, tensors, reference, work)
        built = work / "model.rknn"
        with Toolkit() as kit, _working_directory(work):
            _build(kit, recipe, spec, source, work, progress)
            with progress.step("export"):
                kit.check("export_rknn", kit.rknn.export_rknn(str(built)))
            layers = _analyse(kit, pixels[0], work, progress) if analysis else None
            with progress.step("simulate", f"rknn-toolkit2 simulator on {len(images)} images"):
                kit.check("init_runtime", kit.rknn.init_runtime())
                quantized = [_like(kit.infer(p), r) for p, r in zip(pixels, reference)]
        named = [(p.name, r, q) for p, r, q in zip(images, reference, quantized)]
        report = _report(spec, recipe, source, named, built, progress)
        if layers is not None:
            report["analysis"] = layers
        accepted = not report["failures"]
        if twin is not None:
            report["onnx_twin"] = twin
            for line in place_twin(twin, spec, accepted):
                progress.say(line)
        markdown = _write_reports(report, spec, output, json_report)
        if accepted:
            _move_into_place(built, output)
    return Outcome(accepted, report["failures"], report, output, markdown)


@contextmanager
def _working_directory(path: Path) -> Iterator[None]:
    """The toolkit writes files into the current directory (hybrid quantization's cfg, the
    values of outputs it found constant): keep them in the conversion's temp folder."""
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def _build(
    kit: Toolkit, recipe: Recipe, spec: ModelSpec, source: Source, work: Path, progress: Progress
) -> None:
    with progress.step("load", f"{source.path} for {', '.join(recipe.target_platforms)}"):
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
        load_into(kit, source, spec)
    dataset = _write_dataset(recipe, spec, work) if recipe.quantize else None
    if recipe.hybrid_fp16_layers:
        with progress.step(
            "build", f"hybrid quantization, {len(recipe.hybrid_fp16_layers)} layers in float16"
        ):
            build_hybrid(kit, recipe, source.path, dataset, work, spec)
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
    kit: Toolkit, image: np.ndarray, work: Path, progress: Progress
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


def _like(quantized: Outputs, reference: Outputs) -> Outputs:
    """The simulator's outputs in the float model's shapes (it may drop or add unit axes)."""
    if len(quantized) != len(reference):
        raise BackendError(
            f"the simulator gave {len(quantized)} outputs, the float model {len(reference)}"
        )
    shaped = []
    for q, r in zip(quantized, reference):
        if q.shape != r.shape and q.size != r.size:
            raise BackendError(
                f"the simulator's output shape {list(q.shape)} does not match the float "
                f"model's {list(r.shape)}"
            )
        shaped.append(q.reshape(r.shape))
    return shaped


def _report(
    spec: ModelSpec,
    recipe: Recipe,
    source: Source,
    named: List[Named],
    built: Path,
    progress: Progress,
) -> Dict[str, Any]:
    rows, metrics = measure(spec, named)
    failures = check_gate(metrics, recipe.gate) + nothing_to_compare(rows)
    progress.timings["total"] = round(time.monotonic() - progress.started, 3)
    found = versions()
    return {
        "model": spec.name,
        "source": show_path(source.path, spec.folder),
        "source_kind": source.kind,
        "reference": f"{source.runtime} {found.get(source.runtime, '?')} running "
        f"{source.describe()}",
        "verdict": "refused" if failures else "accepted",
        "failures": failures,
        "metrics": metrics,
        "gate": recipe.gate,
        "images": rows,
        "rknn": describe_rknn(built),
        "recipe": recipe.to_dict(spec.folder),
        "timings": dict(progress.timings),
        "versions": found,
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
    offset = getattr(spec.task_config, "label_offset", 0)  # a classifier's
    markdown.write_text(render_markdown(report, spec.labels, offset), encoding="utf-8")
    if json_report is not None:
        write_json(report, json_report)
    return markdown


def _move_into_place(built: Path, output: Path) -> None:
    """Copy next to the destination, then rename: readers never see half a model."""
    staging = output.with_name(f".{output.name}.partial")
    shutil.copyfile(built, staging)
    os.replace(staging, output)
