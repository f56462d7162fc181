"""``rkserve doctor`` on the emulated board, as the seed board's owner ran it: first with the
board as found (librknnrt 1.5.0 next to rknn_server 2.3.0, driver 0.8.2), then updated (all
2.3.0). The real rknn-toolkit-lite2 2.3.0 is installed, and the stand-in runtime confirms
what doctor predicts: 1.5.0 rejects the demo models with the runtime's own message.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict

import pytest

from rkserve.board.checks import FAIL, OK, WARN
from tests.boards import AFTER_UPDATE, BEFORE_UPDATE, make_board, write_lite2
from tests.emuboard import ROOT, board, write_attrs
from tests.helpers import MODELS

pytestmark = pytest.mark.emulated

LITE2 = "2.3.0"  # the seed board's rknn-toolkit-lite2


def doctor(name: str) -> Dict[str, Any]:
    done = board(name).run(["-m", "rkserve", "doctor", "--models", str(MODELS), "--json"], LITE2)
    assert done.returncode in (0, 1), done.stderr[-3000:]
    report: Dict[str, Any] = json.loads(done.stdout)
    report["exit"] = done.returncode
    return report


def host_doctor(tmp_path: Path, versions: Dict[str, Any]) -> Dict[str, Any]:
    """The same doctor on the host, against a fixture tree of the same board (--root)."""
    root = make_board(tmp_path, **versions)
    site = write_lite2(tmp_path / "site", LITE2)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(site)])}
    command = [sys.executable, "-m", "rkserve", "doctor", "--root", str(root)]
    done = subprocess.run(
        [*command, "--models", str(MODELS), "--json"], capture_output=True, text=True, env=env
    )
    return json.loads(done.stdout)


@pytest.mark.process
@pytest.mark.parametrize(
    "name,versions", [("rk3568-seed", BEFORE_UPDATE), ("rk3568", AFTER_UPDATE)]
)
def test_doctor_on_the_board_says_what_it_says_of_the_boards_files(tmp_path, name, versions):
    """Word for word what the host's doctor reports for a fixture tree of the same board."""
    emulated, host = doctor(name), host_doctor(tmp_path, versions)
    assert emulated["checks"] == host["checks"]
    assert emulated["summary"] == host["summary"]


def checks_of(report: Dict[str, Any], scope: str) -> Dict[str, str]:
    return {c["name"]: c["status"] for c in report["checks"] if c["scope"] == scope}


def detail(report: Dict[str, Any], scope: str, name: str) -> str:
    return next(c["detail"] for c in report["checks"] if (c["scope"], c["name"]) == (scope, name))


def test_doctor_on_the_seed_board_as_found() -> None:
    report = doctor("rk3568-seed")
    assert report["exit"] == 1 and report["ok"] is False
    assert report["board"]["librknnrt"] == "1.5.0"
    assert report["board"]["toolkit_lite2"] == LITE2
    assert checks_of(report, "board") == {
        "soc": OK,
        "driver": WARN,  # 0.8.2 < 0.9.2
        "librknnrt": OK,
        "rknn_server": WARN,  # 2.3.0 next to librknnrt 1.5.0
        "rknn-toolkit-lite2": WARN,  # 2.3.0 next to librknnrt 1.5.0
        "device": OK,
    }
    for model in ("shapes", "shapes-seg"):
        assert checks_of(report, model) == {"target": OK, "toolkit": FAIL}
        assert "Invalid RKNN model version 6" in detail(report, model, "toolkit")
    assert "0.8.2" in detail(report, "board", "driver")


def test_doctor_on_the_seed_board_after_its_update() -> None:
    report = doctor("rk3568")
    assert report["exit"] == 0 and report["ok"] is True
    assert report["board"]["librknnrt"] == "2.3.0"
    board_checks = checks_of(report, "board")
    assert [name for name, status in board_checks.items() if status != OK] == ["driver"]
    for model in ("shapes", "shapes-seg"):  # built by toolkit 2.3.2: runs, with a warning
        assert checks_of(report, model) == {"target": OK, "toolkit": WARN}
    assert report["summary"][FAIL] == 0


def test_the_seed_boards_runtime_rejects_the_models_as_doctor_said(tmp_path: Path) -> None:
    records = tmp_path / "records"
    write_attrs(records, MODELS / "shapes" / "model.rknn")
    plan = [{"name": "seed", "model": str(MODELS / "shapes"), "inputs": []}]
    (tmp_path / "plan.json").write_text(json.dumps(plan), encoding="utf-8")
    done = board("rk3568-seed").run(
        ["tests/emulated/drive.py", str(tmp_path / "plan.json"), str(tmp_path / "out.json")],
        LITE2,
        RKNN_STANDIN_DIR=str(records),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "out.json").read_text())[0]
    assert result["error"].startswith("BackendError: init_runtime for "), result
    assert "Invalid RKNN model version" in result["error"]  # the backend's hint names it
    assert "librknnrt version: 1.5.0" in done.stderr
    assert "E RKNN:" in done.stderr and "Invalid RKNN model version 6" in done.stderr
    assert "RKNN_ERR_MODEL_INVALID" in done.stderr  # the wheel's name for the C code
