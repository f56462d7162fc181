"""Admission charges each image what its header says decoding and processing it will hold:
checked against the peak resident set of the request's whole path, measured in a fresh
process per kind of image (tests/daemon/decode_peak.py; tracemalloc does not see OpenCV's memory).
The figures are in docs/SECURITY.md."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict

import numpy as np
import pytest

from tests.helpers import ROOT
from tools.harness import fake_models

pytestmark = [pytest.mark.slow, pytest.mark.process]  # a process per measurement

SIDE = 2000  # 4 megapixels: the decoders' fixed buffers are under 0.1 byte a pixel
KINDS: Dict[str, Dict[str, Any]] = {  # name: Pillow's mode and save options
    "baseline-420.jpg": {"mode": "RGB", "subsampling": 2},
    "baseline-444.jpg": {"mode": "RGB", "subsampling": 0},
    "grey.jpg": {"mode": "L"},
    "cmyk.jpg": {"mode": "CMYK"},
    "progressive-420.jpg": {"mode": "RGB", "subsampling": 2, "progressive": True},
    "progressive-444.jpg": {"mode": "RGB", "subsampling": 0, "progressive": True},
    "progressive-grey.jpg": {"mode": "L", "progressive": True},
    "progressive-cmyk.jpg": {"mode": "CMYK", "progressive": True},
    "rgb.png": {"mode": "RGB"},
    "rgba.png": {"mode": "RGBA"},
    "palette.png": {"mode": "P"},
    "rgb.bmp": {"mode": "RGB"},
}
OVERLAID = ["baseline-420.jpg", "progressive-420.jpg", "progressive-cmyk.jpg", "rgb.png"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: Any) -> Path:
    """Smooth images of every kind (small files that decode to SIDE x SIDE pixels), written
    by Pillow, and the fake backend's models."""
    from PIL import Image

    out = tmp_path_factory.mktemp("kinds")
    ramp = np.linspace(0, 255, SIDE, dtype=np.float32).astype(np.uint8)
    planes = [
        np.tile(ramp, (SIDE, 1)),
        np.tile(ramp[:, None], (1, SIDE)),
        np.tile(ramp[::-1], (SIDE, 1)),
    ]
    picture = Image.fromarray(np.dstack(planes))
    for name, options in KINDS.items():
        kept = {k: v for k, v in options.items() if k != "mode"}
        image = picture.convert(options["mode"])
        buffer = io.BytesIO()
        image.save(buffer, name.rsplit(".", 1)[1].replace("jpg", "jpeg").upper(), **kept)
        (out / name).write_bytes(buffer.getvalue())
    fake_models(out / "models")
    return out


def peak(folder: Path, name: str, overlay: bool) -> Dict[str, float]:
    args = [
        sys.executable,
        str(ROOT / "tests" / "daemon" / "decode_peak.py"),
        str(folder / "models"),
    ]
    args += ["seg", str(folder / name), *(["overlay"] if overlay else [])]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize(
    ("name", "overlay"),
    [(name, False) for name in KINDS] + [(name, True) for name in OVERLAID],
)
def test_each_kind_of_image_is_charged_at_least_its_peak(
    folder: Path, name: str, overlay: bool
) -> None:
    """Before, every image was charged 6 bytes a pixel; a progressive CMYK JPEG peaked at 11
    (libjpeg keeps every coefficient of a progressive JPEG until its last scan)."""
    measured = peak(folder, name, overlay)
    print(
        f"\n{name}{' + overlay' if overlay else ''}: {measured['per_pixel']:.2f} bytes a pixel, charged {measured['charged']:.2f}"
    )
    assert measured["per_pixel"] <= measured["charged"]
