"""sd_notify from the real daemon to a real unix datagram socket (what systemd listens on)."""

from __future__ import annotations

import signal
import socket
import time

import numpy as np
import pytest

from tools.harness import Daemon, fake_models

pytestmark = pytest.mark.process  # every test here starts a process


class NotifySocket:
    def __init__(self, path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages = []  # (monotonic time, fields)

    def drain(self, seconds: float):
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            self.messages.append((time.monotonic(), fields))
        return self.messages

    def wait_for(self, key: str, timeout: float = 30.0):
        until = time.monotonic() + timeout
        while time.monotonic() < until:
            for when, fields in self.messages:
                if key in fields:
                    return when, fields
            self.drain(0.1)
        raise AssertionError(f"no {key} in {self.messages}")

    def pings(self, since: float):
        return [t for t, f in self.messages if "WATCHDOG" in f and t >= since]


@pytest.fixture
def notify(tmp_path):
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.sock.close()


def test_ready_after_models_then_watchdog_reload_and_stop(tmp_path, notify):
    env = {"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "400000"}
    models = fake_models(tmp_path / "models")
    d = Daemon(
        tmp_path,
        models,
        "--backend",
        "fake",
        "--fake-latency-ms",
        "700",
        "--runner-timeout-s",
        "1",
        env=env,
    )
    started = time.monotonic()
    d.start(wait_ready=False)
    try:
        ready_at, fields = notify.wait_for("READY")
        assert ready_at - started >= 1.4  # two models, each warmed up through a 0.7 s "NPU"
        assert fields["STATUS"].startswith("serving 2/2 models")
        assert d.health()["ready"]
        assert len(notify.pings(started)) >= 3  # pinged while loading, at WATCHDOG_USEC / 2

        (models / "cls" / "fake-fault").write_text("hang")
        with d.client(timeout=5, retries=0) as client:
            with pytest.raises(Exception, match="wedged"):
                client.infer("cls", np.zeros((32, 32, 3), np.uint8))
            assert client.infer("seg", np.zeros((16, 16, 3), np.uint8)).task == "segmentation"
        stuck_since = time.monotonic()
        notify.drain(1.5)
        assert notify.pings(stuck_since + 0.3) == []  # no pings while the runner is wedged
        assert d.health()["models"]["cls"]["state"] == "stuck"

        (models / "cls" / "fake-fault").unlink()
        d.wait(lambda h: h["models"]["cls"]["ready"], timeout=10)
        recovered = time.monotonic()
        notify.drain(1.0)
        assert len(notify.pings(recovered)) >= 2

        d.signal(signal.SIGHUP)
        reload_at, reloading = notify.wait_for("RELOADING")
        assert int(reloading["MONOTONIC_USEC"]) > 0
        notify.drain(0.5)
        assert any("READY" in f for t, f in notify.messages if t > reload_at)
    finally:
        code = d.stop()
    notify.drain(0.3)
    assert code == 0 and any("STOPPING" in f for _, f in notify.messages)
