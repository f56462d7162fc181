"""``rkserve bench`` against a real daemon, and the fast segmentation argmax."""

from __future__ import annotations

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
