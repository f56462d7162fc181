"""3. Segmentation post-processing: the argmax and its neighbours, and what a reply weighs.

Each fast function is timed against the plain numpy (or previous) way of computing the same
result, in the same process, on the same arrays (best of several calls: the least disturbed
by other load); the results are checked equal first. Then the daemon answers a
PP-LiteSeg-like model (fake backend, no NPU time) for 512x512 and 1920x1080 JPEGs in every
mask format, and the reply sizes are read off the wire.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import cv2
import msgpack
import numpy as np
import zmq

from benchmarks.common import (
    Section,
    Target,
    best_ms,
    fake_model,
    jpeg,
    ratio,
    rkserve_daemon,
    table,
)
from rkserve import protocol
from rkserve.kernels import segment

ARGMAX_SHAPES = ((1, 19, 512, 512), (1, 21, 257, 257))
FORMATS = (
    ("png", False),
    ("png", True),
    ("raw", False),
    ("raw", True),
    ("none", False),
    ("none", True),
)


def argmax_rows(rng: np.random.Generator) -> Tuple[List[List[Any]], Dict[str, float]]:
    rows, ratios = [], {}
    for shape in ARGMAX_SHAPES:
        scores = rng.standard_normal(shape).astype(np.float32)
        scores[0, 1, ::5] = scores[0, 0, ::5]  # ties
        fast = segment.class_map(scores)
        assert (fast == np.argmax(scores, axis=1)[0]).all(), "argmax differs from numpy"
        numpy_ms = best_ms(lambda s=scores: np.argmax(s, axis=1))
        ours_ms = best_ms(lambda s=scores: segment.class_map(s))
        label = "x".join(str(d) for d in shape)
        ratios[label] = numpy_ms / ours_ms
        rows.append(
            [
                f"argmax [{label}] float32",
                f"{numpy_ms:.2f}",
                f"{ours_ms:.2f}",
                ratio(numpy_ms / ours_ms),
            ]
        )
    return rows, ratios


def _plain_overlay(rgb: np.ndarray, classes: np.ndarray, palette: np.ndarray) -> np.ndarray:
    blended = cv2.addWeighted(rgb, 0.5, palette[classes], 0.5, 0.0)
    blended[classes == 0] = rgb[classes == 0]
    return blended


def _plain_png_deflate(classes: np.ndarray) -> bytes:
    rows = np.zeros((classes.shape[0], classes.shape[1] + 1), np.uint8)
    rows[:, 1:] = classes
    return zlib.compress(rows.tobytes(), 1)


def neighbour_rows(image: np.ndarray, classes: np.ndarray) -> List[List[Any]]:
    """The other post-processing steps at 1920x1080, against the plain way."""
    palette = segment.palette_array(None)
    pairs: List[Tuple[str, Callable[[], Any], Callable[[], Any], Callable[[Any, Any], bool]]] = [
        (
            "pixels per class",
            lambda: np.bincount(classes.reshape(-1), minlength=256),
            lambda: segment.class_counts(classes),
            lambda a, b: bool((a == b).all()),
        ),
        (
            "mask PNG (unfiltered + deflate vs Up filter + RLE deflate)",
            lambda: _plain_png_deflate(classes),
            lambda: segment.indexed_png(classes, palette),
            lambda a, b: (
                True
            ),  # different bytes, same pixels (checked in tests/loadtest/test_bench.py)
        ),
        (
            "overlay (numpy fancy indexing vs cv2 LUT + masked copy)",
            lambda: _plain_overlay(image, classes, palette),
            lambda: segment.overlay(image, classes, palette),
            lambda a, b: bool((a == b).all()),
        ),
    ]
    rows = []
    for name, plain, ours, same in pairs:
        assert same(plain(), ours()), f"{name}: results differ"
        plain_ms, ours_ms = best_ms(plain), best_ms(ours)
        rows.append(
            [f"{name}, 1920x1080", f"{plain_ms:.2f}", f"{ours_ms:.2f}", ratio(plain_ms / ours_ms)]
        )
    png_plain, png_ours = (
        len(_plain_png_deflate(classes)),
        len(segment.indexed_png(classes, palette)),
    )
    rows.append(["mask PNG size, bytes", png_plain, png_ours, ratio(png_plain / png_ours)])
    return rows


def reply_sizes(work: Path) -> List[List[Any]]:
    """Bytes on the wire and the daemon's postprocess time per mask format and image size."""
    fake_model(work / "seg", "seg", "segmentation", 512, 19)
    images = {f"{w}x{h}": jpeg(work, w, h).read_bytes() for w, h in ((512, 512), (1920, 1080))}
    rows = []
    with rkserve_daemon(work / "seg", "--backend", "fake") as daemon:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.connect(daemon.endpoint)
        try:
            for label, image in images.items():
                for mask, overlay in FORMATS:
                    size, post_ms = _ask(sock, image, {"mask": mask, "overlay": overlay})
                    rows.append(
                        [
                            label,
                            len(image),
                            mask,
                            "yes" if overlay else "no",
                            size,
                            f"{post_ms:.1f}",
                        ]
                    )
        finally:
            sock.close(linger=0)
            ctx.term()
    return rows


def _ask(sock: zmq.Socket, image: bytes, params: Dict[str, Any]) -> Tuple[int, float]:
    """Reply bytes, and the median postprocess ms of five requests."""
    sizes, post = [], []
    for n in range(5):
        message = {"v": 1, "id": n, "op": "infer", "model": "seg", "image": image, "params": params}
        sock.send_multipart([b"", protocol.encode(message)])
        payload = sock.recv_multipart()[-1]
        reply = msgpack.unpackb(payload)
        assert reply["ok"], reply
        sizes.append(len(payload))
        post.append(reply["timing_ms"]["postprocess"])
    return sizes[-1], float(np.median(post))


def run(work: Path) -> Section:
    section = Section("3. Segmentation post-processing")
    rng = np.random.default_rng(3)
    rows, argmax_ratios = argmax_rows(rng)
    image = cv2.cvtColor(cv2.imread(str(jpeg(work, 1920, 1080))), cv2.COLOR_BGR2RGB)
    scores = rng.standard_normal((1, 19, 512, 512)).astype(np.float32)
    classes = cv2.resize(segment.class_map(scores), (1920, 1080), interpolation=cv2.INTER_NEAREST)
    rows += neighbour_rows(image, classes)
    sizes = reply_sizes(work)
    section.figures = {"argmax_speedup": argmax_ratios}
    section.body += [
        "Same process, same arrays, results checked equal; best of 15 calls (ms).",
        "",
        *table(["step", "numpy / plain", "rkserve", "speed-up"], rows),
        "",
        "The argmax walks the classes over contiguous row blocks of 64k pixels (their running "
        "maximum stays in cache: 320 kB, under the 512 kB L3 an RK3568's cores share) with "
        "four vectorised passes and no masked writes. Profiling the previous per-class loop "
        "showed `np.putmask` took ~85% of its time; `index = max(index, c * (score_c > best))` "
        "records the same index (classes only grow, so ties keep the lowest). Splitting rows "
        "over two threads did not help on this machine; in the daemon the CPU pool already "
        "runs several requests at once.",
        "",
        "The pixels-per-class map above is random noise (the worst case for PNG); the replies "
        "below carry masks of synthetic-shapes JPEGs, which compress far better. Reply sizes "
        "(bytes, as sent) and the daemon's postprocess time (median of five, ms):",
        "",
        *table(["image", "JPEG bytes", "mask", "overlay", "reply bytes", "postprocess ms"], sizes),
        "",
    ]
    for label, speedup in argmax_ratios.items():
        section.targets.append(
            Target(
                f"argmax >= 5x np.argmax(axis=1) at [{label}]",
                ratio(speedup),
                ">= 5x",
                speedup >= 5.0,
                "" if speedup >= 5.0 else f"missed by {5.0 - speedup:.2f}x",
            )
        )
    return section


if __name__ == "__main__":
    from benchmarks.common import main

    main(run)
