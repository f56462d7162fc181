"""Recipe, measurement and model-folder files for the demo detector (no torch needed).

Used by ``tools/demo/train_detector.py``; see its docstring. The model is measured the way
rkserve serves it: letterbox to the input size with pad 0, ``(x - 127.5) / 127.5``, the
exported ONNX through onnxruntime, then the project's detection post-processing
(:mod:`rkserve.kernels.detect`) back in source-image pixels.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
import onnxruntime as ort

from rkserve.kernels import detect
from rkserve.kernels.image import Placement, resize, to_onnx_input
from tools.demo import shapes as demo
from tools.demo.models import MEAN, OPSET, STD, graph_facts, write_once

ROOT = Path(__file__).resolve().parents[2]

PAD = 0  # letterbox fill: the model zoo's (RGA's) value, so the .rknn sees what it was trained on


@dataclass(frozen=True)
class DetRecipe:
    """The demo detector's data, training and measurement settings."""

    name: str = "shapes-det"
    labels: Tuple[str, ...] = demo.CLASSES
    side: int = 160  # square input side, pixels
    strides: Tuple[int, ...] = (8, 16, 32)
    bins: int = 16  # DFL bins per box side (the yolov8 export's 64 = 4 x 16 channels)
    train_images: int = 8000
    epochs: int = 14
    batch: int = 32
    lr: float = 4e-3
    polish_epochs: int = 4  # a second one-cycle from the first one's weights, at polish_lr
    polish_lr: float = 2e-3
    eval_images: int = 500
    conf: float = 0.25  # serving defaults (the model zoo's OBJ_THRESH / NMS_THRESH)
    iou: float = 0.45
    map_conf: float = 0.001  # the model zoo's mAP settings
    map_iou: float = 0.65
    seeds: Tuple[int, int, int, int] = (301, 302, 303, 304)  # train, eval, samples, calib


RECIPE = DetRecipe()


# --- input -------------------------------------------------------------------------------------


def letterbox(rgb: np.ndarray, side: int) -> Tuple[np.ndarray, Placement]:
    """HxWx3 uint8 RGB → (side x side x 3 uint8, where the image sits): as the daemon does."""
    return resize(rgb, (side, side), "letterbox", fill=PAD)


def to_tensor(boxed: np.ndarray) -> np.ndarray:
    """side x side x 3 uint8 → [1,3,side,side] float32, normalised as model.yaml says."""
    return to_onnx_input(boxed, "nchw", "float32", (MEAN,) * 3, (STD,) * 3)


# --- measurement -------------------------------------------------------------------------------


def session(path: Path, threads: int) -> Any:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def predict(
    sess: Any, recipe: DetRecipe, rgb: np.ndarray, conf: float, iou: float
) -> detect.Detections:
    """Letterbox, run, post-process (:func:`rkserve.kernels.detect.postprocess`): detections in
    the source image's pixels, best first."""
    boxed, placement = letterbox(rgb, recipe.side)
    outputs = sess.run(None, {"input": to_tensor(boxed)})
    size = (recipe.side, recipe.side)
    return detect.postprocess(
        outputs, "yolov8", placement, size, rgb.shape[:2], conf, iou, strides=recipe.strides
    )


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    lt, rb = np.maximum(box[:2], boxes[:, :2]), np.minimum(box[2:], boxes[:, 2:])
    inter = np.clip(rb - lt, 0, None).prod(1)
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    return inter / (area(box) + area(boxes) - inter)


def match(
    found: detect.Detections, boxes: np.ndarray, classes: np.ndarray, at: float = 0.5
) -> np.ndarray:
    """True positives of ``found`` (best first): same class, IoU >= ``at`` with a ground-truth
    box no better-scored detection took (the VOC / COCO rule)."""
    taken = np.zeros(len(boxes), bool)
    hits = np.zeros(len(found), bool)
    for i, (box, cls) in enumerate(zip(found.boxes, found.classes)):
        iou = np.where((classes == cls) & ~taken, _iou(box, boxes), 0.0) if len(boxes) else []
        if len(iou) and iou.max() >= at:
            taken[int(np.argmax(iou))] = hits[i] = True
    return hits


def average_precision(scores: np.ndarray, hits: np.ndarray, truths: int) -> float:
    """Area under the precision-recall curve with precision made monotone (all points, VOC)."""
    if truths == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(hits[order])
    recall = np.concatenate([[0.0], tp / truths, [1.0]])
    precision = np.concatenate([[1.0], tp / np.arange(1, len(tp) + 1), [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    return float(np.sum((recall[1:] - recall[:-1]) * precision[1:]))


def measure(recipe: DetRecipe, path: Path, threads: int, count: int = 0) -> Dict[str, Any]:
    """mAP@0.5 (at the mAP thresholds) and precision/recall (at the serving defaults) of the
    ONNX file on ``count`` (default the recipe's) held-out images; prints and returns them."""
    sess, k = session(path, threads), len(recipe.labels)
    ranked: List[List[Tuple[float, bool]]] = [[] for _ in range(k)]
    truths, tp, fp = np.zeros(k, np.int64), np.zeros(k, np.int64), np.zeros(k, np.int64)
    count = count or recipe.eval_images
    for index in range(count):
        image, boxes, classes = demo.detection_sample(demo.sample_rng(recipe.seeds[1], index))
        truths += np.bincount(classes, minlength=k)
        found = predict(sess, recipe, image, recipe.map_conf, recipe.map_iou)
        for score, cls, hit in zip(found.scores, found.classes, match(found, boxes, classes)):
            ranked[int(cls)].append((float(score), bool(hit)))
        found = predict(sess, recipe, image, recipe.conf, recipe.iou)
        hits = match(found, boxes, classes)
        tp += np.bincount(found.classes[hits], minlength=k)
        fp += np.bincount(found.classes[~hits], minlength=k)
    ap = [
        average_precision(np.array([s for s, _ in r]), np.array([h for _, h in r], bool), int(t))
        for r, t in zip(ranked, truths)
    ]
    out = {
        "map50": float(np.nanmean(ap)), "ap": ap, "truths": truths.tolist(),
        "tp": tp.tolist(), "fp": fp.tolist(), "images": count,
        "precision": float(tp.sum() / max(1, tp.sum() + fp.sum())),
        "recall": float(tp.sum() / max(1, truths.sum())),
    }  # fmt: skip
    print("\n".join("  " + line for line in results(recipe, out)), flush=True)
    return out


def _table(header: List[str], rows: List[List[str]]) -> List[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def results(recipe: DetRecipe, got: Dict[str, Any]) -> List[str]:
    rows = []
    for i, name in enumerate(recipe.labels):
        t, tp, fp = got["truths"][i], got["tp"][i], got["fp"][i]
        rows.append(
            [
                name,
                str(t),
                f"{got['ap'][i]:.3f}",
                f"{tp / max(1, tp + fp):.3f}",
                f"{tp / max(1, t):.3f}",
            ]
        )
    head = (
        f"mAP@0.5: **{got['map50']:.3f}**; at the serving defaults (conf {recipe.conf}, "
        f"iou {recipe.iou}): precision **{got['precision']:.3f}**, recall **{got['recall']:.3f}** "
        f"({sum(got['tp'])} of {sum(got['truths'])} shapes found, {sum(got['fp'])} false detections)."
    )
    table = _table(["class", "shapes", "AP@0.5", "precision", "recall"], rows)
    return [head, "", *table]


# --- the model folder --------------------------------------------------------------------------


def write_spec(recipe: DetRecipe, folder: Path) -> None:
    """labels.txt and model.yaml, only when missing (edited by hand afterwards)."""
    strides = ", ".join(str(s) for s in recipe.strides)
    lines = [
        "task: detection",
        "description: Synthetic shapes detector (demo model, trained by "
        "tools/demo/train_detector.py)",
        "labels: labels.txt",
        f"input: {{size: [{recipe.side}, {recipe.side}], color: rgb, resize: letterbox, "
        f"pad: {PAD}}}",
        "onnx: {file: model.onnx, layout: nchw, dtype: float32, "
        f"mean: [{MEAN}, {MEAN}, {MEAN}], std: [{STD}, {STD}, {STD}]}}",
        "rknn: {file: model.rknn}",
        f"output: {{format: yolov8, strides: [{strides}], conf: {recipe.conf}, "
        f"iou: {recipe.iou}, max_det: 100}}",
        "convert:",
        "  target_platform: rk3568",
        "  quantize: true",
        "  dataset: calib            # calibration images at assorted sizes, letterboxed as served",
        "  quantized_dtype: w8a8",
        "  quantized_algorithm: normal",
        "  quantized_method: channel",
        "  validation: samples       # the *.boxes.json beside them are not images",
        "  gate:                     # simulator vs float ONNX boxes on the validation images",
        "    min_box_recall: 0.9",
        "    min_box_precision: 0.9",
        "    min_mean_iou: 0.8",
        "    min_score_agreement: 0.9",
    ]
    write_once(folder, recipe.labels, lines)


def write_images(recipe: DetRecipe, folder: Path) -> None:
    """samples/ (JPEGs at assorted sizes with ``<name>.boxes.json`` ground truth) and calib/
    (20 JPEGs at assorted sizes, letterboxed by the converter as at serving time)."""
    for sub in ("samples", "calib"):
        shutil.rmtree(folder / sub, ignore_errors=True)
    demo.write_samples(
        "detection", folder / "samples", 8, recipe.seeds[2], quality=85, max_width=320
    )
    demo.write_samples(
        "detection", folder / "calib", 20, recipe.seeds[3], quality=90, max_width=320
    )
    for truth in (folder / "calib").glob("*.boxes.json"):  # only images to calibrate on
        truth.unlink()


def write_folder(
    recipe: DetRecipe, folder: Path, got: Dict[str, Any], facts: Dict[str, str]
) -> None:
    """README.md, samples/ and calib/; labels.txt and model.yaml only when missing."""
    write_spec(recipe, folder)
    write_readme(recipe, folder, got, {**facts, **graph_facts(folder / "model.onnx")})
    write_images(recipe, folder)


# One string per line of README.md (paragraphs unwrapped), formatted with write_readme's fields.
README = (
    "# {name}: a synthetic-shapes detector",
    "",
    "A demo model that ships with rkserve so that a fresh clone serves a real detector: it "
    "finds circles, squares, triangles, stars and crosses (0-6 per image, touching or partly "
    "overlapping, at any size from about a tenth to half of the image's short side) on "
    "textured backgrounds. Its images are drawn by `tools.demo.shapes.detection_sample` (random "
    "textures, colours, sizes, rotations, blur, noise and JPEG artefacts), so any seed gives "
    "fresh held-out images with their boxes.",
    "",
    "- classes (`labels.txt`): {classes}",
    "- input `input`: `[1,3,{side},{side}]` float32 NCHW, RGB, letterboxed (scaled to fit, "
    "centred, padded with {pad} as the model zoo's RGA letterbox does), then "
    "`(x - 127.5) / 127.5`. The normalisation is not in the graph: `model.yaml` gives it and "
    "the RKNN conversion bakes it in, so the `.rknn` takes raw uint8 RGB pixels. {side}x{side} "
    "because the shapes are simple: their boxes are about 12 to 70 px at this size, within reach of "
    "strides 8/16/32 and the 16 DFL bins (up to 15 cells from a cell centre), and a "
    "{side}x{side} network trains in minutes on a CPU.",
    "- outputs: the model zoo's **yolov8 rknn-optimised layout**, 6 tensors: per stride "
    "{strides_text} a DFL box tensor `dfl<stride>` `[1,{dfl},H,W]` (4 sides x {bins} bins: a "
    "softmax over the bins, whose expectation is the distance in grid cells from the cell "
    "centre to the left, top, right and bottom side) then the class scores `cls<stride>` "
    "`[1,{k},H,W]`, already sigmoided; no score-sum tensors. H = W = {grids}.",
    "- network: {network}.",
    "- `model.onnx`: opset {opset}, static shapes, {params} weights, {size}; operators: {ops}.",
    "- `samples/`: images to try, each with its ground truth `<name>.boxes.json` "
    '(`[{{"index", "label", "box": [x1, y1, x2, y2]}}]`, pixels, as in a detection '
    "reply); `calib/`: 20 images at assorted sizes for quantization (the converter letterboxes "
    "them as the daemon does).",
    "",
    "## Training",
    "",
    "{train_images} generated images (seed {train_seed}) letterboxed to the input size as at "
    "serving time, random flips and 90-degree turns (boxes turned with them); {epochs} epochs "
    "of AdamW (one-cycle, peak learning rate {lr:g}, batch {batch}), then {polish_epochs} more "
    "from those weights (a second one-cycle peaking at {polish_lr:g}). {assignment} Training "
    "took {train_time} on {threads} CPU threads shared with other work (torch {torch}).",
    "",
    "## Measured (onnxruntime, float32)",
    "",
    "On {eval_images} held-out images (seed {eval_seed}), `model.onnx` through onnxruntime "
    "and the project's detection post-processing, boxes compared in the source image's "
    "pixels. mAP@0.5 is the mean over the classes of the area under each class's "
    "precision-recall curve (all points, precision made monotone), with the model zoo's mAP "
    "settings (score threshold {map_conf}, NMS IoU {map_iou}); a detection counts when its "
    "class is right and its IoU with a not yet matched true box is at least 0.5. Precision "
    "and recall are at the serving defaults.",
    "",
    "{results}",
    "",
    "## Reproduce",
    "",
    "```",
    "python -m tools.demo.train_detector              # train, export, measure, write",
    "python -m tools.demo.train_detector --eval-only  # measure model.onnx again",
    "```",
    "",
    "`tools/demo/train_detector.py` says in its docstring which environment it needs.",
)

NETWORK = (
    "a 4x4 stride-4 stem, strided 3x3 convolutions (BatchNorm folded in, ReLU) down to "
    "strides 8/16/32, a top-down feature pyramid (1x1 laterals added to nearest-neighbour "
    "upsampled coarser maps, 3x3 smoothing) and a decoupled head (a 3x3 conv then a 1x1 conv "
    "for the box bins; the same for the class scores, then a sigmoid), trained as one head "
    "shared by the three strides (the DFL distances are in cells, so one head serves all) "
    "and exported as three copies of it. Three strides although few boxes reach stride 32 at "
    "this size: the yolov8 export and the model zoo's post-processing expect three"
)

ASSIGNMENT = (
    "Each true box trains the cells of the stride(s) that suit its size (longest side "
    "below 40 px on stride 8, 24-80 px on stride 16, above 48 px on stride 32) whose "
    "centres lie inside it and within 1.5 cells of its centre, plus the cell holding its "
    "centre; the scores learn the IoU of the predicted box (binary cross-entropy, quality "
    "focal style), the boxes 5 x (1 - GIoU) plus the distribution focal loss over the bins."
)


def write_readme(
    recipe: DetRecipe, folder: Path, got: Dict[str, Any], facts: Dict[str, str]
) -> None:
    """README.md: what the model is, how it was trained, and its measured figures."""
    text = "\n".join(README).format(
        name=recipe.name,
        classes=", ".join(f"{i} {n}" for i, n in enumerate(recipe.labels)),
        side=recipe.side,
        pad=PAD,
        strides_text="/".join(str(s) for s in recipe.strides),
        dfl=4 * recipe.bins,
        bins=recipe.bins,
        k=len(recipe.labels),
        grids="/".join(str(recipe.side // s) for s in recipe.strides),
        network=NETWORK,
        opset=OPSET,
        train_images=recipe.train_images,
        train_seed=recipe.seeds[0],
        eval_seed=recipe.seeds[1],
        eval_images=got["images"],
        epochs=recipe.epochs,
        lr=recipe.lr,
        polish_epochs=recipe.polish_epochs,
        polish_lr=recipe.polish_lr,
        batch=recipe.batch,
        assignment=ASSIGNMENT,
        map_conf=recipe.map_conf,
        map_iou=recipe.map_iou,
        results="\n".join(results(recipe, got)),
        **facts,
    )
    (folder / "README.md").write_text(text + "\n", encoding="utf-8")
