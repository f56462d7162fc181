"""The ONNX twin of a TorchScript source: what the daemon serves on a PC.

A board serves ``model.rknn``; a PC serves the same model's float ONNX file through
onnxruntime. When a model folder has only ``model.pt``, ``rkserve convert`` exports that twin
with ``torch.onnx.export`` (opset 13, static ``[1,3,H,W]`` input ``input``, outputs
``output`` or ``output<i>``) and writes it to model.yaml's ``onnx.file`` only if onnxruntime
running it agrees with torch running the TorchScript model on every validation image. Otherwise the report says why no twin was
written, and the conversion goes on: the ``.rknn`` does not depend on it.
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path
from typing import Any, Dict, List, Sequence

import numpy as np

from ..spec import ModelSpec
from .source import Outputs, Source, last_line, load_torchscript, run_onnx

OPSET = 13
# Largest difference allowed between the twin and torch, relative to the outputs' range:
# float32 graphs that compute the same thing differ in their last bits only.
TOLERANCE = 1e-4


def twin_needed(source: Source, spec: ModelSpec) -> bool:
    """A TorchScript source and no file at ``onnx.file`` yet."""
    return source.kind == "torchscript" and not spec.onnx_path.exists()


def export_twin(
    source: Source,
    spec: ModelSpec,
    tensors: Sequence[np.ndarray],
    reference: Sequence[Outputs],
    work: Path,
) -> Dict[str, Any]:
    """Export to ``work``, compare with ``reference`` (torch's outputs for ``tensors``).

    Returns the report's ``onnx_twin`` entry: ``file``, ``agrees`` (bool), ``max_abs_diff``,
    ``same_top`` (images whose largest output element is at the same place in both),
    ``images``, and ``staged`` (the exported file) or ``reason`` (why there is none).
    """
    entry: Dict[str, Any] = {"file": spec.onnx.file, "agrees": False}
    staged = work / "twin.onnx"
    try:
        _export(source.path, spec, staged, len(reference[0]))
        twin = run_onnx(staged, tensors)
    except Exception as exc:  # the exporter raises many kinds; the report names the reason
        entry["reason"] = f"torch.onnx.export failed: {last_line(exc)}"
        return entry
    entry.update(compare_outputs(reference, twin))
    if entry["agrees"]:
        entry["staged"] = str(staged)
    else:
        entry["reason"] = (
            f"onnxruntime on the exported file differs from torch by up to "
            f"{entry['max_abs_diff']:.3g} (allowed {TOLERANCE:g} of the output range)"
        )
    return entry


def _export(path: Path, spec: ModelSpec, target: Path, outputs: int) -> None:
    """Input ``input``; outputs ``output`` (or ``output0``, ``output1``, ... when several)."""
    import torch

    module = load_torchscript(path)
    dummy = torch.zeros(1, 3, *spec.input_size)
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated, still exact
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (dummy,),
            str(target),
            input_names=["input"],
            output_names=["output"] if outputs == 1 else [f"output{i}" for i in range(outputs)],
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )


def compare_outputs(reference: Sequence[Outputs], other: Sequence[Outputs]) -> Dict[str, Any]:
    """How far ``other`` is from ``reference`` (same images, same outputs in the same order)."""
    worst = 0.0
    span = 0.0
    same_top = 0
    for ref, out in zip(reference, other):
        if [r.shape for r in ref] != [o.shape for o in out]:
            return {"agrees": False, "max_abs_diff": float("inf"), "images": len(reference)}
        for r, o in zip(ref, out):
            worst = max(worst, float(np.max(np.abs(r.astype(np.float64) - o))))
            span = max(span, float(np.max(np.abs(r))))
        same_top += int(np.argmax(ref[0]) == np.argmax(out[0]))
    return {
        "agrees": worst <= TOLERANCE * max(span, 1.0) and same_top == len(reference),
        "max_abs_diff": worst,
        "same_top": same_top,
        "images": len(reference),
    }


def place_twin(entry: Dict[str, Any], spec: ModelSpec, accepted: bool) -> List[str]:
    """Move a staged twin to ``onnx.file`` (write, then rename) if the conversion was
    ``accepted``; the lines to print."""
    staged = entry.pop("staged", None)
    if staged is not None and not accepted:
        entry["reason"] = "the conversion was refused"
    if staged is None or not accepted:
        return [f"no ONNX twin written: {entry.get('reason', 'not exported')}"]
    partial = spec.onnx_path.with_name(f".{spec.onnx_path.name}.partial")
    shutil.copyfile(staged, partial)
    os.replace(partial, spec.onnx_path)
    entry["written"] = True
    return [
        f"ONNX twin written: {spec.onnx_path} (agrees with torch on {entry['images']} images, "
        f"max difference {entry['max_abs_diff']:.2g})"
    ]
