"""Replies on their way out of the ROUTER socket, with the memory they hold bounded.

A client that stops reading makes ZeroMQ keep its replies (the kernel's socket buffer
fills first, then the ROUTER's per-peer queue). ZeroMQ bounds that queue in messages, not
bytes: 1,000 segmentation replies of 16 MB each would be 16 GB. So every reply of
``TRACK_MIN`` bytes or more is sent zero-copy with a tracker that tells when ZeroMQ has
let go of it (written to the kernel, or dropped with its peer), and the bytes still held
are counted per peer and in total. A reply that would take a peer past ``peer_limit``
(or all peers past ``total_limit``) is replaced by a short ``overloaded`` error. One
reply is always let through to a peer holding nothing, so the bounds are
``max(peer_limit, largest reply)`` per peer and ``max(total_limit, largest reply)`` in
total, plus ``SNDHWM x TRACK_MIN`` per peer of small replies (docs/SECURITY.md).

Used under the server's socket lock, like the socket: by the thread that answers a job.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Dict, List, Tuple

import zmq

from . import protocol
from .errors import Overloaded

log = logging.getLogger("rkserve")
TRACK_MIN = 4096  # smaller replies are bounded by the socket's SNDHWM (messages)
SNDHWM = 100  # messages queued per peer; with TRACK_MIN: at most 400 kB of small replies
WARN_EVERY_S = 10.0


class Outbox:
    def __init__(self, sock: zmq.Socket, peer_limit: int, total_limit: int) -> None:
        self.sock = sock
        self.peer_limit = peer_limit
        self.total_limit = total_limit
        self.total = 0  # bytes of tracked replies ZeroMQ still holds
        self.refused = 0
        self._held: Dict[bytes, List[Tuple[int, zmq.MessageTracker]]] = {}
        self._warned = 0.0

    def send(self, envelope: List[bytes], request_id: Any, reply: bytes) -> None:
        """``reply`` → the peer ``envelope`` names, or a short refusal in its place."""
        size = len(reply)
        if size < TRACK_MIN:
            self.sock.send_multipart([*envelope, reply])
            return
        self.collect()
        peer = envelope[0]
        held = sum(n for n, _ in self._held.get(peer, ()))
        if (held and held + size > self.peer_limit) or (
            self.total and self.total + size > self.total_limit
        ):
            self._refuse(envelope, request_id, size, held)
            return
        frame = zmq.Frame(reply, track=True, copy=False)
        self.sock.send_multipart([*envelope, frame], copy=False)
        assert frame.tracker is not None
        self._held.setdefault(peer, []).append((size, frame.tracker))
        self.total += size

    def collect(self) -> None:
        """Forget the replies ZeroMQ has let go of."""
        for peer in list(self._held):
            kept = [(n, t) for n, t in self._held[peer] if not t.done]
            self.total -= sum(n for n, _ in self._held[peer]) - sum(n for n, _ in kept)
            if kept:
                self._held[peer] = kept
            else:
                del self._held[peer]

    def _refuse(self, envelope: List[bytes], request_id: Any, size: int, held: int) -> None:
        self.refused += 1
        mb = 2**20
        error = Overloaded(
            f"a reply of {size / mb:.1f} MB was dropped: this client has {held / mb:.1f} MB of "
            f"replies it has not read (limit {self.peer_limit / mb:.0f} MB per client, "
            f"{self.total / mb:.0f} of {self.total_limit / mb:.0f} MB for all); read replies "
            "before sending more requests"
        )
        self.sock.send_multipart([*envelope, protocol.error_reply(request_id, error)])
        now = time.monotonic()
        if now - self._warned > WARN_EVERY_S:
            self._warned = now
            log.warning("%s (%d replies refused so far)", error.message, self.refused)
