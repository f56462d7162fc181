"""The conversion gate for detectors: quantized boxes matched to the float model's.

The metrics are checked on boxes given directly (exact figures), then on raw YOLO outputs
through the daemon's own post-processing (:mod:`rkserve.kernels.detect`); with the converter
environment, a small real yolov8-layout detector (tests/onnx_detector.py) is converted and
gated, and refused with a wrong normalisation.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Dict, List, Sequence

import cv2
import numpy as np
import pytest
import yaml

from rkserve.backends.fake_yolo import yolo_outputs
from rkserve.convert.gate import check_gate, compare_detection, match_boxes, nothing_to_compare
from rkserve.convert.report import render_markdown
from rkserve.kernels.detect import Detections, postprocess
from rkserve.kernels.image import Placement
from tests.helpers import ROOT, convert_cli
from tests.onnx_detector import square_image


def _boxes(rows: Sequence[Sequence[float]]) -> List[np.ndarray]:
    """``[x1, y1, x2, y2, score, class]`` rows as a model's one "raw output" of 4 rows
    (rows of score 0 are no box)."""
    out = np.zeros((4, 6))
    out[: len(rows)] = np.asarray(rows, np.float64).reshape(-1, 6)
    return [out]


def _read(outputs: Sequence[np.ndarray]) -> Detections:
    rows = outputs[0][outputs[0][:, 4] > 0]
    rows = rows[np.argsort(-rows[:, 4], kind="stable")]
    return Detections(rows[:, :4], rows[:, 4].astype(np.float32), rows[:, 5].astype(np.int64))


FLOAT = [[10, 10, 50, 50, 0.9, 0], [60, 60, 120, 120, 0.8, 1], [20, 90, 60, 150, 0.7, 2]]
QUANT = [
    [12, 10, 52, 50, 0.85, 0],  # the same box, shifted by 2 px: IoU 1520/1680
    [60, 60, 120, 120, 0.8, 3],  # right place, wrong class: no match
]  # and the third float box is lost


def test_boxes_match_by_class_and_overlap():
    rows, metrics = compare_detection([("a.jpg", _boxes(FLOAT), _boxes(QUANT))], _read)
    assert metrics["box_recall"] == pytest.approx(1 / 3)
    assert metrics["box_precision"] == pytest.approx(1 / 2)
    assert metrics["mean_iou"] == pytest.approx(1520 / 1680)
    assert metrics["score_agreement"] == pytest.approx(1 - 0.05)
    assert rows[0]["float_boxes"] == 3 and rows[0]["quant_boxes"] == 2 and rows[0]["matched"] == 1
    assert rows[0]["float_classes"] == [0, 1, 2]
    failures = check_gate(metrics, {"min_box_recall": 0.9, "min_mean_iou": 0.8})
    assert failures == ["box_recall 0.333 < min_box_recall 0.900"]


def test_each_float_box_is_matched_once_best_score_first():
    want = _read(_boxes([[0, 0, 100, 100, 0.9, 0]]))
    rows = np.array([[0, 0, 100, 90], [0, 0, 100, 80]], np.float64)  # in no particular order
    got = Detections(rows, np.array([0.6, 0.7], np.float32), np.array([0, 0]))
    assert match_boxes(want, got) == [(0, 1, pytest.approx(0.8))]  # the 0.7 box comes first
    assert match_boxes(want, _read(_boxes([[0, 0, 100, 40, 0.9, 0]]))) == []  # IoU 0.4 < 0.5


def test_metrics_pool_over_images_and_empty_cases():
    named = [
        ("a", _boxes(FLOAT), _boxes(FLOAT)),
        ("empty", _boxes([]), _boxes([])),  # nothing found by either model: agrees
    ]
    rows, metrics = compare_detection(named, _read)
    assert {k: metrics[k] for k in ("box_recall", "box_precision", "mean_iou")} == {
        "box_recall": 1.0,
        "box_precision": 1.0,
        "mean_iou": 1.0,
    }
    assert rows[1]["mean_iou"] is None and rows[1]["matched"] == 0
    # the float model finds nothing anywhere: the images cannot vouch for the detector
    rows, nothing = compare_detection([("x", _boxes([]), _boxes(QUANT))], _read)
    assert nothing["box_recall"] == 0.0 and nothing["box_precision"] == 0.0
    assert check_gate(nothing, {"min_box_recall": 0.9})
    assert "found no box on any of the 1 validation images" in nothing_to_compare(rows)[0]
    assert nothing_to_compare(compare_detection(named, _read)[0]) == []


def test_raw_yolov8_outputs_through_the_daemons_post_processing():
    size = (160, 160)
    boxes = [[10, 20, 60, 90], [80, 80, 150, 140], [30, 100, 70, 150]]
    labels, scores = [1, 3, 0], [0.9, 0.7, 0.6]
    ref = yolo_outputs("yolov8", boxes, labels, scores, classes=5, input_size=size)
    moved = [[b[0] + 3, b[1], b[2] + 3, b[3]] for b in boxes[:2]]  # one box lost, two moved
    out = yolo_outputs("yolov8", moved, labels[:2], [0.8, 0.7], classes=5, input_size=size)
    placement = Placement(1.0, 1.0, 0, 0, size[1], size[0])

    def read(outputs: Sequence[np.ndarray]) -> Detections:
        return postprocess(outputs, "yolov8", placement, size, size)

    rows, metrics = compare_detection([("a", ref, out)], read)
    assert rows[0]["float_boxes"] == 3 and rows[0]["matched"] == 2
    assert metrics["box_recall"] == pytest.approx(2 / 3) and metrics["box_precision"] == 1.0
    assert 0.85 < metrics["mean_iou"] < 0.95  # 3 px of a 50 px and a 70 px box
    assert metrics["score_agreement"] == pytest.approx(1 - 0.05, abs=0.01)
    assert 0 < metrics["cosine"] < 1


def test_markdown_report_lists_boxes_per_image():
    rows, metrics = compare_detection([("a.jpg", _boxes(FLOAT), _boxes(QUANT))], _read)
    gate = {"min_box_recall": 0.9}
    report = {
        "model": "det",
        "verdict": "refused",
        "failures": check_gate(metrics, gate),
        "metrics": metrics,
        "gate": gate,
        "images": rows,
        "recipe": {"validation": "samples"},
        "timings": {},
        "versions": {},
    }
    text = render_markdown(report, labels=("circle", "square", "triangle", "star"))
    assert "| box_recall | 0.3333 | >= 0.900 | **FAIL** |" in text
    assert "| a.jpg | 3 | 2 | 1 | 0.905 | 0.050 |" in text
    assert "| 0 circle, 1 square, 2 triangle |" in text


# -- a real detector through rknn-toolkit2 (.venv-convert) -------------------------------

# (x, y, side, channel) squares of pure colour: class = channel (tests/onnx_detector.py)
PICTURES = [
    [(10, 10, 40, 0), (70, 60, 40, 2)],
    [(20, 70, 32, 1)],
    [(60, 8, 48, 0), (8, 60, 32, 1), (80, 80, 40, 2)],
    [(40, 40, 48, 2)],
]


# The squares detector of tests/onnx_detector.py made with torch, its box tensors fed by the
# image (rknn-toolkit2 drops outputs it finds constant): adding the same value to every bin
# of a side leaves the DFL distance as it is.
DETECTOR = """
import sys, torch
from torch import nn
from tests.onnx_detector import SHARPNESS, SIDE, two_hot

class Detector(nn.Module):
    def __init__(self, strides=(8, 16, 32)):
        super().__init__()
        self.heads = nn.ModuleList()
        for s in strides:
            box, cls = nn.Conv2d(3, 64, s, s), nn.Conv2d(3, 3, s, s)
            box.weight.data.fill_(0.5 / (3 * s * s))
            box.bias.data = torch.tensor(two_hot(SIDE), dtype=torch.float32).repeat(4)
            cls.weight.data.zero_()
            for c in range(3):
                cls.weight.data[c, c] = SHARPNESS / (s * s)
            cls.bias.data.fill_(-SHARPNESS / 2)
            self.heads.append(nn.ModuleList([box, cls]))

    def forward(self, x):
        out = []
        for box, cls in self.heads:
            out += [box(x), torch.sigmoid(cls(x))]
        return out

torch.onnx.export(Detector().eval(), (torch.zeros(1, 3, 128, 128),), sys.argv[1],
                  input_names=["images"], opset_version=13, dynamo=False)
"""


@pytest.fixture(scope="module")
def detector_onnx(converter, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("detector") / "model.onnx"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    subprocess.run([str(converter), "-c", DETECTOR, str(path)], check=True, timeout=300, env=env)
    return path


def _detector_folder(root: Path, onnx: Path, convert: Dict[str, Any]) -> Path:
    folder = root / "det"
    folder.mkdir(parents=True)
    shutil.copyfile(onnx, folder / "model.onnx")
    (folder / "labels.txt").write_text("red\ngreen\nblue\n")
    spec = {
        "task": "detection",
        "labels": "labels.txt",
        "input": {"size": 128},
        "onnx": {"mean": 0, "std": 255},
        "output": {"format": "yolov8"},
        "convert": {"dataset": "samples", **convert},
    }
    (folder / "model.yaml").write_text(yaml.safe_dump(spec))
    (folder / "samples").mkdir()
    for index, squares in enumerate(PICTURES):
        picture = square_image((128, 160), squares)
        cv2.imwrite(str(folder / "samples" / f"{index}.png"), picture[:, :, ::-1])
    return folder


@pytest.mark.process
@pytest.mark.convert
@pytest.mark.slow
def test_a_detector_converts_behind_the_detection_gate(tmp_path, detector_onnx):
    from rkserve.board.rknnfile import read_rknn

    folder = _detector_folder(tmp_path, detector_onnx, {})
    done = convert_cli(str(folder), "--report", str(tmp_path / "r.json"), env={})
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["gate"] == {
        "min_box_recall": 0.9,
        "min_box_precision": 0.9,
        "min_mean_iou": 0.8,
        "min_score_agreement": 0.9,
    }
    counts = [(r["float_boxes"], r["quant_boxes"], r["matched"]) for r in report["images"]]
    assert all(0 < f == q == m for f, q, m in counts), counts  # every box, in each image
    assert report["metrics"]["box_recall"] == report["metrics"]["box_precision"] == 1.0
    assert report["metrics"]["mean_iou"] > 0.95 and report["metrics"]["score_agreement"] > 0.95
    assert len(read_rknn(folder / "model.rknn").outputs) == 6
    markdown = (folder / "conversion_report.md").read_text()
    assert "| box_recall | 1.0000 | >= 0.900 | pass |" in markdown
    found = counts[2][0]
    assert f"| 2.png | {found} | {found} | {found} |" in markdown
    assert "| 0 red, 1 green, 2 blue |" in markdown


@pytest.mark.process
@pytest.mark.convert
@pytest.mark.slow
def test_a_detector_below_the_thresholds_is_refused(tmp_path, detector_onnx):
    folder = _detector_folder(
        tmp_path, detector_onnx, {"std": 1}
    )  # model.yaml's onnx: section says 255
    done = convert_cli(str(folder), env={})
    assert done.returncode == 3, done.stderr[-3000:]
    assert "refused: box_" in done.stderr
    assert not (folder / "model.rknn").exists()
    refused = (folder / "conversion_report.refused.md").read_text()
    assert "Verdict: **REFUSED**" in refused and "**FAIL**" in refused


@pytest.mark.process
@pytest.mark.convert
@pytest.mark.slow
def test_constant_outputs_dropped_by_the_toolkit_are_named_and_leave_no_files(tmp_path, converter):
    from tests.onnx_detector import write_detector

    constant = write_detector(tmp_path / "constant.onnx", size=128)  # its box tensors are
    folder = _detector_folder(tmp_path, constant, {})  # constants: the toolkit drops them
    before = set(ROOT.iterdir())
    done = convert_cli(str(folder), env={})  # runs with the repository as its directory
    assert done.returncode == 1, done.stderr[-3000:]
    assert "error: the simulator gave 3 outputs, the float model 6" in done.stderr
    assert set(ROOT.iterdir()) == before  # the toolkit's box8.npy ... stayed in the temp folder
    assert not (folder / "model.rknn").exists()
