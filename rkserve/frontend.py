"""The ZeroMQ front end: rkserve's own msgpack protocol on a ROUTER socket.

The main thread reads requests (:meth:`Frontend.serve_ready`) and hands each one to the
server: an ``infer`` to ``admit`` (the pipeline takes it from there), ``models`` and
``health`` to ``status``, whose body is sent back at once. Replies leave from whichever
thread answers a job (:meth:`Frontend.send`), through the :class:`~rkserve.outbox.Outbox`
that bounds what clients leave unread.

ZeroMQ sockets are not thread-safe, so every use of the ROUTER holds one lock. The main
thread polls the socket's file descriptor without it (edge-triggered: the edge says
something changed and is re-armed by reading ``EVENTS``); a sender that finds requests
waiting after its send (a send can consume the edge) wakes the main thread through a pipe.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import Any, Dict, List, Optional, Protocol, Tuple, cast

import zmq

from . import protocol
from .config import Settings
from .errors import BadRequest, Overloaded, RkserveError, Unavailable
from .metrics import Metrics
from .outbox import NOBLOCK, SNDHWM, Outbox
from .pipeline import reply_error
from .security import CurveServer

RCVHWM = 32  # requests queued per peer before ZeroMQ stops reading that peer's connection
MAX_FRAMES = 16  # a request's frames: routing envelope (one per proxy hop) + the message
BATCH = 64  # requests read in a row before the loop turns to signals and chores
# plain ints: pyzmq's enum flags cost ~2 us per operation on every request, in Python
EVENTS, POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)


class Handler(Protocol):
    """What a front end hands requests to (the server)."""

    def admit(self, envelope: List[bytes], request: protocol.Request) -> None:
        """Admit an ``infer`` request, or raise why not; the pipeline answers it."""

    def status(self, op: str) -> Dict[str, Any]:
        """The body of a ``models`` or ``health`` reply."""

    def model_label(self, name: str) -> str:
        """``name`` if it is a served model, else "" (clients choose names: no label for them)."""


class Frontend:
    """The ROUTER socket, its lock, its wake-up pipe and its outbox."""

    def __init__(self, settings: Settings, metrics: Metrics, handler: Handler) -> None:
        self.settings = settings
        self.metrics = metrics
        self.max_bytes = int(settings.max_message_mb * 1024 * 1024)
        self.handler = handler
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()  # a sender saw requests waiting: wake the loop
        os.set_blocking(self._wake_w, False)  # a full pipe already wakes it: never block a sender
        self._closed = False
        self.bound: List[str] = []
        self.sock: Optional[zmq.Socket] = None
        self.outbox: Optional[Outbox] = None

    # main thread: start and stop ----------------------------------------------------------
    def bind(self, ctx: zmq.Context, curve: Optional[CurveServer]) -> None:
        """Open the ROUTER on every configured endpoint (:class:`Unavailable` if one fails)."""
        sock = ctx.socket(zmq.ROUTER)
        if curve is not None:
            curve.apply(sock)
        sock.setsockopt(zmq.LINGER, 2000)  # let replies flush at exit, then give up
        sock.setsockopt(zmq.MAXMSGSIZE, 4 * self.max_bytes)  # far over the limit: drop unread
        sock.setsockopt(zmq.RCVHWM, RCVHWM)
        sock.setsockopt(zmq.SNDHWM, SNDHWM)  # bytes: the outbox; a full queue drops, never blocks
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # ...and says so: the outbox keeps the reply
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
        self.sock = sock
        mb = 2**20
        dropped = self.metrics.replies_dropped
        self.outbox = Outbox(
            sock,
            int(self.settings.peer_reply_mb * mb),
            int(self.settings.total_reply_mb * mb),
            lambda reason: dropped.labels(reason).inc(),
        )

    def fds(self) -> List[int]:
        """What the main loop polls for this front end: the ROUTER's descriptor and the pipe."""
        assert self.sock is not None
        return [cast(int, self.sock.getsockopt(zmq.FD)), self._wake_r]

    def close(self) -> None:
        """No sends from now on (a late runner the drain could not stop sends nothing); the
        replies still waiting for room get one last try, the rest are counted."""
        with self._lock:
            self._closed = True
            if self.outbox is not None:
                self.outbox.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    # main thread: requests ----------------------------------------------------------------
    def serve_ready(self, ready: List[int]) -> bool:
        """Read up to ``BATCH`` requests; True when more are waiting (poll again at once: the
        descriptor's edge is spent). A flood that never lets the queue empty must not hold
        off SIGTERM, SIGHUP and the watchdog's pings."""
        if self._wake_r in ready:
            os.read(self._wake_r, 4096)
        for _ in range(BATCH):  # the last look at EVENTS re-arms the descriptor
            with self._lock:
                if not self._requests_waiting():
                    return False
                frames, parts = self._recv_frames()
            if parts > MAX_FRAMES:
                self._refuse_frames(frames[0], parts)
            else:
                self._on_request(frames)
        return True

    def chores(self) -> None:
        """The outbox's bookkeeping: forget the replies ZeroMQ has let go of, and hand it
        those waiting for room."""
        assert self.outbox is not None
        with self._lock:
            self.outbox.collect()
            self.outbox.flush()

    @property
    def backlog(self) -> bool:
        """Replies wait for room in ZeroMQ's queues: the main loop's chores are due soon."""
        return self.outbox is not None and self.outbox.backlog

    def _recv_frames(self) -> Tuple[List[zmq.Frame], int]:
        """Under the lock: one message's first ``MAX_FRAMES`` frames and how many it had. The
        rest are read and dropped: a message of 200,000 empty frames took the front end
        0.5 s and its reply echoed them all."""
        assert self.sock is not None
        frames = [self.sock.recv(NOBLOCK, copy=False)]
        parts = 1
        while frames[-1].more:
            frame = self.sock.recv(NOBLOCK, copy=False)
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
        self.metrics.refused("", error.code)
        self.send([identity.bytes, b""], None, protocol.error_reply(None, error))

    def _on_request(self, frames: List[zmq.Frame]) -> None:
        envelope = [f.bytes for f in frames[:-1]]
        if not envelope:
            return  # not from a ROUTER peer; nothing to answer
        started = time.perf_counter()
        request_id: Any = None
        model = ""
        try:
            request = protocol.decode_request(frames[-1].buffer, self.max_bytes)
            request_id = request.id
            if request.op == "infer":
                model = self.handler.model_label(request.model)
                self._check_reading(envelope[0])
                self.handler.admit(envelope, request)  # answered by whoever ends the job
                return
            body = self.handler.status(request.op)
            reply = protocol.ok_reply(request_id, body, _since(started))
        except Exception as exc:  # a bug costs one `internal` reply, never the main thread
            request_id, reply = self._error_reply(exc, request_id, model, started)
        self.send(envelope, request_id, reply)  # through the outbox: a models reply grows

    def _error_reply(
        self, exc: Exception, request_id: Any, model: str, started: float
    ) -> Tuple[Any, bytes]:
        """The reply to a request refused on the main thread, and the id it answers. Apart
        from ``_on_request``: the error it keeps would hold that frame (and the request's
        message) in a cycle through its traceback, freed only by a full collection; under
        a flood of refused image requests that held tens of MB."""
        error = reply_error(exc, "request handling")
        if isinstance(exc, RkserveError) and exc.request_id is not None:
            request_id = exc.request_id
        self.metrics.refused(model, error.code)
        return request_id, protocol.error_reply(request_id, error, _since(started))

    def _check_reading(self, peer: bytes) -> None:
        """No work for a client whose replies already wait for room: it is not reading."""
        assert self.outbox is not None
        with self._lock:
            waiting = self.outbox.waiting(peer)
        if waiting:
            raise Overloaded(
                f"this client has {waiting} replies waiting in the daemon that it has not "
                "read; read replies before sending more requests"
            )

    # any thread ---------------------------------------------------------------------------
    def send(self, envelope: List[bytes], request_id: Any, reply: bytes) -> None:
        """Send a reply from the thread that made it: no hand-off, no wake-up."""
        with self._lock:
            if self._closed:
                return
            assert self.outbox is not None
            self.outbox.send(envelope, request_id, reply)
            # sending may have taken the descriptor's edge for requests that arrived meanwhile
            waiting = self._requests_waiting()
        if waiting:
            with contextlib.suppress(BlockingIOError):  # the pipe is full: the loop is woken
                os.write(self._wake_w, b"!")

    def _requests_waiting(self) -> bool:
        """Under the lock: whether a request can be read (also re-arms the descriptor)."""
        assert self.sock is not None
        return bool(cast(int, self.sock.getsockopt(EVENTS)) & POLLIN)


def _since(started: float) -> Dict[str, float]:
    return {"total": (time.perf_counter() - started) * 1000}
