"""The least a Python ZeroMQ server can spend on a request: the bare work (decode, resize to
the model input, BGR→RGB) between a ROUTER's receive and its send, nothing else (no model,
no checks, no metrics), in a process set up as the daemon's. Two shapes, run as ``python -m benchmarks.floor MODE ENDPOINT``:

- ``one``: one thread receives, works and replies (the serial server of section 6 without
  its engine);
- ``two``: one thread receives and hands the request to a second, which works and replies
  under a lock: the least a server spends that keeps reading requests while a model call
  runs (what the daemon does, so that a wedged runtime cannot stop it answering).

Section 9 measures both beside the daemon: the floor under any goal for CPU per request.
"""

from __future__ import annotations

import queue
import sys
import threading
from typing import List

import cv2
import msgpack
import zmq

from benchmarks.cpucost import bare
from rkserve import memory

REPLY = {"ok": True, "result": {"classes": [{"index": 0, "label": "square", "score": 1.0}]}}


def answer(payload: bytes) -> bytes:
    request = msgpack.unpackb(payload, raw=False)
    bare(request["image"])
    return msgpack.packb({"v": 1, "id": request["id"], **REPLY})


def one(sock: zmq.Socket) -> None:
    while True:
        *envelope, payload = sock.recv_multipart()
        sock.send_multipart([*envelope, answer(payload)])


def two(sock: zmq.Socket) -> None:
    lock = threading.Lock()
    work: queue.SimpleQueue = queue.SimpleQueue()

    def worker() -> None:
        while True:
            envelope, payload = work.get()
            reply = answer(payload)
            with lock:
                sock.send_multipart([*envelope, reply])

    threading.Thread(target=worker, daemon=True).start()
    poller = zmq.Poller()
    poller.register(sock.getsockopt(zmq.FD), zmq.POLLIN)
    while True:
        poller.poll()
        while True:
            with lock:
                if not sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                    break
                frames: List[bytes] = sock.recv_multipart(zmq.NOBLOCK)
            work.put((frames[:-1], frames[-1]))


def main(mode: str, endpoint: str) -> None:
    cv2.setNumThreads(1)  # the process settings the daemon starts with: OpenCV in the caller's
    memory.pin_mmap_threshold()  # thread, and malloc reusing a frame's pages (a 1080p frame
    memory.keep_top_pad()  # mapped afresh for every request faults in ~6 MB of pages)
    sock = zmq.Context().socket(zmq.ROUTER)
    sock.bind(endpoint)
    {"one": one, "two": two}[mode](sock)


if __name__ == "__main__":
    main(*sys.argv[1:3])
