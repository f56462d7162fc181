"""Recipes, measurement and model-folder files for the demo models (no torch needed).

Used by ``tools/demo/train_models.py``; see its docstring. Everything here runs with numpy,
OpenCV and onnxruntime (plus onnx for the graph facts in the README).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import cv2
import numpy as np
import onnxruntime as ort

from tools.demo import shapes as demo

ROOT = Path(__file__).resolve().parents[2]

OPSET = 13
MEAN, STD = 127.5, 127.5  # on RGB pixels, outside the graph: model.yaml's onnx.mean/std
PALETTE = ((0, 0, 0), (230, 60, 60), (60, 200, 80), (60, 110, 240))


@dataclass(frozen=True)
class Recipe:
    """Everything that differs between the two demo models."""

    name: str
    task: str
    labels: Tuple[str, ...]
    side: int  # square input side, pixels
    train_images: int
    epochs: int
    batch: int
    lr: float
    eval_images: int
    weight0: float  # loss weight of class 0 (background is most pixels of a segmentation)
    seeds: Tuple[int, int, int, int]  # train, eval, samples, calib


RECIPES: Dict[str, Recipe] = {
    "shapes": Recipe(
        "shapes", "classification", demo.CLASSES, 96,
        train_images=16000, epochs=5, batch=32, lr=3e-3, eval_images=1000, weight0=1.0,
        seeds=(101, 102, 103, 104),
    ),
    "shapes-seg": Recipe(
        "shapes-seg", "segmentation", demo.SEG_CLASSES, 128,
        train_images=8000, epochs=5, batch=16, lr=3e-3, eval_images=300, weight0=0.5,
        seeds=(201, 202, 203, 204),
    ),
}  # fmt: skip


def to_input(rgb: np.ndarray, side: int) -> np.ndarray:
    """HxWx3 uint8 RGB → [1,3,side,side] float32, exactly as model.yaml describes."""
    x = cv2.resize(rgb, (side, side), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    return ((x - MEAN) / STD).transpose(2, 0, 1)[None]


# --- evaluation with onnxruntime ---------------------------------------------------------------


def evaluate(recipe: Recipe, path: Path, seed: int, count: int, threads: int) -> np.ndarray:
    """Confusion matrix [true, predicted] over ``count`` images of stream ``seed``: images for
    a classifier, pixels at the source resolution for a segmenter (argmax at model resolution,
    then nearest-neighbour resize back, as a serving pipeline does)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    k = len(recipe.labels)
    confusion = np.zeros((k, k), np.int64)
    for index in range(count):
        rng = demo.sample_rng(seed, index)
        if recipe.task == "classification":
            image, label = demo.classification_sample(rng)
            logits = session.run(None, {"input": to_input(image, recipe.side)})[0]
            confusion[label, int(np.argmax(logits[0]))] += 1
            continue
        image, mask = demo.segmentation_sample(rng)
        logits = session.run(None, {"input": to_input(image, recipe.side)})[0]
        classes = np.argmax(logits[0], axis=0).astype(np.uint8)
        classes = cv2.resize(classes, mask.shape[::-1], interpolation=cv2.INTER_NEAREST)
        pairs = mask.astype(np.int64).ravel() * k + classes.ravel()
        confusion += np.bincount(pairs, minlength=k * k).reshape(k, k)
    return confusion


def figures(confusion: np.ndarray) -> Dict[str, float]:
    """accuracy (images or pixels), and per-class IoU with their mean over classes 1.."""
    diag = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - diag
    iou = np.divide(diag, union, out=np.zeros_like(diag), where=union > 0)
    out = {"accuracy": float(diag.sum() / confusion.sum()), "miou": float(iou[1:].mean())}
    out.update({f"iou_{i}": float(v) for i, v in enumerate(iou)})
    return out


# --- the model folder --------------------------------------------------------------------------


def write_once(folder: Path, labels: Sequence[str], spec_lines: Sequence[str]) -> None:
    """Write labels.txt and model.yaml where they are missing: once they exist they are
    maintained by hand."""
    for name, lines in (("labels.txt", labels), ("model.yaml", spec_lines)):
        path = folder / name
        if not path.exists():
            path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_spec(recipe: Recipe, folder: Path) -> None:
    """labels.txt and model.yaml, only when missing (edited by hand afterwards)."""
    kind = "Synthetic shapes " + ("classifier" if recipe.task == "classification" else "segmenter")
    lines = [
        f"task: {recipe.task}",
        f"description: {kind} (demo model, trained by tools/demo/train_models.py)",
        "labels: labels.txt",
        f"input: {{size: [{recipe.side}, {recipe.side}], color: rgb, resize: stretch}}",
        "onnx: {file: model.onnx, layout: nchw, dtype: float32, "
        f"mean: [{MEAN}, {MEAN}, {MEAN}], std: [{STD}, {STD}, {STD}]}}",
        "rknn: {file: model.rknn}",
    ]
    if recipe.task == "classification":
        lines.append("output: {kind: logits, top_k: 3}")
    else:
        lines.append("output: {kind: logits, layout: nchw}")
        lines.append("palette: [" + ", ".join(f"[{r}, {g}, {b}]" for r, g, b in PALETTE) + "]")
    lines += ["convert:", "  target_platform: rk3568", "  quantize: true"]
    lines.append("  dataset: calib      # folder of calibration images")
    write_once(folder, recipe.labels, lines)


def write_images(recipe: Recipe, folder: Path) -> None:
    """samples/ (small JPEGs at assorted sizes, masks for the segmenter) and calib/ (20 JPEGs
    at the input size, for quantization)."""
    for sub in ("samples", "calib"):
        shutil.rmtree(folder / sub, ignore_errors=True)
    demo.write_samples(
        recipe.task, folder / "samples", 6, recipe.seeds[2], quality=80, max_width=320
    )
    size = (recipe.side, recipe.side)
    demo.write_samples(recipe.task, folder / "calib", 20, recipe.seeds[3], size=size, quality=90)
    for mask in (folder / "calib").glob("*.mask.png"):  # calibration takes every image it finds
        mask.unlink()


def _table(header: List[str], rows: List[List[str]]) -> List[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def results(recipe: Recipe, confusion: np.ndarray) -> List[str]:
    got = figures(confusion)
    names = list(recipe.labels)
    rows = [[f"**{names[i]}**"] + [str(v) for v in confusion[i]] for i in range(len(names))]
    matrix = _table(["true \\ predicted", *names], rows)
    if recipe.task == "classification":
        head = f"Accuracy: **{got['accuracy']:.1%}** ({int(np.trace(confusion))} / {confusion.sum()} images)."
        return [head, "", "Confusion matrix (rows: true class, columns: predicted):", "", *matrix]
    ious = _table(["class", "IoU"], [[n, f"{got[f'iou_{i}']:.3f}"] for i, n in enumerate(names)])
    head = (
        f"mIoU over the foreground classes: **{got['miou']:.3f}**; "
        f"pixel accuracy: **{got['accuracy']:.1%}**."
    )
    return [
        head,
        "",
        *ious,
        "",
        "Pixel confusion matrix (rows: true, columns: predicted):",
        "",
        *matrix,
    ]


# One string per line of README.md (paragraphs unwrapped), formatted with write_readme's fields.
README = (
    "# {name}: a synthetic-shapes {kind}",
    "",
    "A demo model that ships with rkserve so that a fresh clone serves something real: it "
    "{what}. Its images are drawn by `tools/demo/shapes.py` (random textures, colours, sizes, aspect "
    "ratios, rotations, blur, noise and JPEG artefacts), so `tools.demo.shapes` makes any number of "
    "fresh ones.",
    "",
    "- classes (`labels.txt`): {classes}",
    "- input `input`: `[1,3,{side},{side}]` float32 NCHW, RGB, plain (stretch) resize with "
    "bilinear interpolation, then `(x - 127.5) / 127.5`. The normalisation is not in the graph: "
    "`model.yaml` gives it (`onnx.mean`/`onnx.std`) and the RKNN conversion bakes it in, so the "
    "`.rknn` takes raw uint8 RGB pixels.",
    "- output `logits`: {output}.",
    "- network: {network}.",
    "- `model.onnx`: opset {opset}, static shapes, {params} weights, {size}; operators: {ops}."
    "{torchscript}",
    "- `samples/`: a few images to try{sample_note}; `calib/`: 20 images at the input size for "
    "quantization.",
    "",
    "## Training",
    "",
    "{train_images} generated images (seed {train_seed}) resized to the input size as at serving "
    "time, random flips and 90-degree turns; {epochs} epochs of AdamW (one-cycle, peak learning "
    "rate {lr:g}, batch {batch}), cross-entropy{weighting}. Training took {train_time} on "
    "{threads} CPU threads (torch {torch}).",
    "",
    "## Measured (onnxruntime, float32)",
    "",
    "On {eval_images} held-out images (seed {eval_seed}), {unit}:",
    "",
    "{results}",
    "",
    "## Reproduce",
    "",
    "```",
    "python -m tools.demo.train_models --model {name}              # train, export, measure, write",
    "python -m tools.demo.train_models --model {name} --eval-only  # measure model.onnx again",
    "```",
    "",
    "`tools/demo/train_models.py` says in its docstring which environment it needs.",
)

_TEXTS = {
    "classification": {
        "kind": "classifier",
        "what": "tells which one shape (circle, square, triangle, star or cross) is drawn on a "
        "textured background",
        "output": "`[1,{k}]` scores (no softmax in the graph)",
        "network": "five 3x3 convolutions (BatchNorm folded in) with max pooling between them, "
        "a global max pool (as a 6x6 MaxPool) and one linear layer",
        "sample_note": " (the class is in the file name)",
        "torchscript": "\n- `model.pt`: the same network as TorchScript, traced at `[1,3,{side},{side}]` "
        "from the trained module (BatchNorm not folded): the PyTorch source `rkserve convert` "
        "takes (`convert.source: model.pt`, docs/CONVERT.md).",
        "unit": "one label each",
    },
    "segmentation": {
        "kind": "segmenter",
        "what": "segments circles, squares and triangles (0-4 per image, possibly overlapping) "
        "on a textured background",
        "output": "`[1,{k},{side},{side}]` scores (NCHW); the class map is their argmax over "
        "axis 1",
        "network": "a small U-Net: 3x3 convolutions (BatchNorm folded in) and max pooling down "
        "to 1/16, transposed convolutions back up to 1/2 with the encoder's maps added in, a 1x1 "
        "class head and a bilinear x2 resize",
        "sample_note": " with their ground truth (`<name>.mask.png`, pixel = class index)",
        "torchscript": "",
        "unit": "every pixel at the image's own size (argmax at {side}x{side}, then a "
        "nearest-neighbour resize back, as a serving pipeline does)",
    },
}


def write_readme(
    recipe: Recipe, folder: Path, confusion: np.ndarray, facts: Dict[str, str]
) -> None:
    """README.md: what the model is, how it was trained, and its measured figures."""
    k, side = len(recipe.labels), recipe.side
    texts = {key: text.format(k=k, side=side) for key, text in _TEXTS[recipe.task].items()}
    weighting = f" (background weighted {recipe.weight0:g})" if recipe.weight0 != 1 else ""
    text = "\n".join(README).format(
        name=recipe.name,
        classes=", ".join(f"{i} {n}" for i, n in enumerate(recipe.labels)),
        side=side,
        opset=OPSET,
        train_seed=recipe.seeds[0],
        eval_seed=recipe.seeds[1],
        epochs=recipe.epochs,
        lr=recipe.lr,
        batch=recipe.batch,
        weighting=weighting,
        results="\n".join(results(recipe, confusion)),
        **texts,
        **facts,
    )
    (folder / "README.md").write_text(text + "\n", encoding="utf-8")


def graph_facts(path: Path) -> Dict[str, str]:
    """Weights, file size and operators of an ONNX file, for the README."""
    import onnx

    model = onnx.load(str(path))
    params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    return {
        "params": f"{params / 1000:.0f}k",
        "size": f"{path.stat().st_size / 1024:.0f} kB",
        "ops": ", ".join(sorted({n.op_type for n in model.graph.node})),
    }
