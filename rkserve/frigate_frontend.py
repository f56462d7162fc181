"""The Frigate front end: a second socket beside the msgpack one, served by the same pipeline.

One thread owns the socket (a ROUTER: Frigate's REQ sockets, any number of them). It reads
requests, answers handshakes from the model table, turns inference requests into jobs that
go through :meth:`rkserve.pipeline.Pipeline.admit` (the same queues, memory budget, drain
and metrics as any request) and sends the replies the pipeline's threads hand back through
a queue and a wake-up pipe. Frigate has no error reply: whatever is refused is answered
with zeros, counted in ``rkserve_frigate_refused_total{reason}`` and logged (once per reason
every :data:`LOG_EVERY_S`). A job past ``frigate_deadline_ms`` before the NPU is dropped
unanswered: Frigate stopped waiting, closed that socket and opened a new one (a new
identity: nothing of the old one reaches it).

A handshake for a model still loading waits (at most :data:`HANDSHAKE_WAIT_S`, inside the
plugin's 30 s) and is answered once the model is ready or has failed. A model upload is
checked, saved and loaded on a thread of its own (:class:`rkserve.frigate_upload.Uploads`),
one at a time.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import threading
import time
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

import zmq
from prometheus_client import Counter

from . import frigate, frigate_upload, protocol
from .config import Settings
from .errors import DeadlineExceeded, RkserveError, Unavailable
from .loader import Loader
from .metrics import Metrics
from .modelhost import Door, Job, ModelHost
from .pipeline import Pipeline

log = logging.getLogger("rkserve")
POLL_MS = 50  # how often waiting handshakes are looked at when nothing arrives
BATCH = 64  # requests read in a row before replies and handshakes are looked at
HANDSHAKE_WAIT_S = 25.0  # the plugin waits 30 s for the answer
MAX_WAITING = 64  # handshakes held for a loading model; more are answered at once
MAX_PEERS = 1024  # connections whose model is remembered (least recently used go first)
LOG_EVERY_S = 10.0
Outgoing = Tuple[List[bytes], bytes, str]  # (envelope, reply, the model the peer now uses)


class FrigateDoor(Door):
    """Answers Frigate's jobs: ``[20, 6]`` rows, zeros for errors, nothing for stale jobs."""

    def __init__(self, frontend: FrigateFrontend) -> None:
        super().__init__(lambda envelope, request_id, reply: frontend.post(envelope, reply))
        self.frontend = frontend

    def ok(self, job: Job, body: Dict[str, Any]) -> Optional[bytes]:
        return frigate.rows(body["result"])

    def error(self, job: Job, error: RkserveError) -> Optional[bytes]:
        if isinstance(error, DeadlineExceeded):
            return None  # Frigate gave up on it: its socket is gone
        self.frontend.refused(error.code, f"model {job.request.model}: {error}")
        return frigate.ZEROS


class FrigateFrontend:
    """Frigate's zmq detector protocol on ``settings.frigate_endpoints``."""

    def __init__(
        self,
        settings: Settings,
        ctx: zmq.Context,
        pipeline: Pipeline,
        loader: Loader,
        metrics: Metrics,
        backend_of: Callable[[], str],
    ) -> None:
        self.settings = settings
        self.ctx = ctx
        self.pipeline = pipeline
        self.loader = loader
        self.backend_of = backend_of  # the backend uploads must suit: rknnlite | onnx
        self.door = FrigateDoor(self)
        self.bound: List[str] = []
        self.draining = False
        self._stop = False
        self._outgoing: Deque[Outgoing] = collections.deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._peers: collections.OrderedDict[bytes, str] = collections.OrderedDict()
        self._waiting: List[Tuple[List[bytes], str, float]] = []  # handshakes for loading models
        self._logged: Dict[str, float] = {}
        self._thread: Optional[threading.Thread] = None
        self.refusals = Counter(
            "rkserve_frigate_refused",
            "Frigate requests answered with zeros, per reason",
            ["reason"],
            registry=metrics.registry,
        )
        self.handshakes = Counter(
            "rkserve_frigate_handshakes",
            "Frigate model handshakes, per answer",
            ["answer"],
            registry=metrics.registry,
        )
        self.uploads = frigate_upload.Uploads(
            settings, loader, self.refusals, backend_of, self.post
        )
        for reason in frigate.REASONS:  # present from the start: rate() sees the first one
            self.refusals.labels(reason)
        for answer in frigate.ANSWERS:
            self.handshakes.labels(answer)

    # lifecycle (the server's main thread) -----------------------------------------------
    def start(self) -> None:
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 1000)
        self.sock.setsockopt(zmq.MAXMSGSIZE, self._max_message())
        self.sock.setsockopt(zmq.IPV6, 1)
        for endpoint in self.settings.frigate_endpoints:
            try:
                self.sock.bind(endpoint)
            except zmq.ZMQError as exc:
                self.sock.close(linger=0)
                raise Unavailable(f"cannot bind the Frigate endpoint {endpoint}: {exc}") from None
            self.bound.append(self.sock.getsockopt_string(zmq.LAST_ENDPOINT))
        self._thread = threading.Thread(target=self._run, name="frigate", daemon=True)
        self._thread.start()

    def _max_message(self) -> int:
        """Tensors are at most a few MB; a model file up to the upload limit when uploads are
        on (read, then refused, up to the message limit when they are off)."""
        limit = 4 * self.settings.max_message_mb
        if self.settings.frigate_uploads:
            limit = max(limit, self.settings.frigate_max_upload_mb + 1)
        return int(limit * 2**20)

    def stop(self) -> None:
        """After the drain: the replies already posted are sent, then the socket closes."""
        if self._stop:
            return
        self._stop = True
        self._wake()
        if self._thread is not None:
            self._thread.join(5.0)
        os.close(self._wake_r)
        os.close(self._wake_w)

    # any thread ---------------------------------------------------------------------------
    def post(self, envelope: List[bytes], reply: bytes, model: str = "") -> None:
        """A reply to send (from the thread that answered the job); ``model``: remember it
        as the model of that connection (the thread that owns the socket does)."""
        self._outgoing.append((envelope, reply, model))
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):  # a full pipe already wakes it
            os.write(self._wake_w, b"!")

    def refused(self, reason: str, message: str) -> None:
        """Count a request answered with zeros (or not at all) and log why, once per reason
        every LOG_EVERY_S."""
        self.refusals.labels(reason).inc()
        now = time.monotonic()
        if now - self._logged.get(reason, -LOG_EVERY_S) >= LOG_EVERY_S:
            self._logged[reason] = now
            log.warning("frigate: no detections for a request: %s", message)

    # the frigate thread -----------------------------------------------------------------
    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        try:
            while not self._stop:
                for item, _ in poller.poll(POLL_MS):
                    if item == self._wake_r:
                        os.read(self._wake_r, 4096)
                self._read()
                self._flush()
                self._answer_waiting()
            self._flush()
        finally:
            self.sock.close()

    def _read(self) -> None:
        for _ in range(BATCH):
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            envelope = [f.bytes for f in frames[:2]]
            if len(frames) < 3 or envelope[1] != b"":
                continue  # not from a REQ socket: nothing can be answered
            try:
                self._on_message(envelope, [f.buffer for f in frames[2:]])
            except frigate.Refused as exc:
                self.refused(exc.reason, str(exc))
                if exc.answer:
                    self._send(envelope, frigate.ZEROS)
            except Exception as exc:  # a bug costs one zeros reply, never the thread
                log.error("frigate: request handling crashed", exc_info=exc)
                self._send(envelope, frigate.ZEROS)

    def _flush(self) -> None:
        while self._outgoing:
            envelope, reply, model = self._outgoing.popleft()
            if model:
                self._remember(envelope[0], model)
            self._send(envelope, reply)

    def _send(self, envelope: List[bytes], reply: bytes) -> None:
        with contextlib.suppress(zmq.ZMQError):  # a peer gone, or its queue full: dropped
            self.sock.send_multipart([*envelope, reply], zmq.NOBLOCK)

    def _on_message(self, envelope: List[bytes], frames: List[memoryview]) -> None:
        message = frigate.parse(frames)
        if message.kind == "model_request":
            self._handshake(envelope, message.model_name)
        elif message.kind == "model_data":
            self._upload(envelope, message)
        else:
            self._infer(envelope, message)

    # handshakes -------------------------------------------------------------------------
    def _handshake(self, envelope: List[bytes], name: str) -> None:
        table = self.loader.table
        host = frigate.find_model(name, table.hosts)
        if host is not None:
            self._remember(envelope[0], host.name)
        loading = not table.scanned or (host is not None and host.state == "loading")
        if loading and len(self._waiting) < MAX_WAITING:
            self._waiting.append((envelope, name, time.monotonic() + HANDSHAKE_WAIT_S))
            return
        self._answer_handshake(envelope, name, host)

    def _answer_waiting(self) -> None:
        if not self._waiting:
            return
        table, now = self.loader.table, time.monotonic()
        still: List[Tuple[List[bytes], str, float]] = []
        for envelope, name, until in self._waiting:
            host = frigate.find_model(name, table.hosts)
            loading = not table.scanned or (host is not None and host.state == "loading")
            if loading and now < until:
                still.append((envelope, name, until))
            else:
                if host is not None:
                    self._remember(envelope[0], host.name)
                self._answer_handshake(envelope, name, host)
        self._waiting = still

    def _answer_handshake(
        self, envelope: List[bytes], name: str, host: Optional[ModelHost]
    ) -> None:
        answer = frigate.handshake(host)
        if not answer["model_available"]:
            self.handshakes.labels("unknown").inc()
            log.warning(
                "frigate: no model for %r (models: %s)",
                name,
                ", ".join(self.loader.table.hosts) or "none",
            )
        elif not answer["model_loaded"]:
            assert host is not None
            self.handshakes.labels("not_loaded").inc()
            why = host.error or host.state
            if host.entry.spec is not None and host.entry.spec.task != "detection":
                why = f"it is a {host.entry.spec.task} model; Frigate needs a detector"
            log.warning(
                "frigate: model %s (asked as %r) cannot serve Frigate: %s", host.name, name, why
            )
        else:
            self.handshakes.labels("ready").inc()
            log.info(
                "frigate: a detector connected for model %s (asked as %r)",
                host.name if host else "",
                name,
            )
        self._send(envelope, frigate.reply(answer))

    def _remember(self, identity: bytes, model: str) -> None:
        self._peers[identity] = model
        self._peers.move_to_end(identity)
        while len(self._peers) > MAX_PEERS:
            self._peers.popitem(last=False)

    # uploads ----------------------------------------------------------------------------
    def _upload(self, envelope: List[bytes], message: frigate.Message) -> None:
        assert message.payload is not None
        refusal = self.uploads.take(envelope, message.model_name, message.payload)
        if refusal is not None:
            self._send(envelope, refusal)

    # inference --------------------------------------------------------------------------
    def _infer(self, envelope: List[bytes], message: frigate.Message) -> None:
        array = frigate.tensor(message)
        hosts = self.loader.table.hosts
        name = self._model_for(envelope[0], array, hosts)
        host = hosts.get(name)
        if self.draining or host is None or not host.ready or host.engine is None:
            raise frigate.Refused(
                "model_unavailable", f"model {name} is not serving" + " (draining)" * self.draining
            )
        spec = host.engine.spec
        pixels = frigate.to_pixels(
            array,
            spec.input_size,
            self.settings.frigate_input_dtype,
            self.settings.frigate_pixel_format,
        )
        params = {"max_det": frigate.ROWS} if spec.task_config.max_det > frigate.ROWS else {}
        request = protocol.Request(
            id=None,
            op="infer",
            model=name,
            tensor=pixels,
            params=params,
            deadline_ms=self.settings.frigate_deadline_ms,
        )
        try:
            self.pipeline.admit(envelope, request, hosts, self.door)
        except RkserveError as exc:
            self.pipeline.metrics.refused(name, exc.code)
            raise frigate.Refused(exc.code, f"model {name}: {exc}") from None

    def _model_for(self, identity: bytes, array: Any, hosts: Any) -> str:
        """The model this connection's handshake named. Without one (a plugin connected
        across a daemon restart sends none), the one ready detector of the tensor's size;
        if there is none or several, no answer: the plugin times out, reconnects and makes
        its handshake (zeros would go on for as long as Frigate runs)."""
        name = self._peers.get(identity)
        if name is not None:
            self._peers.move_to_end(identity)
            return name
        size = frigate.image_size(array)
        candidates = frigate.detectors_of_size(hosts, size) if size else []
        if len(candidates) != 1:
            raise frigate.Refused(
                "no_handshake",
                f"a tensor of shape {list(array.shape)} on a connection that made no model "
                f"handshake, and {len(candidates)} detectors take that size: not answered, so "
                "that the plugin reconnects and makes one",
                answer=False,
            )
        self._remember(identity, candidates[0])
        return candidates[0]
