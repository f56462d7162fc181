"""SIGTERM with a backlog: every admitted request is answered, wherever it waits.

The backlog is either CPU-bound (images waiting for the one CPU worker) or NPU-bound
(prepared requests waiting for a slow runtime); the drain timeout is shorter than either.
Before: the drain answered only the jobs in model queues or on the NPU; those waiting for a
CPU worker got nothing, and the pool went on after "stopped", logging tracebacks from
sends on the closed context.
"""

from __future__ import annotations

import signal
import time

import cv2
import msgpack
import numpy as np
import pytest
import zmq

from tools.harness import Daemon, fake_models

pytestmark = pytest.mark.process  # every test here starts a process

REQUESTS = 16


def png(side: int) -> bytes:
    """A PNG that decodes slowly for its size (noise rows), well under the message limit."""
    rows = np.random.default_rng(0).integers(0, 255, (side, 1, 3), np.uint8)
    ok, data = cv2.imencode(".png", np.repeat(rows, side, axis=1))
    assert ok
    return data.tobytes()


@pytest.mark.parametrize("backlog", ["cpu", "npu"])
def test_sigterm_answers_every_admitted_request_and_nothing_runs_after_stopped(tmp_path, backlog):
    flags = ["--backend", "fake", "--workers", "1", "--drain-timeout-s", "0.5"]
    flags += ["--queue-size", str(REQUESTS), "--max-pixels", "10000000"]
    flags += ["--memory-budget-mb", "2048"]
    if backlog == "cpu":
        message = {"model": "cls", "image": png(3000)}
    else:
        flags += ["--fake-latency-ms", "300"]
        tensor = {"dtype": "uint8", "shape": [32, 32, 3], "data": bytes(32 * 32 * 3)}
        message = {"model": "cls", "tensor": tensor}
    d = Daemon(tmp_path, fake_models(tmp_path / "models"), *flags).start()
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(d.endpoint)
    try:
        for n in range(REQUESTS):
            request = {"v": 1, "id": n, "op": "infer", **message}
            sock.send_multipart([b"", msgpack.packb(request)])
        time.sleep(0.5)  # all admitted; most still waiting for the worker or the NPU
        d.signal(signal.SIGTERM)
        codes = {}
        until = time.monotonic() + 20
        while len(codes) < REQUESTS and sock.poll(max(1, int((until - time.monotonic()) * 1000))):
            reply = msgpack.unpackb(sock.recv_multipart()[-1], raw=False)
            codes[reply["id"]] = "ok" if reply["ok"] else reply["error"]["code"]
        assert d.stop() == 0
    finally:
        sock.close()
    log = d.log()
    assert sorted(codes) == list(range(REQUESTS)), f"unanswered: {REQUESTS - len(codes)}\n{log}"
    assert set(codes.values()) <= {"ok", "unavailable"}, codes
    assert "unavailable" in codes.values(), "the backlog finished within the drain: no test"
    assert "Traceback" not in log, log
    assert log.rstrip().splitlines()[-1].endswith("stopped"), log
