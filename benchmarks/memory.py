"""4. Memory: does the daemon's resident memory stay flat over 20,000 requests?

The fake backend (no NPU time, no injected leak) serves a 32x32 classifier; the bench sends
raw tensors from 4 workers. RSS is read from ``/proc/<pid>/status`` (VmRSS) after a warm-up
of 2,000 requests and after 20,000 more; then 4,000 more where one in four is refused
(``bad_image``), to walk the error path too.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import List

from benchmarks.common import Section, Target, fake_model, jpeg, rkserve_daemon, table
from rkserve.loadtest import Plan, run_step

WARMUP, MEASURED, ERRORS, CONCURRENCY = 2_000, 20_000, 4_000, 4
IMAGE_REQUESTS = (500, 1_500)
MB = 1024 * 1024


def run(work: Path) -> Section:
    section = Section("4. Memory over 20,000 requests")
    fake_model(work / "tiny", "tiny", "classification", 32, 4)
    rows: List[List[object]] = []
    with rkserve_daemon(work / "tiny", "--backend", "fake", "--queue-size", "16") as daemon:
        plan = Plan([daemon.endpoint], "tiny", [_tensor()], requests=WARMUP, warmup=0.0)
        started_rss = daemon.rss_bytes()
        run_step(plan, CONCURRENCY, None)
        warm_rss = daemon.rss_bytes()
        started = time.perf_counter()
        plan = Plan([daemon.endpoint], "tiny", [_tensor()], requests=MEASURED // 4, warmup=0.0)
        quarters = []
        for _ in range(4):
            step = run_step(plan, CONCURRENCY, None)
            assert step.ok == step.requests, step.errors
            quarters.append(daemon.rss_bytes())
        seconds = time.perf_counter() - started
        bad = {"tensor": {"dtype": "uint8", "shape": [8, 8], "data": bytes(64)}}
        plan = Plan([daemon.endpoint], "tiny", [_tensor()] * 3 + [bad], requests=ERRORS)
        step = run_step(plan, CONCURRENCY, None)
        assert set(step.errors) == {"bad_image"} and step.ok >= ERRORS // 2, step.errors
        errors_rss = daemon.rss_bytes()
    growth = quarters[-1] - warm_rss
    rows.append(["ready (before any request)", f"{started_rss / MB:.1f}", ""])
    rows.append([f"after {WARMUP:,} warm-up requests", f"{warm_rss / MB:.1f}", ""])
    for n, rss in enumerate(quarters, 1):
        done = n * MEASURED // 4
        rows.append([f"after {done:,} more", f"{rss / MB:.1f}", f"{(rss - warm_rss) / MB:+.2f}"])
    rows.append(
        [
            f"after {ERRORS:,} more, one in four a bad tensor",
            f"{errors_rss / MB:.1f}",
            f"{(errors_rss - warm_rss) / MB:+.2f}",
        ]
    )
    images = image_rss(work)
    section.figures = {
        "rss_warm": warm_rss,
        "rss_after": quarters,
        "growth": growth,
        "rss_1080p": images,
    }
    section.body += [
        f"{MEASURED:,} requests from {CONCURRENCY} workers in {seconds:.0f} s; "
        "RSS from /proc/<pid>/status:",
        "",
        *table(["", "RSS MB", "vs warm"], rows),
        "",
        "With 1920x1080 JPEGs to a 224x224 classifier (4 workers): the heaps grow once to hold "
        "a request's buffers (decoded image, message), which the malloc settings keep for "
        "the next request instead of mapping them afresh, then stay flat:",
        "",
        *table(
            ["", "RSS MB"],
            [
                ["ready", f"{images[0] / MB:.1f}"],
                [f"after {IMAGE_REQUESTS[0]:,} requests", f"{images[1] / MB:.1f}"],
                [f"after {IMAGE_REQUESTS[1]:,} more", f"{images[2] / MB:.1f}"],
            ],
        ),
        "",
    ]
    section.targets.append(
        Target(
            "RSS growth over 20,000 requests < 5 MB",
            f"{growth / MB:+.2f} MB",
            "< 5 MB",
            growth < 5 * MB,
            "" if growth < 5 * MB else f"over by {(growth - 5 * MB) / MB:.2f} MB",
        )
    )
    return section


def image_rss(work: Path) -> List[int]:
    """RSS when ready, after a first batch of 1080p requests and after more."""
    fake_model(work / "cls", "cls", "classification", 224, 1000)
    image = {"image": jpeg(work, 1920, 1080, "classification").read_bytes()}
    with rkserve_daemon(work / "cls", "--backend", "fake", "--queue-size", "16") as daemon:
        found = [daemon.rss_bytes()]
        for count in IMAGE_REQUESTS:
            step = run_step(
                Plan([daemon.endpoint], "cls", [image], requests=count, warmup=0.0), 4, None
            )
            assert step.ok == step.requests, step.errors
            found.append(daemon.rss_bytes())
    return found


def _tensor() -> dict:
    import numpy as np

    from rkserve import protocol

    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    return {"tensor": protocol.encode_tensor(pixels)}


if __name__ == "__main__":
    from benchmarks.common import main

    main(run)
