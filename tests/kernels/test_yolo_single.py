"""YOLO's single-output layout (``output.format: yolo``) against Frigate's own decoding.

The model is the demo detector exported as a single output by tools/yolo_single.py; the
reference is Frigate's ``post_process_yolo`` (../shared/reference/frigate/frigate/util/model.py,
loaded by file location) for the class-agnostic case, and the project's zoo-checked yolov8
decoding of the same weights' split outputs.
"""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path
from typing import Any, Iterator, List, Tuple

import cv2
import numpy as np
import pytest

from rkserve import repository
from rkserve.backends.fake_yolo import yolo_outputs
from rkserve.errors import ConfigError
from rkserve.kernels import detect
from rkserve.kernels.image import Placement
from rkserve.kernels.yolo import Layout, explain, read_layout
from tests.frigate.plugin import REFERENCE, loaded_reference, needed
from tools.demo import shapes as demo

needed("onnx")  # tools/yolo_single.py builds the test model with it
from tools.yolo_single import SIDE, write_folder  # noqa: E402

ort = pytest.importorskip("onnxruntime")
MODELS = Path(__file__).resolve().parents[2] / "models"
THRESHOLD = 0.4  # Frigate's score and NMS thresholds for yolo-generic


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    return write_folder(tmp_path_factory.mktemp("single") / "shapes-yolo")


@pytest.fixture(scope="module")
def frigate_model() -> Iterator[types.ModuleType]:
    """Frigate's util/model.py (its one project import, frigate.const, stood in for)."""
    if sys.version_info < (3, 9):
        pytest.skip("Frigate's util/model.py is Python 3.9+ code (Frigate runs 3.11): on 3.11")
    path = REFERENCE / "frigate" / "util" / "model.py"
    if not path.is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"Frigate's reference is missing: {path}")
        pytest.skip(f"Frigate's reference not found: {path}")
    const = types.ModuleType("frigate.const")
    const.MODEL_CACHE_DIR = "/nonexistent"  # type: ignore[attr-defined]
    stand_ins = {"frigate": types.ModuleType("frigate"), "frigate.const": const}
    with loaded_reference(path, "frigate_util_model", stand_ins) as module:
        yield module


class CornersAsCorners:
    """cv2 for Frigate's decoder with ``dnn.NMSBoxes`` given what it reads: Frigate passes
    ``x1, y1, x2, y2`` where OpenCV reads ``x, y, width, height`` (see
    :func:`test_frigates_own_nms_reads_corners_as_sizes`)."""

    class dnn:
        @staticmethod
        def NMSBoxes(bboxes: Any, scores: Any, score_threshold: float, nms_threshold: float) -> Any:
            boxes = np.asarray(bboxes, np.float64).reshape(-1, 4).copy()
            boxes[:, 2:] -= boxes[:, :2]
            return cv2.dnn.NMSBoxes(
                boxes.tolist(), [float(s) for s in scores], score_threshold, nms_threshold
            )


def regions(count: int, seed: int = 5) -> Iterator[np.ndarray]:
    """Square crops of demo scenes stretched to the input, as Frigate feeds a detector."""
    for index in range(count):
        picture, _, _ = demo.detection_sample(demo.sample_rng(seed, index))
        side = min(picture.shape[:2])
        yield cv2.resize(picture[:side, :side], (SIDE, SIDE), interpolation=cv2.INTER_LINEAR)


def run(session: Any, pixels: np.ndarray) -> List[np.ndarray]:
    """Frigate's ONNX input for yolo-generic with input_dtype float: NCHW, pixels / 255."""
    return session.run(None, {"images": (pixels.astype(np.float32) / 255).transpose(2, 0, 1)[None]})


def ours(outputs: List[np.ndarray], conf: float = THRESHOLD, iou: float = THRESHOLD) -> np.ndarray:
    """rkserve's decode + class-agnostic NMS as Frigate's [20, 6] table."""
    found = detect.decode(outputs, "yolo", conf)
    keep = detect.nms(found.boxes, found.scores, None, iou, 20)
    table = np.zeros((20, 6), np.float32)
    boxes = found.boxes[keep] / SIDE
    table[: len(keep)] = np.column_stack(
        [
            found.classes[keep],
            found.scores[keep],
            boxes[:, 1],
            boxes[:, 0],
            boxes[:, 3],
            boxes[:, 2],
        ]
    )
    return table


def session(path: Path) -> Any:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_single_output_boxes_equal_frigates_decoding(single, frigate_model, monkeypatch) -> None:
    monkeypatch.setattr(frigate_model, "cv2", CornersAsCorners)
    model = session(single / "model.onnx")
    found = 0
    for pixels in regions(60):
        outputs = run(model, pixels)
        assert outputs[0].shape == (1, 9, 525)
        theirs = frigate_model.post_process_yolo(outputs, SIDE, SIDE)
        np.testing.assert_allclose(ours(outputs), theirs, rtol=0, atol=1e-6)
        found += int((theirs[:, 1] > 0).sum())
    assert found >= 100


def test_the_transposed_layout_decodes_the_same(single) -> None:
    outputs = run(session(single / "model.onnx"), next(regions(1)))
    np.testing.assert_array_equal(ours([outputs[0].transpose(0, 2, 1)]), ours(outputs))


def test_frigates_own_nms_reads_corners_as_sizes(single, frigate_model) -> None:
    """Frigate's yolo-generic NMS hands ``x1, y1, x2, y2`` to cv2.dnn.NMSBoxes, which reads
    ``x, y, w, h``: boxes far from the origin look larger than they are and a neighbour
    that overlaps nothing above 0.4 can be dropped. rkserve keeps it (its own tables equal
    Frigate's once NMSBoxes is given real sizes, above)."""
    model = session(single / "model.onnx")
    for pixels in regions(60):
        outputs = run(model, pixels)
        mine, theirs = ours(outputs), frigate_model.post_process_yolo(outputs, SIDE, SIDE)
        if (mine[:, 1] > 0).sum() > (theirs[:, 1] > 0).sum():
            break
    else:
        pytest.fail("no scene where Frigate's NMS drops a box rkserve keeps")
    kept = mine[mine[:, 1] > 0]
    dropped = [row for row in kept if not any(np.allclose(row, t) for t in theirs)]
    assert dropped
    corners = kept[:, [3, 2, 5, 4]].astype(np.float64)  # x1, y1, x2, y2
    overlaps = detect.box_iou(corners, corners)
    np.fill_diagonal(overlaps, 0)
    assert overlaps.max() <= THRESHOLD  # no kept pair overlaps enough to suppress


def test_single_output_candidates_are_the_split_layouts(single) -> None:
    """The same weights: the single output's candidates are the yolov8 decoding's (the
    zoo-checked path) of the split outputs, cell for cell."""
    split, joined = session(MODELS / "shapes-det" / "model.onnx"), session(single / "model.onnx")
    checked = 0
    for pixels in regions(10, seed=6):
        tensor = ((pixels.astype(np.float32) - 127.5) / 127.5).transpose(2, 0, 1)[None]
        zoo_layout = detect.decode(split.run(None, {"input": tensor}), "yolov8", 0.3)
        mine = detect.decode(run(joined, pixels), "yolo", 0.3)
        if len(mine) != len(zoo_layout):  # a score at the threshold, rounded differently
            continue
        np.testing.assert_array_equal(mine.classes, zoo_layout.classes)
        np.testing.assert_allclose(mine.scores, zoo_layout.scores, atol=1e-5)
        np.testing.assert_allclose(mine.boxes, zoo_layout.boxes, atol=1e-3)
        checked += len(mine)
    assert checked >= 50


def test_the_layout_is_read_from_the_output_shape() -> None:
    assert read_layout([[1, 9, 525]], (SIDE, SIDE)) == Layout("yolo", 5, (), candidates=525)
    assert read_layout([[1, 8400, 84]], (640, 640)) == Layout("yolo", 80, (), candidates=8400)
    assert read_layout([[1, 84, 8400]], None) == Layout("yolo", 80, (), candidates=8400)
    assert read_layout([[1, 480, 640]], (480, 640)) is None  # a class map, not a detector
    assert read_layout([[1, 19, 512 * 512]], (512, 512)) is None
    assert (
        "a YOLOv8/v9/YOLO11 default export (one [1, 4+classes, N] output): task detection, "
        "yolo single-output detector: 80 classes, 8400 candidates" in explain([[1, 84, 8400]])
    )


def test_the_model_is_served_and_checked_at_load(single, tmp_path) -> None:
    engine = repository.open_engine(single.parent, "shapes-yolo", backend="onnx")
    result = engine.infer(next(regions(1)), {"conf": 0.4})
    assert result.result["detections"] and engine.describe()["format"] == "yolo"
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    (wrong / "model.onnx").symlink_to(single / "model.onnx")
    (wrong / "model.yaml").write_text(
        f"task: detection\ninput: {{size: {SIDE}}}\noutput: {{format: yolo, classes: 80}}\n"
    )
    with pytest.raises(
        ConfigError, match=r"expects yolo outputs \[\[1, 84, 525\]\].*\[\[1, 9, 525\]\]"
    ):
        repository.open_engine(tmp_path, "wrong", backend="onnx")


def test_fake_single_outputs_decode_to_their_boxes() -> None:
    boxes: List[Tuple[float, ...]] = [(10, 20, 60, 90), (100, 30, 150, 70)]
    outputs = yolo_outputs("yolo", boxes, [1, 3], [0.9, 0.8], 4, input_size=(SIDE, SIDE))
    assert outputs[0].shape == (1, 8, 525)
    found = detect.postprocess(
        outputs,
        "yolo",
        Placement(1, 1, 0, 0, SIDE, SIDE),
        (SIDE, SIDE),
        (SIDE, SIDE),
        agnostic=True,
    )
    np.testing.assert_allclose(found.boxes, boxes, atol=1e-4)
    assert found.classes.tolist() == [1, 3]
