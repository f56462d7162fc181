"""Shared test helpers: the real third-party data beside the repo, and model folders."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Optional

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
DATA = Path(os.environ.get("RKSERVE_SHARED_DATA", ROOT.parent / "shared" / "data"))


def run_rkserve(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m rkserve ARGS`` from the project root, its output captured as text."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "rkserve", *args]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, env=env, cwd=str(ROOT)
    )


def shared(*parts: str) -> Path:
    """A file under ../shared/data, or skip the test with the reason."""
    path = DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared test data not found: {path} (set RKSERVE_SHARED_DATA)")
    return path


def write_model(
    folder: Path,
    spec: Dict[str, Any],
    onnx: Optional[Path] = None,
    rknn: Optional[Path] = None,
    labels: Optional[Path] = None,
) -> Path:
    """A model folder: model.yaml from ``spec``, files linked in (not copied)."""
    folder.mkdir(parents=True, exist_ok=True)
    for source, name in ((onnx, "model.onnx"), (rknn, "model.rknn"), (labels, "labels.txt")):
        if source is not None:
            (folder / name).symlink_to(source)
    if labels is not None:
        spec = {"labels": "labels.txt", **spec}
    (folder / "model.yaml").write_text(yaml.safe_dump(spec), encoding="utf-8")
    return folder


def convert_cli(
    *args: str, env: Dict[str, str], cwd: Optional[Path] = None
) -> subprocess.CompletedProcess:
    """``python -m rkserve convert ARGS`` from the daemon's environment (it re-executes itself
    in ``.venv-convert``), run in ``cwd`` (default: the repository), output captured as text."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    return subprocess.run(
        [sys.executable, "-m", "rkserve", "convert", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=str(cwd or ROOT),
        timeout=600,
    )
