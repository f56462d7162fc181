"""The throughput bound ``rkserve bench`` prints: min(instances / t_npu, cores / t_cpu)."""

from __future__ import annotations

from typing import Dict

from rkserve.loadtest.load import Step
from rkserve.loadtest.report import throughput_bound


def step(server_ms: Dict[str, float]) -> Step:
    return Step(
        concurrency=1, rate=None, requests=10, ok=10, errors={}, seconds=1.0, throughput=10.0,
        latency_ms={}, server_ms=server_ms, client_cpu=0.0, send_lag_ms=0.0,
    )  # fmt: skip


def test_an_rk3568_with_mobilenet_is_npu_bound_with_small_frames() -> None:
    line = throughput_bound(
        step({"decode": 4.0, "preprocess": 1.0, "postprocess": 0.5, "inference": 5.5}), 4
    )
    assert line is not None
    assert "min(181.8, 727.3) = 181.8 req/s (NPU-bound)" in line


def test_large_frames_make_it_cpu_bound_and_instances_count() -> None:
    timings = {"decode": 40.0, "preprocess": 4.0, "postprocess": 1.0, "inference": 5.5}
    line = throughput_bound(step(timings), 4, instances=3)
    assert line is not None and "min(545.5, 88.9) = 88.9 req/s (CPU-bound)" in line


def test_no_inference_time_no_bound() -> None:
    assert throughput_bound(step({"decode": 1.0}), 4) is None
