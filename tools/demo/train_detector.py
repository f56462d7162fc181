#!/usr/bin/env python3
"""Train the demo detector ``models/shapes-det`` on synthetic images, export and measure it.

``models/shapes-det``  detector: 0-6 coloured shapes (circle, square, triangle, star, cross)
                       per image on a textured background; input 160x160 RGB letterboxed with
                       pad 0; outputs in the model zoo's yolov8 rknn-optimised layout.

Images come from :func:`tools.demo.shapes.detection_sample`. The script generates a training set
(letterboxed to the input size as at serving time), trains a small anchor-free YOLO-style
network on the CPU, exports ONNX (opset 13, static batch 1, input ``input`` float32 NCHW
normalised as (x - 127.5) / 127.5 outside the graph, so rknn-toolkit2 bakes mean/std in),
checks that the graph only uses operators rknn-toolkit2 converts for rk3566/rk3568 and that
onnxruntime agrees with torch, measures mAP@0.5 of the ONNX file on held-out images and writes
``model.onnx``, ``README.md``, ``samples/`` and ``calib/`` into the model folder. The recipe,
the measurement and the README live in ``tools/demo/detector.py``, which needs no torch.

The network (three strides, 8/16/32): a plain conv backbone, a top-down feature pyramid and
one decoupled head, shared by the strides in training and copied per stride in the export,
giving the yolov8 export's two tensors, ``dfl<stride>`` (4 box
sides x 16 bins: a softmax over the bins and its expectation is the distance, in grid units,
from the cell centre to that side) and ``cls<stride>`` (class scores, sigmoid inside the
graph). Training assigns each ground-truth box to the cells near its centre on the stride(s)
that suit its size; losses: binary cross-entropy towards the predicted box's IoU (quality
focal style) for the scores, GIoU and distribution focal loss for the boxes. Two one-cycle
stages: the recipe's ``epochs`` at ``lr``, then ``polish_epochs`` at ``polish_lr``.

Run it from the repository root, in an environment with a CPU torch, onnx and onnxruntime
(``tools/demo/train_models.py`` says how). The committed model's README says how long it
took: 18 epochs of 8000 images take about 12 minutes on 2 idle CPU cores, most of an hour
on cores shared with other jobs::

    python -m tools.demo.train_detector                # train, export, measure, write
    python -m tools.demo.train_detector --save /tmp/w.pt   # keep each stage's weights
    python -m tools.demo.train_detector --resume /tmp/w.pt  # second stage only from those
    python -m tools.demo.train_detector --eval-only    # measure model.onnx again

Reproducible like the other demo models: fixed seeds, deterministic torch on ``--threads``
threads. Seeds (streams of ``tools.demo.shapes.sample_rng``): training 301, evaluation 302, samples
303, calibration 304.
"""

from __future__ import annotations

import argparse
import copy
import multiprocessing
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn
from torch.nn import functional as F

from tools.demo import shapes as demo
from tools.demo.detector import (
    MEAN,
    OPSET,
    RECIPE,
    STD,
    DetRecipe,
    letterbox,
    measure,
    write_folder,
)
from tools.demo.train_models import ALLOWED_OPS

ROOT = Path(__file__).resolve().parents[2]

DET_OPS = ALLOWED_OPS | {"Sigmoid"}
MAX_BOXES = 8  # per image in a training batch (the generator draws at most 6)


# --- data --------------------------------------------------------------------------------------


def _one(job: Tuple[int, int, int]) -> Tuple[np.ndarray, np.ndarray]:
    """One letterboxed training image and its boxes as MAX_BOXES x 5 (class, x1,y1,x2,y2; -1 pad)."""
    seed, index, side = job
    image, boxes, classes = demo.detection_sample(demo.sample_rng(seed, index))
    boxed, at = letterbox(image, side)
    target = np.full((MAX_BOXES, 5), -1.0, np.float32)
    target[: len(classes), 0] = classes
    target[: len(classes), 1:] = boxes * at.scale_x + np.array([at.pad_x, at.pad_y] * 2)
    return boxed, target


def make_dataset(recipe: DetRecipe, workers: int) -> Tuple[np.ndarray, np.ndarray]:
    """(N,side,side,3 uint8 letterboxed images, N,MAX_BOXES,5 float32 targets)."""
    jobs = [(recipe.seeds[0], i, recipe.side) for i in range(recipe.train_images)]
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        pairs = pool.map(_one, jobs, chunksize=64)
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


# --- network -----------------------------------------------------------------------------------


def _cbr(cin: int, cout: int, stride: int = 1, k: int = 3) -> nn.Sequential:
    """Conv + BatchNorm (folded into the conv at export) + ReLU; an even kernel tiles its
    input (no padding: a k x k, stride k "patchify" stem)."""
    pad = k // 2 if k % 2 else 0
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, pad, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)
    )


class Head(nn.Module):
    """One stride's decoupled head: DFL box logits [N,4*bins,H,W] and class logits [N,C,H,W]."""

    def __init__(self, width: int, classes: int, bins: int) -> None:
        super().__init__()
        self.box = nn.Sequential(_cbr(width, width), nn.Conv2d(width, 4 * bins, 1))
        self.cls = nn.Sequential(_cbr(width, width), nn.Conv2d(width, classes, 1))
        nn.init.constant_(self.cls[1].bias, -4.0)  # start near "nothing here" (p ~ 0.02)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.box(x), self.cls(x)


class Detector(nn.Module):
    """Backbone of a 4x4 stride-4 stem and strided 3x3 convs down to strides 8/16/32, a top-down pyramid (nearest
    upsampling, added 1x1 laterals) and one head shared by the three strides (the DFL
    distances are in grid units, so one head serves every stride, as in FCOS and GFL).

    ``forward`` gives the six raw tensors (box logits, class logits per stride) for training;
    :class:`Exported` adds the sigmoid for the ONNX file."""

    def __init__(self, classes: int, bins: int, width: int = 40) -> None:
        super().__init__()
        self.s4 = _cbr(3, 32, 4, k=4)  # a 4x4 stride-4 stem: flat shapes need no finer stage
        self.s8 = nn.Sequential(_cbr(32, 48, 2), _cbr(48, 48))
        self.s16 = nn.Sequential(_cbr(48, 64, 2), _cbr(64, 64))
        self.s32 = _cbr(64, 96, 2)
        self.l8, self.l16 = _cbr(48, width, k=1), _cbr(64, width, k=1)
        self.l32 = _cbr(96, width, k=1)
        self.f8, self.f16 = _cbr(width, width), _cbr(width, width)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.head = Head(width, classes, bins)

    def pyramid(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """[N,3,S,S] → the feature maps at strides 8, 16 and 32."""
        c8 = self.s8(self.s4(x))
        c16 = self.s16(c8)
        p32 = self.l32(self.s32(c16))
        p16 = self.f16(self.l16(c16) + self.up(p32))
        p8 = self.f8(self.l8(c8) + self.up(p16))
        return p8, p16, p32

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        out: List[torch.Tensor] = []
        for p in self.pyramid(x):
            out.extend(self.head(p))
        return out


class Exported(nn.Module):
    """The ONNX graph: the detector with sigmoid class scores (the yolov8 rknnopt layout).

    Each stride gets its own copy of the shared head: a weight used three times would be
    exported through ``Identity`` nodes."""

    def __init__(self, net: Detector) -> None:
        super().__init__()
        self.net = net
        self.heads = nn.ModuleList(copy.deepcopy(net.head) for _ in range(3))

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        out: List[torch.Tensor] = []
        for head, p in zip(self.heads, self.net.pyramid(x)):
            dist, cls = head(p)
            out += [dist, torch.sigmoid(cls)]
        return out


# --- targets and losses ------------------------------------------------------------------------


class Anchors:
    """Cell centres of every stride, level by level and row-major (the export's order)."""

    def __init__(self, recipe: DetRecipe) -> None:
        centres, strides, levels = [], [], []
        for level, s in enumerate(recipe.strides):
            n = recipe.side // s
            ys, xs = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
            centres.append(torch.stack([xs.flatten(), ys.flatten()], 1).float().add(0.5).mul(s))
            strides.append(torch.full((n * n,), float(s)))
            levels.append(torch.full((n * n,), level))
        self.centre, self.stride, self.level = (torch.cat(v) for v in (centres, strides, levels))
        # box sizes (longest side, input pixels) each stride learns: overlapping ranges
        self.size_range = torch.tensor([[0.0, 40.0], [24.0, 80.0], [48.0, 1e9]])[self.level]


def assign(targets: torch.Tensor, anchors: Anchors, radius: float = 1.5) -> torch.Tensor:
    """For each image and anchor, the index of its ground-truth box, or -1.

    An anchor takes a box when its stride suits the box's size, its centre lies inside the box
    and within ``radius`` strides of the box centre; the cell holding the centre always does.
    An anchor wanted by several boxes takes the smallest. targets: [B,M,5] → [B,A] int64."""
    cls, box = targets[..., 0], targets[..., 1:]  # [B,M], [B,M,4]
    valid = cls >= 0
    centre = (box[..., :2] + box[..., 2:]) / 2  # [B,M,2]
    size = (box[..., 2:] - box[..., :2]).amax(-1)  # [B,M]
    a = anchors.centre[None, None]  # [1,1,A,2]
    s = anchors.stride[None, None]  # [1,1,A]
    fits = (size[..., None] >= anchors.size_range[:, 0]) & (
        size[..., None] < anchors.size_range[:, 1]
    )
    near = ((a - centre[..., None, :]).abs() < radius * s[..., None]).all(-1)
    inside = (a > box[..., None, :2]).all(-1) & (a < box[..., None, 2:]).all(-1)
    holds = ((a - centre[..., None, :]).abs() <= s[..., None] / 2).all(-1)
    take = fits & valid[..., None] & ((near & inside) | holds)  # [B,M,A]
    area = ((box[..., 2] - box[..., 0]) * (box[..., 3] - box[..., 1]))[..., None].expand_as(take)
    cost = torch.where(take, area, torch.full_like(area, float("inf")))
    best = cost.argmin(1)  # [B,A]
    return torch.where(take.any(1), best, torch.full_like(best, -1))


def _giou(a: torch.Tensor, b: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(IoU, GIoU) of paired xyxy boxes [..., 4]."""
    lt, rb = torch.maximum(a[..., :2], b[..., :2]), torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area = lambda t: (t[..., 2:] - t[..., :2]).clamp(min=0).prod(-1)  # noqa: E731
    union = area(a) + area(b) - inter + 1e-7
    iou = inter / union
    hull = torch.maximum(a[..., 2:], b[..., 2:]) - torch.minimum(a[..., :2], b[..., :2])
    enclose = hull.prod(-1) + 1e-7
    return iou, iou - (enclose - union) / enclose


def flatten(outputs: List[torch.Tensor], bins: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Six raw tensors → (box logits [B,A,4,bins], class logits [B,A,C])."""
    dist = [t.flatten(2).transpose(1, 2) for t in outputs[0::2]]
    cls = [t.flatten(2).transpose(1, 2) for t in outputs[1::2]]
    box = torch.cat(dist, 1)
    return box.reshape(box.shape[0], box.shape[1], 4, bins), torch.cat(cls, 1)


def decode(box_logits: torch.Tensor, anchors: Anchors) -> torch.Tensor:
    """[B,A,4,bins] → xyxy boxes [B,A,4] in input pixels (softmax expectation per side)."""
    bins = box_logits.shape[-1]
    sides = (box_logits.softmax(-1) * torch.arange(bins, dtype=box_logits.dtype)).sum(-1)
    s = anchors.stride[None, :, None]
    c = anchors.centre[None]
    return torch.cat([c - sides[..., :2] * s, c + sides[..., 2:] * s], -1)


def loss_fn(
    outputs: List[torch.Tensor], targets: torch.Tensor, anchors: Anchors, bins: int
) -> Tuple[torch.Tensor, Tuple[float, float, float]]:
    """Score BCE towards IoU + 5 x (1 - GIoU) + DFL; the total and its three parts."""
    box_logits, cls_logits = flatten(outputs, bins)
    owner = assign(targets, anchors)  # [B,A]
    pos = owner >= 0
    npos = max(int(pos.sum()), 1)
    gt = torch.gather(targets, 1, owner.clamp(min=0)[..., None].expand(-1, -1, 5))  # [B,A,5]
    pred = decode(box_logits, anchors)
    iou, giou = _giou(pred[pos], gt[pos][:, 1:])
    quality = torch.zeros_like(cls_logits)
    quality[pos, gt[pos][:, 0].long()] = iou.detach().clamp(min=0.0)
    cls_loss = F.binary_cross_entropy_with_logits(cls_logits, quality, reduction="sum") / npos
    box_loss = (1.0 - giou).mean() if pos.any() else cls_logits.sum() * 0
    # DFL: the two bins around each true distance, weighted by nearness
    c, s = anchors.centre.expand(pos.shape[0], -1, -1)[pos], anchors.stride.expand_as(pos)[pos]
    want = torch.cat([c - gt[pos][:, 1:3], gt[pos][:, 3:5] - c], -1) / s[:, None]
    want = want.clamp(0, bins - 1 - 0.01)
    left = want.floor().long()
    weight = left + 1 - want
    logp = box_logits[pos].log_softmax(-1)  # [P,4,bins]
    dfl = -(logp.gather(-1, left[..., None])[..., 0] * weight
            + logp.gather(-1, (left + 1)[..., None])[..., 0] * (1 - weight))  # fmt: skip
    dfl_loss = dfl.mean() if pos.any() else cls_logits.sum() * 0
    total = cls_loss + 5.0 * box_loss + dfl_loss
    return total, (float(cls_loss.detach()), float(box_loss.detach()), float(dfl_loss.detach()))


# --- training ----------------------------------------------------------------------------------


def _batch(
    images: np.ndarray, targets: np.ndarray, gen: torch.Generator
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Normalise; flip and turn the batch by a random multiple of 90 degrees, boxes with it."""
    x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() - MEAN) / STD
    t = torch.from_numpy(targets).clone()
    side = x.shape[-1]
    turns, flip = (int(v) for v in torch.randint(0, 4, (2,), generator=gen))
    valid = t[..., 0] >= 0
    for _ in range(turns):  # rot90 by +90 degrees in (H, W): (x, y) -> (y, side - x)
        x = torch.rot90(x, 1, (2, 3))
        x1, y1, x2, y2 = t[..., 1].clone(), t[..., 2].clone(), t[..., 3].clone(), t[..., 4].clone()
        t[..., 1], t[..., 2], t[..., 3], t[..., 4] = y1, side - x2, y2, side - x1
    if flip % 2:
        x = torch.flip(x, (3,))
        x1, x2 = t[..., 1].clone(), t[..., 3].clone()
        t[..., 1], t[..., 3] = side - x2, side - x1
    t[~valid] = -1
    return x.contiguous(), t


def train(
    net: Detector,
    images: np.ndarray,
    targets: np.ndarray,
    recipe: DetRecipe,
    epochs: int,
    lr: float,
) -> None:
    """``epochs`` of AdamW with a one-cycle learning rate peaking at ``lr``."""
    anchors = Anchors(recipe)
    steps_per_epoch = len(images) // recipe.batch
    decay = [p for p in net.parameters() if p.ndim > 1]
    rest = [p for p in net.parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 5e-4}, {"params": rest, "weight_decay": 0.0}], lr
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, lr, total_steps=max(20, epochs * steps_per_epoch), pct_start=0.1
    )
    gen = torch.Generator().manual_seed(recipe.seeds[0])
    net.train()
    for epoch in range(epochs):
        order = torch.randperm(len(images), generator=gen).numpy()
        sums, started = np.zeros(4), time.perf_counter()
        for step in range(steps_per_epoch):
            idx = np.sort(order[step * recipe.batch : (step + 1) * recipe.batch])
            x, t = _batch(images[idx], targets[idx], gen)
            loss, parts = loss_fn(net(x), t, anchors, recipe.bins)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            sums += (float(loss.detach()), *parts)
        mean = sums / steps_per_epoch
        print(
            f"  {recipe.name} epoch {epoch + 1}/{epochs} (lr {lr:g}): loss {mean[0]:.3f} "
            f"(scores {mean[1]:.3f}, 1-GIoU {mean[2]:.3f}, DFL {mean[3]:.3f}), "
            f"{time.perf_counter() - started:.0f} s",
            flush=True,
        )


def _without_identities(model: onnx.ModelProto) -> onnx.ModelProto:
    """The exporter shares equal weights (the head's copies) through ``Identity`` nodes: give
    each user its own initializer instead, so the graph keeps to the rknn-safe operators."""
    weights = {t.name: t for t in model.graph.initializer}
    for node in [n for n in model.graph.node if n.op_type == "Identity"]:
        if node.input[0] in weights:
            copied = onnx.TensorProto()
            copied.CopyFrom(weights[node.input[0]])
            copied.name = node.output[0]
            model.graph.initializer.append(copied)
            model.graph.node.remove(node)
    return model


OUTPUT_NAMES = ("dfl8", "cls8", "dfl16", "cls16", "dfl32", "cls32")


def export(net: Detector, recipe: DetRecipe, path: Path) -> None:
    """ONNX opset 13, static [1,3,side,side] input ``input``, six outputs, BN folded."""
    net.eval()
    model = Exported(net).eval()
    dummy = torch.zeros(1, 3, recipe.side, recipe.side)
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated but still exact
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model, (dummy,), str(path), input_names=["input"], output_names=list(OUTPUT_NAMES),
            opset_version=OPSET, do_constant_folding=True, dynamo=False,
        )  # fmt: skip
    graph = _without_identities(onnx.load(str(path)))
    onnx.save(graph, str(path))
    onnx.checker.check_model(graph, full_check=True)
    ops = {node.op_type for node in graph.graph.node}
    if ops - DET_OPS:
        raise SystemExit(f"{path}: operators outside the rknn-safe set: {sorted(ops - DET_OPS)}")
    probe = torch.from_numpy(
        np.random.default_rng(0).uniform(-1, 1, dummy.shape).astype(np.float32)
    )
    with torch.no_grad():
        want = [t.numpy() for t in model(probe)]
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"input": probe.numpy()}
    )
    worst = max(float(np.abs(w - g).max()) for w, g in zip(want, got))
    if worst > 1e-3:
        raise SystemExit(f"{path}: onnxruntime disagrees with torch by {worst}")
    print(f"  exported {path} ({path.stat().st_size / 1024:.0f} kB, ops: {', '.join(sorted(ops))})")


# --- main --------------------------------------------------------------------------------------


def run(
    recipe: DetRecipe, folder: Path, threads: int, save: Optional[Path], resume: Optional[Path]
) -> None:
    """Generate, train (two one-cycle stages), export, measure; write the model folder.

    ``save`` keeps the weights after each stage (``save`` and ``<save>.polished.pt``);
    ``resume`` starts from weights saved after the first stage."""
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    images, targets = make_dataset(recipe, threads)
    print(
        f"  {recipe.name}: {len(images)} training images in {time.perf_counter() - started:.0f} s"
    )
    torch.manual_seed(recipe.seeds[0])
    net = Detector(len(recipe.labels), recipe.bins)
    if resume:
        saved = torch.load(resume)
        net.load_state_dict(saved["weights"])
        minutes = float(saved["minutes"])
    else:
        started = time.perf_counter()
        train(net, images, targets, recipe, recipe.epochs, recipe.lr)
        minutes = (time.perf_counter() - started) / 60
        if save:
            torch.save({"weights": net.state_dict(), "minutes": minutes}, save)
    started = time.perf_counter()
    train(net, images, targets, recipe, recipe.polish_epochs, recipe.polish_lr)
    minutes += (time.perf_counter() - started) / 60
    print(f"  {recipe.name}: trained in {minutes:.1f} minutes")
    if save:
        torch.save(
            {"weights": net.state_dict(), "minutes": minutes}, save.with_suffix(".polished.pt")
        )
    finish(net, recipe, folder, threads, minutes)


def finish(net: Detector, recipe: DetRecipe, folder: Path, threads: int, minutes: float) -> None:
    """Export, measure, write the model folder."""
    path = folder / "model.onnx"
    export(net, recipe, path)
    figures = measure(recipe, path, threads)
    facts = {
        "threads": str(threads),
        "train_time": f"{minutes:.1f} minutes",
        "torch": torch.__version__,
    }
    write_folder(recipe, folder, figures, facts)


def parse_args(argv: List[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train, export and measure the demo detector models/shapes-det.",
        epilog="See the module docstring for the environment and the seeds.",
    )
    parser.add_argument(
        "--folder", type=Path, default=ROOT / "models" / RECIPE.name, help="model folder"
    )
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default: 2)")
    parser.add_argument(
        "--eval-only", action="store_true", help="only measure the existing model.onnx"
    )
    parser.add_argument("--save", type=Path, help="also save the trained weights (torch) here")
    parser.add_argument(
        "--resume", type=Path, help="start from weights --save kept after the first stage"
    )
    parser.add_argument(
        "--load", type=Path, help="skip training: export, measure and write saved weights"
    )
    parser.add_argument(
        "--epochs", type=int, help="override the recipe's first-stage epochs (quick trials)"
    )
    parser.add_argument("--train-images", type=int, help="override the recipe's training-set size")
    parser.add_argument("--eval-images", type=int, help="override the number of held-out images")
    return parser.parse_args(argv)


def main(argv: List[str]) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    recipe = replace(
        RECIPE,
        epochs=args.epochs or RECIPE.epochs,
        train_images=args.train_images or RECIPE.train_images,
        eval_images=args.eval_images or RECIPE.eval_images,
    )
    print(f"{recipe.name}: detection, {recipe.side}x{recipe.side}", flush=True)
    if args.eval_only:
        measure(recipe, args.folder / "model.onnx", args.threads)
    elif args.load:
        saved = torch.load(args.load)
        net = Detector(len(recipe.labels), recipe.bins)
        net.load_state_dict(saved["weights"])
        finish(net, recipe, args.folder, args.threads, saved["minutes"])
    else:
        run(recipe, args.folder, args.threads, args.save, args.resume)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
