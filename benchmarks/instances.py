"""7. Instances: one runner per NPU core on a multi-core NPU (RK3588: 3, RK3576: 2).

The fake backend stands in for each core (20 ms per inference with the GIL released, as
RKNNLite's call does); small JPEGs keep the CPU stages far below it. Throughput at
concurrency 6 with ``instances`` 1, 2 and 3 in model.yaml, against 1 / 20 ms per instance.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.baseline import closed_loop
from benchmarks.common import Section, Target, fake_model, jpeg, main, ratio, rkserve_daemon, table

NPU_MS = 20.0
CONCURRENCY = 6
SECONDS = 3.0


def run(work: Path) -> Section:
    section = Section("7. Instances on a multi-core NPU (fake backend)")
    image = jpeg(work, 96, 96, "classification").read_bytes()
    rows, figures = [], {}
    for count in (1, 2, 3):
        models = work / f"instances-{count}"
        folder = fake_model(models, "m", "classification", 64, 10)
        spec = folder / "model.yaml"
        spec.write_text(spec.read_text() + f"instances: {count}\n")
        with rkserve_daemon(
            models, "--backend", "fake", "--fake-latency-ms", str(NPU_MS)
        ) as daemon:
            rps, _ = closed_loop(daemon.endpoint, image, CONCURRENCY, SECONDS)
        figures[count] = rps
        bound = count * 1000.0 / NPU_MS
        rows.append([count, f"{rps:.0f}", f"{bound:.0f}", f"{rps / bound:.0%}"])
    section.body += [
        f"Concurrency {CONCURRENCY}, {NPU_MS:.0f} ms per inference, {SECONDS:.0f} s per step.",
        "",
        *table(["instances", "req/s", "bound (instances / NPU time)", "of the bound"], rows),
    ]
    section.figures = figures
    scaling = figures[3] / figures[1]
    section.targets = [
        Target("3 instances against 1", ratio(scaling), ">= 2.5x", scaling >= 2.5),
    ]
    return section


if __name__ == "__main__":
    main(run)
