"""Prometheus metrics on their own port; NPU load and clock are read at scrape time.

Every metric lives in the :class:`Metrics` object's own registry (no global state), so
tests and several daemons in one process do not collide. ``docs/METRICS.md`` lists them.
"""

from __future__ import annotations

import bisect
import itertools
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Mapping, NamedTuple, Optional, Tuple

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import MetricsHandler
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.utils import floatToGoString

from .board import probes
from .errors import ConfigError
from .protocol import STAGES

# 1 ms .. 5 s: NPU inference spans ~5 ms (MobileNetV2) to ~170 ms (PP-LiteSeg) on RK3568.
BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0)


class NpuCollector:
    """``rkserve_npu_load_ratio{core}`` and ``rkserve_npu_frequency_hertz`` from sysfs/debugfs."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def collect(self) -> Iterable[Metric]:
        load = GaugeMetricFamily(
            "rkserve_npu_load_ratio",
            "NPU busy ratio over the driver's window (0..1)",
            labels=["core"],
        )
        for core, ratio in probes.npu_load(self.root).items():
            load.add_metric([core], ratio)
        yield load
        frequency = probes.npu_frequency_hz(self.root)
        if frequency is not None:
            yield GaugeMetricFamily(
                "rkserve_npu_frequency_hertz", "NPU clock frequency", value=frequency
            )


class ModelState(NamedTuple):
    """What the metrics say of one model at a scrape."""

    name: str
    ready: bool
    info: Mapping[str, str]  # task, toolkit_version, target_platform, backend (when ready)
    pending: int  # requests admitted and not yet taken by a runner


INFO_LABELS = ("task", "toolkit_version", "target_platform", "backend")


class ModelCollector:
    """``rkserve_model_ready``, ``rkserve_queue_depth`` and ``rkserve_model_info``, computed
    from the model table at scrape time: nothing to keep in step when models come and go."""

    def __init__(self, models: Callable[[], Iterable[ModelState]]) -> None:
        self.models = models

    def collect(self) -> Iterable[Metric]:
        ready = GaugeMetricFamily(
            "rkserve_model_ready",
            "1 when the model serves, 0 when it is loading, failed or refused",
            labels=["model"],
        )
        depth = GaugeMetricFamily(
            "rkserve_queue_depth", "Requests waiting for a model's NPU runner", labels=["model"]
        )
        info = GaugeMetricFamily(
            "rkserve_model_info",
            "Static facts about a loaded model",
            labels=["model", *INFO_LABELS],
        )
        for model in self.models():
            ready.add_metric([model.name], 1.0 if model.ready else 0.0)
            if model.ready:
                depth.add_metric([model.name], float(model.pending))
                info.add_metric([model.name, *(model.info.get(k, "") for k in INFO_LABELS)], 1.0)
        yield from (ready, depth, info)


class RequestCollector:
    """``rkserve_requests_total{model, code}`` and ``rkserve_request_duration_seconds{model,
    stage}``: an answer is counted under one lock, and the histograms are made at scrape
    time (prometheus-client's own took a lock per bucket and a loop over the buckets per
    stage: 14 us an answer, against ~3 here)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Dict[Tuple[str, str], int] = {}
        # (model, stage) -> a count per bucket (the last one +Inf), then the sum of seconds
        self._stages: Dict[Tuple[str, str], List[float]] = {}

    def count(self, model: str, code: str, timings_ms: Optional[Mapping[str, float]]) -> None:
        with self._lock:
            self._counts[(model, code)] = self._counts.get((model, code), 0) + 1
            for stage, ms in (timings_ms or {}).items():
                series = self._stages.get((model, stage))
                if series is None:
                    if stage not in STAGES:
                        continue
                    series = self._stages[(model, stage)] = [0.0] * (len(BUCKETS) + 2)
                seconds = ms / 1000.0
                series[bisect.bisect_left(BUCKETS, seconds)] += 1  # le: bounds are inclusive
                series[-1] += seconds

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            counts = dict(self._counts)
            stages = {key: list(series) for key, series in self._stages.items()}
        requests = CounterMetricFamily(
            "rkserve_requests",
            "Requests answered, per model and result code",
            labels=["model", "code"],
        )
        for labels, count in counts.items():
            requests.add_metric(list(labels), count)
        duration = HistogramMetricFamily(
            "rkserve_request_duration_seconds",
            "Request latency per model and stage",
            labels=["model", "stage"],
        )
        bounds = [floatToGoString(b) for b in BUCKETS] + ["+Inf"]
        for labels, series in stages.items():
            buckets = list(zip(bounds, itertools.accumulate(series[:-1])))
            duration.add_metric(list(labels), buckets, series[-1])
        yield from (requests, duration)


class Metrics:
    def __init__(self, root: Path = Path("/")) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.answers = RequestCollector()
        r.register(self.answers)
        self.replies_dropped = Counter(
            "rkserve_replies_dropped",
            "Replies never delivered: unread (the client had left too many unread), "
            "disconnected (it left first), shutdown (still waiting when the daemon stopped)",
            ["reason"],
            registry=r,
        )
        for reason in ("unread", "disconnected", "shutdown"):
            self.replies_dropped.labels(reason)  # exported at 0 from the start
        self.inflight = Gauge(
            "rkserve_inflight_requests", "Requests accepted and not yet answered", registry=r
        )
        self.runtime_info = Gauge(
            "rkserve_runtime_info",
            "Versions of the board's NPU stack",
            ["soc", "driver", "librknnrt", "rknn_server", "toolkit_lite2"],
            registry=r,
        )
        r.register(NpuCollector(root))
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self._server: Optional[ThreadingHTTPServer] = None

    def observe(self, model: str, code: str, timings_ms: Mapping[str, float]) -> None:
        """One answered request: its result code and the stages it went through."""
        self.answers.count(model, code, timings_ms)

    def refused(self, model: str, code: str) -> None:
        """One request answered at once with an error (``model`` "" when it named none of
        ours): counted, never timed."""
        self.answers.count(model, code, None)

    def watch_inflight(self, inflight: Callable[[], int]) -> None:
        """``rkserve_inflight_requests`` is ``inflight()`` at each scrape."""
        self.inflight.set_function(inflight)

    def watch_models(self, models: Callable[[], Iterable[ModelState]]) -> None:
        """Export the served models' state, read from ``models`` at each scrape."""
        self.registry.register(ModelCollector(models))

    def set_runtime(self, info: Mapping[str, str]) -> None:
        self.runtime_info.clear()
        self.runtime_info.labels(**info).set(1)

    def serve(self, host: str, port: int) -> int:
        """Start the exporter on a thread; returns the bound port (``port=0`` picks a free one)."""
        try:
            self._server = ThreadingHTTPServer((host, port), MetricsHandler.factory(self.registry))
        except OSError as exc:
            raise ConfigError(
                f"cannot start the metrics exporter on {host}:{port}: {exc.strerror or exc} "
                "(is another rkserve running? change metrics_port, or set it to 0 to disable)"
            ) from None
        self._server.daemon_threads = True
        thread = threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True)
        thread.start()
        return int(self._server.server_address[1])

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
