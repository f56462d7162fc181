"""The daemon's socket and lifecycle: start-up → serve loop → drain, signals that set flags.

Threads: the main thread owns the ROUTER socket (the frontend), the inproc PULL socket that
replies come back on, and the :class:`~rkserve.outbox.Outbox` that bounds what they hold;
the loader thread owns the model table (:mod:`rkserve.loader`); a request's path through
the CPU pool and the model runners is :mod:`rkserve.pipeline`. SIGTERM/SIGINT drain, a
second SIGINT forces, SIGHUP reloads.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import signal
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, cast

import zmq

from . import announce, memory, protocol, security
from .config import Settings
from .errors import BadRequest, ModelUnavailable, RkserveError, Unavailable
from .loader import Loader
from .metrics import Metrics
from .modelhost import ModelHost
from .outbox import SNDHWM, Outbox
from .pipeline import Pipeline, reply_error
from .systemd import Notifier

log = logging.getLogger("rkserve")
POLL_MS = 100
CHORES_S = 0.05  # events, watchdog pings and the outbox's bookkeeping, at most this often
RCVHWM = 32  # requests queued per peer before ZeroMQ stops reading that peer's connection
MAX_FRAMES = 16  # a request's frames: routing envelope (one per proxy hop) + the message
BATCH = 64  # requests read in a row before the loop turns to signals and chores
EXIT_OK, EXIT_FORCED = 0, 1


class Server:
    def __init__(self, settings: Settings, notifier: Optional[Notifier] = None) -> None:
        self.settings = settings
        self.notifier = notifier or Notifier.from_env()
        self.metrics = Metrics(Path(settings.sysroot))
        self.ctx = zmq.Context()
        self.max_bytes = int(settings.max_message_mb * 1024 * 1024)
        self.pipeline = Pipeline(settings, self.metrics, self._send_reply)
        self.loader = Loader(settings, self.metrics, self._start_runner, self._abandon)
        # The ROUTER is used by the main thread (receiving) and by whichever thread answers a
        # job (sending): ZeroMQ sockets are not thread-safe, so every use holds this lock.
        self._sock_lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()  # a sender saw requests waiting: wake the loop
        os.set_blocking(self._wake_w, False)  # a full pipe already wakes it: never block a sender
        self._closed = False
        self.should_exit = self.force_exit = self.should_reload = False
        self.draining = False
        self.bound: List[str] = []
        self.metrics_port: Optional[int] = None
        self.curve: Optional[security.CurveServer] = None
        self.announcer: Optional[announce.Announcer] = None

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
        raise_file_limit()
        self.curve = security.curve_server(
            self.settings.curve_secret_key, self.settings.curve_clients_dir
        )
        if self.curve is not None:
            self.curve.start(self.ctx)  # before binding: no handshake escapes the check
        self.frontend = self._router()
        self.outbox = Outbox(
            self.frontend,
            int(self.settings.peer_reply_mb * 2**20),
            int(self.settings.total_reply_mb * 2**20),
        )
        if self.settings.metrics_port:
            self.metrics_port = self.metrics.serve(
                self.settings.metrics_host, self.settings.metrics_port
            )
        self._install_signals()
        self.announcer = announce.create(self.settings, self.bound)
        self.loader.start()
        log.info(
            "listening on %s; metrics on %s",
            ", ".join(self.bound),
            f"{self.settings.metrics_host}:{self.metrics_port}" if self.metrics_port else "off",
        )

    def _router(self) -> zmq.Socket:
        sock = self.ctx.socket(zmq.ROUTER)
        if self.curve is not None:
            self.curve.apply(sock)
        sock.setsockopt(zmq.LINGER, 2000)  # let replies flush at exit, then give up
        sock.setsockopt(zmq.MAXMSGSIZE, 4 * self.max_bytes)  # far over the limit: drop unread
        sock.setsockopt(zmq.RCVHWM, RCVHWM)
        sock.setsockopt(zmq.SNDHWM, SNDHWM)  # bytes: the outbox; a full queue drops, never blocks
        sock.setsockopt(zmq.IPV6, 1)
        beat = int(self.settings.heartbeat_s * 1000)
        if beat:  # peers that stop answering pings, or never finish the handshake, are cut
            sock.setsockopt(zmq.HEARTBEAT_IVL, beat)
            sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3 * beat)
            sock.setsockopt(zmq.HANDSHAKE_IVL, beat)
        for endpoint in self.settings.endpoints:
            try:
                sock.bind(endpoint)
            except zmq.ZMQError as exc:
                sock.close(linger=0)
                raise Unavailable(f"cannot bind {endpoint}: {exc}") from None
            self.bound.append(sock.getsockopt_string(zmq.LAST_ENDPOINT))
        return sock

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
            backlog = self._poll_once(poller, 0 if backlog else POLL_MS)
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

    def _poller(self) -> zmq.Poller:
        """The ROUTER's descriptor (edge-triggered: it says something changed, and is
        re-armed by reading its events) and the wake-up pipe, polled without the lock."""
        poller = zmq.Poller()
        poller.register(self.frontend.getsockopt(zmq.FD), zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        return poller

    def _poll_once(self, poller: zmq.Poller, timeout: int = POLL_MS) -> bool:
        """Wait up to ``timeout`` ms, then read up to ``BATCH`` requests; True when more are
        waiting (poll again at once: the FD's edge is spent). A flood that never lets the
        queue empty must not hold off SIGTERM, SIGHUP and the watchdog's pings (before, it
        held them for as long as it lasted)."""
        for fd, _ in poller.poll(timeout):
            if fd == self._wake_r:
                os.read(self._wake_r, 4096)
        for _ in range(BATCH):  # the last look at EVENTS re-arms the FD
            with self._sock_lock:
                if not self._requests_waiting():
                    return False
                frames, parts = self._recv_frames()
            if parts > MAX_FRAMES:
                self._refuse_frames(frames[0], parts)
            else:
                self._on_request(frames)
        return True

    def _recv_frames(self) -> Tuple[List[zmq.Frame], int]:
        """Under the lock: one message's first ``MAX_FRAMES`` frames and how many it had. The
        rest are read and dropped: a message of 200,000 empty frames took the frontend 0.5 s
        and its reply echoed them all."""
        frames = [self.frontend.recv(zmq.NOBLOCK, copy=False)]
        parts = 1
        while frames[-1].more:
            frame = self.frontend.recv(zmq.NOBLOCK, copy=False)
            parts += 1
            if parts <= MAX_FRAMES:
                frames.append(frame)
            else:
                frames[-1] = frame  # only the last one's ``more`` is needed
        return frames, parts

    def _refuse_frames(self, identity: zmq.Frame, parts: int) -> None:
        error = BadRequest(
            f"message has {parts} frames; a request is at most {MAX_FRAMES} (its routing "
            "envelope and the msgpack map)"
        )
        self.metrics.requests.labels("", error.code).inc()
        with self._sock_lock:
            self.outbox.send([identity.bytes, b""], None, protocol.error_reply(None, error))

    def _housekeeping(self, next_ping: float) -> float:
        with self._sock_lock:
            self.outbox.collect()
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
            backlog = self._poll_once(poller, 0 if backlog else POLL_MS)
        code = EXIT_FORCED if self.force_exit else EXIT_OK
        stopped = Unavailable("the server stopped before this request finished")
        late = self.pipeline.fail_all(stopped)
        if late:
            log.warning("%d requests did not finish within the drain timeout", late)
        self.pipeline.stop()
        self.loader.stop(timeout=1.0)
        self.pipeline.fail_all(stopped)  # anything admitted while the threads stopped
        log.info("stopped")
        return code

    def close(self) -> None:
        if self.announcer is not None:
            self.announcer.close()  # no-op after shutdown's; withdraws if the loop raised
        self.metrics.close()
        with self._sock_lock:
            self._closed = True  # a late sender (a runner the drain could not stop) sends nothing
        if self.curve is not None:
            self.curve.stop()
        self.ctx.destroy(linger=1000)
        os.close(self._wake_r)
        os.close(self._wake_w)

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
                hosts = self.loader.table.hosts
                # errors count under the model only if it is one of ours: clients choose names
                model = request.model if request.model in hosts else ""
                self._admit(envelope, request, hosts)
                return
            body = self._status_body(request.op)
        except Exception as exc:  # a bug costs one `internal` reply, never the frontend thread
            error = reply_error(exc, "request handling")
            if isinstance(exc, RkserveError) and exc.request_id is not None:
                request_id = exc.request_id
            self.metrics.requests.labels(model, error.code).inc()
        timings = {"total": (time.perf_counter() - started) * 1000}
        reply = (
            protocol.error_reply(request_id, error, timings)
            if error is not None
            else protocol.ok_reply(request_id, body or {}, timings)
        )
        with self._sock_lock:  # through the outbox: a models reply grows with the repository
            self.outbox.send(envelope, request_id, reply)

    def _admit(self, envelope: List[bytes], request: Any, hosts: Any) -> None:
        if self.draining:
            raise Unavailable("the server is shutting down; send the request to another endpoint")
        if not self.loader.table.scanned:
            raise ModelUnavailable("the daemon is still reading its model repository; retry")
        self.pipeline.admit(envelope, request, hosts)

    def _status_body(self, op: str) -> Dict[str, Any]:
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

    # any thread -------------------------------------------------------------------------
    def _send_reply(self, envelope: List[bytes], request_id: Any, reply: bytes) -> None:
        """Send a job's reply from the thread that answered it: no hand-off, no wake-up."""
        with self._sock_lock:
            if self._closed:
                return
            self.outbox.send(envelope, request_id, reply)
            # sending may have taken the FD's edge for requests that arrived meanwhile
            waiting = self._requests_waiting()
        if waiting:
            with contextlib.suppress(BlockingIOError):  # the pipe is full: the loop is woken
                os.write(self._wake_w, b"!")

    def _requests_waiting(self) -> bool:
        """Under the lock: whether a request can be read (also re-arms the ROUTER's FD)."""
        return bool(cast(int, self.frontend.getsockopt(zmq.EVENTS)) & zmq.POLLIN)

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
