"""The request counters and stage histograms against prometheus-client's own Counter and
Histogram fed the same answers: the same samples, bucket by bucket, in the scrape's text."""

from __future__ import annotations

import random
from typing import Dict, Tuple

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from rkserve.metrics import BUCKETS, Metrics
from rkserve.protocol import STAGES

Samples = Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]


def samples(registry: CollectorRegistry, families: Tuple[str, ...]) -> Samples:
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        if family.name in families
        for s in family.samples
        if not s.name.endswith("_created")
    }


def test_the_scrape_equals_prometheus_clients_own_metrics_fed_the_same_answers() -> None:
    ours = Metrics()
    registry = CollectorRegistry()
    requests = Counter("rkserve_requests", "", ["model", "code"], registry=registry)
    duration = Histogram(
        "rkserve_request_duration_seconds",
        "",
        ["model", "stage"],
        buckets=BUCKETS,
        registry=registry,
    )
    rng = random.Random(5)
    edges = [b * 1000.0 for b in BUCKETS]  # a value on a bound counts in that bucket (le)
    for n in range(3000):
        model, code = rng.choice(["cls", "det"]), rng.choice(["ok", "ok", "bad_image"])
        if n % 7 == 0:  # refused at admission: counted, not timed
            ours.refused(model, code)
            requests.labels(model, code).inc()
            continue
        timings = {
            stage: rng.choice(edges) if rng.random() < 0.2 else rng.expovariate(1 / 40.0)
            for stage in rng.sample(STAGES, rng.randint(1, len(STAGES)))
        }
        timings["not_a_stage"] = 1.0  # never exported
        ours.observe(model, code, timings)
        requests.labels(model, code).inc()
        for stage, ms in timings.items():
            if stage in STAGES:
                duration.labels(model, stage).observe(ms / 1000.0)
    families = ("rkserve_requests", "rkserve_request_duration_seconds")
    expected, got = samples(registry, families), samples(ours.registry, families)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert abs(got[key] - value) <= 1e-9 * max(1.0, abs(value)), key
