"""The peak memory of one image request in a fresh process, per decoded pixel.

    python tests/daemon/decode_peak.py MODELS MODEL IMAGE [overlay]

Runs the request's whole path on the fake backend (``prepare``, ``run``, ``finish``) after a
warm-up on a small image of the same file type, with the daemon's malloc settings, and prints
``{"per_pixel": ..., "charged": ...}``: the growth of the peak resident set (``VmHWM``, reset
through ``/proc/self/clear_refs`` before the request: tracemalloc does not see OpenCV's
memory) and what admission charges for it (``Header.working_bytes``), both in bytes a pixel.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np

from rkserve import memory, repository
from rkserve.kernels.image import image_header


def status(key: str) -> int:
    with open("/proc/self/status") as fields:
        return next(int(line.split()[1]) for line in fields if line.startswith(key)) * 1024


def main() -> None:
    models, model, path = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    overlay = sys.argv[4:] == ["overlay"]
    memory.pin_mmap_threshold()  # as the daemon starts
    memory.keep_top_pad()
    engine = repository.open_engine(models, model, backend="fake")
    params = engine.parse_params({"overlay": True} if overlay else {})
    small = cv2.imencode(path.suffix, np.full((64, 64, 3), 90, np.uint8))[1].tobytes()
    engine.infer(small, params)  # the decoder's and the encoder's first use
    data = path.read_bytes()
    header = image_header(data)
    assert header is not None
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # VmHWM starts again from the current resident set
    before = status("VmRSS:")
    engine.infer(data, params)
    pixels = header.width * header.height
    peak = (status("VmHWM:") - before) / pixels
    print(json.dumps({"per_pixel": peak, "charged": header.working_bytes(overlay) / pixels}))


if __name__ == "__main__":
    main()
