#!/usr/bin/env python3
"""Train the two demo models shipped in ``models/`` on synthetic images, export and measure them.

``models/shapes``      classifier: one coloured shape (circle, square, triangle, star, cross)
                       on a textured background; input 96x96 RGB, output logits [1,5].
``models/shapes-seg``  segmenter: 0-4 shapes (background, circle, square, triangle), possibly
                       overlapping; input 128x128 RGB, output logits [1,4,128,128].

Images come from :mod:`tools.demo.shapes` (numpy + OpenCV, deterministic per seed). For each model
the script generates a training set, trains a small CNN on the CPU, exports ONNX (opset 13,
static batch 1, input ``input`` float32 NCHW normalised as (x - 127.5) / 127.5 *outside* the
graph, so rknn-toolkit2 can bake mean/std in at conversion), checks that the graph only uses
operators rknn-toolkit2 converts for rk3566/rk3568 and that onnxruntime agrees with torch,
evaluates the ONNX file on held-out images and writes ``model.onnx``, ``README.md`` (with the
figures), ``samples/`` and ``calib/`` into the model folder (the classifier also as TorchScript,
``model.pt``, traced from the same network: ``rkserve convert`` converts either);
``labels.txt`` and ``model.yaml`` only when missing (once they exist they are maintained by
hand). The recipes, the measurement and the README live in ``tools/demo/models.py``, which
needs no torch.

Run it from the repository root, in an environment with a CPU torch, onnx and onnxruntime
(about 18 minutes for both on 2 busy CPU cores)::

    python3.11 -m venv /tmp/vtrain
    /tmp/vtrain/bin/pip install torch onnx onnxruntime numpy opencv-python-headless pyyaml
    /tmp/vtrain/bin/python -m tools.demo.train_models                   # both models
    /tmp/vtrain/bin/python -m tools.demo.train_models --model shapes-seg
    /tmp/vtrain/bin/python -m tools.demo.train_models --eval-only       # measure, write nothing
    /tmp/vtrain/bin/python -m tools.demo.train_models --model shapes --torchscript-only

``--torchscript-only`` writes the classifier's ``model.pt`` from an existing ``model.onnx``
without training (the committed one was trained before this script wrote TorchScript):
the network rebuilt from the ONNX weights, each BatchNorm as folded into its convolution, and
checked against ``model.onnx`` on the held-out images.

Reproducible: the data come from fixed seeds, torch is seeded, deterministic and runs on a
fixed number of threads (``--threads``, default 2; another count may change the last bits).
Seeds (streams of ``tools.demo.shapes.sample_rng``) for shapes / shapes-seg: training 101 / 201,
evaluation 102 / 202, samples 103 / 203, calibration 104 / 204. Any other seed gives images
the models never saw.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Tuple

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from tools.demo import shapes as demo
from tools.demo.models import (
    MEAN,
    OPSET,
    RECIPES,
    STD,
    Recipe,
    evaluate,
    figures,
    graph_facts,
    results,
    to_input,
    write_images,
    write_readme,
    write_spec,
)

ROOT = Path(__file__).resolve().parents[2]

ALLOWED_OPS = {
    "Conv", "Relu", "Clip", "MaxPool", "AveragePool", "GlobalAveragePool", "Flatten", "Reshape",
    "Gemm", "MatMul", "Add", "Concat", "ConvTranspose", "Resize", "Constant",
}  # fmt: skip


# --- data --------------------------------------------------------------------------------------


def _one(job: Tuple[str, int, int, int]) -> Tuple[np.ndarray, np.ndarray]:
    task, seed, index, side = job
    rng = demo.sample_rng(seed, index)
    if task == "classification":
        image, label = demo.classification_sample(rng)
        target = np.array(label, np.int64)
    else:
        image, mask = demo.segmentation_sample(rng)
        target = cv2.resize(mask, (side, side), interpolation=cv2.INTER_NEAREST)
    return cv2.resize(image, (side, side), interpolation=cv2.INTER_LINEAR), target


def make_dataset(recipe: Recipe, workers: int) -> Tuple[np.ndarray, np.ndarray]:
    """The training set at model resolution: (N,H,W,3 uint8 images, N labels or N,H,W masks)."""
    jobs = [(recipe.task, recipe.seeds[0], i, recipe.side) for i in range(recipe.train_images)]
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        pairs = pool.map(_one, jobs, chunksize=64)
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


# --- networks ----------------------------------------------------------------------------------


def _cbr(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    """3x3 conv + BatchNorm (folded into the conv at export) + ReLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class Classifier(nn.Module):
    """Five 3x3 convs with max pooling between them, a global max pool (a 6x6 MaxPool, to stay
    with plain operators) and one linear layer: ~100k weights, ~25M multiply-adds.

    Max pooling matters here: a shape is told by a few local details (corners, points, arm
    ends) on a busy background; with strided convolutions and an average pool the same net
    stays near chance for thousands of steps."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _cbr(3, 16, 2), _cbr(16, 32), nn.MaxPool2d(2), _cbr(32, 48), nn.MaxPool2d(2),
            _cbr(48, 64), nn.MaxPool2d(2), _cbr(64, 96), nn.MaxPool2d(6), nn.Flatten(),
        )  # fmt: skip
        self.head = nn.Linear(96, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class Segmenter(nn.Module):
    """A small U-Net: max-pooling encoder down to 1/16, transposed-conv decoder with added
    skips back to 1/2, a 1x1 class head and a bilinear x2 resize to full resolution."""

    def __init__(self, classes: int, widths: Tuple[int, int, int, int] = (16, 24, 48, 64)) -> None:
        super().__init__()
        a, b, c, d = widths
        self.e1 = nn.Sequential(_cbr(3, a, 2), _cbr(a, a))
        self.e2 = nn.Sequential(nn.MaxPool2d(2), _cbr(a, b), _cbr(b, b))
        self.e3 = nn.Sequential(nn.MaxPool2d(2), _cbr(b, c), _cbr(c, c))
        self.e4 = nn.Sequential(nn.MaxPool2d(2), _cbr(c, d), _cbr(d, d))
        self.u3, self.d3 = nn.ConvTranspose2d(d, c, 2, 2), _cbr(c, c)
        self.u2, self.d2 = nn.ConvTranspose2d(c, b, 2, 2), _cbr(b, b)
        self.u1, self.d1 = nn.ConvTranspose2d(b, a, 2, 2), _cbr(a, a)
        self.head = nn.Conv2d(a, classes, 1)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.e1(x)
        b = self.e2(a)
        c = self.e3(b)
        d = self.e4(c)
        c = self.d3(self.u3(d) + c)
        b = self.d2(self.u2(c) + b)
        a = self.d1(self.u1(b) + a)
        return self.up(self.head(a))


def build_net(recipe: Recipe) -> nn.Module:
    if recipe.task == "classification":
        return Classifier(len(recipe.labels))
    return Segmenter(len(recipe.labels))


# --- training ----------------------------------------------------------------------------------


def _batch(
    images: np.ndarray, targets: np.ndarray, gen: torch.Generator
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Normalise, and flip/rotate the batch by a random multiple of 90 degrees (the shapes'
    classes do not change under either)."""
    x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() - MEAN) / STD
    y = torch.from_numpy(targets)
    turns, flip = (int(v) for v in torch.randint(0, 4, (2,), generator=gen))
    if y.ndim == 3:  # segmentation masks follow the image
        y = torch.rot90(y, turns, (1, 2))
        y = torch.flip(y, (2,)) if flip % 2 else y
    x = torch.rot90(x, turns, (2, 3))
    x = torch.flip(x, (3,)) if flip % 2 else x
    return x.contiguous(), y.contiguous().long()


def train(net: nn.Module, images: np.ndarray, targets: np.ndarray, recipe: Recipe) -> None:
    steps_per_epoch = len(images) // recipe.batch
    decay = [p for p in net.parameters() if p.ndim > 1]
    rest = [p for p in net.parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 1e-4}, {"params": rest, "weight_decay": 0.0}], recipe.lr
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, recipe.lr, total_steps=max(20, recipe.epochs * steps_per_epoch), pct_start=0.1
    )
    gen = torch.Generator().manual_seed(recipe.seeds[0])
    weight = torch.ones(len(recipe.labels))
    weight[0] = recipe.weight0
    net.train()
    for epoch in range(recipe.epochs):
        order = torch.randperm(len(images), generator=gen).numpy()
        total, right, count, started = 0.0, 0, 0, time.perf_counter()
        for step in range(steps_per_epoch):
            idx = np.sort(order[step * recipe.batch : (step + 1) * recipe.batch])
            x, y = _batch(images[idx], targets[idx], gen)
            logits = net(x)
            loss = nn.functional.cross_entropy(logits, y, weight=weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
            right += int((logits.argmax(1) == y).sum())
            count += y.numel()
        print(
            f"  {recipe.name} epoch {epoch + 1}/{recipe.epochs}: loss {total / len(order):.4f}, "
            f"train {'pixel ' if y.ndim == 3 else ''}accuracy {right / count:.4f}, "
            f"{time.perf_counter() - started:.0f} s",
            flush=True,
        )


def export(net: nn.Module, recipe: Recipe, path: Path) -> None:
    """ONNX opset 13, static [1,3,side,side] input ``input``, output ``logits``, BN folded."""
    net.eval()
    dummy = torch.zeros(1, 3, recipe.side, recipe.side)
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated but still exact
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            net, (dummy,), str(path), input_names=["input"], output_names=["logits"],
            opset_version=OPSET, do_constant_folding=True, dynamo=False,
        )  # fmt: skip
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    ops = {node.op_type for node in model.graph.node}
    if ops - ALLOWED_OPS:
        raise SystemExit(
            f"{path}: operators outside the rknn-safe set: {sorted(ops - ALLOWED_OPS)}"
        )
    with torch.no_grad():
        want = net(dummy + 0.25).numpy()
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"input": (dummy + 0.25).numpy()}
    )[0]
    if not np.allclose(want, got, atol=1e-3):
        raise SystemExit(f"{path}: onnxruntime disagrees with torch by {np.abs(want - got).max()}")
    print(f"  exported {path} ({path.stat().st_size / 1024:.0f} kB, ops: {', '.join(sorted(ops))})")


def export_torchscript(net: nn.Module, recipe: Recipe, path: Path) -> None:
    """The same network as TorchScript, traced at [1,3,side,side] (what ``rknn.load_pytorch``
    and ``rkserve convert`` take); torch runs the saved file to check it against ``net``."""
    net.eval()
    dummy = torch.zeros(1, 3, recipe.side, recipe.side)
    with torch.no_grad():
        torch.jit.trace(net, dummy).save(str(path))
        want = net(dummy + 0.25)
        got = torch.jit.load(str(path))(dummy + 0.25)
    if not torch.allclose(want, got, atol=1e-6):
        raise SystemExit(f"{path}: TorchScript disagrees with torch by {(want - got).abs().max()}")
    print(f"  exported {path} ({path.stat().st_size / 1024:.0f} kB, TorchScript)")


def classifier_from_onnx(path: Path, classes: int) -> Classifier:
    """The :class:`Classifier` holding an exported model.onnx's weights, for a model.onnx
    trained before this script wrote model.pt.

    The export folded each BatchNorm into its convolution (``w * g / s``, ``b' = beta -
    mean * g / s``), so the convolutions take the ONNX weights as they are and each BatchNorm
    becomes ``x + b'`` exactly: weight 1, running mean 0, running variance 1, eps 0."""
    from onnx import numpy_helper

    model = onnx.load(str(path))
    weights = {
        t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in model.graph.initializer
    }
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    net = Classifier(classes)
    blocks = [m for m in net.features if isinstance(m, nn.Sequential)]
    if len(convs) != len(blocks):
        raise SystemExit(f"{path}: {len(convs)} convolutions, the classifier has {len(blocks)}")
    with torch.no_grad():
        for node, (conv, norm, _) in zip(convs, blocks):
            conv.weight.copy_(weights[node.input[1]])
            norm.weight.fill_(1.0)
            norm.bias.copy_(weights[node.input[2]])
            norm.running_mean.zero_()
            norm.running_var.fill_(1.0)
            norm.eps = 0.0
        gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
        net.head.weight.copy_(weights[gemm.input[1]])
        net.head.bias.copy_(weights[gemm.input[2]])
    return net.eval()


# --- main --------------------------------------------------------------------------------------


def measure(recipe: Recipe, path: Path, threads: int) -> np.ndarray:
    """Evaluate ``path`` on the recipe's held-out images and print the figures."""
    started = time.perf_counter()
    confusion = evaluate(recipe, path, recipe.seeds[1], recipe.eval_images, threads)
    print(
        f"  {recipe.name}: {recipe.eval_images} held-out images in {time.perf_counter() - started:.0f} s"
    )
    print("\n".join("  " + line for line in results(recipe, confusion)), flush=True)
    return confusion


def run(recipe: Recipe, folder: Path, threads: int) -> Dict[str, float]:
    """Generate, train, export, measure; then write the model folder's files."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    started = time.perf_counter()
    images, targets = make_dataset(recipe, threads)
    print(
        f"  {recipe.name}: {len(images)} training images in {time.perf_counter() - started:.0f} s"
    )
    torch.manual_seed(recipe.seeds[0])
    net = build_net(recipe)
    started = time.perf_counter()
    train(net, images, targets, recipe)
    minutes = (time.perf_counter() - started) / 60
    print(f"  {recipe.name}: trained in {minutes:.1f} minutes")
    export(net, recipe, path)
    if recipe.task == "classification":  # the TorchScript source of `rkserve convert`'s tests
        export_torchscript(net, recipe, folder / "model.pt")
    confusion = measure(recipe, path, threads)
    facts = {
        "threads": str(threads),
        "train_images": str(recipe.train_images),
        "train_time": f"{minutes:.1f} minutes",
        "eval_images": str(recipe.eval_images),
        "torch": torch.__version__,
        **graph_facts(path),
    }
    write_spec(recipe, folder)
    write_readme(recipe, folder, confusion, facts)
    write_images(recipe, folder)
    return figures(confusion)


def torchscript_from_onnx(recipe: Recipe, folder: Path) -> None:
    """model.pt from model.onnx's weights; both must give the same class on every held-out
    image and the same logits within float32 rounding."""
    if recipe.task != "classification":
        print(f"  {recipe.name}: only the classifier ships as TorchScript; skipped")
        return
    net = classifier_from_onnx(folder / "model.onnx", len(recipe.labels))
    export_torchscript(net, recipe, folder / "model.pt")
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    traced = torch.jit.load(str(folder / "model.pt"))
    worst, same = 0.0, 0
    for index in range(recipe.eval_images):
        image, _ = demo.classification_sample(demo.sample_rng(recipe.seeds[1], index))
        x = to_input(image, recipe.side)
        want = session.run(None, {"input": x})[0]
        with torch.no_grad():
            got = traced(torch.from_numpy(x)).numpy()
        worst = max(worst, float(np.abs(want - got).max()))
        same += int(want.argmax() == got.argmax())
    print(
        f"  {recipe.name}: model.pt and model.onnx: same class on {same}/{recipe.eval_images} "
        f"held-out images, logits differ by {worst:.2g} at most"
    )
    if same != recipe.eval_images or worst > 1e-3:
        raise SystemExit(f"{folder / 'model.pt'}: disagrees with model.onnx")


def parse_args(argv: List[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train, export and measure the demo models models/shapes and models/shapes-seg.",
        epilog="See the module docstring for the environment and the seeds.",
    )
    parser.add_argument(
        "--model", choices=[*RECIPES, "all"], default="all", help="which model (default: all)"
    )
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=ROOT / "models",
        help="model repository (default: %(default)s)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=2,
        help="CPU threads for torch, data and onnxruntime (default: 2)",
    )
    parser.add_argument(
        "--eval-only",
        action="store_true",
        help="only measure the existing model.onnx on the held-out images (writes nothing)",
    )
    parser.add_argument(
        "--torchscript-only",
        action="store_true",
        help="classifier: write model.pt from the existing model.onnx's weights (no training) "
        "and check that both give the same class on the held-out images",
    )
    parser.add_argument("--epochs", type=int, help="override the recipe's epochs (quick trials)")
    parser.add_argument("--train-images", type=int, help="override the recipe's training-set size")
    parser.add_argument("--eval-images", type=int, help="override the number of held-out images")
    return parser.parse_args(argv)


def main(argv: List[str]) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    names = list(RECIPES) if args.model == "all" else [args.model]
    for name in names:
        recipe = replace(
            RECIPES[name],
            epochs=args.epochs or RECIPES[name].epochs,
            train_images=args.train_images or RECIPES[name].train_images,
            eval_images=args.eval_images or RECIPES[name].eval_images,
        )
        print(f"{name}: {recipe.task}, {recipe.side}x{recipe.side}", flush=True)
        folder = args.models_dir / name
        if args.eval_only:
            measure(recipe, folder / "model.onnx", args.threads)
        elif args.torchscript_only:
            torchscript_from_onnx(recipe, folder)
        else:
            run(recipe, folder, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
