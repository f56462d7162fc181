"""How close the converted model is to its float ONNX twin, and the gate that refuses it.

Pure functions on the two models' raw outputs for the same validation images. Each metric
``name`` is gated by the threshold ``min_<name>`` of the recipe's ``gate:`` section:

- ``top1_agreement``: share of images whose top-1 class is the same (classification);
- ``top5_agreement``: mean overlap of the two top-5 sets, ``|A ∩ B| / 5`` (k = 5, or the number
  of classes if fewer);
- ``pixel_agreement``: share of pixels whose argmax class is the same (segmentation);
- ``miou``: mean IoU of the quantized argmax map against the float one, over every class that
  appears in either map across the whole validation set;
- ``cosine``: mean cosine similarity of the raw outputs, flattened (all outputs joined);
- detection (:func:`compare_detection`): both models' outputs are post-processed into boxes
  the same way (the daemon's decode and NMS), and each quantized box is matched to the
  unmatched float box of the same class it overlaps most, at IoU >= 0.5 (best score first):
  ``box_recall`` (matched / float boxes), ``box_precision`` (matched / quantized boxes),
  ``mean_iou`` (of the matched pairs) and ``score_agreement`` (1 - mean absolute score
  difference of the matched pairs), each pooled over all validation images. A validation
  set on which the float model finds no box cannot vouch for a detector: recall is 0 then.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Sequence, Tuple

import numpy as np

from ..kernels.detect import box_iou, postprocess
from ..kernels.image import Placement

if TYPE_CHECKING:
    from ..kernels.detect import Detections
    from ..spec import ModelSpec

Pair = Tuple[str, np.ndarray, np.ndarray]  # (image name, float output, quantized output)
# (image name, every float output, every quantized output), outputs in the model's order
Named = Tuple[str, List[np.ndarray], List[np.ndarray]]
Rows = List[Dict[str, Any]]
ReadBoxes = Callable[[Sequence[np.ndarray]], "Detections"]  # raw outputs → boxes, best first
MATCH_IOU = 0.5


def measure(spec: ModelSpec, named: Sequence[Named]) -> Tuple[Rows, Dict[str, float]]:
    """The rows and metrics of ``spec.task`` for the two models' outputs on each image."""
    if spec.task == "detection":
        return compare_detection(named, read_boxes(spec))
    pairs: List[Pair] = [(name, ref[0], out[0]) for name, ref, out in named]
    if spec.task == "classification":
        return compare_classification(pairs)
    config = spec.task_config
    return compare_segmentation(pairs, config.layout, config.kind != "class_map")


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two arrays of the same size (1.0 when both are all zeros)."""
    x = a.astype(np.float64).ravel()
    y = b.astype(np.float64).ravel()
    norm = float(np.linalg.norm(x) * np.linalg.norm(y))
    if norm == 0.0:
        return 1.0 if not x.any() and not y.any() else 0.0
    return float(np.dot(x, y) / norm)


def top_k(scores: np.ndarray, k: int) -> List[int]:
    """Indices of the ``k`` highest of ``scores`` (any shape with one non-unit axis), best first."""
    flat = scores.astype(np.float64).ravel()
    return [int(i) for i in np.argsort(-flat, kind="stable")[:k]]


def class_map(output: np.ndarray, layout: str) -> np.ndarray:
    """``[1,C,H,W]`` (nchw) or ``[1,H,W,C]`` (nhwc) scores, or a ``[1,H,W]`` class map → ``HxW``."""
    if output.ndim == 4:
        axis = 1 if layout == "nchw" else 3
        return np.asarray(output.argmax(axis=axis)[0])
    if output.ndim == 3:
        return np.asarray(output[0]).astype(np.int64)
    raise ValueError(f"a segmentation output must be 3-D or 4-D, got shape {list(output.shape)}")


def compare_classification(pairs: Sequence[Pair]) -> Tuple[Rows, Dict[str, float]]:
    """Per-image rows and the metrics ``top1_agreement``, ``top5_agreement``, ``cosine``."""
    rows: Rows = []
    for name, ref, out in pairs:
        k = min(5, ref.size)
        ref_top, out_top = top_k(ref, k), top_k(out, k)
        rows.append(
            {
                "image": name,
                "float_top1": ref_top[0],
                "float_score": float(ref.ravel()[ref_top[0]]),
                "quant_top1": out_top[0],
                "quant_score": float(out.ravel()[out_top[0]]),
                "top1_agree": ref_top[0] == out_top[0],
                "top5_overlap": len(set(ref_top) & set(out_top)) / k,
                "cosine": cosine(ref, out),
            }
        )
    metrics = {
        "top1_agreement": _mean([float(r["top1_agree"]) for r in rows]),
        "top5_agreement": _mean([r["top5_overlap"] for r in rows]),
        "cosine": _mean([r["cosine"] for r in rows]),
    }
    return rows, metrics


def compare_segmentation(
    pairs: Sequence[Pair], layout: str, scores: bool = True
) -> Tuple[Rows, Dict[str, float]]:
    """Per-image rows and ``pixel_agreement``, ``miou`` (and ``cosine`` when outputs are scores)."""
    rows: Rows = []
    inter: Dict[int, int] = {}
    union: Dict[int, int] = {}
    same = total = 0
    for name, ref, out in pairs:
        ref_map, out_map = class_map(ref, layout), class_map(out, layout)
        agree = int(np.count_nonzero(ref_map == out_map))
        same, total = same + agree, total + ref_map.size
        for cls in np.union1d(np.unique(ref_map), np.unique(out_map)).tolist():
            a, b = ref_map == cls, out_map == cls
            inter[cls] = inter.get(cls, 0) + int(np.count_nonzero(a & b))
            union[cls] = union.get(cls, 0) + int(np.count_nonzero(a | b))
        row: Dict[str, Any] = {"image": name, "pixel_agreement": agree / ref_map.size}
        row["float_classes"] = np.unique(ref_map).tolist()
        if scores:
            row["cosine"] = cosine(ref, out)
        rows.append(row)
    metrics = {
        "pixel_agreement": same / total if total else 0.0,
        "miou": _mean([inter[c] / union[c] for c in union]),
    }
    if scores:
        metrics["cosine"] = _mean([r["cosine"] for r in rows])
    return rows, metrics


def compare_detection(
    named: Sequence[Named], read_boxes: ReadBoxes
) -> Tuple[Rows, Dict[str, float]]:
    """Per-image rows and ``box_recall``, ``box_precision``, ``mean_iou``,
    ``score_agreement``, ``cosine``; ``read_boxes`` turns one image's raw outputs into boxes."""
    rows: Rows = []
    ious: List[float] = []
    gaps: List[float] = []
    found = kept = 0
    for name, ref, out in named:
        want, got = read_boxes(ref), read_boxes(out)
        pairs = match_boxes(want, got)
        pair_ious = [iou for _, _, iou in pairs]
        pair_gaps = [abs(float(want.scores[f]) - float(got.scores[q])) for f, q, _ in pairs]
        ious += pair_ious
        gaps += pair_gaps
        found, kept = found + len(want), kept + len(got)
        rows.append(
            {
                "image": name,
                "float_boxes": len(want),
                "quant_boxes": len(got),
                "matched": len(pairs),
                "mean_iou": _mean(pair_ious) if pairs else None,
                "max_score_diff": max(pair_gaps) if pairs else None,
                "float_classes": sorted({int(c) for c in want.classes}),
                "cosine": cosine(_joined(ref), _joined(out)),
            }
        )
    matched = len(ious)
    metrics = {
        "box_recall": matched / found if found else 0.0,
        "box_precision": matched / kept if kept else float(found == 0),
        "mean_iou": _mean(ious) if ious else float(found == kept == 0),
        "score_agreement": 1.0 - _mean(gaps) if gaps else float(found == kept == 0),
        "cosine": _mean([r["cosine"] for r in rows]),
    }
    return rows, metrics


def read_boxes(spec: ModelSpec) -> ReadBoxes:
    """A detector's raw outputs → its boxes as the daemon finds them with model.yaml's
    defaults (``output.format``, ``strides``, ``anchors``, ``conf``, ``iou``, ``max_det``),
    in model-input pixels."""

    output = spec.task_config
    height, width = spec.input_size
    placement = Placement(1.0, 1.0, 0, 0, width, height)

    def read(outputs: Sequence[np.ndarray]) -> Detections:
        return postprocess(
            outputs,
            output.format,
            placement,
            spec.input_size,
            spec.input_size,
            output.conf,
            output.iou,
            output.max_det,
            strides=output.strides,
            anchors=output.anchors,
        )

    return read


def match_boxes(want: Detections, got: Detections) -> List[Tuple[int, int, float]]:
    """``(float index, quantized index, IoU)`` pairs: each quantized box, best score first,
    takes the unmatched float box of its class that it overlaps most, if that IoU >= 0.5."""

    if not len(want) or not len(got):
        return []
    overlap = np.nan_to_num(box_iou(got.boxes, want.boxes))
    overlap[got.classes[:, None] != want.classes[None, :]] = 0.0
    taken = np.zeros(len(want), bool)
    pairs = []
    for q in np.argsort(-got.scores, kind="stable").tolist():
        row = np.where(taken, 0.0, overlap[q])
        f = int(np.argmax(row))
        if row[f] >= MATCH_IOU:
            taken[f] = True
            pairs.append((f, int(q), float(row[f])))
    return pairs


def _joined(outputs: Sequence[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(o, np.float64).ravel() for o in outputs])


def check_gate(metrics: Mapping[str, float], gate: Mapping[str, float]) -> List[str]:
    """One message per threshold not met, e.g. ``top1_agreement 0.700 < min_top1_agreement 0.900``."""
    failures = []
    for key, threshold in gate.items():
        name = key[len("min_") :]
        value = metrics.get(name)
        if value is None:
            failures.append(f"{name} was not measured but {key} is set to {threshold:.3f}")
        elif value < threshold:
            failures.append(f"{name} {value:.3f} < {key} {threshold:.3f}")
    return failures


def nothing_to_compare(rows: Rows) -> List[str]:
    """Why the figures say nothing: a detector's float model found no box on any image."""
    if rows and "float_boxes" in rows[0] and not any(r["float_boxes"] for r in rows):
        return [
            f"the float model found no box on any of the {len(rows)} validation images, so "
            "there was nothing to compare: validate on images with objects (and check "
            "output.conf and the onnx: normalisation)"
        ]
    return []


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else 0.0
