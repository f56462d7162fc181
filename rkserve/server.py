"""The daemon's lifecycle: start-up → main loop → drain; signal handlers only set flags.

Threads: the main thread runs the front ends (:mod:`rkserve.frontend`: the ROUTER socket)
and this loop; the loader thread owns the model table (:mod:`rkserve.loader`); a request's
path through the CPU pool and the model runners is :mod:`rkserve.pipeline`. SIGTERM/SIGINT
drain, a second SIGINT forces, SIGHUP reloads. The server decides what is admitted (not
while draining, not before the repository was read) and what ``models`` and ``health`` say.
"""

from __future__ import annotations

import contextlib
import logging
import resource
import signal
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import zmq

from . import announce, memory, protocol, security
from .backends import npu_present
from .board import checks
from .builder import HostBuilder
from .config import Settings
from .errors import ConfigError, ModelUnavailable, RkserveError, Unavailable
from .frigate_frontend import FrigateFrontend
from .frontend import Frontend
from .kernels.image import use_threads
from .loader import Loader
from .metrics import Metrics, ModelState
from .modelhost import ModelHost
from .pipeline import Pipeline
from .systemd import Notifier

log = logging.getLogger("rkserve")
POLL_MS = 100
CHORES_S = 0.05  # events, watchdog pings and the outbox's bookkeeping, at most this often
EXIT_OK, EXIT_FORCED = 0, 1


class Server:
    def __init__(self, settings: Settings, notifier: Optional[Notifier] = None) -> None:
        self.settings = settings
        self.notifier = notifier or Notifier.from_env()
        self.metrics = Metrics(Path(settings.sysroot))
        self.ctx = zmq.Context()
        self.frontend = Frontend(settings, self.metrics, self)
        self.pipeline = Pipeline(settings, self.metrics, self.frontend.send)
        build = HostBuilder(settings, self.metrics)
        self.loader = Loader(settings, build, self._start_runner, self._abandon)
        self.metrics.watch_models(self._model_states)
        self.metrics.watch_inflight(lambda: self.pipeline.inflight)
        self.should_exit = self.force_exit = self.should_reload = False
        self.draining = False
        self.metrics_port: Optional[int] = None
        self.curve: Optional[security.CurveServer] = None
        self.frigate: Optional[FrigateFrontend] = None
        self.announcer: Optional[announce.Announcer] = None

    @property
    def bound(self) -> List[str]:
        return self.frontend.bound

    # lifecycle ------------------------------------------------------------------------
    def run(self) -> int:
        self.startup()
        try:
            self.main_loop()
            return self.shutdown()
        finally:
            self.close()

    def startup(self) -> None:
        self._require_runtime()
        memory.pin_mmap_threshold()
        memory.keep_top_pad()
        use_threads(self.settings.opencv_threads)
        raise_file_limit()
        self.curve = security.curve_server(
            self.settings.curve_secret_key, self.settings.curve_clients_dir
        )
        if self.curve is not None:
            self.curve.start(self.ctx)  # before binding: no handshake escapes the check
        self.frontend.bind(self.ctx, self.curve)
        if self.settings.metrics_port:
            self.metrics_port = self.metrics.serve(
                self.settings.metrics_host, self.settings.metrics_port
            )
        if self.settings.frigate_endpoints:
            self.frigate = FrigateFrontend(
                self.settings, self.ctx, self.pipeline, self.loader, self.metrics, self._backend
            )
            self.frigate.start()
        self._install_signals()
        self.announcer = announce.create(self.settings, self.bound)
        self.loader.start()
        log.info(
            "listening on %s; metrics on %s",
            ", ".join(self.bound + [f"{e} (frigate)" for e in self._frigate_bound()]),
            f"{self.settings.metrics_host}:{self.metrics_port}" if self.metrics_port else "off",
        )

    def _require_runtime(self) -> None:
        """``backend: rknnlite`` asks for the NPU: without its runtime, stop at start-up
        (exit 1, one line) rather than serve a table of refused models."""
        if self.settings.backend != "rknnlite":
            return
        missing = checks.missing_runtime(checks.probe_board(Path(self.settings.sysroot)))
        if missing:
            raise ConfigError(f"backend rknnlite: {missing}")

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, self._on_reload)

    def _on_stop(self, signum: int, frame: Any) -> None:
        if self.should_exit and signum == signal.SIGINT:
            self.force_exit = True
        self.should_exit = True

    def _on_reload(self, signum: int, frame: Any) -> None:
        self.should_reload = True  # the loop clears it before asking: a HUP after that counts

    def main_loop(self) -> None:
        poller = self._poller()
        next_ping = next_chores = 0.0
        backlog = False
        while not self.should_exit:
            backlog = self._poll_once(poller, 0 if backlog else self._poll_ms())
            if self.should_reload:
                self.should_reload = False
                self.notifier.reloading("reloading models")
                if self.curve is not None:
                    self.curve.reload()
                self.loader.reload()
            now = time.monotonic()
            if now >= next_chores:  # not after every request: the runner waits for the GIL
                next_chores = now + CHORES_S
                next_ping = self._housekeeping(next_ping)

    def _poll_ms(self) -> int:
        """How long to wait for requests: not past the next chores while replies wait."""
        return int(CHORES_S * 1000) if self.frontend.backlog else POLL_MS

    def _poller(self) -> zmq.Poller:
        poller = zmq.Poller()
        for fd in self.frontend.fds():
            poller.register(fd, zmq.POLLIN)
        return poller

    def _poll_once(self, poller: zmq.Poller, timeout: int = POLL_MS) -> bool:
        """Wait up to ``timeout`` ms, then serve what is ready; True when more is waiting."""
        ready = [fd for fd, _ in poller.poll(timeout)]
        return self.frontend.serve_ready(ready)

    def _housekeeping(self, next_ping: float) -> float:
        self.frontend.chores()
        event = self.loader.take_event()
        if event:
            self.notifier.ready(event)
            log.info("%s", event)
            self._announce()
            if self.pipeline.gc_guard.every:
                memory.settle()  # models (re)loaded: freeze them, so collections stay cheap
        now = time.monotonic()
        interval = self.notifier.watchdog_interval
        if interval and now >= next_ping and self.loader.healthy():
            self.notifier.watchdog()
            return now + interval
        return next_ping

    def _announce(self) -> None:
        """Tell the LAN what this board serves now (after every loading pass)."""
        if self.announcer is not None:
            public = self.curve.public if self.curve is not None else None
            hosts = self.loader.table.hosts
            self.announcer.publish(announce.facts(self.settings, self.metrics_port, public, hosts))

    def shutdown(self) -> int:
        """Drain: refuse new work, let admitted jobs finish within drain_timeout_s, answer
        the rest ``unavailable`` wherever they wait, and stop every thread that works."""
        self.draining = True
        if self.frigate is not None:
            self.frigate.draining = True
        if self.announcer is not None:
            self.announcer.close()  # goodbye packets first: browsers stop sending us work
        log.info(
            "draining %d in-flight requests (up to %.0f s)",
            self.pipeline.inflight,
            self.settings.drain_timeout_s,
        )
        self.notifier.stopping(f"draining {self.pipeline.inflight} requests")
        poller = self._poller()
        until = time.monotonic() + self.settings.drain_timeout_s
        backlog = False
        while self.pipeline.inflight > 0 and time.monotonic() < until and not self.force_exit:
            backlog = self._poll_once(poller, 0 if backlog else self._poll_ms())
            self.frontend.chores()  # replies waiting for room go out while the drain lasts
        code = EXIT_FORCED if self.force_exit else EXIT_OK
        stopped = Unavailable("the server stopped before this request finished")
        late = self.pipeline.fail_all(stopped)
        if late:
            log.warning("%d requests did not finish within the drain timeout", late)
        self.pipeline.stop()
        self.loader.stop(timeout=1.0)
        self.pipeline.fail_all(stopped)  # anything admitted while the threads stopped
        if self.frigate is not None:
            self.frigate.stop()
        log.info("stopped")
        return code

    def close(self) -> None:
        if self.frigate is not None:
            self.frigate.stop()
        if self.announcer is not None:
            self.announcer.close()  # no-op after shutdown's; withdraws if the loop raised
        self.metrics.close()
        self.frontend.close()
        if self.curve is not None:
            self.curve.stop()
        self.ctx.destroy(linger=1000)

    # what the front ends hand over (main thread) ------------------------------------------
    def admit(self, envelope: List[bytes], request: protocol.Request) -> None:
        if self.draining:
            raise Unavailable("the server is shutting down; send the request to another endpoint")
        if not self.loader.table.scanned:
            raise ModelUnavailable("the daemon is still reading its model repository; retry")
        self.pipeline.admit(envelope, request, self.loader.table.hosts)

    def model_label(self, name: str) -> str:
        return name if name in self.loader.table.hosts else ""

    def status(self, op: str) -> Dict[str, Any]:
        table = self.loader.table
        if op == "models":
            return {"models": [h.describe() for h in table.hosts.values()]}
        models = {
            name: {"ready": h.ready, "state": h.state, "error": h.error}
            for name, h in table.hosts.items()
        }
        status = "draining" if self.draining else ("loading" if table.loading else "serving")
        return {
            "live": True,
            "ready": status == "serving" and all(m["ready"] for m in models.values()),
            "status": status,
            "models": models,
        }

    def _model_states(self) -> Iterator[ModelState]:
        """The model table as the metrics show it (read at scrape time, any thread)."""
        for host in self.loader.table.hosts.values():
            yield ModelState(host.name, host.ready, host.info, host.pending)

    def _frigate_bound(self) -> List[str]:
        return self.frigate.bound if self.frigate is not None else []

    def _backend(self) -> str:
        """The backend a model sent by Frigate must suit."""
        if self.settings.backend != "auto":
            return self.settings.backend
        return "rknnlite" if npu_present(Path(self.settings.sysroot)) else "onnx"

    # the loader's thread ------------------------------------------------------------------
    def _start_runner(self, host: ModelHost) -> None:
        host.start(self.pipeline.step)

    def _abandon(self, host: ModelHost, error: RkserveError) -> None:
        self.pipeline.fail_all(error, host)


def raise_file_limit() -> int:
    """Raise the soft limit on open descriptors to the hard one (each connection takes one;
    systemd's default soft limit of 1,024 let idle connections lock clients out)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 65536)
    if soft != resource.RLIM_INFINITY and soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft
