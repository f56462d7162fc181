"""Markers: `board` tests run only on a board with an NPU and rknn-toolkit-lite2."""

from __future__ import annotations

import pytest

from rkserve.backends import npu_present


def pytest_collection_modifyitems(config, items):
    if npu_present():
        return
    skip = pytest.mark.skip(
        reason="needs a Rockchip board: aarch64, rknn-toolkit-lite2 and /dev/dri/renderD129"
    )
    for item in items:
        if "board" in item.keywords:
            item.add_marker(skip)
