"""A bounded stream of bad messages against the real daemon over a raw DEALER socket.

Every message gets exactly one reply with a specific code (never ``internal``), except
messages over 4 x max_message_mb, which ZeroMQ drops unread. Afterwards the daemon still
answers health at once, and its resident memory did not grow with the stream.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path
from typing import Any, Dict, Iterator, Tuple

import msgpack
import pytest
import zmq

from tests.kernels.test_fuzz_images import bmp_with_size, encode, jpeg_with_size, png_with_size
from tools.harness import Daemon, fake_models

pytestmark = pytest.mark.process  # every test here starts a process

MAX_MB = 1
LIMIT = MAX_MB * 1024 * 1024
CODES = {
    "bad_request",
    "bad_image",
    "too_large",
    "unsupported_version",
    "unknown_model",
}


ANY = object()  # a reply may carry whatever id the random message held


def randbytes(rng: random.Random, n: int) -> bytes:
    return rng.getrandbits(8 * n).to_bytes(n, "little") if n else b""


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def any_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.choice([0, 1, -1, 2**63 - 1, -(2**63), 2**64 - 1, rng.randrange(-999, 999)])
    if kind == 3:
        return rng.choice([0.0, -1.5, float("inf"), float("nan"), 1e308])
    if kind == 4:
        return "".join(chr(rng.randrange(32, 0x2FFF)) for _ in range(rng.randrange(20)))
    if kind == 5:
        return randbytes(rng, rng.randrange(20))
    if kind == 6:
        return [any_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {
        rng.choice(["v", "op", "id", "x", "model"]): any_value(rng, depth + 1) for _ in range(3)
    }


def image_payload(rng: random.Random) -> bytes:
    fmt = rng.choice([".jpg", ".png", ".bmp"])
    choice = rng.randrange(5)
    if choice == 0:  # truncated at a random length class
        data = encode(fmt, rng.randrange(8, 80), rng.randrange(8, 80), rng.randrange(999))
        return data[: rng.choice([1, 10, 40, len(data) // 2, len(data) - 3])]
    if choice == 1:  # absurd declared size
        w, h = rng.randrange(1, 65536), rng.randrange(1, 65536)
        return rng.choice(
            [png_with_size(w, h, b"\0" * 32), jpeg_with_size(w, h), bmp_with_size(w, h, b"")]
        )
    if choice == 2:  # corrupted body
        data = bytearray(encode(fmt, 40, 30, rng.randrange(999)))
        for _ in range(rng.randrange(1, 20)):
            data[rng.randrange(2, len(data))] = rng.randrange(256)
        return bytes(data)
    if choice == 3:  # random bytes behind a signature
        return rng.choice([b"\x89PNG\r\n\x1a\n", b"\xff\xd8", b"BM", b""]) + randbytes(rng, 100)
    return encode(fmt, rng.randrange(8, 64), rng.randrange(8, 64), rng.randrange(999))


def messages(rng: random.Random, count: int) -> Iterator[Tuple[str, Any, bytes]]:
    """``(category, id, payload)``; ``id`` is what a reply must echo, or ANY."""
    for n in range(count):
        category = rng.choice(CATEGORIES)
        if category == "random bytes":
            yield category, ANY, randbytes(rng, rng.randrange(0, 2000))
        elif category == "random msgpack":
            yield category, ANY, pack(any_value(rng))
        elif category == "wrong types":
            fields = {k: any_value(rng) for k in rng.sample(sorted(FIELDS), rng.randrange(1, 6))}
            yield category, ANY, pack({"v": 1, "op": "infer", **fields})
        elif category == "deep nesting":
            depth = rng.randrange(1, 1100)
            head = b"\x83\xa1v\x01\xa2id" + pack(n) + b"\xa2op"
            yield category, n, head + b"\x91" * depth + b"\x00"
        elif category == "near the limit":
            size = LIMIT + rng.randrange(-2048, 2048)
            field = rng.choice(["image", "model", "op", "junk"])
            yield (
                category,
                n,
                pack({"v": 1, "id": n, "op": "infer", "model": "cls", field: b"x" * size}),
            )
        elif category == "bad images":
            model = rng.choice(["cls", "seg"])
            yield (
                category,
                n,
                pack({"v": 1, "id": n, "op": "infer", "model": model, "image": image_payload(rng)}),
            )
        elif category == "bad tensors":
            shape = [rng.choice([0, 1, 8, 16, 2**32, 3]) for _ in range(rng.randrange(0, 5))]
            tensor = {
                "dtype": rng.choice(["uint8", "float32", 5]),
                "shape": shape,
                "data": b"\x01" * rng.choice([0, 48, 768]),
            }
            yield (
                category,
                n,
                pack({"v": 1, "id": n, "op": "infer", "model": "cls", "tensor": tensor}),
            )
        else:
            yield category, n, pack({"v": 1, "id": n, "op": rng.choice(["health", "models"])})


CATEGORIES = [
    "random bytes",
    "random msgpack",
    "wrong types",
    "deep nesting",
    "near the limit",
    "bad images",
    "bad tensors",
    "valid",
]
FIELDS = {"id", "model", "image", "tensor", "params", "deadline_ms", "extra"}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    d = Daemon(
        folder, fake_models(folder / "models"), "--backend", "fake", "--max-message-mb", str(MAX_MB)
    )
    d.start()
    yield d
    assert d.stop() == 0, d.log()


def exchange(sock: zmq.Socket, payload: bytes, timeout_ms: int = 10000) -> Dict[str, Any]:
    sock.send_multipart([b"", payload])
    assert sock.poll(timeout_ms), "no reply: the daemon dropped a message or hung"
    return msgpack.unpackb(sock.recv_multipart()[-1], raw=False)


def run_stream(daemon: Daemon, seed: int, count: int, tally: Counter) -> None:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(daemon.endpoint)
    try:
        for category, request_id, payload in messages(random.Random(seed), count):
            reply = exchange(sock, payload)
            code = "ok" if reply["ok"] else reply["error"]["code"]
            assert code == "ok" or code in CODES, (category, reply)
            if request_id is not ANY:
                assert reply["id"] in (None, request_id), (category, reply["id"], request_id)
            if category == "near the limit" and len(payload) > LIMIT:
                assert code == "too_large"
            tally[(category, code)] += 1
    finally:
        sock.close()


def test_a_stream_of_bad_messages_gets_one_coded_reply_each(daemon):
    tally: Counter = Counter()
    pid = daemon.proc.pid
    run_stream(daemon, seed=1, count=500, tally=tally)  # warm-up: allocator pools, caches
    warm = rss_kb(pid)
    run_stream(daemon, seed=2, count=3000, tally=tally)
    middle = rss_kb(pid)
    run_stream(daemon, seed=3, count=3000, tally=tally)
    final = rss_kb(pid)
    started = time.monotonic()
    assert daemon.health()["ready"]
    assert time.monotonic() - started < 1.0
    by_category = Counter()
    for (category, _), n in tally.items():
        by_category[category] += n
    print(f"\nmessages per category: {dict(by_category)}")
    print(
        f"replies per code: {dict(Counter(code for (_, code), n in tally.items() for _ in range(n)))}"
    )
    print(f"RSS: {warm / 1024:.1f} MB after warm-up, {middle / 1024:.1f} MB, {final / 1024:.1f} MB")
    assert sum(tally.values()) == 6500
    assert final - middle < 8 * 1024, (warm, middle, final)  # no growth per message


@pytest.mark.parametrize("size_mb", [4.01, 6])
def test_messages_over_four_times_the_limit_are_dropped_unread(daemon, size_mb):
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(daemon.endpoint)
    try:
        sock.send_multipart([b"", b"\x00" * int(size_mb * LIMIT)])
        assert not sock.poll(1000)
    finally:
        sock.close()
    assert daemon.health()["ready"]


@pytest.mark.parametrize(
    "make,code",
    [
        (lambda: png_with_size(20000, 20000, b"\0" * 64), "too_large"),
        (lambda: encode(".png", 100, 100, 0), "too_large"),
        (lambda: encode(".png", 50, 50, 0), "ok"),
    ],
    ids=["forged-png-20000x20000", "100x100-over-max-pixels", "50x50-under"],
)
def test_the_pixel_limit_through_the_daemon(tmp_path, make, code):
    d = Daemon(
        tmp_path, fake_models(tmp_path / "models"), "--backend", "fake", "--max-pixels", "5000"
    )
    d.start()
    try:
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(d.endpoint)
        reply = exchange(
            sock, pack({"v": 1, "id": 1, "op": "infer", "model": "cls", "image": make()})
        )
        sock.close()
        assert (reply["error"]["code"] if not reply["ok"] else "ok") == code, reply
    finally:
        assert d.stop() == 0


@pytest.mark.parametrize(
    "payload",
    [
        b"\x82\xa1v\x01\xa2op" + b"\x91" * 1000 + b"\x00",
        pack({"v": 1, "op": "infer", "model": "cls", "image": b"x", "params": {b"k": 1, "j": 2}}),
        pack(
            {
                "v": 1,
                "op": "infer",
                "model": "cls",
                "tensor": {"dtype": "uint8", "shape": [2**32, 2**32], "data": b""},
            }
        ),
    ],
    ids=["1000-deep-op", "mixed-key-params", "tensor-shape-wraps"],
)
def test_regressions_that_killed_the_frontend(daemon, payload):
    """Each of these raised a non-rkserve exception on the frontend thread: the daemon died."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(daemon.endpoint)
    try:
        reply = exchange(sock, payload)
    finally:
        sock.close()
    assert not reply["ok"] and reply["error"]["code"] in CODES
    assert daemon.health()["ready"]
