"""5. Start-up: from process start to health ``ready``.

The time from ``Popen`` of ``rkserve serve`` until a ``health`` request answers
``ready: true`` (interpreter start, imports, binding, loading and warming up every model),
median of three starts, for the demo models (``models/``, the ONNX twins on a PC) when they
are present and for fake-backend models.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import List

from benchmarks.common import (
    Section,
    demo_models,
    demo_repository,
    fake_model,
    rkserve_daemon,
    table,
)

STARTS = 3


def time_to_ready(models: Path, *flags: str) -> List[float]:
    times = []
    for _ in range(STARTS):
        daemon = rkserve_daemon(models, *flags)
        try:
            daemon.start()
            times.append(daemon.ready_after)
        finally:
            daemon.stop()
    return times


def run(work: Path) -> Section:
    section = Section("5. Start-up to ready")
    rows = []
    figures = {}
    demos = demo_models()
    if demos:
        times = time_to_ready(demo_repository(work, demos), "--backend", "auto")
        figures["demo"] = times
        rows.append([f"demo models ({', '.join(demos)}), onnx backend", *_cells(times)])
    fake_model(work / "fake", "cls", "classification", 224, 1000)
    fake_model(work / "fake", "seg", "segmentation", 512, 19)
    times = time_to_ready(work / "fake", "--backend", "fake")
    figures["fake"] = times
    rows.append(["two fake models (224 classifier, 512 segmenter)", *_cells(times)])
    section.figures = figures
    section.body += [
        *table(["models", "median s", "min s", "max s"], rows),
        "",
    ]
    if not demos:
        section.body += [
            "The demo models were not in `models/` when this ran (`make demo-models` trains "
            "them), so only the fake models were timed.",
            "",
        ]
    return section


def _cells(times: List[float]) -> List[str]:
    return [f"{statistics.median(times):.2f}", f"{min(times):.2f}", f"{max(times):.2f}"]


if __name__ == "__main__":
    from benchmarks.common import main

    main(run)
