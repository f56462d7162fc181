"""The outbox against a real ROUTER, in process: its bounds as docs/SECURITY.md states them.

Over ``inproc://`` a zero-copy reply is handed to the reader by reference, so a client that
never reads holds every byte it was sent until it closes: the figures are exact.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Iterator, List, Tuple

import msgpack
import pytest
import zmq

from rkserve.outbox import ENTRY_COST, SNDHWM, Outbox

MB = 2**20
PEER, TOTAL = 8 * MB, 16 * MB
CLIENTS: List[zmq.Socket] = []  # closed by the fixture


@pytest.fixture
def router() -> Iterator[Tuple[zmq.Context, zmq.Socket]]:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.SNDHWM, SNDHWM)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.bind("inproc://outbox")
    yield ctx, sock
    for made in [sock, *CLIENTS]:
        made.close(linger=0)
    CLIENTS.clear()
    ctx.term()


def client(ctx: zmq.Context, router: zmq.Socket, name: bytes, rcvhwm: int = 0) -> zmq.Socket:
    """A DEALER the router knows by ``name`` (it has sent one message). Over inproc:// the
    queue holds SNDHWM + ``rcvhwm`` messages (0: no limit)."""
    sock = ctx.socket(zmq.DEALER)
    CLIENTS.append(sock)
    sock.setsockopt(zmq.ROUTING_ID, name)
    sock.setsockopt(zmq.RCVHWM, rcvhwm)
    sock.connect("inproc://outbox")
    sock.send(b"hello")
    assert router.recv_multipart() == [name, b"hello"]
    return sock


def settle(outbox: Outbox, total: int) -> None:
    """Wait until ZeroMQ has let go of what the outbox held beyond ``total`` (trackers are
    told by pyzmq's garbage-collector thread, a moment after the reader closed a message)."""
    for _ in range(5000):
        outbox.collect()
        if outbox.total <= total:
            return
        time.sleep(0.001)
    raise AssertionError(f"the outbox still holds {outbox.total} bytes, expected {total}")


def reply(n: int, size: int) -> bytes:
    return msgpack.packb({"v": 1, "id": n, "ok": True, "data": bytes(size)})


def test_the_total_falls_on_the_clients_holding_the_bytes(router):
    """Four clients that never read ask for 1 MB replies until they are refused; a fifth
    that holds nothing gets every one of its replies, and one that holds less than its
    reserve too; the total stays within total + one reserve (or reply) per client."""
    ctx, sock = router
    outbox = Outbox(sock, PEER, TOTAL)
    rogues = [client(ctx, sock, b"rogue%d" % n) for n in range(4)]
    for n in range(20):
        for rogue in rogues:
            outbox.send([rogue.getsockopt(zmq.ROUTING_ID), b""], n, reply(n, MB))
    assert outbox.total > TOTAL - MB  # the rogues hold the whole total
    reader = client(ctx, sock, b"reader")
    held = outbox.total
    for n in range(10):  # reads each reply before the next: holds nothing when it is sent
        outbox.send([b"reader", b""], n, reply(n, 3 * MB))
        assert len(msgpack.unpackb(reader.recv_multipart()[-1])["data"]) == 3 * MB
        settle(outbox, held)
    pipeliner = client(ctx, sock, b"pipeliner")
    for n in range(4):  # 4 x 0.4 MB unread: within its reserve (a quarter of PEER)
        outbox.send([b"pipeliner", b""], n, reply(n, 400_000))
    outbox.collect()
    got = [msgpack.unpackb(pipeliner.recv_multipart()[-1]) for _ in range(4)]
    assert all(r["ok"] for r in got)
    largest = len(reply(0, 3 * MB))
    assert outbox.total <= TOTAL + 6 * max(outbox.reserve, largest)


def test_replies_past_zeromqs_queue_wait_and_go_when_the_client_reads(router):
    ctx, sock = router
    dropped: List[str] = []
    outbox = Outbox(sock, PEER, TOTAL, dropped.append)
    slow = client(ctx, sock, b"slow", rcvhwm=1)
    for n in range(1000):
        outbox.send([b"slow", b""], n, reply(n, 100))
    assert outbox.waiting(b"slow") > 0 and outbox.backlog
    got: List[int] = []
    while len(got) < 1000:
        outbox.flush()
        while slow.poll(0):
            got.append(msgpack.unpackb(slow.recv_multipart()[-1])["id"])
    assert got == list(range(1000)) and not outbox.backlog and not dropped
    assert outbox.total == 0


def test_a_reply_that_cannot_wait_is_dropped_and_counted(router):
    ctx, sock = router
    dropped: Counter = Counter()
    outbox = Outbox(sock, 64 * 1024, 64 * 1024, lambda reason: dropped.update([reason]))
    deaf = client(ctx, sock, b"deaf")
    deaf.close()  # gone: ZeroMQ forgets it once the pipe closes
    deaf_gone = False
    for _ in range(1000):  # the close reaches the router asynchronously
        outbox.send([b"deaf", b""], 0, reply(0, 100))
        if dropped["disconnected"]:
            deaf_gone = True
            break
        time.sleep(0.001)
    assert deaf_gone
    mute = client(ctx, sock, b"mute", rcvhwm=1)
    for n in range(2000):
        outbox.send([b"mute", b""], n, reply(n, 100))
    cost = len(reply(0, 100)) + ENTRY_COST
    waited = outbox.waiting(b"mute")
    assert 0 < waited <= 64 * 1024 // cost + 1
    got = 0
    while outbox.backlog or mute.poll(0):  # now it reads: what waited comes, the rest counted
        outbox.flush()
        while mute.poll(0):
            mute.recv_multipart()
            got += 1
    assert dropped["unread"] > 0 and got + dropped["unread"] == 2000
    assert got >= SNDHWM + waited
