"""Replies on their way out of the ROUTER socket: every one delivered, refused, or counted.

ZeroMQ keeps the replies a client has not read (the kernel's socket buffer first, then the
ROUTER's per-peer queue of ``SNDHWM`` messages). Two things go wrong there on their own:

- the queue is bounded in messages, not bytes: 1,000 segmentation replies of 16 MB each
  would be 16 GB. So every reply of ``TRACK_MIN`` bytes or more is sent zero-copy with a
  tracker that tells when ZeroMQ has let go of it (written to the kernel, or dropped with
  its peer), and the bytes still held are counted per peer and in total;
- a full queue drops what comes next without a word. So the socket is
  ``ROUTER_MANDATORY`` and sends never block: a reply the queue refuses waits here, in the
  peer's own line (counted in its bytes, ``ENTRY_COST`` more each), and goes as soon as the
  queue has room (the main loop retries every ``CHORES_S``); a reply for a peer that left
  is dropped and counted.

A reply is kept for a peer while it fits (:meth:`Outbox.fits`): always when the peer holds
nothing; within ``reserve`` (a quarter of ``peer_limit``) whatever the others hold; up to
``peer_limit`` while all peers together hold at most ``total_limit``. So the refusals fall
on the peers that hold the bytes, never on one holding little, and the daemon holds at most
``total_limit`` + ``max(reserve, largest reply)`` per peer holding replies (+ ``SNDHWM`` x
``TRACK_MIN`` per peer in ZeroMQ's queue): docs/SECURITY.md. A large reply that does not fit
is replaced by a short ``overloaded`` error; a reply that cannot even wait (its peer is at
its bound) is dropped, counted in ``rkserve_replies_dropped_total{reason="unread"}`` and
logged.

Used under the frontend's socket lock, like the socket: by the thread that answers a job,
and by the main thread's chores.
"""

from __future__ import annotations

import errno
import logging
import time
from collections import Counter, deque
from typing import Any, Callable, Deque, Dict, List, Tuple

import zmq

from . import protocol
from .errors import Overloaded

log = logging.getLogger("rkserve")
TRACK_MIN = 4096  # smaller replies are bounded in ZeroMQ's queue by SNDHWM (messages)
SNDHWM = 100  # messages ZeroMQ queues per peer; with TRACK_MIN: at most 400 kB of small replies
ENTRY_COST = 256  # bytes a waiting reply costs beyond its own (envelope, tuple, queue slot)
RESERVE_SHARE = 4  # a peer may always keep a quarter of peer_limit, whatever the others hold
WARN_EVERY_S = 10.0
MORE, NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK), int(zmq.NOBLOCK)  # plain ints: no enum per send
SENT, FULL, GONE = "sent", "full", "gone"

Waiting = Tuple[List[bytes], bytes, int]  # envelope, reply, bytes charged


class Outbox:
    def __init__(
        self,
        sock: zmq.Socket,
        peer_limit: int,
        total_limit: int,
        dropped: Callable[[str], None] = lambda reason: None,
    ) -> None:
        self.sock = sock
        self.peer_limit = peer_limit
        self.total_limit = total_limit
        self.reserve = peer_limit // RESERVE_SHARE
        self.total = 0  # bytes held for all peers: tracked in ZeroMQ, and waiting here
        self.refused = 0
        self._dropped = dropped  # counts one reply dropped, by reason (the metric)
        self._bytes: Dict[bytes, int] = {}  # per peer, the same bytes
        self._tracked: Dict[bytes, Deque[Tuple[int, zmq.MessageTracker]]] = {}
        self._waiting: Dict[bytes, Deque[Waiting]] = {}
        self._lost: Counter[str] = Counter()  # drops since the last warning, by reason
        self._warned = {"refused": 0.0, "dropped": 0.0}

    # the thread that answers -------------------------------------------------------------
    def send(self, envelope: List[bytes], request_id: Any, reply: bytes) -> None:
        """``reply`` → the peer ``envelope`` names, or a short refusal in its place; it waits
        here while ZeroMQ's queue for that peer is full."""
        peer = envelope[0]
        if len(reply) >= TRACK_MIN:
            self.collect()
            if not self.fits(peer, len(reply)):
                reply = self._refusal(peer, request_id, len(reply))
        if peer not in self._waiting and self._push(envelope, reply) != FULL:
            return
        self._wait(envelope, reply)

    def fits(self, peer: bytes, size: int) -> bool:
        """Whether ``size`` more bytes may be held for ``peer``: always when it holds
        nothing, within its reserve whatever the others hold, up to ``peer_limit`` while
        the total allows."""
        held = self._bytes.get(peer, 0)
        if held == 0 or held + size <= self.reserve:
            return True
        return held + size <= self.peer_limit and self.total + size <= self.total_limit

    def waiting(self, peer: bytes) -> int:
        """Replies waiting here for ``peer`` (its ZeroMQ queue is full: it is not reading)."""
        return len(self._waiting.get(peer, ()))

    # main thread ---------------------------------------------------------------------------
    @property
    def backlog(self) -> bool:
        """Some replies wait for room in ZeroMQ's queue (retry soon)."""
        return bool(self._waiting)

    def collect(self) -> None:
        """Forget the replies ZeroMQ has let go of (its trackers say so, in order)."""
        for peer in list(self._tracked):
            tracked = self._tracked[peer]
            while tracked and tracked[0][1].done:
                self._charge(peer, -tracked.popleft()[0])
            if not tracked:
                del self._tracked[peer]

    def flush(self) -> None:
        """Hand ZeroMQ the replies that wait, as far as its queues have room."""
        for peer in list(self._waiting):
            self._flush(peer)
        self._warn_dropped()

    def close(self) -> None:
        """At shutdown: one last flush; what still waits is dropped, counted and logged."""
        self.flush()
        for peer in list(self._waiting):
            self._drop_waiting(peer, "shutdown")
        self._warn_dropped(force=True)

    # inside ------------------------------------------------------------------------------
    def _push(self, envelope: List[bytes], reply: bytes) -> str:
        """Hand one reply to ZeroMQ without blocking: SENT, FULL (the peer's queue is at
        SNDHWM) or GONE (the peer left: dropped, counted)."""
        peer = envelope[0]
        frame = zmq.Frame(reply, track=True, copy=False) if len(reply) >= TRACK_MIN else None
        try:
            for part in envelope:  # what send_multipart does, with plain-int flags
                self.sock.send(part, MORE)
            self.sock.send(frame or reply, NOBLOCK, copy=False)
        except zmq.Again:
            return FULL
        except zmq.ZMQError as exc:
            if exc.errno != errno.EHOSTUNREACH:
                raise
            self._drop("disconnected")
            return GONE
        if frame is not None:
            assert frame.tracker is not None
            self._tracked.setdefault(peer, deque()).append((len(reply), frame.tracker))
            self._charge(peer, len(reply))
        return SENT

    def _wait(self, envelope: List[bytes], reply: bytes) -> None:
        """Keep ``reply`` in its peer's line, or drop and count it: the peer is at its bound."""
        peer = envelope[0]
        cost = len(reply) + ENTRY_COST
        if not self.fits(peer, cost):
            self._drop("unread")
            return
        self._waiting.setdefault(peer, deque()).append((envelope, reply, cost))
        self._charge(peer, cost)

    def _flush(self, peer: bytes) -> None:
        line = self._waiting[peer]
        while line:
            envelope, reply, cost = line[0]
            outcome = self._push(envelope, reply)
            if outcome == FULL:
                return
            line.popleft()
            self._charge(peer, -cost)
            if outcome == GONE:
                self._drop_waiting(peer, "disconnected")
                return
        del self._waiting[peer]

    def _drop_waiting(self, peer: bytes, reason: str) -> None:
        for _, _, cost in self._waiting.pop(peer, ()):
            self._charge(peer, -cost)
            self._drop(reason)

    def _charge(self, peer: bytes, size: int) -> None:
        held = self._bytes.get(peer, 0) + size
        self.total += size
        if held:
            self._bytes[peer] = held
        else:
            del self._bytes[peer]

    def _drop(self, reason: str) -> None:
        self._dropped(reason)
        self._lost[reason] += 1

    def _warn_dropped(self, force: bool = False) -> None:
        if self._lost and (force or self._due("dropped")):
            lost = ", ".join(f"{n} {REASONS[r]}" for r, n in sorted(self._lost.items()))
            log.warning("replies dropped: %s", lost)
            self._lost.clear()

    def _refusal(self, peer: bytes, request_id: Any, size: int) -> bytes:
        self.refused += 1
        mb = 2**20
        error = Overloaded(
            f"a reply of {size / mb:.1f} MB was dropped: this client has "
            f"{self._bytes.get(peer, 0) / mb:.1f} MB of replies it has not read (limit "
            f"{self.peer_limit / mb:.0f} MB per client, {self.reserve / mb:.0f} MB while all "
            f"clients together hold over {self.total_limit / mb:.0f} MB; they hold "
            f"{self.total / mb:.0f} MB); read replies before sending more requests"
        )
        if self._due("refused"):
            log.warning("%s (%d replies refused so far)", error.message, self.refused)
        return protocol.error_reply(request_id, error)

    def _due(self, kind: str) -> bool:
        now = time.monotonic()
        if now - self._warned[kind] < WARN_EVERY_S:
            return False
        self._warned[kind] = now
        return True


REASONS = {
    "unread": "to clients that had not read their earlier replies (at their bound)",
    "disconnected": "to clients that disconnected first",
    "shutdown": "still waiting for their clients at shutdown",
}
