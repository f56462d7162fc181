from __future__ import annotations

import cv2
import numpy as np
import pytest

from rkserve.kernels import classify, segment
from rkserve.kernels.image import Placement
from rkserve.kernels.labels import parse_labels


def test_softmax_and_top_k_with_labels():
    probs = classify.class_scores(np.array([[1.0, 3.0, 2.0, 0.0]]), "logits")
    assert probs.sum() == pytest.approx(1.0)
    top = classify.top_k(probs, 2, ["a", "b", "c", "d"])
    assert [t["label"] for t in top] == ["b", "c"]
    assert top[0]["score"] > top[1]["score"]


def test_top_k_label_offset_and_clamp():
    probs = np.array([0.5, 0.1, 0.4], np.float32)  # index 0 = background
    top = classify.top_k(probs, 10, ["x", "y"], label_offset=1)
    # the background has no label and is never an answer (it used to come first, as -1)
    assert [(t["index"], t["label"]) for t in top] == [(1, "y"), (0, "x")]


@pytest.mark.parametrize(
    "text,expected",
    [
        ("n01440764 tench, Tinca tinca\nn01443537 goldfish\n", ["tench, Tinca tinca", "goldfish"]),
        ("0:tench\n2:goldfish\n\n", ["tench", "1", "goldfish"]),
        ("background\naeroplane\n", ["background", "aeroplane"]),
    ],
)
def test_label_formats(text, expected):
    assert parse_labels(text) == expected


def test_argmax_matches_numpy_including_ties():
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 4, (7, 33, 17)).astype(np.float32)  # many ties
    assert (segment.argmax_channels(scores) == np.argmax(scores, axis=0)).all()
    nhwc = np.ascontiguousarray(scores.transpose(1, 2, 0))[None]
    assert (segment.class_map(nhwc, layout="nhwc") == np.argmax(scores, axis=0)).all()


def test_class_map_to_source_with_letterbox():
    classes = np.zeros((10, 10), np.uint8)
    classes[3:7, :] = 2  # content rows 3..6, padding above and below
    placement = Placement(0.1, 0.1, pad_x=0, pad_y=3, width=10, height=4)
    back = segment.to_source(classes, placement, (40, 100))
    assert back.shape == (40, 100) and (back == 2).all()


def test_stats_and_indexed_png_round_trip():
    classes = np.zeros((6, 8), np.uint8)
    classes[:2] = 3
    stats = segment.class_stats(classes, ["bg", "a", "b", "c"])
    assert [(s["label"], s["pixels"]) for s in stats] == [("bg", 32), ("c", 16)]
    assert stats[1]["ratio"] == pytest.approx(16 / 48)
    palette = segment.palette_array([(0, 0, 0), (255, 0, 0), (0, 255, 0), (0, 0, 255)])
    png = segment.indexed_png(classes, palette)
    decoded = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
    assert (decoded == palette[classes]).all()


def test_overlay_keeps_background_pixels():
    rgb = np.full((4, 4, 3), 100, np.uint8)
    classes = np.zeros((4, 4), np.uint8)
    classes[0, 0] = 1
    out = segment.overlay(rgb, classes, segment.palette_array([(0, 0, 0), (255, 0, 0)]))
    assert out[1, 1].tolist() == [100, 100, 100] and out[0, 0, 0] > 100
