"""The edges of the command line a new user hits first: no tracebacks, clear words, fast.

Before: tracebacks for a missing image, a directory and a malformed --endpoint, and a
BrokenPipeError when piping into head; `models` with no daemon waited 20 s and never said
the daemon may not be running; one bad image among several printed nothing for the good
ones; --out on a classification model was silently ignored.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Tuple

import cv2
import numpy as np
import pytest

from tools.harness import ROOT, Daemon, fake_models

pytestmark = pytest.mark.process  # every test here starts a process


def rkserve(*args: str, shell_tail: str = "") -> Tuple[int, str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "rkserve", *args]
    if shell_tail:
        quoted = " ".join(f"'{a}'" for a in command)
        command = ["sh", "-c", f"{quoted} {shell_tail}"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60, cwd=ROOT)
    return done.returncode, done.stdout, done.stderr


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    d = Daemon(folder, fake_models(folder / "models"), "--backend", "fake").start()
    yield d
    assert d.stop() == 0, d.log()


def jpeg(path: Path) -> str:
    ok, data = cv2.imencode(".jpg", np.full((40, 40, 3), 90, np.uint8))
    assert ok
    path.write_bytes(data.tobytes())
    return str(path)


def test_infer_names_a_missing_file_and_a_directory_and_prints_the_good_ones(daemon, tmp_path):
    good, other = jpeg(tmp_path / "good.jpg"), jpeg(tmp_path / "other.jpg")
    (tmp_path / "broken.jpg").write_bytes(b"not an image at all")
    images = [good, str(tmp_path / "missing.jpg"), str(tmp_path), str(tmp_path / "broken.jpg")]
    code, out, err = rkserve("infer", "-e", daemon.endpoint, "-m", "cls", *images, other)
    assert code == 1
    assert "Traceback" not in err
    assert f"{good}: cls (classification)" in out and f"{other}: cls (classification)" in out
    assert f"{tmp_path / 'missing.jpg'}: bad_image: cannot read" in err
    assert f"{tmp_path}: bad_image: is a directory" in err
    assert f"{tmp_path / 'broken.jpg'}: bad_image:" in err


def test_an_out_path_that_cannot_be_written_is_one_line(daemon, tmp_path):
    """Before: a FileNotFoundError traceback."""
    image = jpeg(tmp_path / "good.jpg")
    out = tmp_path / "no" / "such" / "folder"
    (tmp_path / "no").write_text("a file where a folder would be")
    for many in ([image], [image, image]):
        code, _, err = rkserve(
            "infer", "-e", daemon.endpoint, "-m", "seg", "--out", str(out), *many
        )
        assert code == 1 and "Traceback" not in err, err
        assert f"--out {out}" in err and "cannot write: Not a directory" in err


def test_infer_refuses_out_on_a_classification_model(daemon, tmp_path):
    code, _, err = rkserve(
        "infer", "-e", daemon.endpoint, "-m", "cls", jpeg(tmp_path / "a.jpg"), "--out", "m.png"
    )
    assert code == 1 and "Traceback" not in err
    assert "--out and --overlay write segmentation masks; cls is a classification model" in err
    assert not (tmp_path / "m.png").exists()


@pytest.mark.parametrize("endpoint", ["localhost:5555", "tcp://board", "tcp://board:99999"])
def test_a_malformed_endpoint_is_one_clear_line(endpoint):
    code, _, err = rkserve("models", "--endpoint", endpoint)
    assert code == 1 and "Traceback" not in err
    assert err.startswith(f"rkserve models: error: endpoint {endpoint!r}"), err


def test_models_without_a_daemon_says_so_quickly(tmp_path):
    started = time.monotonic()
    code, _, err = rkserve("models", "--endpoint", f"ipc://{tmp_path}/nothing.sock")
    took = time.monotonic() - started
    assert code == 1 and "Traceback" not in err
    assert "is the daemon running" in err, err
    assert took < 8.0  # 3 s to connect, plus starting Python; was 20 s


@pytest.mark.parametrize("command", ["inspect", "doctor"])
def test_piping_into_head_ends_quietly(command, tmp_path):
    rknn = str(ROOT / "models" / "shapes" / "model.rknn")
    args = [rknn] * 300 if command == "inspect" else ["--root", str(tmp_path)]
    if command == "doctor":  # enough models that the table outlasts head's one line
        for n in range(300):
            (tmp_path / "models" / f"m{n}").mkdir(parents=True)
            (tmp_path / "models" / f"m{n}" / "model.yaml").write_text("task: classification\n")
        args += ["--models", str(tmp_path / "models")]
    _, out, err = rkserve(command, *args, shell_tail="| head -n 1")
    assert len(out.splitlines()) == 1
    assert "Traceback" not in err and "BrokenPipe" not in err, err
