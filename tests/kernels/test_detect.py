"""Detection post-processing against Rockchip's model zoo (its own Python, run as the oracle):
the same boxes, classes, scores and overlay, on outputs built to stress NMS."""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np
import pytest

from rkserve.backends.fake_yolo import yolo_outputs
from rkserve.kernels import detect, image
from rkserve.kernels import nms as nms_module
from rkserve.kernels.detect import Detections
from rkserve.kernels.nms import CHUNK, box_iou, nms
from rkserve.kernels.yolo import YOLOV5_ANCHORS, Layout, explain, read_layout
from tests.helpers import ROOT
from tools import zoo

INPUT = (640, 640)
YOLOV7_ANCHORS = (
    ((12.0, 16.0), (19.0, 36.0), (40.0, 28.0)),
    ((36.0, 75.0), (76.0, 55.0), (72.0, 146.0)),
    ((142.0, 110.0), (192.0, 243.0), (459.0, 401.0)),
)
FORMATS = [("yolov5", False), ("yolov8", False), ("yolov8", True)]
FORMAT_IDS = ["yolov5", "yolov8-6", "yolov8-9"]


@pytest.fixture(params=["heads", "chunks", "heads-then-chunks"])
def nms_path(request, monkeypatch) -> str:
    """Each way NMS finds the greedy answer (by heads of every class at once, by chunks, and
    by heads giving up after one round), so that every one is held to the zoo's boxes."""
    if request.param == "chunks":
        monkeypatch.setattr(nms_module, "HEADS", 0)
        return str(request.param)
    monkeypatch.setattr(nms_module, "HEAD_SHARE", 1 << 30)  # rounds however few boxes they keep
    if request.param == "heads":  # heads alone, however many rounds it takes
        monkeypatch.setattr(nms_module, "HEADS", 1 << 30)
        monkeypatch.setattr(nms_module, "_by_chunks", _no_chunks)
    else:
        monkeypatch.setattr(nms_module, "HEADS", 1)
    return str(request.param)


def _no_chunks(*args: object) -> np.ndarray:
    raise AssertionError("NMS by heads gave up")


def scene(
    rng: np.random.Generator, count: int, classes: int = 80, size: Tuple[float, float] = (10, 320)
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``count`` random boxes inside a 640x640 input, random classes and scores."""
    xy = rng.uniform(0, 600, (count, 2))
    wh = rng.uniform(size[0], size[1], (count, 2))
    boxes = np.concatenate([xy, np.minimum(xy + wh, 639.0)], axis=1)
    return boxes, rng.integers(0, classes, count), rng.uniform(0.3, 0.95, count)


def outputs_for(
    format: str, sums: bool, boxes: np.ndarray, labels: np.ndarray, scores: np.ndarray, **kw
) -> List[np.ndarray]:
    return yolo_outputs(format, boxes, labels, scores, kw.pop("classes", 80), score_sum=sums, **kw)


def ours(
    outputs: Sequence[np.ndarray],
    format: str,
    conf: float = 0.25,
    iou: float = 0.45,
    anchors=None,
    max_det: Optional[int] = None,
    classes=None,
) -> zoo.Found:
    """Our decode + NMS, in model-input pixels, as the zoo's tuple."""
    found = detect.decode(outputs, format, conf, anchors=anchors, classes=classes)
    keep = detect.nms(found.boxes, found.scores, found.classes, iou, max_det)
    return found.boxes[keep], found.classes[keep], found.scores[keep]


def theirs(outputs, format, conf=0.25, iou=0.45, anchors=None) -> zoo.Found:
    return zoo.post_process(outputs, format, conf, iou, anchors or YOLOV5_ANCHORS)


def agree(outputs, format, conf=0.25, iou=0.45, anchors=None) -> int:
    mine, zoo_found = (
        ours(outputs, format, conf, iou, anchors),
        theirs(outputs, format, conf, iou, anchors),
    )
    assert zoo.same_detections(mine, zoo_found) is None, zoo.same_detections(mine, zoo_found)
    return len(mine[0])


# --- agreement with the model zoo ----------------------------------------------------------


@pytest.mark.parametrize(("format", "sums"), FORMATS, ids=FORMAT_IDS)
@pytest.mark.usefixtures("nms_path")
def test_a_scene_gives_the_zoos_boxes(format: str, sums: bool) -> None:
    rng = np.random.default_rng(1)
    outputs = outputs_for(format, sums, *scene(rng, 30), spread=2, jitter=8.0, rng=rng)
    assert len(outputs) == (9 if sums else 6 if format == "yolov8" else 3)
    assert agree(outputs, format) >= 25


@pytest.mark.parametrize(("format", "sums"), FORMATS, ids=FORMAT_IDS)
@pytest.mark.parametrize(("conf", "iou"), [(0.1, 0.65), (0.5, 0.3), (0.25, 0.0), (0.25, 1.0)])
@pytest.mark.usefixtures("nms_path")
def test_thresholds_give_the_zoos_boxes(format: str, sums: bool, conf: float, iou: float) -> None:
    rng = np.random.default_rng(2)
    outputs = outputs_for(format, sums, *scene(rng, 20), spread=2, jitter=12.0, rng=rng)
    agree(outputs, format, conf, iou)


@pytest.mark.parametrize(("format", "sums"), FORMATS, ids=FORMAT_IDS)
@pytest.mark.usefixtures("nms_path")
def test_many_overlapping_boxes_give_the_zoos_boxes(format: str, sums: bool) -> None:
    """A crowd of one class in one place: long suppression chains across chunks."""
    rng = np.random.default_rng(3)
    centre = rng.uniform(200, 400, (80, 2))
    half = rng.uniform(40, 60, (80, 2))
    boxes = np.concatenate([centre - half, centre + half], axis=1)
    labels = np.where(rng.uniform(size=80) < 0.8, 7, 3)
    outputs = outputs_for(
        format, sums, boxes, labels, rng.uniform(0.3, 0.95, 80), spread=3, jitter=15.0, rng=rng
    )
    found = detect.decode(outputs, format)
    assert len(found) > CHUNK  # the chunked NMS meets its chunk boundary
    assert agree(outputs, format) >= 5


def test_yolov7_anchors_give_the_zoos_boxes() -> None:
    rng = np.random.default_rng(4)
    boxes, labels, scores = scene(rng, 25)
    outputs = yolo_outputs(
        "yolov5", boxes, labels, scores, 80, anchors=YOLOV7_ANCHORS, spread=1, jitter=6.0, rng=rng
    )
    assert agree(outputs, "yolov5", anchors=YOLOV7_ANCHORS) >= 20


def test_yolov5_boxes_are_the_zoos_bit_for_bit() -> None:
    rng = np.random.default_rng(5)
    outputs = yolo_outputs("yolov5", *scene(rng, 20), 80, spread=1, jitter=4.0, rng=rng)
    mine, zoo_found = ours(outputs, "yolov5"), theirs(outputs, "yolov5")
    a, b = zoo._ordered(mine), zoo._ordered(zoo_found)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[2], b[2])


@pytest.mark.parametrize(("format", "sums"), FORMATS, ids=FORMAT_IDS)
@pytest.mark.usefixtures("nms_path")
def test_tied_scores_give_the_zoos_boxes(format: str, sums: bool) -> None:
    """int8 outputs tie often: scores on a 1/32 grid, objects apart, and every object's cell
    duplicated with an equal score and a box that differs (shifted by a cell, or another
    anchor's size), so that which of two equal boxes is kept shows."""
    rng = np.random.default_rng(6)
    count = 24
    corners = np.stack(np.meshgrid(np.arange(6) * 105.0 + 8, np.arange(4) * 150.0 + 8), -1)
    boxes = np.concatenate([corners.reshape(-1, 2), corners.reshape(-1, 2) + 90], axis=1)
    labels = rng.integers(0, 3, count)
    scores = np.round(rng.uniform(0.3, 0.9, count) * 32) / 32  # a handful of levels
    outputs = outputs_for(format, sums, boxes, labels, scores, classes=3, spread=0, rng=rng)
    if format == "yolov8":  # every object's cell copied into its right neighbour: 1 cell right
        for box_map, cls_map in zip(outputs[0 :: 2 + sums], outputs[1 :: 2 + sums]):
            hot = np.argwhere(cls_map[0].max(axis=0) > 0.25)
            for row, col in hot[hot[:, 1] + 1 < cls_map.shape[3]]:
                cls_map[0, :, row, col + 1] = cls_map[0, :, row, col]
                box_map[0, :, row, col + 1] = box_map[0, :, row, col]
        anchors = None
    else:  # three equal anchors: each object three times, equal scores, sizes 1, 1.1, 1.2
        anchors = (((60.0, 60.0),) * 3,) * 3
        outputs = yolo_outputs(
            "yolov5", boxes, labels, scores, 3, anchors=anchors, spread=0, rng=rng
        )
        for out in outputs:
            cells = out.reshape(3, 8, *out.shape[2:])
            hot = cells[:, 4].max(axis=0) > 0.25
            best = cells[:, :, hot][cells[:, 4, hot].argmax(axis=0), :, np.arange(hot.sum())]
            cells[:, :, hot] = best.T[None]
            cells[:, 2:4, hot] *= np.sqrt([1.0, 1.1, 1.2])[:, None, None].astype(np.float32)
    found = detect.decode(outputs, format, anchors=anchors)
    assert len(np.unique(found.scores)) < len(found) // 2  # ties everywhere
    assert len(np.unique(found.boxes, axis=0)) == len(found)  # between different boxes
    mine, zoos = ours(outputs, format, anchors=anchors), theirs(outputs, format, anchors=anchors)
    assert len(mine[0]) == count
    assert zoo.same_per_class(mine, zoos) is None, zoo.same_per_class(mine, zoos)


@pytest.mark.usefixtures("nms_path")
def test_two_equal_scores_keep_the_box_the_zoo_keeps() -> None:
    """Two overlapping boxes of one class with equal scores, and crowds of tied levels:
    the zoo's nms_boxes visits equal scores in ``argsort()[::-1]`` order (numpy's sort, not
    stable), and so does NMS here."""
    module = zoo.zoo("yolov8")
    module.NMS_THRESH = 0.45
    pair = np.array([[0, 0, 10, 10], [1, 1, 11, 11]], float)
    tied = np.array([0.5, 0.5], np.float32)
    assert nms(pair, tied).tolist() == module.nms_boxes(pair, tied).tolist()
    rng = np.random.default_rng(11)
    for count in (3, 16, 17, 40, 300):
        xy = rng.uniform(0, 60, (count, 2))
        crowd = np.concatenate([xy, xy + 40], axis=1)
        levels = (rng.integers(0, 4, count) / 4 + 0.25).astype(np.float32)
        assert nms(crowd, levels).tolist() == module.nms_boxes(crowd, levels).tolist(), count


@pytest.mark.parametrize(("format", "sums"), FORMATS, ids=FORMAT_IDS)
@pytest.mark.usefixtures("nms_path")
def test_class_allow_list_keeps_the_zoos_boxes_of_those_classes(format: str, sums: bool) -> None:
    rng = np.random.default_rng(7)
    boxes, labels, scores = scene(rng, 40, classes=5)
    outputs = outputs_for(
        format, sums, boxes, labels, scores, classes=5, spread=2, jitter=10.0, rng=rng
    )
    allowed = [1, 3]
    mine = ours(outputs, format, classes=allowed)
    boxes_z, classes_z, scores_z = theirs(outputs, format)
    keep = np.isin(classes_z, allowed)
    assert 0 < keep.sum() < len(classes_z)
    assert zoo.same_detections(mine, (boxes_z[keep], classes_z[keep], scores_z[keep])) is None


@pytest.mark.parametrize(("format", "sums"), FORMATS, ids=FORMAT_IDS)
def test_nothing_above_the_threshold_gives_no_boxes(format: str, sums: bool) -> None:
    rng = np.random.default_rng(8)
    outputs = outputs_for(format, sums, *scene(rng, 10), spread=1, rng=rng)
    assert len(theirs(outputs, format, conf=0.97)[0]) == 0
    assert len(ours(outputs, format, conf=0.97)[0]) == 0
    empty = outputs_for(format, sums, np.zeros((0, 4)), np.zeros(0, int), np.zeros(0), rng=rng)
    found = detect.postprocess(
        empty, format, image.Placement(1.0, 1.0, 0, 0, 640, 640), INPUT, INPUT
    )
    assert len(found) == 0 and found.boxes.shape == (0, 4)
    assert detect.to_wire(found) == []


@pytest.mark.parametrize(("format", "sums"), FORMATS, ids=FORMAT_IDS)
@pytest.mark.usefixtures("nms_path")
def test_max_det_keeps_the_zoos_best(format: str, sums: bool) -> None:
    rng = np.random.default_rng(9)
    outputs = outputs_for(format, sums, *scene(rng, 30), spread=2, jitter=8.0, rng=rng)
    boxes_z, classes_z, scores_z = theirs(outputs, format)
    assert len(scores_z) > 10
    best = np.argsort(-scores_z, kind="stable")[:10]
    mine = ours(outputs, format, max_det=10)
    assert np.all(np.diff(mine[2]) <= 0)  # best first
    assert zoo.same_detections(mine, (boxes_z[best], classes_z[best], scores_z[best])) is None


@pytest.mark.parametrize("block", [nms_module.BLOCK, 100])
@pytest.mark.usefixtures("nms_path")
def test_nms_equals_the_zoos_nms_boxes_on_random_boxes(block: int, monkeypatch) -> None:
    """One class, several chunks (and overlap matrices in blocks), thresholds low to high."""
    monkeypatch.setattr(nms_module, "BLOCK", block)
    rng = np.random.default_rng(10)
    xy = np.cumsum(rng.uniform(0, 3, (3 * CHUNK, 2)), axis=0) % 500
    boxes = np.concatenate([xy, xy + rng.uniform(20, 60, (3 * CHUNK, 2))], axis=1)
    scores = rng.uniform(0, 1, 3 * CHUNK).astype(np.float32)
    module = zoo.zoo("yolov8")
    for iou in (0.1, 0.45, 0.8):
        module.NMS_THRESH = iou
        expected = module.nms_boxes(boxes, scores)
        assert nms(boxes, scores, iou=iou).tolist() == expected.tolist()


@pytest.mark.usefixtures("nms_path")
def test_nms_ties_follow_the_zoo_and_classes_do_not_suppress() -> None:
    module = zoo.zoo("yolov8")
    module.NMS_THRESH = 0.45
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10], [50, 50, 60, 60]], float)
    scores = np.array([0.5, 0.5, 0.5, 0.4], np.float32)
    expected = module.nms_boxes(boxes, scores).tolist()
    assert nms(boxes, scores).tolist() == expected and len(expected) == 2
    labels = np.array([0, 0, 1, 0])
    first = np.flatnonzero(labels == 0)
    zoo_kept = [*first[module.nms_boxes(boxes[first], scores[first])].tolist(), 2]
    assert sorted(nms(boxes, scores, labels).tolist()) == sorted(zoo_kept)
    assert nms(boxes, scores, max_det=1).tolist() == expected[:1]
    assert nms(np.zeros((0, 4)), np.zeros(0, np.float32)).tolist() == []
    # a tied crowd among other scores: one box stays, the one the zoo keeps
    levels = np.random.default_rng(1).integers(0, 3, 200).astype(np.float32) / 4
    crowd = np.array([[0, 0, 10, 10]]) + np.arange(200)[:, None] * 0.01
    assert nms(crowd, levels).tolist() == module.nms_boxes(crowd, levels).tolist()


@pytest.mark.usefixtures("nms_path")
def test_nms_of_many_classes_keeps_the_zoos_boxes_class_by_class() -> None:
    """Classes of one box to more than a chunk, interleaved, some with tied scores: each class
    keeps the boxes the zoo's nms_boxes keeps, in its order, and the whole is best first."""
    module = zoo.zoo("yolov8")
    module.NMS_THRESH = 0.45
    rng = np.random.default_rng(17)
    sizes = [1, 2, 5, 40, 90, CHUNK + 40]
    labels = rng.permutation(np.repeat(np.arange(len(sizes)), sizes))
    xy = rng.uniform(0, 200, (labels.size, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(20, 80, (labels.size, 2))], axis=1)
    scores = rng.uniform(0.3, 0.9, labels.size).astype(np.float32)
    tied = np.isin(labels, [1, 3, 5]) & (rng.uniform(size=labels.size) < 0.5)
    scores[tied] = np.round(scores[tied] * 8) / 8
    kept = nms(boxes, scores, labels)
    for cls in range(len(sizes)):
        members = np.flatnonzero(labels == cls)
        expected = members[module.nms_boxes(boxes[members], scores[members])]
        assert kept[labels[kept] == cls].tolist() == expected.tolist(), cls
    assert np.all(np.diff(scores[kept]) <= 0)
    assert nms(boxes, scores, labels, max_det=7).tolist() == kept[:7].tolist()


def test_nms_rounds_stop_once_max_det_kept_boxes_outscore_the_rest(monkeypatch) -> None:
    """40 classes of 20 boxes, none suppressing another (iou 1): every box is kept, and with
    max_det the rounds stop once that many kept boxes outscore every box left (fewer rounds
    than :data:`HEADS`, no chunks), giving the best max_det."""
    rng = np.random.default_rng(18)
    labels = np.repeat(np.arange(40), 20)
    xy = rng.uniform(0, 600, (labels.size, 2))
    boxes = np.concatenate([xy, xy + 30], axis=1)
    scores = rng.uniform(0, 1, labels.size).astype(np.float32)
    rounds: List[int] = []
    overlap = nms_module._pair_iou
    monkeypatch.setattr(nms_module, "_pair_iou", lambda a, b: rounds.append(1) or overlap(a, b))
    monkeypatch.setattr(nms_module, "_by_chunks", _no_chunks)
    kept = nms(boxes, scores, labels, iou=1.0, max_det=50)
    assert kept.tolist() == np.argsort(-scores, kind="stable")[:50].tolist()
    assert len(rounds) < nms_module.HEADS


def test_pair_overlap_is_box_iou_pair_by_pair() -> None:
    rng = np.random.default_rng(16)
    a = np.sort(rng.uniform(0, 50, (200, 2, 2)), axis=1).reshape(200, 4)[:, [0, 2, 1, 3]]
    b = a[::-1] + rng.uniform(-5, 5, (200, 4))
    b[:3] = b[:3, [2, 3, 0, 1]]  # inside out: negative sizes
    a[3:5, 2:] = a[3:5, :2]  # empty boxes
    b[3:5] = a[3:5]
    whole = np.diagonal(box_iou(a, b, nms_module.NMS_EPS))
    with np.errstate(divide="ignore", invalid="ignore"):
        pairs = nms_module._pair_iou(nms_module._with_areas(a), nms_module._with_areas(b))
    assert np.array_equal(pairs, whole, equal_nan=True)


def test_box_iou() -> None:
    a = np.array([[0, 0, 10, 10], [5, 5, 15, 15]], float)
    b = np.array([[0, 0, 10, 10], [10, 0, 20, 10], [20, 20, 30, 30]], float)
    assert np.allclose(box_iou(a, b), [[1.0, 0.0, 0.0], [25 / 175, 25 / 175, 0.0]])
    touching = box_iou(a[:1], b[1:2], eps=1e-5)[0, 0]
    assert 0 < touching < 1e-6  # the zoo's overlap: touching boxes overlap a little


# --- letterbox, boxes back in the source, overlay ----------------------------------------


@pytest.mark.parametrize("source", [(480, 640), (637, 421), (640, 640), (100, 1000), (1080, 1920)])
@pytest.mark.parametrize("pad", [0, 114])
def test_letterbox_is_the_zoos(source: Tuple[int, int], pad: int) -> None:
    rng = np.random.default_rng(11)
    picture = rng.integers(0, 256, (*source, 3), dtype=np.uint8)
    resized, placement = image.resize(picture, INPUT, "letterbox", fill=pad)
    assert np.array_equal(resized, zoo.letter_box(picture, INPUT, pad))
    assert placement.scale_x == min(INPUT[0] / source[0], INPUT[1] / source[1])


@pytest.mark.parametrize("source", [(480, 640), (637, 421), (100, 1000), (1080, 1920)])
def test_boxes_go_back_to_the_source_as_get_real_box(source: Tuple[int, int]) -> None:
    rng = np.random.default_rng(12)
    boxes = rng.uniform(-20, 660, (50, 4))
    _, placement = image.resize(np.zeros((*source, 3), np.uint8), INPUT, "letterbox")
    mapped = detect.to_source(boxes, placement, INPUT, source)
    assert np.array_equal(mapped, zoo.real_boxes(boxes, source, INPUT))
    assert mapped.min() >= 0 and mapped[:, 2].max() <= source[1] and mapped[:, 3].max() <= source[0]


@pytest.mark.parametrize(("format", "sums"), FORMATS, ids=FORMAT_IDS)
def test_postprocess_is_the_zoos_pipeline(format: str, sums: bool) -> None:
    rng = np.random.default_rng(13)
    outputs = outputs_for(format, sums, *scene(rng, 20), spread=2, jitter=8.0, rng=rng)
    source = (720, 1280)
    _, placement = image.resize(np.zeros((*source, 3), np.uint8), INPUT, "letterbox", fill=0)
    found = detect.postprocess(outputs, format, placement, INPUT, source, max_det=1000)
    boxes_z, classes_z, scores_z = theirs(outputs, format)
    expected = (zoo.real_boxes(boxes_z, source, INPUT), classes_z, scores_z)
    assert zoo.same_detections((found.boxes, found.classes, found.scores), expected) is None


def test_overlay_is_the_zoos_drawing() -> None:
    """Where the zoo's labels fit in the image, the same pixels as its ``draw``."""
    rng = np.random.default_rng(14)
    picture = rng.integers(0, 256, (360, 480, 3), dtype=np.uint8)
    labels = ["circle", "square", "triangle"]
    found = Detections(
        np.array([[10.7, 30.2, 200.9, 150.5], [0.0, 40.0, 480.0, 360.0], [300, 25, 470, 100]]),
        np.array([0.91, 0.5, 0.333], np.float32),
        np.array([2, 0, 1]),
    )
    drawn = detect.draw(picture, found, labels)
    expected = zoo.draw(picture[:, :, ::-1], found.boxes, found.scores, found.classes, labels)
    assert np.array_equal(drawn, expected[:, :, ::-1])
    assert not np.array_equal(drawn, picture)


def _label_pixels(canvas: np.ndarray) -> int:
    return int(np.all(canvas == detect.TEXT_RGB, axis=2).sum())


def _whole_label(text: str) -> int:
    """The pixels of ``text`` drawn as the overlay draws it, with room all around."""
    canvas = np.zeros((200, 600, 3), np.uint8)
    cv2.putText(canvas, text, (50, 100), cv2.FONT_HERSHEY_SIMPLEX, 0.6, detect.TEXT_RGB, 2)
    return _label_pixels(canvas)


@pytest.mark.parametrize(
    "box",
    [[30, 0, 90, 50], [30, 5.5, 90, 50], [0, 0, 200, 120], [150, 40, 200, 90], [0, 100, 40, 119]],
    ids=["top-edge", "near-top", "whole-image", "right-edge", "bottom-left"],
)
def test_every_label_is_drawn_inside_the_image(box: List[float]) -> None:
    """A box at the top edge (the demo's sample 002.jpg has one: its cross) had its label
    drawn above the image, where nothing of it shows; at the right edge, cut."""
    picture = np.zeros((120, 200, 3), np.uint8)
    found = Detections(np.array([box], float), np.array([0.98], np.float32), np.array([0]))
    drawn = detect.draw(picture, found, ["triangle"])
    assert _label_pixels(drawn) == _whole_label("triangle 0.98")


def test_the_demo_samples_show_every_label() -> None:
    """Each detection of the demo detector on its samples, drawn alone: its whole label."""
    from rkserve import repository

    engine = repository.open_engine(ROOT / "models", "shapes-det", backend="onnx")
    for sample in sorted((ROOT / "models" / "shapes-det" / "samples").glob("*.jpg")):
        prepared = engine.prepare(sample.read_bytes(), engine.parse_params())
        found = detect.postprocess(
            engine.run(prepared),
            "yolov8",
            prepared.context.placement,
            engine.spec.input_size,
            prepared.context.size,
        )
        blank = np.zeros((*prepared.context.size, 3), np.uint8)
        for n in range(len(found)):
            one = Detections(
                found.boxes[n : n + 1], found.scores[n : n + 1], found.classes[n : n + 1]
            )
            text = f"{engine.spec.labels[int(found.classes[n])]} {float(found.scores[n]):.2f}"
            drawn = detect.draw(blank, one, engine.spec.labels)
            assert _label_pixels(drawn) == _whole_label(text), (sample.name, text, found.boxes[n])


def test_to_wire_is_best_first_with_labels() -> None:
    found = Detections(
        np.array([[1.5, 2, 3, 4], [5, 6, 7, 8]]), np.array([0.9, 0.4], np.float32), np.array([1, 7])
    )
    assert detect.to_wire(found, ["a", "b"]) == [
        {"index": 1, "label": "b", "score": pytest.approx(0.9), "box": [1.5, 2.0, 3.0, 4.0]},
        {"index": 7, "label": "7", "score": pytest.approx(0.4), "box": [5.0, 6.0, 7.0, 8.0]},
    ]


# --- output layouts ---------------------------------------------------------------------------


def _v8_shapes(classes: int, sums: bool, size: int = 640) -> List[List[int]]:
    shapes: List[List[int]] = []
    for stride in (8, 16, 32):
        grid = size // stride
        shapes += [[1, 64, grid, grid], [1, classes, grid, grid]] + (
            [[1, 1, grid, grid]] if sums else []
        )
    return shapes


def test_layouts_are_read_from_output_shapes() -> None:
    v5 = [[1, 255, 80, 80], [1, 255, 40, 40], [1, 255, 20, 20]]
    assert read_layout(v5, INPUT) == Layout("yolov5", 80, (8, 16, 32), anchors=3)
    assert read_layout(_v8_shapes(3, False, 320), (320, 320)) == Layout("yolov8", 3, (8, 16, 32))
    assert read_layout(_v8_shapes(80, True), None) == Layout(
        "yolov8", 80, (8, 16, 32), score_sum=True
    )
    assert read_layout(v5, (320, 320)) == Layout("yolov5", 80, (4, 8, 16), anchors=3)
    assert read_layout([[1, 1000]], (224, 224)) is None
    assert read_layout(_v8_shapes(80, False)[:4], INPUT) is None
    assert read_layout([[1, 255, 80, 80], [1, 255, 40, 40], [1, 255, 30, 20]], INPUT) is None
    assert explain(_v8_shapes(80, False), INPUT).startswith(
        "6 outputs: looks like a YOLOv8 rknnopt export"
    )
    assert explain(_v8_shapes(80, True), INPUT).startswith(
        "9 outputs: looks like a YOLOv8 rknnopt export"
    )
    assert "YOLOv8/v9/YOLO11 default export" in explain([[1, 84, 8400]])
    # a scalar or zero-sized output (a corrupt or odd file) is explained, never a crash
    assert explain([[]]) == "1 output: no task rkserve serves reads this layout"
    assert explain([[1, 0, 4, 4]], INPUT).startswith("1 output [1, 0, 4, 4]")


def test_decode_refuses_outputs_of_another_count() -> None:
    outputs = yolo_outputs("yolov8", [], [], [], 80)
    with pytest.raises(ValueError, match="7 outputs do not make 2 or 3 per stride"):
        detect.decode([*outputs, outputs[0]], "yolov8")
    with pytest.raises(ValueError, match="unknown detection format"):
        detect.decode(outputs, "yolov9")


def test_the_thirdparty_yolov5n_is_recognised_by_inspect() -> None:
    from rkserve.board.rknnfile import describe, read_rknn
    from tests.helpers import shared

    info = read_rknn(shared("rknn", "thirdparty", "yolov5n-640-640-rk3568_tk2.3.2_thirdparty.rknn"))
    assert "yolov5-format detector: 80 classes, strides 8/16/32, 3 anchors per cell" in describe(
        info
    )
    assert info.to_dict()["looks_like"].startswith(
        "3 outputs: looks like a YOLOv5/YOLOv7 anchor export"
    )


def test_drawn_overlay_is_jpeg_ready() -> None:
    picture = np.zeros((64, 64, 3), np.uint8)
    found = Detections(
        np.array([[8.0, 20.0, 40.0, 50.0]]), np.array([0.8], np.float32), np.array([0])
    )
    ok, _ = cv2.imencode(".jpg", detect.draw(picture, found))
    assert ok


# --- real model outputs -----------------------------------------------------------------------


@pytest.mark.parametrize("sums", [False, True], ids=["6-outputs", "9-outputs"])
@pytest.mark.usefixtures("nms_path")
def test_a_real_onnx_detectors_outputs_give_the_zoos_boxes(sums: bool) -> None:
    """onnxruntime runs the small detector of tests/onnx_detector.py on letterboxed images of
    squares with noisy colours (distinct scores, overlapping boxes at every stride)."""
    import onnxruntime as ort

    from tests.onnx_detector import detector_onnx

    size = 128
    session = ort.InferenceSession(
        detector_onnx(size, score_sums=sums), providers=["CPUExecutionProvider"]
    )
    rng = np.random.default_rng(15)
    for _ in range(4):
        picture = np.full((96, 160, 3), 20, np.uint8)
        for _ in range(3):
            x, y, side = (
                int(rng.integers(0, 110)),
                int(rng.integers(0, 50)),
                int(rng.integers(16, 46)),
            )
            patch = picture[y : y + side, x : x + side]
            patch[...] = 0
            patch[..., int(rng.integers(0, 3))] = rng.integers(150, 256, patch.shape[:2])
        resized, placement = image.resize(picture, (size, size), "letterbox", fill=0)
        tensor = (resized.astype(np.float32) / 255).transpose(2, 0, 1)[None]
        outputs = session.run(None, {"images": tensor})
        assert len(outputs) == (9 if sums else 6)
        mine = detect.postprocess(
            outputs, "yolov8", placement, (size, size), picture.shape[:2], max_det=1000
        )
        boxes, classes, scores = zoo.post_process(outputs, "yolov8", input_size=(size, size))
        expected = (zoo.real_boxes(boxes, picture.shape[:2], (size, size)), classes, scores)
        assert len(mine) >= 3
        assert zoo.same_detections((mine.boxes, mine.classes, mine.scores), expected) is None
