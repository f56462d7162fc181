"""The conversion report: a JSON-ready dict, its Markdown rendering, and the toolkit's analysis.

The report dict has the keys ``model``, ``source`` (the converted file), ``source_kind``
(``onnx`` | ``torchscript``), ``reference`` (what ran the float model), ``verdict``
(``accepted`` | ``refused``), ``failures``, ``versions``, ``recipe``, ``timings`` (seconds),
``metrics``, ``gate``, ``images`` (one row per validation image), ``rknn`` (what the produced
file says about itself) and, with
``--analysis``, ``analysis`` (per-layer cosine of the quantized model vs float, from
rknn-toolkit2's ``accuracy_analysis``) and, for a TorchScript source without an ONNX file,
``onnx_twin`` (see :mod:`rkserve.convert.twin`).
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from ..board.rknnfile import read_rknn

_ANALYSIS_LINE = re.compile(
    r"^\[(?P<op>[^\]]+)\]\s+(?P<name>\S.*?)\s+(?P<ec>\S+)\s*\|\s*(?P<ee>\S+)\s+(?P<sc>\S+)\s*\|\s*(?P<se>\S+)\s*$"
)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
WORST_LAYERS = 10


def parse_error_analysis(text: str) -> List[Dict[str, Any]]:
    """Rows of rknn-toolkit2's ``error_analysis.txt``: op, name, entire/single cosine and euclid.

    "entire" compares each layer's output with float when every earlier layer is quantized
    too (errors accumulate); "single" feeds the layer float inputs (its own error only).
    Layers the toolkit fused away have no figures and are left out.
    """
    rows = []
    for line in _ANSI.sub("", text).splitlines():
        match = _ANALYSIS_LINE.match(line.rstrip())
        if not match:
            continue
        numbers = [_number(match.group(k)) for k in ("ec", "ee", "sc", "se")]
        if any(n is None for n in numbers):
            continue
        rows.append(
            {
                "op": match.group("op"),
                "name": match.group("name"),
                "entire_cosine": numbers[0],
                "entire_euclidean": numbers[1],
                "single_cosine": numbers[2],
                "single_euclidean": numbers[3],
            }
        )
    return rows


def _number(text: str) -> Optional[float]:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def write_json(report: Mapping[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")


def render_markdown(
    report: Mapping[str, Any], labels: Sequence[str] = (), label_offset: int = 0
) -> str:
    """The report as Markdown: verdict, metrics vs gate, per-image table, recipe, versions."""
    verdict = "accepted" if report["verdict"] == "accepted" else "**REFUSED**"
    lines = [f"# Conversion report: {report['model']}", "", f"Verdict: {verdict}"]
    lines += [f"- {failure}" for failure in report["failures"]]
    lines += ["", "## Accuracy against the float model", ""]
    if report.get("source"):
        loader = "load_onnx" if report.get("source_kind") == "onnx" else "load_pytorch"
        lines += [
            f"Converted from `{report['source']}` (rknn-toolkit2 `{loader}`); float reference: "
            f"{report.get('reference', '?')}.",
            "",
        ]
    lines += _metrics_table(report["metrics"], report["gate"])
    lines += [
        "",
        f"Validation images: {len(report['images'])} from `{report['recipe']['validation']}`",
        "",
    ]
    lines += _images_table(report["images"], labels, label_offset)
    if report.get("analysis"):
        lines += ["", *_analysis_section(report["analysis"])]
    if report.get("onnx_twin"):
        lines += ["", *_twin_section(report["onnx_twin"])]
    sections = (
        ("Produced file", report.get("rknn") or {}),
        ("Recipe", report["recipe"]),
        ("Timings (seconds)", report["timings"]),
        ("Versions", report["versions"]),
    )
    for title, mapping in sections:
        lines += ["", f"## {title}", "", *_bullets(mapping)]
    return "\n".join(lines) + "\n"


def _metrics_table(metrics: Mapping[str, float], gate: Mapping[str, float]) -> List[str]:
    lines = ["| metric | value | threshold | |", "|---|---|---|---|"]
    for name, value in metrics.items():
        threshold = gate.get(f"min_{name}")
        if threshold is None:
            lines.append(f"| {name} | {value:.4f} | - | reported |")
        else:
            mark = "pass" if value >= threshold else "**FAIL**"
            lines.append(f"| {name} | {value:.4f} | >= {threshold:.3f} | {mark} |")
    return lines


def _images_table(
    rows: Sequence[Mapping[str, Any]], labels: Sequence[str], offset: int
) -> List[str]:
    if rows and "float_top1" in rows[0]:
        out = [
            "| image | float top-1 | quantized top-1 | same | top-5 overlap | cosine |",
            "|---|---|---|---|---|---|",
        ]
        for r in rows:
            ref = f"{_label(r['float_top1'], labels, offset)} ({r['float_score']:.3f})"
            got = f"{_label(r['quant_top1'], labels, offset)} ({r['quant_score']:.3f})"
            same = "yes" if r["top1_agree"] else "**no**"
            out.append(
                f"| {r['image']} | {ref} | {got} | {same} | {r['top5_overlap']:.2f} | {r['cosine']:.4f} |"
            )
        return out
    if rows and "float_boxes" in rows[0]:
        return _boxes_table(rows, labels, offset)
    out = ["| image | pixel agreement | cosine | classes (float) |", "|---|---|---|---|"]
    for r in rows:
        cos = f"{r['cosine']:.4f}" if "cosine" in r else "-"
        classes = ", ".join(_label(c, labels, offset) for c in r["float_classes"])
        out.append(f"| {r['image']} | {r['pixel_agreement']:.4f} | {cos} | {classes} |")
    return out


def _boxes_table(
    rows: Sequence[Mapping[str, Any]], labels: Sequence[str], offset: int
) -> List[str]:
    out = [
        "| image | float boxes | quantized boxes | matched | mean IoU | max score diff | cosine "
        "| classes (float) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        iou = "-" if r["mean_iou"] is None else f"{r['mean_iou']:.3f}"
        gap = "-" if r["max_score_diff"] is None else f"{r['max_score_diff']:.3f}"
        classes = ", ".join(_label(c, labels, offset) for c in r["float_classes"])
        out.append(
            f"| {r['image']} | {r['float_boxes']} | {r['quant_boxes']} | {r['matched']} | {iou} "
            f"| {gap} | {r['cosine']:.4f} | {classes} |"
        )
    return out


def _label(index: int, labels: Sequence[str], offset: int) -> str:
    position = index - offset
    return f"{index} {labels[position]}" if 0 <= position < len(labels) else str(index)


def _analysis_section(rows: Sequence[Mapping[str, Any]]) -> List[str]:
    worst = sorted(rows, key=lambda r: r["single_cosine"])[:WORST_LAYERS]
    last = rows[-1]
    lines = [
        "## Per-layer analysis (rknn-toolkit2 accuracy_analysis, first validation image)",
        "",
        f"{len(rows)} layers measured; output layer `{last['name']}`: cosine {last['entire_cosine']:.5f} "
        "(all layers quantized). The layers that lose the most on their own (single cosine),",
        "candidates for `hybrid_fp16_layers`:",
        "",
        "| layer | op | single cosine | entire cosine |",
        "|---|---|---|---|",
    ]
    for r in worst:
        lines.append(
            f"| `{r['name']}` | {r['op']} | {r['single_cosine']:.5f} | {r['entire_cosine']:.5f} |"
        )
    return lines


def _twin_section(twin: Mapping[str, Any]) -> List[str]:
    lines = ["## ONNX twin (for serving on a PC)", ""]
    if twin.get("written"):
        lines.append(
            f"Written to `{twin['file']}` by torch.onnx.export: onnxruntime agrees with torch on "
            f"{twin['images']} validation images (max difference {twin['max_abs_diff']:.2g}, "
            f"same top output on {twin['same_top']})."
        )
    else:
        lines.append(f"Not written: {twin.get('reason', 'not exported')}.")
    return lines


def _bullets(mapping: Mapping[str, Any]) -> List[str]:
    out = []
    for key, value in mapping.items():
        if isinstance(value, float):
            value = f"{value:.2f}"
        elif isinstance(value, (list, tuple, dict)):
            value = json.dumps(value)
        out.append(f"- {key}: `{value}`")
    return out


def describe_rknn(path: Path) -> Dict[str, Any]:
    """What the produced file says about itself (read back, as the board will read it)."""

    info = read_rknn(path)
    return {
        "size_bytes": info.size,
        "toolkit_version": info.toolkit_version,
        "target_platforms": list(info.target_platforms),
        "inputs": [list(t.shape) for t in info.inputs],
        "outputs": [list(t.shape) for t in info.outputs],
    }


def versions() -> Dict[str, str]:
    """The versions of everything that shaped the conversion."""
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": sys.version.split()[0]}
    for name in (
        "rknn-toolkit2",
        "onnx",
        "onnxruntime",
        "numpy",
        "opencv-python-headless",
        "torch",
    ):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found
