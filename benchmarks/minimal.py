"""Minimal servers: the bare work (decode, resize to the model input, BGR→RGB) between a
ROUTER's receive and its send, nothing else (no model, no checks, no metrics), in a process
set up as the daemon's. Two shapes, run as ``python -m benchmarks.minimal SHAPE ENDPOINT``:

- ``one``: one thread receives, works and replies (the serial server of section 6 without
  its engine);
- ``two``: one thread receives and hands the request to a second, which works and replies
  under a lock and then, as the daemon's runner does, re-reads the socket's events (a send
  can take the descriptor's edge for a request that arrived meanwhile) and wakes the first
  through a pipe if one waits: the shape of a server that keeps reading while a model call
  runs.

Section 9 measures both beside the daemon at concurrency 1: what a server of either shape
spends with none of the daemon's own work (one way to write it, not a proven lower bound).
"""

from __future__ import annotations

import contextlib
import os
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
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)

    def worker() -> None:
        while True:
            envelope, payload = work.get()
            reply = answer(payload)
            with lock:
                sock.send_multipart([*envelope, reply])
                waiting = sock.getsockopt(zmq.EVENTS) & zmq.POLLIN
            if waiting:
                with contextlib.suppress(BlockingIOError):
                    os.write(wake_w, b"!")

    threading.Thread(target=worker, daemon=True).start()
    poller = zmq.Poller()
    poller.register(sock.getsockopt(zmq.FD), zmq.POLLIN)
    poller.register(wake_r, zmq.POLLIN)
    while True:
        if wake_r in dict(poller.poll()):
            os.read(wake_r, 4096)
        while True:
            with lock:
                if not sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                    break
                frames: List[bytes] = sock.recv_multipart(zmq.NOBLOCK)
            work.put((frames[:-1], frames[-1]))


def main(shape: str, endpoint: str) -> None:
    cv2.setNumThreads(1)  # the daemon's process settings: OpenCV in the caller's thread,
    memory.pin_mmap_threshold()  # and malloc reusing a frame's pages (a 1080p frame
    memory.keep_top_pad()  # mapped afresh for every request faults ~6 MB of pages in)
    sock = zmq.Context().socket(zmq.ROUTER)
    sock.bind(endpoint)
    {"one": one, "two": two}[shape](sock)


if __name__ == "__main__":
    main(*sys.argv[1:3])
