"""Markers: `board` tests run only on a board with an NPU and rknn-toolkit-lite2; the
`converter` fixture skips a test when the rknn-toolkit2 environment (.venv-convert) is absent."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from helpers import missing

from rkserve.backends import npu_present
from rkserve.convert.cli import converter_python

DOUBLES = Path(__file__).parent / "doubles"


@pytest.fixture(scope="session")
def converter() -> Path:
    """The converter environment's Python (deploy/convert-env.sh makes it), or skip."""
    python = converter_python()
    if python is None or not python.exists():
        missing("converter environment absent: run deploy/convert-env.sh to create .venv-convert")
    return python


def pytest_collection_modifyitems(config, items):
    if npu_present():
        return
    skip = pytest.mark.skip(
        reason="needs a Rockchip board: aarch64, rknn-toolkit-lite2 and /dev/dri/renderD129"
    )
    for item in items:
        if "board" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def rknnlite_double(monkeypatch):
    """``rknnlite.api.RKNNLite`` is the double in tests/doubles for this test."""
    monkeypatch.syspath_prepend(str(DOUBLES))
    for name in [m for m in sys.modules if m.startswith("rknnlite")]:
        monkeypatch.delitem(sys.modules, name)
    from rknnlite.api import RKNNLite

    RKNNLite.instances.clear()
    return RKNNLite
