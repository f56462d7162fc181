"""What a client can make the daemon hold, against the bounds in docs/SECURITY.md.

- replies a client does not read: ``max(peer_reply_mb, one reply)`` per client;
- connections: descriptors up to the hard limit, silent peers cut by heartbeats;
- images in flight: the memory budget, charged from each image's header at admission.
"""

from __future__ import annotations

import io
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, List, Tuple

import cv2
import msgpack
import numpy as np
import pytest
import zmq

from tests.daemon.test_faults import metric, settles
from tools.harness import Daemon, fake_models

MB = 1024 * 1024


def rss_kb(pid: int, key: str = "VmRSS:") -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(key))


def encoded(side: int, ext: str) -> bytes:
    """A smooth ``side x side`` image: a small file that decodes to ``side**2 x 3`` bytes."""
    ramp = np.linspace(0, 255, side, dtype=np.float32).astype(np.uint8)
    image = np.dstack([np.tile(ramp, (side, 1)), np.tile(ramp[:, None], (1, side))] * 2)[..., :3]
    ok, data = cv2.imencode(ext, np.ascontiguousarray(image))
    assert ok
    return data.tobytes()


def request(n: int, model: str, image: bytes, **params: object) -> bytes:
    message = {"v": 1, "id": n, "op": "infer", "model": model, "image": image, "params": params}
    return msgpack.packb(message)


@pytest.mark.process
def test_a_client_that_stops_reading_cannot_grow_the_daemon_past_its_reply_bound(tmp_path):
    """Before: 60 raw 2000x2000 masks (4 MB each) to a client that never reads stayed in the
    ROUTER's queue for that client (1,000 messages deep): +240 MB, and more without end."""
    flags = ["--backend", "fake", "--peer-reply-mb", "8", "--total-reply-mb", "16"]
    d = Daemon(tmp_path, fake_models(tmp_path / "models"), *flags).start()
    image = encoded(2000, ".png")
    ctx = zmq.Context.instance()
    rogue = ctx.socket(zmq.DEALER)
    rogue.setsockopt(zmq.RCVBUF, 4096)
    rogue.setsockopt(zmq.RCVHWM, 1)
    rogue.setsockopt(zmq.LINGER, 0)
    rogue.connect(d.endpoint)
    try:
        warm = ctx.socket(zmq.DEALER)
        warm.connect(d.endpoint)
        for _ in range(3):  # the same load from a client that reads: every thread's heap warms
            for n in range(8):
                warm.send_multipart([b"", request(n, "seg", image, mask="raw")])
            for _ in range(8):
                assert warm.poll(20000)
                warm.recv_multipart()
        warm.close(linger=0)
        before = rss_kb(d.proc.pid)
        sizes = [flood(rogue, image, first, d.proc.pid) for first in (0, 60, 120)]
        assert raw_mask(d.endpoint, image)["ok"]  # a 4 MB reply: it meets the outbox
        grew = [(size - before) / 1024 for size in sizes]
        print(f"\nRSS {before / 1024:.0f} MB, then +{grew} MB after 60, 120, 180 requests")
        # 8 MB for the client + one 4 MB reply + what malloc may keep free: 16 MB (the trim
        # threshold, rkserve/memory.py) in each of the heaps of the 3 threads that worked;
        # whatever the number of requests (before: +4 MB each, without end)
        assert max(grew) < 8 + 4 + 3 * 16, d.log()
        assert "replies it has not read" in d.log()
    finally:
        rogue.close()
        assert d.stop() == 0, d.log()


def raw_mask(endpoint: str, image: bytes) -> dict:
    """One raw-mask request (a reply of width x height bytes) from a fresh client."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        sock.send_multipart([b"", request(0, "seg", image, mask="raw")])
        assert sock.poll(30000), "no reply"
        return msgpack.unpackb(sock.recv_multipart()[-1], raw=False)
    finally:
        sock.close()


def never_reads(endpoint: str) -> zmq.Socket:
    """A DEALER that will not read: the smallest receive queue and kernel buffer."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.RCVBUF, 4096)
    sock.setsockopt(zmq.RCVHWM, 1)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    return sock


@pytest.mark.process
def test_clients_that_never_read_do_not_deny_replies_to_the_others(tmp_path):
    """Two clients send 12 raw-mask requests each (4 MB replies) and never read: together
    they hold the whole ``total_reply_mb``. Before: every later large reply to anyone was
    answered `overloaded`, blaming a client that held nothing ("this client has 0.0 MB of
    replies it has not read"); with the defaults, four such connections did it."""
    flags = ["--backend", "fake", "--peer-reply-mb", "8", "--total-reply-mb", "16"]
    d = Daemon(tmp_path, fake_models(tmp_path / "models"), *flags).start()
    image = encoded(2000, ".png")
    rogues = [never_reads(d.endpoint) for _ in range(2)]
    try:
        for n in range(12):
            for rogue in rogues:
                rogue.send_multipart([b"", request(n, "seg", image, mask="raw")])
            time.sleep(0.1)  # within queue_size and the memory budget: every one admitted
        assert settles(d, "rkserve_inflight_requests", 0.0, timeout=60), d.log()
        codes = [raw_mask(d.endpoint, image) for _ in range(3)]
        assert [c["ok"] for c in codes] == [True] * 3, codes
    finally:
        for rogue in rogues:
            rogue.close()
        assert d.stop() == 0, d.log()


def flood(rogue: zmq.Socket, image: bytes, first: int, pid: int) -> int:
    """60 raw-mask requests from a client that never reads; the daemon's RSS after."""
    for n in range(first, first + 60):
        rogue.send_multipart([b"", request(n, "seg", image, mask="raw")])
        if n % 4 == 3:
            time.sleep(0.15)  # within queue_size: every request is admitted
    time.sleep(1.0)
    return rss_kb(pid)


@pytest.mark.process
def test_images_in_flight_are_held_to_the_memory_budget(tmp_path):
    """16 clients send a 4000x4000 JPEG for segmentation with an overlay at once, with a
    four-core board's settings. Before: 967 MB peak, 135 MB over SECURITY.md's bound; now
    the budget (256 MB by default) is the bound: each such request is charged 11 bytes a
    pixel (176 MB) before it is decoded, and those that do not fit are answered
    `overloaded` at once."""
    flags = ["--backend", "fake", "--workers", "4", "--queue-size", "8"]
    d = Daemon(tmp_path, fake_models(tmp_path / "models"), *flags).start()
    image = encoded(4000, ".jpg")
    try:
        messages = [request(n, "seg", image, mask="png", overlay=True) for n in range(16)]
        codes, base, peak = at_once(d, messages)
        assert "ok" in codes and set(codes) <= {"ok", "overloaded"}
        # the budget + the replies in flight (a few MB) + the allocator's per-thread slack
        assert (peak - base) / 1024 < 256 + 48, d.log()
    finally:
        assert d.stop() == 0, d.log()


def at_once(d: Daemon, messages: List[bytes]) -> Tuple[List[str], int, int]:
    """Each message from its own DEALER at once: the reply codes in order, and the daemon's
    RSS before and its peak (kB)."""
    ctx = zmq.Context.instance()
    socks: List[zmq.Socket] = []
    try:
        base = rss_kb(d.proc.pid)
        for message in messages:
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(d.endpoint)
            sock.send_multipart([b"", message])
            socks.append(sock)
        codes = []
        for sock in socks:
            assert sock.poll(60000)
            reply = msgpack.unpackb(sock.recv_multipart()[-1], raw=False)
            codes.append("ok" if reply["ok"] else reply["error"]["code"])
        peak = rss_kb(d.proc.pid, "VmHWM:")
        print(f"\n{codes}; RSS {base / 1024:.0f} MB, peak {peak / 1024:.0f} MB")
        return codes, base, peak
    finally:
        for sock in socks:
            sock.close()


def progressive_cmyk(side: int) -> bytes:
    """A smooth ``side x side`` progressive CMYK JPEG (Pillow writes one; OpenCV cannot)."""
    from PIL import Image

    ramp = np.linspace(0, 255, side, dtype=np.float32).astype(np.uint8)
    planes = [np.tile(ramp, (side, 1)), np.tile(ramp[:, None], (1, side))] * 2
    out = io.BytesIO()
    Image.fromarray(np.dstack(planes), "CMYK").save(out, "JPEG", quality=90, progressive=True)
    return out.getvalue()


@pytest.mark.process
def test_progressive_cmyk_jpegs_in_flight_are_held_to_the_memory_budget(tmp_path):
    """8 clients send a 4000x4000 progressive CMYK JPEG at once (libjpeg keeps its 4
    components' coefficients, 8 bytes a pixel, until the last scan: 11 bytes a pixel at the
    peak, measured). Charged 6 bytes a pixel, as any JPEG was, they peaked at +327 MB, over
    the 256 MB budget; the header says what the decoder will hold and is charged for it."""
    flags = ["--backend", "fake", "--workers", "4"]
    d = Daemon(tmp_path, fake_models(tmp_path / "models"), *flags).start()
    image = progressive_cmyk(4000)
    try:
        message = {"v": 1, "op": "infer", "model": "cls", "image": image, "deadline_ms": 60000}
        codes, base, peak = at_once(d, [msgpack.packb({**message, "id": n}) for n in range(8)])
        assert "ok" in codes and set(codes) <= {"ok", "overloaded"}
        # the budget and one heap's slack (the trim threshold): the images' buffers are over
        # the mmap threshold, so malloc returns them whole
        assert (peak - base) / 1024 < 256 + 16, d.log()
    finally:
        assert d.stop() == 0, d.log()


def zmtp_greet(path: str) -> socket.socket:
    """A connection that completes ZeroMQ's handshake (ZMTP 3.1, NULL, DEALER), then says
    nothing: it never sends a message and never answers a heartbeat."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(10)
    conn.connect(path)
    greeting = b"\xff" + bytes(8) + b"\x7f" + b"\x03\x01" + b"NULL".ljust(20, b"\0")
    conn.sendall(greeting + b"\x00" + bytes(31))
    body = b"\x05READY" + b"\x0bSocket-Type" + struct.pack(">I", 6) + b"DEALER"
    conn.sendall(b"\x04" + bytes([len(body)]) + body)
    received = b""
    while len(received) < 64 + 2:
        chunk = conn.recv(4096)
        assert chunk, "the daemon closed the connection during the handshake"
        received += chunk
    return conn


@pytest.fixture
def low_soft_limit():
    """Start the daemon with systemd's default soft limit of 1,024 descriptors."""

    def wrap(d: Daemon) -> Daemon:
        d.args = ["sh", "-c", 'ulimit -Sn 1024 && exec "$@"', "sh", *d.args]
        return d

    return wrap


@pytest.mark.process
def test_two_thousand_silent_connections_do_not_lock_a_client_out(tmp_path, low_soft_limit):
    """Before: under the default soft limit of 1,024 descriptors, ~1,012 connections that
    finished the handshake and went silent left every other client without a reply."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4096:
        pytest.skip(f"needs a hard limit of 4,096 descriptors, this machine allows {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 4096), hard))
    d = low_soft_limit(Daemon(tmp_path, fake_models(tmp_path / "models"), "--backend", "fake"))
    d.start()
    silent: List[socket.socket] = []
    try:
        path = d.endpoint[len("ipc://") :]
        for _ in range(2000):
            silent.append(zmtp_greet(path))
        started = time.monotonic()
        with d.client(timeout=5.0, retries=0) as client:
            assert client.classify("cls", np.zeros((32, 32, 3), np.uint8)).classes
            assert client.health()["live"]
        print(f"\nserved in {time.monotonic() - started:.2f} s beside 2,000 silent connections")
    finally:
        for conn in silent:
            conn.close()
        assert d.stop() == 0, d.log()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.process
def test_heartbeats_cut_connections_that_stop_answering(tmp_path):
    d = Daemon(tmp_path, fake_models(tmp_path / "models"), "--backend", "fake")
    d.args += ["--heartbeat-s", "0.5"]
    d.start()
    try:
        conns = [zmtp_greet(d.endpoint[len("ipc://") :]) for _ in range(20)]
        until = time.monotonic() + 10
        closed = 0
        for conn in conns:
            conn.settimeout(max(0.1, until - time.monotonic()))
            try:
                while conn.recv(4096):  # pings, until the daemon gives up on us
                    pass
                closed += 1
            except socket.timeout:
                pass
            conn.close()
        assert closed == len(conns)
        with d.client(retries=0) as client:
            assert client.health()["live"]
    finally:
        assert d.stop() == 0, d.log()


def test_the_unit_raises_the_descriptor_limit():
    unit = (Path(__file__).resolve().parents[2] / "systemd" / "rkserve.service").read_text()
    assert "\nLimitNOFILE=16384\n" in unit


@pytest.mark.process
def test_status_replies_a_client_does_not_read_are_held_to_the_reply_bound(tmp_path):
    """``models`` replies grow with the repository (here 100 kB each); before, they left
    outside the byte count, so a client sending ``models`` without reading held
    ``SNDHWM`` x that per connection, over any ``peer_reply_mb``."""
    models = fake_models(tmp_path / "models")
    for name in ("cls", "seg"):
        spec = models / name / "model.yaml"
        spec.write_text(spec.read_text() + f"description: {'x' * 50_000}\n")
    d = Daemon(tmp_path, models, "--backend", "fake", "--peer-reply-mb", "1").start()
    rogue = zmq.Context.instance().socket(zmq.DEALER)
    rogue.setsockopt(zmq.RCVBUF, 4096)
    rogue.setsockopt(zmq.RCVHWM, 1)
    rogue.setsockopt(zmq.LINGER, 0)
    rogue.connect(d.endpoint)
    try:
        for n in range(100):  # 10 MB of replies it never reads
            rogue.send_multipart([b"", msgpack.packb({"v": 1, "id": n, "op": "models"})])
        until = time.monotonic() + 10
        while "replies it has not read" not in d.log() and time.monotonic() < until:
            time.sleep(0.1)
        assert "replies it has not read" in d.log(), d.log()
        with d.client(retries=0) as client:  # a 100 kB reply: it meets the outbox
            assert len(client.models()) == 2
    finally:
        rogue.close()
        assert d.stop() == 0, d.log()


@pytest.mark.process
def test_a_message_of_many_frames_is_refused_not_echoed(tmp_path):
    """Before: a message of 100,000 empty frames and a health request was answered with
    its 100,000 frames echoed back (the frontend busy about half a second with each)."""
    d = Daemon(tmp_path, fake_models(tmp_path / "models"), "--backend", "fake").start()
    rogue = zmq.Context.instance().socket(zmq.DEALER)
    rogue.setsockopt(zmq.LINGER, 0)
    rogue.connect(d.endpoint)
    try:
        health = msgpack.packb({"v": 1, "id": 1, "op": "health"})
        rogue.send_multipart([b""] * 100_000 + [health])
        assert rogue.poll(20000)
        reply = rogue.recv_multipart()
        assert len(reply) == 2, f"{len(reply)} frames came back"
        error = msgpack.unpackb(reply[-1])["error"]
        assert error["code"] == "bad_request" and "100002 frames" in error["message"]
        rogue.send_multipart([b"", b"", health])  # a proxy hop's envelope is fine
        assert rogue.poll(10000)
        assert msgpack.unpackb(rogue.recv_multipart()[-1])["ok"]
    finally:
        rogue.close()
        assert d.stop() == 0, d.log()


FLOOD = """
import sys, time, zmq
ctx = zmq.Context()
socks = [ctx.socket(zmq.DEALER) for _ in range(20)]
for s in socks:
    s.setsockopt(zmq.SNDHWM, 1000000)
    s.setsockopt(zmq.RCVHWM, 1)
    s.setsockopt(zmq.RCVBUF, 4096)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(sys.argv[1])
until = time.monotonic() + float(sys.argv[2])
while time.monotonic() < until:
    for s in socks:
        try:
            s.send_multipart([b"", b"\\xc1"], zmq.NOBLOCK)
        except zmq.Again:
            pass
"""


@pytest.mark.process
def test_sigterm_is_honoured_during_a_flood_that_never_lets_the_queue_empty(tmp_path):
    """Two processes send junk as fast as they can for 30 s. Before: the frontend read as
    long as requests were waiting, so SIGTERM (and SIGHUP, and the watchdog's pings) waited
    for the flood to end."""
    d = Daemon(tmp_path, fake_models(tmp_path / "models"), "--backend", "fake").start()
    flooders = [subprocess.Popen([sys.executable, "-c", FLOOD, d.endpoint, "30"]) for _ in range(2)]
    try:
        time.sleep(4)  # the flood is on
        started = time.monotonic()
        code = d.stop(timeout=20)  # SIGTERM; killed after 20 s
        took = time.monotonic() - started
        assert code == 0 and took < 10, f"exit {code} {took:.1f} s after SIGTERM; {d.log()}"
    finally:
        for flooder in flooders:
            flooder.kill()
            flooder.wait()


def pipelined(
    endpoint: str,
    op: str,
    count: int,
    then: bytes = b"",
    answered: Callable[[], bool] = lambda: True,
) -> List[dict]:
    """One DEALER sends ``count`` ``op`` requests (and ``then``) without reading, waits until
    ``answered()`` (at most 60 s), then reads every reply it gets (until none comes for 5 s)."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 100)  # a small receive window: the replies wait in the daemon
    sock.setsockopt(zmq.RCVBUF, 4096)
    sock.connect(endpoint)
    try:
        for n in range(count):
            sock.send_multipart([b"", msgpack.packb({"v": 1, "id": n, "op": op})])
        if then:
            sock.send_multipart([b"", then])
        until = time.monotonic() + 60
        while not answered() and time.monotonic() < until:
            time.sleep(0.05)
        replies = []
        while time.monotonic() < until and sock.poll(5000):
            replies.append(msgpack.unpackb(sock.recv_multipart()[-1], raw=False))
        return replies
    finally:
        sock.close()


@pytest.mark.process
@pytest.mark.parametrize("transport, op", [("ipc", "health"), ("tcp", "models")])
def test_every_pipelined_request_gets_its_reply(tmp_path, transport, op):
    """PROTOCOL.md invites pipelining. Before: replies under 4 kB went straight to the
    ROUTER, whose per-client queue (100 messages) dropped the rest without a word: 1,400
    of 5,000 ``health`` replies came back over ipc://, 1,700 of 5,000 ``models`` over TCP."""
    d = Daemon(tmp_path, fake_models(tmp_path / "models"), "--backend", "fake", transport=transport)
    d.start()
    try:
        replies = pipelined(d.endpoint, op, 5000)
        assert len(replies) == 5000 and all(r["ok"] for r in replies)
        assert metric(d, "rkserve_replies_dropped_total", reason="unread") == 0.0
    finally:
        assert d.stop() == 0, d.log()


@pytest.mark.process
def test_replies_past_a_clients_bound_are_counted_and_logged_never_lost_in_silence(tmp_path):
    """A client that pipelines 20,000 requests and reads nothing until the end, with
    ``peer_reply_mb`` 1: the daemon cannot keep every reply for it. Each request is either
    answered or counted in ``rkserve_replies_dropped_total`` (and logged)."""
    flags = ["--backend", "fake", "--peer-reply-mb", "1", "--total-reply-mb", "1"]
    d = Daemon(tmp_path, fake_models(tmp_path / "models"), *flags).start()
    try:
        got = len(pipelined(d.endpoint, "health", 20_000))
        dropped = metric(d, "rkserve_replies_dropped_total", reason="unread")
        print(f"\n{got} replies read, {dropped} dropped and counted")
        assert dropped and got + dropped == 20_000
        assert "not read" in d.log() and "dropped" in d.log()
    finally:
        assert d.stop() == 0, d.log()


def answered(d: Daemon, model: str) -> Callable[[], bool]:
    """Whether the daemon has answered a request for ``model``, refused or served."""
    return lambda: any(
        metric(d, "rkserve_requests_total", model=model, code=code) is not None
        for code in ("overloaded", "ok")
    )


@pytest.mark.process
def test_no_work_is_done_for_a_client_whose_replies_wait_in_the_daemon(tmp_path):
    """3,000 pipelined ``health`` requests fill the client's ZeroMQ queue, so replies wait
    in the daemon: the ``infer`` sent behind them is answered `overloaded` at once. The client
    reads nothing until the daemon has answered the infer (its exporter counts it): once it
    read as soon as its sends were queued, and under load it drained the daemon's waiting
    replies before the daemon reached the infer."""
    d = Daemon(tmp_path, fake_models(tmp_path / "models"), "--backend", "fake").start()
    try:
        tensor = {"dtype": "uint8", "shape": [32, 32, 3], "data": bytes(32 * 32 * 3)}
        infer = {"v": 1, "id": "last", "op": "infer", "model": "cls", "tensor": tensor}
        replies = pipelined(d.endpoint, "health", 3000, msgpack.packb(infer), answered(d, "cls"))
        assert len(replies) == 3001
        (last,) = [r for r in replies if r["id"] == "last"]
        assert last["error"]["code"] == "overloaded", last
        assert "waiting in the daemon" in last["error"]["message"]
    finally:
        assert d.stop() == 0, d.log()
