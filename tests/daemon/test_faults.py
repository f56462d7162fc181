"""Faults injected into the running daemon through the fake backend's ``fake-fault`` file.

Already proven elsewhere, and not repeated here: a wedged request is answered and the
watchdog pings stop and resume (test_daemon_systemd.py); a broken model.yaml on reload keeps
the previous version and a removed folder disappears (test_daemon.py); a metrics port in use
stops the daemon with one line (test_metrics.py). This file adds: a runtime that raises or
returns None, what the rest of the daemon does during a long hang, a model file corrupted or
deleted under a serving model, clients that vanish mid-request, and a taken ZeroMQ port.
"""

from __future__ import annotations

import shutil
import signal
import socket
import threading
import time
import urllib.request
from typing import Any, List, Optional, Tuple

import msgpack
import numpy as np
import pytest
import zmq

from rkserve.board.probes import toolkit_lite2_version
from rkserve.errors import BackendError, ModelUnavailable
from tests.boards import make_board
from tests.helpers import shared
from tools.harness import Daemon, fake_models, free_port

pytestmark = pytest.mark.process  # every test here starts a process

CLS = np.zeros((32, 32, 3), np.uint8)
SEG = np.zeros((16, 16, 3), np.uint8)


def metric(d: Daemon, name: str, **labels: str) -> Optional[float]:
    """One sample from the daemon's exporter (labels in any order), or None."""
    url = f"http://127.0.0.1:{d.metrics_port}/metrics"
    for line in urllib.request.urlopen(url, timeout=5).read().decode().splitlines():
        series, _, value = line.rpartition(" ")
        sample, _, rest = series.partition("{")
        found = dict(p.split("=", 1) for p in rest.rstrip("}").split(",") if p)
        if sample == name and {k: v.strip('"') for k, v in found.items()} == labels:
            return float(value)
    return None


def settles(d: Daemon, name: str, value: float, timeout: float = 10.0) -> bool:
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        if metric(d, name) == value:
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def models(tmp_path):
    return fake_models(tmp_path / "models")


@pytest.fixture
def daemon(tmp_path, models):
    flags = ["--backend", "fake", "--fake-latency-ms", "20", "--runner-timeout-s", "1"]
    d = Daemon(tmp_path, models, *flags, "--queue-size", "16").start()
    yield d
    assert d.stop() == 0, d.log()


@pytest.mark.parametrize(
    "fault,words", [("raise", "injected runtime failure"), ("none", "no outputs")]
)
def test_a_failing_runtime_answers_backend_error_and_the_model_keeps_serving(
    daemon, models, fault, words
):
    (models / "cls" / "fake-fault").write_text(fault)
    with daemon.client(retries=0) as client:
        for _ in range(5):
            with pytest.raises(BackendError, match=words):
                client.infer("cls", CLS)
        assert client.infer("seg", SEG).task == "segmentation"
        health = client.health()
        assert health["models"]["cls"] == {"ready": True, "state": "ready", "error": None}
        (models / "cls" / "fake-fault").unlink()
        assert client.infer("cls", CLS).task == "classification"  # same runner, no reload
    assert metric(daemon, "rkserve_requests_total", model="cls", code="backend_error") == 5
    assert "runner replaced" not in daemon.log()


def call_all(d: Daemon, model: str, image: np.ndarray, count: int) -> List[Any]:
    """``count`` concurrent requests, one client each: the replies or the exceptions."""
    results: List[Any] = [None] * count

    def call(i: int) -> None:
        with d.client(timeout=15.0, retries=0) as client:
            try:
                results[i] = client.infer(model, image)
            except Exception as exc:  # collected and asserted by the caller
                results[i] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
        time.sleep(0.02)  # the first one reaches the NPU first
    for t in threads:
        t.join()
    return results


def test_a_hung_runtime_is_replaced_while_the_other_models_keep_serving(daemon, models):
    (models / "cls" / "fake-fault").write_text("hang")
    others: List[float] = []
    stop = threading.Event()

    def seg_stream() -> None:
        with daemon.client(timeout=5.0, retries=0) as client:
            while not stop.is_set():
                started = time.monotonic()
                client.infer("seg", SEG)  # raises (and fails the test) if seg stops serving
                others.append(time.monotonic() - started)

    stream = threading.Thread(target=seg_stream)
    stream.start()
    try:
        started = time.monotonic()
        stuck = call_all(daemon, "cls", CLS, 6)  # one in the NPU, five queued behind it
        assert all(isinstance(r, BackendError) for r in stuck), stuck
        assert time.monotonic() - started < 5.0
        health = daemon.health()["models"]["cls"]
        assert health["state"] == "stuck" and not health["ready"] and "wedged" in health["error"]
        with daemon.client(retries=0) as client, pytest.raises(ModelUnavailable, match="stuck"):
            client.infer("cls", CLS)
        served_before = len(others)
        time.sleep(1.5)  # the hang goes on; seg keeps serving
        assert len(others) > served_before + 10
    finally:
        (models / "cls" / "fake-fault").unlink()
        stop.set()
        stream.join()
    daemon.wait(lambda h: h["models"]["cls"]["ready"], timeout=10)
    with daemon.client() as client:
        assert client.infer("cls", CLS).task == "classification"
    print(f"\nseg during the hang: {len(others)} requests, slowest {max(others) * 1000:.0f} ms")
    assert max(others) < 1.0, max(others)
    assert "model cls: runner replaced" in daemon.log()
    assert settles(daemon, "rkserve_inflight_requests", 0.0)


def test_clients_that_vanish_mid_request_cost_nothing(tmp_path, models):
    flags = ["--backend", "fake", "--fake-latency-ms", "200", "--queue-size", "16"]
    d = Daemon(tmp_path, models, *flags).start()
    try:
        payload = msgpack.packb(
            {
                "v": 1,
                "id": 1,
                "op": "infer",
                "model": "cls",
                "tensor": {"dtype": "uint8", "shape": [32, 32, 3], "data": CLS.tobytes()},
            }
        )
        for _ in range(8):  # sent, then gone: one in the NPU, seven queued
            sock = zmq.Context.instance().socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 1000)
            sock.connect(d.endpoint)
            sock.send_multipart([b"", payload])
            sock.close()
        with d.client(timeout=10.0) as client:  # a client that stays is served behind them
            assert client.infer("cls", CLS).task == "classification"
        assert settles(d, "rkserve_inflight_requests", 0.0)
        assert metric(d, "rkserve_requests_total", model="cls", code="ok") == 9  # all ran
        assert metric(d, "rkserve_queue_depth", model="cls") == 0
    finally:
        assert d.stop() == 0, d.log()


def onnx_model(folder, name: str) -> None:
    """A real, small ONNX classifier (copied: the test corrupts it)."""
    model = folder / name
    model.mkdir(parents=True)
    shutil.copy(shared("onnx", "mobilenet_v1_0.5_128_quant.onnx"), model / "model.onnx")
    (model / "model.yaml").write_text(
        "task: classification\ninput: {size: 128}\n"
        "onnx: {layout: nhwc, dtype: uint8}\noutput: {kind: logits}\n"
    )


def test_a_corrupted_or_deleted_model_file_keeps_the_loaded_version_serving(tmp_path):
    shared("onnx")
    models = tmp_path / "models"
    onnx_model(models, "mnet")
    d = Daemon(tmp_path, models, "--backend", "onnx").start(timeout=60)
    image = np.random.default_rng(0).integers(0, 255, (128, 128, 3), np.uint8)
    model_file = models / "mnet" / "model.onnx"
    good = model_file.read_bytes()
    try:
        with d.client(timeout=20) as client:
            expected = client.infer("mnet", image).result
            for damage, words in (
                (lambda: model_file.write_bytes(good[: len(good) // 3]), "reload failed"),
                (lambda: model_file.write_bytes(good), None),
                (model_file.unlink, "neither model.rknn"),
            ):
                damage()
                d.signal(signal.SIGHUP)
                health = d.wait(
                    lambda h, w=words: (
                        h["status"] == "serving"
                        and (
                            w in (h["models"]["mnet"]["error"] or "")
                            if w
                            else h["models"]["mnet"]["error"] is None
                        )
                    ),
                    timeout=30,
                )
                assert health["models"]["mnet"]["ready"]
                assert client.infer("mnet", image).result == expected
            assert "still serving the previous version" in health["models"]["mnet"]["error"]
    finally:
        assert d.stop() == 0, d.log()


def failed_start(d: Daemon) -> Tuple[int, List[str]]:
    """Start a daemon that must exit at start-up: its exit code and its log's lines."""
    d.start(wait_ready=False)
    assert d.proc is not None
    code = d.proc.wait(30)
    d.stop()
    return code, d.log().strip().splitlines()


def test_a_taken_zeromq_port_stops_the_daemon_with_one_line(tmp_path, models):
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        d = Daemon(tmp_path, models, "--backend", "fake", "--endpoint", f"tcp://127.0.0.1:{port}")
        code, lines = failed_start(d)
    assert code == 1 and len(lines) == 1, lines
    assert f"cannot bind tcp://127.0.0.1:{port}" in lines[0] and "Traceback" not in lines[0]


@pytest.mark.skipif(
    toolkit_lite2_version() is not None, reason="rknn-toolkit-lite2 is installed here"
)
@pytest.mark.parametrize("librknnrt", [None, "2.3.0"])
def test_backend_rknnlite_without_its_runtime_stops_at_start_up(tmp_path, models, librknnrt):
    """deploy/rkserve.yaml's `backend: rknnlite` promises an error at start-up when the NPU
    runtime is missing; the daemon used to start and refuse every model instead."""
    board = make_board(tmp_path, librknnrt=librknnrt)
    d = Daemon(tmp_path, models, "--backend", "rknnlite", "--sysroot", str(board))
    code, lines = failed_start(d)
    assert code == 1 and len(lines) == 1, lines
    assert lines[0].startswith("rkserve serve: error: backend rknnlite: "), lines[0]
    lite2_missing = toolkit_lite2_version() is None  # on this PC: not installed
    assert ("rknn-toolkit-lite2 is not installed" in lines[0]) == lite2_missing
    assert ("librknnrt.so not found" in lines[0]) == (librknnrt is None)
    assert "fix: " in lines[0]
