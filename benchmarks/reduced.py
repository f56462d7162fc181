"""10. Reduced decode (``input.decode: reduced``): the CPU it saves, the answers it changes.

CPU: the daemon's own prepare path (decode, resize, colour) in this process, OpenCV
single-threaded, full against reduced decode in alternating calls, for 1920x1080 and 640x480
JPEGs into square inputs of 96 to 640 (stretch), and the daemon's CPU per request (all
threads, /proc) for 1080p JPEGs into a 224x224 classifier on the fake backend.

Answers: real models on real photos, each photo re-encoded (JPEG quality 90) at 1920x1080
and 640x480, full decode against reduced: MobileNetV2 (ImageNet, ``../shared/data``) top-1
agreement and score difference; the demo detector's boxes (matched by class and IoU);
DeepLabV3 (VOC, ``../shared/data``) pixel agreement of the masks in source pixels.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import cv2
import numpy as np
import yaml

from benchmarks.common import ROOT, Section, Target, jpeg, main, ratio, rkserve_daemon, table
from benchmarks.cpucost import load, process_cpu
from rkserve import repository
from rkserve.kernels import image
from rkserve.spec import ModelSpec
from rkserve.tasks import vision

SHARED = ROOT.parent / "shared" / "data"
SIDES = (96, 160, 224, 320, 640)
FRAMES = ((1920, 1080), (640, 480))
ROUNDS = 3


def cpu_ms(call: Any, seconds: float = 0.3) -> float:
    """CPU ms per call of this thread (OpenCV single-threaded: all the work is here), over
    at least ``seconds`` of CPU: the thread clock ticks in steps of a few ms here."""
    call()
    before, count = time.thread_time(), 0
    while time.thread_time() - before < seconds:
        call()
        count += 1
    return (time.thread_time() - before) * 1000.0 / count


def prepare_cpu(data: bytes, side: int, resize: str = "stretch") -> Dict[str, float]:
    """CPU ms per prepare, full and reduced, alternating rounds; the factor used."""
    specs = {
        d: ModelSpec(name="m", folder=Path("."), task="detection", input_size=(side, side),
                     resize=resize, pad=0, decode=d)
        for d in ("full", "reduced")
    }  # fmt: skip
    found: Dict[str, List[float]] = {"full": [], "reduced": []}
    for _ in range(ROUNDS):
        for decode, model in specs.items():
            found[decode].append(
                cpu_ms(lambda m=model: vision.prepare_image(data, m, True, None, image.MAX_PIXELS, False))
            )  # fmt: skip
    factor = vision.decode_factor(data, specs["reduced"])
    return {
        "full": statistics.median(found["full"]),
        "reduced": statistics.median(found["reduced"]),
        "factor": factor,
    }


def cpu_table(work: Path) -> Tuple[List[List[Any]], Dict[str, Any]]:
    rows, figures = [], {}
    for width, height in FRAMES:
        data = jpeg(work, width, height, "classification").read_bytes()
        for side, resize in [*((s, "stretch") for s in SIDES), (640, "letterbox")]:
            f = prepare_cpu(data, side, resize)
            figures[f"{width}x{height}->{side} {resize}"] = f
            rows.append(
                [f"{width}x{height}", f"{side}x{side} {resize}", f"1/{f['factor']}", f"{f['full']:.2f}",
                 f"{f['reduced']:.2f}", ratio(f["full"] / f["reduced"])]
            )  # fmt: skip
    return rows, figures


def daemon_cpu(work: Path) -> Dict[str, float]:
    """Daemon CPU per 1080p request into a 224x224 classifier, full and reduced, alternating."""
    models = work / "reduced-models"
    for name, decode in (("full", "full"), ("reduced", "reduced")):
        folder = models / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "model.onnx").write_bytes(b"placeholder: the fake backend never reads it")
        (folder / "labels.txt").write_text("".join(f"class{i}\n" for i in range(1000)))
        body = {
            "task": "classification",
            "labels": "labels.txt",
            "input": {"size": 224, "decode": decode},
        }
        (folder / "model.yaml").write_text(yaml.safe_dump(body))
    data = jpeg(work, 1920, 1080, "classification").read_bytes()
    daemon = rkserve_daemon(models, "--backend", "fake").start(timeout=120.0)
    found: Dict[str, List[float]] = {"full": [], "reduced": []}
    try:
        for name in found:
            load(daemon.endpoint, data, 1, 20, model=name)
        for _ in range(ROUNDS):
            for name in found:
                before = process_cpu(daemon.pid)
                load(daemon.endpoint, data, 1, 150, model=name)
                found[name].append((process_cpu(daemon.pid) - before) * 1000.0 / 150)
    finally:
        daemon.stop()
    return {k: statistics.median(v) for k, v in found.items()}


# answers -------------------------------------------------------------------------------------
def photos() -> List[Path]:
    folder = SHARED / "images"
    found = sorted((folder / "imagenet_val").glob("*.JPEG"))
    found += [
        folder / n for n in ("bell.jpg", "bus.jpg", "space_shuttle_224.jpg", "dog_224x224.jpg")
    ]
    return [p for p in found if p.is_file()]


def reencode(path: Path, width: int, height: int) -> bytes:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    frame = cv2.resize(bgr, (width, height), interpolation=cv2.INTER_CUBIC)
    ok, data = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return data.tobytes()


def model_pair(root: Path, name: str, body: Dict[str, Any], onnx: Path) -> None:
    """Two folders of one ONNX model: ``<name>-full`` and ``<name>-reduced``."""
    for decode in ("full", "reduced"):
        folder = root / f"{name}-{decode}"
        folder.mkdir(parents=True, exist_ok=True)
        link = folder / "model.onnx"
        if not link.exists():
            link.symlink_to(onnx)
        for extra in ("labels.txt",):
            if (onnx.parent / extra).is_file() and not (folder / extra).exists():
                (folder / extra).symlink_to(onnx.parent / extra)
        spec = {**body, "input": {**body["input"], "decode": decode}}
        (folder / "model.yaml").write_text(yaml.safe_dump(spec))


def engines(root: Path, name: str) -> Tuple[Any, Any]:
    return (
        repository.open_engine(root, f"{name}-full", backend="onnx"),
        repository.open_engine(root, f"{name}-reduced", backend="onnx"),
    )


def classification(root: Path, frames: List[Tuple[int, int]]) -> Dict[str, Any]:
    onnx = SHARED / "onnx" / "mobilenet_v2_1.0_224_dequant_fp32.onnx"
    body = {
        "task": "classification", "input": {"size": 224},
        "onnx": {"file": "model.onnx", "layout": "nchw", "dtype": "float32", "mean": 127.0, "std": 127.5},
        "output": {"kind": "probabilities", "top_k": 1},
    }  # fmt: skip
    model_pair(root, "mnv2", body, onnx)
    full, reduced = engines(root, "mnv2")
    out = {}
    for width, height in frames:
        same, diffs = 0, []
        shots = photos()
        for path in shots:
            data = reencode(path, width, height)
            a = full.infer(data).result["classes"][0]
            b = reduced.infer(data).result["classes"][0]
            same += a["index"] == b["index"]
            diffs.append(abs(a["score"] - b["score"]))
        out[f"{width}x{height}"] = {
            "agree": same,
            "of": len(shots),
            "max_diff": max(diffs),
            "median_diff": statistics.median(diffs),
        }
    return out


def iou(a: List[float], b: List[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def detection(root: Path, frames: List[Tuple[int, int]]) -> Dict[str, Any]:
    demo = ROOT / "models" / "shapes-det"
    body = yaml.safe_load((demo / "model.yaml").read_text())
    body.pop("convert", None)
    body.pop("rknn", None)
    body["labels"] = "labels.txt"
    model_pair(root, "det", body, demo / "model.onnx")
    full, reduced = engines(root, "det")
    out = {}
    samples = sorted(demo.glob("samples/*.jpg"))
    for width, height in frames:
        matched, total_a, total_b, ious = 0, 0, 0, []
        for path in samples:
            data = reencode(path, width, height)
            a = full.infer(data).result["detections"]
            b = reduced.infer(data).result["detections"]
            total_a, total_b = total_a + len(a), total_b + len(b)
            for box in a:
                best = max(
                    (iou(box["box"], o["box"]) for o in b if o["index"] == box["index"]),
                    default=0.0,
                )
                if best >= 0.5:
                    matched += 1
                    ious.append(best)
        out[f"{width}x{height}"] = {
            "full": total_a, "reduced": total_b, "matched": matched, "images": len(samples),
            "mean_iou": statistics.mean(ious) if ious else 0.0,
        }  # fmt: skip
    return out


def segmentation(root: Path, frames: List[Tuple[int, int]]) -> Dict[str, Any]:
    onnx = SHARED / "onnx" / "deeplabv3_257_voc_fp32.onnx"
    body = {
        "task": "segmentation", "input": {"size": 257},
        "onnx": {"file": "model.onnx", "layout": "nchw", "dtype": "float32", "mean": 127.5, "std": 127.5},
        "output": {"kind": "logits", "layout": "nchw"},
    }  # fmt: skip
    model_pair(root, "seg", body, onnx)
    full, reduced = engines(root, "seg")
    out = {}
    for width, height in frames:
        agree = []
        for path in photos():
            data = reencode(path, width, height)
            a = _mask(full.infer(data, {"mask": "raw"}).result)
            b = _mask(reduced.infer(data, {"mask": "raw"}).result)
            assert a.shape == b.shape == (height, width)
            agree.append(float((a == b).mean()))
        out[f"{width}x{height}"] = {
            "median": statistics.median(agree),
            "min": min(agree),
            "images": len(agree),
        }
    return out


def _mask(result: Dict[str, Any]) -> np.ndarray:
    mask = result["mask"]
    return np.frombuffer(mask["data"], np.uint8).reshape(result["height"], result["width"])


# the section ---------------------------------------------------------------------------------
def run(work: Path) -> Section:
    section = Section("10. Reduced decode: CPU saved, answers changed")
    cv2.setNumThreads(1)
    load1 = os.getloadavg()[0]
    rows, cpu = cpu_table(work)
    daemon = daemon_cpu(work)
    frames = list(FRAMES)
    answers = {
        "classification": classification(work / "acc", frames),
        "detection": detection(work / "acc", frames),
        "segmentation": segmentation(work / "acc", frames),
    }
    load2 = os.getloadavg()[0]
    gain = daemon["full"] / daemon["reduced"]
    section.body += [
        f"Load average {load1:.1f} at the start and {load2:.1f} at the end, on {os.cpu_count()} cores. "
        f"CPU per prepare (decode, resize to the input, colour; the daemon's code, one thread), "
        f"median of {ROUNDS} alternating rounds, ms:",
        "",
        *table(
            ["JPEG", "input", "reduced scale", "full decode", "reduced decode", "CPU saved"], rows
        ),
        "",
        f"The daemon (fake backend, no NPU time), 1920x1080 JPEGs into a 224x224 classifier, "
        f"CPU per request (all threads, /proc), {ROUNDS} alternating rounds of 150: full "
        f"{daemon['full']:.2f} ms, reduced {daemon['reduced']:.2f} ms: **{ratio(gain)} less**.",
        "",
        "Answers, full against reduced decode, on the same photos re-encoded at each size:",
        "",
        *table(
            ["model", "frame", "agreement", "score difference"],
            [
                *(
                    [
                        "MobileNetV2 (224, ImageNet), top-1",
                        k,
                        f"{v['agree']} of {v['of']}",
                        f"median {v['median_diff']:.3f}, max {v['max_diff']:.3f}",
                    ]
                    for k, v in answers["classification"].items()
                ),
                *(
                    [
                        "demo detector (160, letterbox), boxes matched (class, IoU >= 0.5)",
                        k,
                        f"{v['matched']} of {v['full']} (reduced found {v['reduced']}; {v['images']} images)",
                        f"mean IoU {v['mean_iou']:.3f}",
                    ]
                    for k, v in answers["detection"].items()
                ),
                *(
                    [
                        "DeepLabV3 (257, VOC), mask pixels equal (source pixels)",
                        k,
                        f"median {v['median']:.3f}, min {v['min']:.3f} ({v['images']} images)",
                        "",
                    ]
                    for k, v in answers["segmentation"].items()
                ),
            ],
        ),
    ]
    section.figures = {"prepare": cpu, "daemon": daemon, "answers": answers}
    section.targets = [
        Target("reduced decode: daemon CPU per 1080p request into 224x224", f"{ratio(gain)} lower", ">= 1.5x", gain >= 1.5)
    ]  # fmt: skip
    return section


if __name__ == "__main__":
    with tempfile.TemporaryDirectory():
        main(run)
