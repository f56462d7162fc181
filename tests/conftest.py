"""Markers: `board` tests run only on a board with an NPU and rknn-toolkit-lite2; `process`
marks the tests that start a process (`make fast` runs the others, and with
RKSERVE_NO_PROCESSES=1 a test that starts one unmarked fails, so the fast loop stays fast);
the `converter` fixture skips a test when the rknn-toolkit2 environment (.venv-convert) is
absent."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rkserve.backends import npu_present
from rkserve.cli.convert import converter_python

DOUBLES = Path(__file__).parent / "doubles"


@pytest.fixture(scope="session")
def converter() -> Path:
    """The converter environment's Python (deploy/convert-env.sh makes it), or skip."""
    python = converter_python()
    if python is None or not python.exists():
        pytest.skip(
            "converter environment absent: run deploy/convert-env.sh to create .venv-convert"
        )
    return python


def pytest_collection_modifyitems(config, items):
    if npu_present():
        return
    skip = pytest.mark.skip(
        reason="needs a Rockchip board: aarch64, rknn-toolkit-lite2 and /dev/dri/renderD129"
    )
    for item in items:
        if item.get_closest_marker("board"):
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


@pytest.fixture(autouse=True)
def _no_unmarked_processes(request, monkeypatch):
    """With RKSERVE_NO_PROCESSES=1 (``make fast``), starting a process from a test that is
    not marked ``process`` fails it: the fast inner loop must not grow slow unnoticed."""
    if not os.environ.get("RKSERVE_NO_PROCESSES") or request.node.get_closest_marker("process"):
        return

    def refuse(*args, **kwargs):
        raise AssertionError(
            f"{request.node.nodeid} starts a process: mark it @pytest.mark.process"
        )

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
