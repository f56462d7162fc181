"""``rkserve bench`` against a real daemon, and the fast segmentation argmax."""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from rkserve.tasks import segment


@st.composite
def score_maps(draw: st.DrawFn) -> np.ndarray:
    shape = (
        draw(st.integers(1, 24)),
        draw(st.integers(1, 40)),
        draw(st.integers(1, 40)),
    )
    dtype = draw(st.sampled_from([np.float32, np.float16, np.float64]))
    # a few distinct values make ties common; specials check NaN and infinity handling
    pool = draw(
        st.lists(
            st.sampled_from([0.0, -0.0, 1.0, -1.5, 2.0, np.inf, -np.inf, np.nan]),
            min_size=1,
            max_size=4,
        )
        | st.lists(st.floats(-1e4, 1e4, width=16), min_size=1, max_size=6)
    )
    return draw(hnp.arrays(dtype, shape, elements=st.sampled_from(pool)))


@settings(max_examples=300, deadline=None)
@given(score_maps())
def test_argmax_channels_equals_numpy(scores):
    assert (segment.argmax_channels(scores) == np.argmax(scores, axis=0)).all()


@pytest.mark.parametrize("shape", [(19, 512, 512), (21, 257, 257), (3, 1000, 7)])
def test_argmax_channels_equals_numpy_across_blocks(shape):
    rng = np.random.default_rng(sum(shape))
    scores = rng.standard_normal(shape).astype(np.float32)
    scores[1, ::7] = scores[0, ::7]  # ties spanning several row blocks
    scores[:, -1, -1] = 3.0  # a pixel where every class ties
    expected = np.argmax(scores, axis=0)
    assert expected[-1, -1] == 0
    assert (segment.argmax_channels(scores) == expected).all()


def test_argmax_channels_refuses_more_classes_than_uint8_holds():
    with pytest.raises(ValueError, match="257 classes"):
        segment.argmax_channels(np.zeros((257, 2, 2), np.float32))


def test_class_counts_equal_bincount_across_float32_slices(monkeypatch):
    rng = np.random.default_rng(5)
    classes = rng.integers(0, 7, (123, 77)).astype(np.uint8)
    expected = np.bincount(classes.reshape(-1), minlength=256)
    assert (segment.class_counts(classes) == expected).all()
    monkeypatch.setattr(segment, "_EXACT_FLOAT32", 1000)  # several slices, the last one short
    assert (segment.class_counts(classes) == expected).all()


def test_overlay_equals_the_plain_numpy_blend():
    rng = np.random.default_rng(6)
    rgb = rng.integers(0, 256, (37, 53, 3)).astype(np.uint8)
    classes = rng.integers(0, 5, (37, 53)).astype(np.uint8)
    palette = segment.palette_array([(10, 200, 30), (255, 0, 0)])
    expected = cv2.addWeighted(rgb, 0.5, palette[classes], 0.5, 0.0)
    expected[classes == 0] = rgb[classes == 0]
    assert (segment.overlay(rgb, classes, palette) == expected).all()
    short = segment.overlay(rgb, classes, palette[:3])  # classes 3, 4 have no colour: black
    assert (short[classes == 1] == expected[classes == 1]).all()
    black = cv2.addWeighted(rgb, 0.5, np.zeros_like(rgb), 0.5, 0.0)
    assert (short[classes == 4] == black[classes == 4]).all()


def test_indexed_png_decodes_to_the_class_map():
    rng = np.random.default_rng(7)
    classes = np.repeat(rng.integers(0, 19, (40, 1)), 300, axis=1).astype(np.uint8)
    png = segment.indexed_png(classes, segment.palette_array(None))
    start = png.index(b"IDAT") + 4
    (length,) = struct.unpack(">I", png[start - 8 : start - 4])
    rows = np.frombuffer(zlib.decompress(png[start : start + length]), np.uint8)
    rows = rows.reshape(classes.shape[0], classes.shape[1] + 1)
    assert (rows[:, 0] == 0).all() and (rows[:, 1:] == classes).all()
    decoded = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
    assert (decoded == segment.palette_array(None)[classes]).all()
