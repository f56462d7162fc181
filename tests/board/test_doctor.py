"""``rkserve doctor`` end to end: a real subprocess against fixture boards and models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

from rkserve.board.checks import FAIL, OK, SKIP, WARN
from rkserve.board.doctor import failed, model_folders, render_table, run_doctor
from tests.boards import (
    AFTER_UPDATE,
    BEFORE_UPDATE,
    make_board,
    shared_rknn,
    write_lite2,
    write_rknn,
)

REPO = Path(__file__).resolve().parents[2]
SPEC = "task: classification\ninput: {size: 224}\n"


def doctor(*args: str, site: Optional[Path] = None) -> subprocess.CompletedProcess:
    """Run ``python -m rkserve doctor ARGS``; ``site`` adds a folder to the child's sys.path."""
    paths = [str(REPO)] + ([str(site)] if site else [])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    command = [sys.executable, "-m", "rkserve", "doctor", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)


def model(models: Path, name: str, rknn: Optional[Path] = None, **synthetic: Any) -> Path:
    """A model folder: model.yaml and a model.rknn linked to ``rknn`` or written from
    ``synthetic`` (toolkit=, target=); with neither, an ONNX-only folder."""
    folder = models / name
    folder.mkdir(parents=True)
    (folder / "model.yaml").write_text(SPEC, encoding="utf-8")
    if rknn is not None:
        (folder / "model.rknn").symlink_to(rknn)
    elif synthetic:
        write_rknn(folder / "model.rknn", **synthetic)
    else:
        (folder / "model.onnx").write_bytes(b"")
    return folder


def checks_of(report: Dict[str, Any], scope: str) -> Dict[str, str]:
    return {c["name"]: c["status"] for c in report["checks"] if c["scope"] == scope}


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A folder where rknn-toolkit-lite2 2.3.0 looks installed."""
    return write_lite2(tmp_path / "site", "2.3.0")


@pytest.mark.process
def test_updated_board_passes_with_warnings(tmp_path: Path, site: Path) -> None:
    root = make_board(tmp_path, **AFTER_UPDATE)
    models = tmp_path / "models"
    model(models, "mobilenet", toolkit="2.3.0", target="rk3566")
    model(models, "onnx_only")
    result = doctor("--root", str(root), "--models", str(models), "--json", site=site)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert report["board"]["librknnrt"] == "2.3.0"
    assert report["board"]["toolkit_lite2"] == "2.3.0"
    board = checks_of(report, "board")
    assert [name for name, status in board.items() if status != OK] == ["driver"]
    assert checks_of(report, "mobilenet") == {"target": OK, "toolkit": OK}
    assert checks_of(report, "onnx_only") == {"rknn": SKIP}
    assert report["summary"][WARN] == 1 and report["summary"][FAIL] == 0


@pytest.mark.process
def test_old_runtime_refuses_new_model(tmp_path: Path, site: Path) -> None:
    root = make_board(tmp_path, **BEFORE_UPDATE)
    models = tmp_path / "models"
    model(models, "mobilenet", toolkit="2.3.2", target="rk3568")
    result = doctor("--root", str(root), "--models", str(models), "--json", site=site)
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert checks_of(report, "mobilenet")["toolkit"] == FAIL
    assert checks_of(report, "board")["rknn_server"] == WARN
    detail = next(c["detail"] for c in report["checks"] if c["name"] == "toolkit")
    assert "Invalid RKNN model version 6" in detail


@pytest.mark.process
def test_table_and_strict(tmp_path: Path, site: Path) -> None:
    root = make_board(tmp_path, **AFTER_UPDATE)
    args = ["--root", str(root), "--models", str(tmp_path / "none")]
    table = doctor(*args, site=site)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert any(line.startswith("STATUS") and "DETAIL" in line for line in lines)
    driver = next(i for i, line in enumerate(lines) if "board: driver" in line)
    assert lines[driver].startswith("WARN") and "0.8.2" in lines[driver]
    assert "fix:" in lines[driver + 1]
    assert lines[-1].startswith("0 FAIL, 1 WARN")
    strict = doctor(*args, "--strict", site=site)
    assert strict.returncode == 1
    assert "FAIL    board: driver" in strict.stdout


@pytest.mark.process
def test_without_lite2_or_librknnrt_fails(tmp_path: Path) -> None:
    root = make_board(tmp_path, **AFTER_UPDATE)
    missing_lite2 = doctor("--root", str(root), "--models", str(tmp_path / "none"), "--json")
    assert missing_lite2.returncode == 1
    assert checks_of(json.loads(missing_lite2.stdout), "board")["rknn-toolkit-lite2"] == FAIL
    moved = make_board(tmp_path / "b", librknnrt_path="opt/rk/librknnrt.so")
    args = ["--root", str(moved), "--models", str(tmp_path / "none"), "--json"]
    assert checks_of(json.loads(doctor(*args).stdout), "board")["librknnrt"] == FAIL
    found = json.loads(doctor(*args, "--librknnrt", "/opt/rk/librknnrt.so").stdout)
    assert checks_of(found, "board")["librknnrt"] == OK
    assert found["board"]["librknnrt_path"] == "/opt/rk/librknnrt.so"


@pytest.mark.process
def test_real_models_on_rk3568(tmp_path: Path, site: Path) -> None:
    root = make_board(tmp_path, **AFTER_UPDATE)
    models = tmp_path / "models"
    model(models, "mobilenet", shared_rknn("built/mobilenet_v2_1.0_224_rk3568_i8_tk2.3.2.rknn"))
    model(
        models, "demo3566", shared_rknn("rockchip/multiple_input_demo_RK3566_RK3568_tk1.6.2.rknn")
    )
    result = doctor("--root", str(root), "--models", str(models), "--json", site=site)
    assert result.returncode == 0, result.stdout
    assert checks_of(json.loads(result.stdout), "demo3566") == {"target": OK, "toolkit": OK}
    model(models, "demo3588", shared_rknn("rockchip/multiple_input_demo_RK3588_tk1.6.2.rknn"))
    result = doctor("--root", str(root), "--models", str(models), site=site)
    assert result.returncode == 1
    refused = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert len(refused) == 1 and "demo3588: target" in refused[0]


def test_broken_model_folders(tmp_path: Path) -> None:
    models = tmp_path / "models"
    bad_yaml = model(models, "bad_yaml", toolkit="2.3.0", target="rk3568")
    (bad_yaml / "model.yaml").write_text("task: pose\ninput: {size: 224}\n")
    bad_file = model(models, "bad_file")
    (bad_file / "model.rknn").write_bytes(b"\x7fELF not a model")
    (models / "notes").mkdir()  # no model.yaml: not a model folder
    assert [p.name for p in model_folders(models)] == ["bad_file", "bad_yaml"]
    report = run_doctor(make_board(tmp_path, **AFTER_UPDATE), models)
    sections = dict(report.sections)
    assert [(c.name, c.status) for c in sections["bad_file"]] == [("rknn", FAIL)]
    assert "RKNN_MAGIC" in sections["bad_file"][0].fix
    yaml_checks = {c.name: c.status for c in sections["bad_yaml"]}
    assert yaml_checks == {"model.yaml": FAIL, "target": OK, "toolkit": OK}
    assert failed(report)
    table = render_table(report)
    assert "bad_yaml: model.yaml" in table and "task" in table


def test_no_models_folder(tmp_path: Path) -> None:
    root = make_board(tmp_path, **AFTER_UPDATE)
    report = run_doctor(root, tmp_path / "missing")
    names: List[str] = [scope for scope, _ in report.sections]
    assert names == ["board"]
