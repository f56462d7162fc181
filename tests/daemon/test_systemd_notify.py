"""sd_notify against real unix datagram sockets standing in for systemd's."""

from __future__ import annotations

import logging
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Iterator, Optional, Tuple

import pytest

from rkserve.systemd import Notifier

pytestmark = pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="needs unix sockets")

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Tuple[socket.socket, str]]:
    """A bound datagram socket, as systemd's notify socket, and its NOTIFY_SOCKET value."""
    with tempfile.TemporaryDirectory(prefix="sdn") as short:
        # sun_path holds 108 bytes: fall back to a short folder for long test names.
        folder = tmp_path if len(str(tmp_path)) < 90 else Path(short)
        path = str(folder / "notify.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.settimeout(5)
        yield sock, path
        sock.close()


def test_ready_sends_exactly_ready(receiver: Tuple[socket.socket, str]) -> None:
    sock, path = receiver
    notifier = Notifier.from_env({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready() is True
    assert sock.recv(4096) == b"READY=1"
    assert notifier.ready("serving 2 models") is True
    assert sock.recv(4096) == b"READY=1\nSTATUS=serving 2 models"
    notifier.close()


def test_each_message_is_one_exact_datagram(receiver: Tuple[socket.socket, str]) -> None:
    sock, path = receiver
    notifier = Notifier(path)
    notifier.status("loaded 1/2: mobilenet")
    notifier.watchdog()
    notifier.stopping("draining 3 requests")
    notifier.extend_timeout(1.5)
    notifier.notify(STATUS="x", ERRNO=5, BUSERROR="org.example.Failed")
    assert sock.recv(4096) == b"STATUS=loaded 1/2: mobilenet"
    assert sock.recv(4096) == b"WATCHDOG=1"
    assert sock.recv(4096) == b"STOPPING=1\nSTATUS=draining 3 requests"
    assert sock.recv(4096) == b"EXTEND_TIMEOUT_USEC=1500000"
    assert sock.recv(4096) == b"STATUS=x\nERRNO=5\nBUSERROR=org.example.Failed"
    notifier.close()


def test_reloading_carries_the_monotonic_clock(receiver: Tuple[socket.socket, str]) -> None:
    sock, path = receiver
    notifier = Notifier(path)
    before = time.monotonic_ns() // 1000
    notifier.reloading("reloading models")
    after = time.monotonic_ns() // 1000
    lines = sock.recv(4096).decode().split("\n")
    assert lines[0] == "RELOADING=1"
    key, _, value = lines[1].partition("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after
    assert lines[2:] == ["STATUS=reloading models"]
    notifier.close()


def test_newlines_cannot_inject_assignments(receiver: Tuple[socket.socket, str]) -> None:
    sock, path = receiver
    notifier = Notifier(path)
    notifier.status("bad model\nREADY=1\r\n")
    assert sock.recv(4096) == b"STATUS=bad model READY=1  "
    with pytest.raises(ValueError):
        notifier.notify(**{"READY=1\nX": 1})
    with pytest.raises(ValueError):
        notifier.notify(ready=1)
    notifier.close()


def test_datagram_comes_from_our_pid(receiver: Tuple[socket.socket, str]) -> None:
    """NotifyAccess=main: systemd accepts only datagrams whose sender is the main PID."""
    sock, path = receiver
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    notifier = Notifier(path)
    notifier.watchdog()
    data, ancdata, _flags, _addr = sock.recvmsg(4096, socket.CMSG_SPACE(12))
    assert data == b"WATCHDOG=1"
    creds = [d for level, kind, d in ancdata if kind == socket.SCM_CREDENTIALS]
    pid, uid, _gid = struct.unpack("3i", creds[0])
    assert (pid, uid) == (os.getpid(), os.getuid())
    notifier.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="abstract sockets are Linux-only")
def test_abstract_namespace_socket() -> None:
    name = f"rkserve-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        notifier = Notifier.from_env({"NOTIFY_SOCKET": "@" + name})
        assert notifier.enabled
        assert notifier.ready("up") is True
        assert sock.recv(4096) == b"READY=1\nSTATUS=up"
        notifier.close()


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        ("30000000", None, 15.0),
        ("30000000", "self", 15.0),
        ("30000000", "other", None),
        ("5000", None, 0.0025),
        ("0", None, None),
        ("-5", None, None),
        ("thirty", None, None),
        ("", None, None),
    ],
)
def test_watchdog_interval(usec: str, pid: Optional[str], expected: Optional[float]) -> None:
    environ = {"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": usec}
    if pid == "self":
        environ["WATCHDOG_PID"] = str(os.getpid())
    elif pid == "other":
        environ["WATCHDOG_PID"] = str(os.getpid() + 1)
    notifier = Notifier.from_env(environ)
    assert notifier.watchdog_interval == expected


def test_watchdog_pid_is_compared_with_the_given_pid() -> None:
    environ = {"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "4242"}
    assert Notifier.from_env(environ, pid=4242).watchdog_interval == 1.0
    assert Notifier.from_env(environ, pid=4243).watchdog_interval is None


@pytest.mark.parametrize("value", [None, "", "vsock:2:1234", "relative/path", "@"])
def test_disabled_without_a_usable_notify_socket(value: Optional[str]) -> None:
    environ = {"WATCHDOG_USEC": "30000000"}
    if value is not None:
        environ["NOTIFY_SOCKET"] = value
    notifier = Notifier.from_env(environ)
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    assert notifier.ready("x") is False
    assert notifier.watchdog() is False
    assert notifier.reloading() is False
    assert notifier.stopping() is False
    notifier.close()


def test_from_env_reads_the_process_environment(
    receiver: Tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, path = receiver
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "10000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    notifier = Notifier.from_env()
    assert notifier.watchdog_interval == 5.0
    notifier.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"
    notifier.close()


def test_socket_gone_never_raises_and_logs_once(
    receiver: Tuple[socket.socket, str], caplog: pytest.LogCaptureFixture
) -> None:
    sock, path = receiver
    notifier = Notifier(path)
    sock.close()
    os.unlink(path)
    with caplog.at_level(logging.DEBUG, logger="rkserve.systemd"):
        assert notifier.watchdog() is False
        assert notifier.ready() is False
        assert notifier.stopping() is False
    failures = [r for r in caplog.records if "sd_notify" in r.getMessage()]
    assert len(failures) == 1
    assert failures[0].levelno == logging.DEBUG
    # systemd re-creates its socket after daemon-reexec: notifications resume.
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as again:
        again.bind(path)
        again.settimeout(5)
        assert notifier.watchdog() is True
        assert again.recv(4096) == b"WATCHDOG=1"
    notifier.close()


@pytest.mark.process
def test_a_real_process_matches_watchdog_pid(receiver: Tuple[socket.socket, str]) -> None:
    """The shell execs Python, so WATCHDOG_PID=$$ is the notifying process, as under systemd."""
    sock, path = receiver
    code = (
        "from rkserve.systemd import Notifier; n = Notifier.from_env(); "
        "n.ready(f'interval={n.watchdog_interval}'); n.close()"
    )
    env = dict(os.environ, NOTIFY_SOCKET=path, WATCHDOG_USEC="3000000", PYTHONPATH=str(REPO))
    script = f'WATCHDOG_PID=$$ exec "{sys.executable}" -c "{code}"'
    subprocess.run(["sh", "-c", script], env=env, check=True, timeout=60)
    assert sock.recv(4096) == b"READY=1\nSTATUS=interval=1.5"
    env["WATCHDOG_PID"] = "1"  # inherited from someone else: no watchdog for us
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)
    assert sock.recv(4096) == b"READY=1\nSTATUS=interval=None"
