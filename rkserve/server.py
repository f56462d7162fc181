"""The daemon: start-up → serve loop → drain, with signals that only set flags.

Threads: the main thread owns the ROUTER socket (the frontend) and the inproc PULL socket
that workers hand replies back on; a CPU pool decodes, pre- and post-processes; one runner
thread per model talks to the NPU; a loader thread loads models so that ``health`` is
answered while they load. SIGTERM/SIGINT drain, a second SIGINT forces, SIGHUP reloads.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import zmq

from . import memory, protocol, security
from .config import Settings
from .errors import RkserveError, Unavailable, UnknownModel
from .loader import Loader
from .metrics import Metrics
from .modelhost import Job, ModelHost, reply_error
from .systemd import Notifier

log = logging.getLogger("rkserve")
POLL_MS = 100
EXIT_OK, EXIT_FORCED = 0, 1


class Server:
    def __init__(self, settings: Settings, notifier: Optional[Notifier] = None) -> None:
        self.settings = settings
        self.notifier = notifier or Notifier.from_env()
        self.metrics = Metrics(Path(settings.sysroot))
        self.loader = Loader(settings, self.metrics)
        self.ctx = zmq.Context()
        self.max_bytes = int(settings.max_message_mb * 1024 * 1024)
        self.pool = ThreadPoolExecutor(
            max_workers=settings.workers or os.cpu_count() or 2, thread_name_prefix="cpu"
        )
        self.inflight = 0
        self._local = threading.local()
        self._push_sockets: List[zmq.Socket] = []
        self._push_lock = threading.Lock()
        self.replies_address = f"inproc://replies-{id(self)}"
        self.should_exit = self.force_exit = self.should_reload = False
        self.draining = False
        self.bound: List[str] = []
        self.metrics_port: Optional[int] = None
        self.curve: Optional[security.CurveServer] = None
        self.gc_guard = memory.GcGuard(settings.gc_every)

    # lifecycle ------------------------------------------------------------------------
    def run(self) -> int:
        self.startup()
        try:
            self.main_loop()
            return self.shutdown()
        finally:
            self.close()

    def startup(self) -> None:
        memory.pin_mmap_threshold()
        memory.keep_top_pad()
        self.curve = security.curve_server(
            self.settings.curve_secret_key, self.settings.curve_clients_dir
        )
        if self.curve is not None:
            self.curve.start(self.ctx)  # before binding: no handshake escapes the check
        self.frontend = self.ctx.socket(zmq.ROUTER)
        if self.curve is not None:
            self.curve.apply(self.frontend)
        self.frontend.setsockopt(zmq.LINGER, 2000)  # let replies flush at exit, then give up
        self.frontend.setsockopt(
            zmq.MAXMSGSIZE, 4 * self.max_bytes
        )  # far over the limit: drop unread
        self.frontend.setsockopt(zmq.RCVHWM, 1000)
        self.frontend.setsockopt(zmq.SNDHWM, 1000)  # a slow client loses replies, never blocks us
        self.frontend.setsockopt(zmq.IPV6, 1)
        for endpoint in self.settings.endpoints:
            try:
                self.frontend.bind(endpoint)
            except zmq.ZMQError as exc:
                raise Unavailable(f"cannot bind {endpoint}: {exc}") from None
            self.bound.append(self.frontend.getsockopt_string(zmq.LAST_ENDPOINT))
        self.replies = self.ctx.socket(zmq.PULL)
        self.replies.bind(self.replies_address)
        if self.settings.metrics_port:
            self.metrics_port = self.metrics.serve(
                self.settings.metrics_host, self.settings.metrics_port
            )
        self._install_signals()
        self.loader.start(self._install_hosts)
        log.info(
            "listening on %s; metrics on %s",
            ", ".join(self.bound),
            f"{self.settings.metrics_host}:{self.metrics_port}" if self.metrics_port else "off",
        )

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
        self.should_reload = True

    def main_loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self.frontend, zmq.POLLIN)
        poller.register(self.replies, zmq.POLLIN)
        next_ping = 0.0
        while not self.should_exit:
            self._poll_once(poller)
            if self.should_reload:
                self.should_reload = False
                self.notifier.reloading("reloading models")
                if self.curve is not None:
                    self.curve.reload()
                self.loader.reload(self._install_hosts)
            self.loader.watch_runners()
            next_ping = self._housekeeping(next_ping)

    def _poll_once(self, poller: zmq.Poller) -> None:
        for sock, _ in poller.poll(POLL_MS):
            if sock is self.frontend:
                self._on_request(self.frontend.recv_multipart(copy=False))
            else:
                self.frontend.send_multipart(self.replies.recv_multipart(copy=False), copy=False)
                # counted here, on the thread that sends it, so a drain that sees 0 has sent all
                self.inflight -= 1
                self.metrics.inflight.dec()

    def _housekeeping(self, next_ping: float) -> float:
        event = self.loader.take_event()
        if event:
            self.notifier.ready(event)
            log.info("%s", event)
            if self.gc_guard.every:
                memory.settle()  # models (re)loaded: freeze them, so collections stay cheap
        now = time.monotonic()
        interval = self.notifier.watchdog_interval
        if interval and now >= next_ping and self.loader.healthy():
            self.notifier.watchdog()
            return now + interval
        return next_ping

    def shutdown(self) -> int:
        """Drain: refuse new work, finish in-flight requests within drain_timeout_s."""
        self.draining = True
        log.info(
            "draining %d in-flight requests (up to %.0f s)",
            self.inflight,
            self.settings.drain_timeout_s,
        )
        self.notifier.stopping(f"draining {self.inflight} requests")
        poller = zmq.Poller()
        poller.register(self.frontend, zmq.POLLIN)
        poller.register(self.replies, zmq.POLLIN)
        until = time.monotonic() + self.settings.drain_timeout_s
        while self.inflight > 0 and time.monotonic() < until and not self.force_exit:
            self._poll_once(poller)
        code = EXIT_FORCED if self.force_exit else EXIT_OK
        if self.inflight:
            log.warning("%d requests did not finish within the drain timeout", self.inflight)
            self.loader.abort_all(Unavailable("the server stopped before this request finished"))
            deadline = time.monotonic() + 1.0
            while self.inflight and time.monotonic() < deadline:
                self._poll_once(poller)
        log.info("stopped")
        return code

    def close(self) -> None:
        self.loader.stop()
        self.pool.shutdown(wait=False)
        self.metrics.close()
        with self._push_lock:
            for sock in self._push_sockets:
                sock.close(linger=0)
        if self.curve is not None:
            self.curve.stop()
        self.ctx.destroy(linger=1000)

    # requests ---------------------------------------------------------------------------
    def _on_request(self, frames: List[zmq.Frame]) -> None:
        envelope = [f.bytes for f in frames[:-1]]
        if not envelope:
            return  # not from a ROUTER peer; nothing to answer
        started = time.perf_counter()
        request_id, model = None, ""
        body: Optional[Dict[str, Any]] = None
        error: Optional[RkserveError] = None
        try:
            request = protocol.decode_request(frames[-1].buffer, self.max_bytes)
            request_id = request.id
            if request.op == "infer":
                # errors count under the model only if it is one of ours: clients choose names
                model = request.model if request.model in self.loader.hosts else ""
                self._admit(envelope, request)
                return
            body = self._status_body(request.op)
        except Exception as exc:  # a bug costs one `internal` reply, never the frontend thread
            error = reply_error(exc, "request handling")
            request_id = getattr(exc, "request_id", request_id)
            self.metrics.requests.labels(model, error.code).inc()
        timings = {"total": (time.perf_counter() - started) * 1000}
        reply = (
            protocol.error_reply(request_id, error, timings)
            if error is not None
            else protocol.ok_reply(request_id, body or {}, timings)
        )
        self.frontend.send_multipart([*envelope, reply])

    def _status_body(self, op: str) -> Dict[str, Any]:
        hosts = self.loader.hosts
        if op == "models":
            return {"models": [h.describe() for h in hosts.values()]}
        models = {
            name: {"ready": h.ready, "state": h.state, "error": h.error}
            for name, h in hosts.items()
        }
        status = "draining" if self.draining else ("loading" if self.loader.loading else "serving")
        return {
            "live": True,
            "ready": status == "serving" and all(m["ready"] for m in models.values()),
            "status": status,
            "models": models,
        }

    def _admit(self, envelope: List[bytes], request: Any) -> None:
        if self.draining:
            raise Unavailable("the server is shutting down; send the request to another endpoint")
        host = self.loader.hosts.get(request.model)
        if host is None:
            known = ", ".join(self.loader.hosts) or "none"
            raise UnknownModel(f"no model named {protocol.show(request.model)} (models: {known})")
        params = host.engine.parse_params(request.params) if host.engine else None
        host.admit()  # a host without an engine refuses here, with its reason
        deadline_ms = request.deadline_ms or self.settings.deadline_ms
        job = Job(envelope, request, time.monotonic() + deadline_ms / 1000.0, self._answer)
        self.inflight += 1  # admitted jobs not yet answered; main thread only
        self.metrics.inflight.inc()
        self.pool.submit(self._prepare, host, job, params)

    # CPU pool ---------------------------------------------------------------------------
    def _prepare(self, host: ModelHost, job: Job, params: Any) -> None:
        try:
            if job.expired():
                raise job.deadline_error("a CPU worker")
            assert host.engine is not None
            job.prepared = host.engine.prepare(job.request.input, params)
        except Exception as exc:
            host.release()
            job.fail(reply_error(exc, f"model {host.name}: preprocessing"))
            return
        host.enqueue(job)

    def _finish(self, host: ModelHost, job: Job, outputs: List[np.ndarray]) -> None:
        try:
            assert host.engine is not None and job.prepared is not None
            result = host.engine.finish(job.prepared, outputs)
            job.finish({"model": host.name, "task": host.engine.task, "result": result.result})
        except Exception as exc:
            job.fail(reply_error(exc, f"model {host.name}: postprocessing"))

    def _answer(
        self, job: Job, body: Optional[Dict[str, Any]], error: Optional[RkserveError]
    ) -> None:
        """Called exactly once per job, from whichever thread ended it."""
        timings = job.timings()
        request_id = job.request.id
        payload = (
            protocol.ok_reply(request_id, body or {}, timings)
            if error is None
            else protocol.error_reply(request_id, error, timings)
        )
        self.metrics.observe(job.request.model, "ok" if error is None else error.code, timings)
        self._send_reply([*job.envelope, payload])

    def _send_reply(self, frames: List[bytes]) -> None:
        sock = getattr(self._local, "sock", None)
        if sock is None:
            sock = self.ctx.socket(zmq.PUSH)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(self.replies_address)
            self._local.sock = sock
            with self._push_lock:
                self._push_sockets.append(sock)
        with contextlib.suppress(zmq.ZMQError):  # the context closed under us at exit
            sock.send_multipart(frames, copy=False)

    def _install_hosts(self, hosts: Dict[str, ModelHost]) -> None:
        """Start runners for hosts the loader just loaded (called on the loader thread)."""
        for host in hosts.values():
            if host.ready:
                host.start(self.pool.submit, functools.partial(self._finish, host), self.gc_guard)
