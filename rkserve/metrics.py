"""Prometheus metrics on their own port; NPU load and clock are read at scrape time.

Every metric lives in the :class:`Metrics` object's own registry (no global state), so
tests and several daemons in one process do not collide. ``docs/METRICS.md`` lists them.
"""

from __future__ import annotations

import contextlib
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import MetricsHandler
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

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


class Metrics:
    def __init__(self, root: Path = Path("/")) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.duration = Histogram(
            "rkserve_request_duration_seconds",
            "Request latency per model and stage",
            ["model", "stage"],
            buckets=BUCKETS,
            registry=r,
        )
        self.requests = Counter(
            "rkserve_requests",
            "Requests answered, per model and result code",
            ["model", "code"],
            registry=r,
        )
        self.inflight = Gauge(
            "rkserve_inflight_requests", "Requests accepted and not yet answered", registry=r
        )
        self.queue_depth = Gauge(
            "rkserve_queue_depth",
            "Requests waiting for a model's NPU runner",
            ["model"],
            registry=r,
        )
        self.ready = Gauge(
            "rkserve_model_ready",
            "1 when the model serves, 0 when it is loading, failed or refused",
            ["model"],
            registry=r,
        )
        self.model_info = Gauge(
            "rkserve_model_info",
            "Static facts about a loaded model",
            ["model", "task", "toolkit_version", "target_platform", "backend"],
            registry=r,
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
        self.requests.labels(model, code).inc()
        for stage, ms in timings_ms.items():
            if stage in STAGES:
                self.duration.labels(model, stage).observe(ms / 1000.0)

    def set_model(
        self,
        model: str,
        ready: bool,
        info: Optional[Mapping[str, str]] = None,
        depth: Optional[Callable[[], float]] = None,
    ) -> None:
        """A model's state; ``depth`` is read at scrape time for ``rkserve_queue_depth``."""
        self.ready.labels(model).set(1 if ready else 0)
        if depth is not None:
            self.queue_depth.labels(model).set_function(depth)
        if info is not None:
            self._clear_info(model)
            self.model_info.labels(model=model, **info).set(1)

    def remove_model(self, model: str) -> None:
        self._clear_info(model)
        for gauge in (self.ready, self.queue_depth):
            with contextlib.suppress(KeyError):
                gauge.remove(model)

    def _clear_info(self, model: str) -> None:
        for labels in [s.labels for m in self.model_info.collect() for s in m.samples]:
            if labels.get("model") == model:
                self.model_info.remove(*(labels[n] for n in self.model_info._labelnames))

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
