"""Three boards and a client on a virtual LAN: real daemons, real mDNS, real discovery.

Each board is a network namespace running ``rkserve serve`` (fake backend, a fixture board
tree for its SoC); a fourth namespace runs ``rkserve discover``, its file_sd writer and one
client. All of it on a bridge in a namespace of its own (tests/fleet/netlan.py): no packet
reaches any other network. Needs root; skips without it, fails in CI (CI=true).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest
import zmq.auth
from zmq.utils import z85

from rkserve import __version__
from rkserve.security import create_keys
from tests.boards import make_board
from tests.fleet.netlan import Lan, why_not
from tools.harness import fake_models

pytestmark = [pytest.mark.slow, pytest.mark.process]
ROOT = Path(__file__).resolve().parents[2]
CI = os.environ.get("CI") == "true"
SOCS = {"b1": "rk3568", "b2": "rk3568", "b3": "rk3566"}
PORT, METRICS = 5555, 9464
GONE_WITHIN_S = 5.0  # a board that stops leaves discovery and file_sd within this
START_WITHIN_S = 20.0  # start-up, first loading pass, mDNS probing and announcing


def missing(reason: str) -> None:
    """A tool or a privilege this machine lacks: a skip here, a failure in CI."""
    if CI:
        pytest.fail(f"{reason} (CI=true: a missing prerequisite fails the run)")
    pytest.skip(reason)


def env() -> Dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


class Fleet:
    """The LAN, a daemon per board, the file_sd writer and the client worker."""

    def __init__(self, lan: Lan, folder: Path) -> None:
        self.lan, self.folder = lan, folder
        self.daemons: Dict[str, subprocess.Popen] = {}
        self.sd_file = folder / "rkserve-targets.json"
        self.keys = create_keys(folder / "keys")  # (public, secret)

    def start(self, board: str, curve: bool = False) -> None:
        home = self.folder / board
        models = fake_models(home / "models")
        root = make_board(home, soc=SOCS[board])
        address = self.lan.addresses[board]
        argv = [sys.executable, "-m", "rkserve", "serve", "--backend", "fake"]
        argv += ["--models-dir", str(models), "--sysroot", str(root)]
        argv += ["--endpoint", f"tcp://{address}:{PORT}", "--announce-name", board]
        argv += ["--metrics-host", address, "--metrics-port", str(METRICS)]
        if curve:
            argv += ["--curve-secret-key", str(self.keys[1])]
        offset = len(self.log(board)) if (home / "daemon.log").exists() else 0
        with open(home / "daemon.log", "ab") as log:  # the child keeps its own descriptor
            self.daemons[board] = subprocess.Popen(
                self.lan.run_in(board, argv), stdout=log, stderr=subprocess.STDOUT, env=env()
            )
        self.wait_log(board, "announced ", START_WITHIN_S, offset)

    def log(self, board: str) -> str:
        return (self.folder / board / "daemon.log").read_text(errors="replace")

    def wait_log(self, board: str, text: str, timeout: float, offset: int = 0) -> None:
        """Wait for ``text`` in the board's log past ``offset`` (this run's lines)."""
        until = time.monotonic() + timeout
        while text not in self.log(board)[offset:]:
            proc = self.daemons[board]
            assert proc.poll() is None, f"{board} exited {proc.returncode}:\n{self.log(board)}"
            assert time.monotonic() < until, (
                f"{board}: no {text!r} in {timeout} s\n{self.log(board)}"
            )
            time.sleep(0.1)

    def stop(self, board: str) -> int:
        proc = self.daemons.pop(board)
        proc.send_signal(signal.SIGTERM)
        return proc.wait(20)

    def discover(self, *args: str) -> subprocess.CompletedProcess:
        argv = [sys.executable, "-m", "rkserve", "discover", *args]
        return subprocess.run(
            self.lan.run_in("client", argv), capture_output=True, text=True, env=env(), timeout=60
        )

    def targets(self) -> Optional[List[Dict[str, Any]]]:
        try:
            return json.loads(self.sd_file.read_text())
        except (OSError, ValueError):
            return None

    def wait_targets(self, count: int, timeout: float) -> float:
        """Seconds until the file_sd file lists ``count`` targets."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            found = self.targets()
            if found is not None and len(found) == count:
                return time.monotonic() - started
            time.sleep(0.05)
        raise AssertionError(f"file_sd did not reach {count} targets in {timeout} s: {found}")


class Worker:
    """tests/fleet/lanclient.py in the client namespace, one JSON answer per command."""

    def __init__(self, lan: Lan) -> None:
        argv = [sys.executable, str(Path(__file__).with_name("lanclient.py"))]
        self.proc = subprocess.Popen(
            lan.run_in("client", argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env(),
        )

    def ask(self, command: str) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()  # each command is bounded by its own timeouts
        assert line, f"the client worker exited ({self.proc.poll()})"
        return json.loads(line)

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        assert self.proc.stdout is not None
        self.proc.stdout.close()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    reason = why_not()
    if reason:
        missing(reason)
    try:
        import zeroconf  # noqa: F401
    except ImportError:
        missing("python-zeroconf is not installed (the dev extra has it)")
    lan = Lan([*SOCS, "client"]).up()
    fleet = Fleet(lan, tmp_path_factory.mktemp("fleet"))
    watcher: Optional[subprocess.Popen] = None
    try:
        for board in SOCS:
            fleet.start(board)
        argv = [sys.executable, "-m", "rkserve", "discover", "--prometheus-sd"]
        argv += [str(fleet.sd_file), "--duration", "600"]
        watcher = subprocess.Popen(lan.run_in("client", argv), stderr=subprocess.DEVNULL, env=env())
        yield fleet
    finally:
        if watcher is not None:
            watcher.send_signal(signal.SIGTERM)
            watcher.wait(20)
        for board in list(fleet.daemons):
            fleet.stop(board)
        lan.down()


@pytest.fixture(scope="module")
def worker(fleet: Fleet) -> Iterator[Worker]:
    worker = Worker(fleet.lan)
    yield worker
    worker.close()


def test_discover_lists_three_boards_with_their_records(fleet: Fleet) -> None:
    done = fleet.discover("--json", "--wait", "3")
    assert done.returncode == 0, done.stderr
    found = {b["name"]: b for b in json.loads(done.stdout)}
    assert sorted(found) == ["b1", "b2", "b3"]
    for name, board in found.items():
        assert board["address"] == fleet.lan.addresses[name]
        assert board["port"] == PORT and board["metrics_port"] == METRICS
        assert board["soc"] == SOCS[name]
        assert board["version"] == __version__
        assert board["curve"] is False and board["curve_key"] == ""
        assert board["models"] == ["cls", "seg"] and board["model_count"] == 2
        assert len(board["models_digest"]) == 16
        assert board["state"] == "serving"
    table = fleet.discover("--wait", "2", "--no-probe").stdout
    assert table.splitlines()[0].split() == [
        "NAME",
        "ADDRESS",
        "PORT",
        "SOC",
        "VERSION",
        "MODELS",
        "STATE",
    ]


def test_file_sd_lists_three_targets_prometheus_accepts(fleet: Fleet) -> None:
    fleet.wait_targets(3, START_WITHIN_S)
    groups = fleet.targets()
    assert groups == [
        {
            "targets": [f"{fleet.lan.addresses[b]}:{METRICS}"],
            "labels": {"board": b, "soc": SOCS[b], "version": __version__},
        }
        for b in sorted(SOCS)
    ]
    promtool = shutil.which("promtool")
    if promtool is None:
        missing("promtool not found (Debian package prometheus): file_sd format not checked")
    config = fleet.folder / "prometheus.yml"
    config.write_text(
        "scrape_configs:\n  - job_name: rkserve\n    file_sd_configs:\n"
        f"      - files: ['{fleet.sd_file}']\n"
    )
    checked = subprocess.run(
        [promtool, "check", "config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout + checked.stderr


def test_the_cli_takes_dnssd_in_place_of_endpoints(fleet: Fleet) -> None:
    argv = [sys.executable, "-m", "rkserve", "models", "-e", "dnssd:", "--json"]
    done = subprocess.run(
        fleet.lan.run_in("client", argv), capture_output=True, text=True, env=env(), timeout=60
    )
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)  # every board found, each asked on its own
    assert len(shown) == 3 and len({entry["endpoint"] for entry in shown}) == 3
    assert all(sorted(m["name"] for m in entry["models"]) == ["cls", "seg"] for entry in shown)


def test_one_client_spreads_requests_over_the_three(worker: Worker) -> None:
    assert worker.ask("wait 3 10") == ["b1", "b2", "b3"]
    before = worker.ask("scrape")
    assert worker.ask("send 60") == {"ok": 60, "errors": []}
    after = worker.ask("scrape")
    served = {b: after[b] - before.get(b, 0.0) for b in after}
    assert sum(served.values()) == 60
    # DEALER round-robins over connected peers: 20 each, give or take a retry
    assert all(count >= 10 for count in served.values()), served


def test_a_board_that_stops_leaves_and_one_that_starts_comes(fleet: Fleet, worker: Worker) -> None:
    fleet.wait_targets(3, START_WITHIN_S)
    stopped = time.monotonic()
    assert fleet.stop("b3") == 0  # SIGTERM: goodbye packets, then the drain
    fleet.wait_targets(2, GONE_WITHIN_S)
    gone_after = time.monotonic() - stopped
    listed = json.loads(fleet.discover("--json", "--wait", "3").stdout)
    assert sorted(b["name"] for b in listed) == ["b1", "b2"]
    assert worker.ask("send 30") == {"ok": 30, "errors": []}
    assert not any(fleet.lan.addresses["b3"] in e for e in worker.ask("boards"))

    started = time.monotonic()
    fleet.start("b3")
    fleet.wait_targets(3, START_WITHIN_S)
    back_after = time.monotonic() - started
    assert worker.ask("wait 3 10") == ["b1", "b2", "b3"]
    assert f"tcp://{fleet.lan.addresses['b3']}:{PORT}" in worker.ask("boards")
    worker.ask("send 30")
    assert worker.ask("scrape")["b3"] > 0  # the restarted board serves the same client
    print(f"\nfile_sd: gone {gone_after:.2f} s after SIGTERM; back {back_after:.2f} s after start")


def test_a_curve_board_announces_its_key_fingerprint(fleet: Fleet, worker: Worker) -> None:
    fleet.stop("b3")
    fleet.start("b3", curve=True)
    public, _ = zmq.auth.load_certificate(str(fleet.keys[0]))
    expected = hashlib.sha256(z85.decode(public)).hexdigest()[:16]  # independent of rkserve
    done = fleet.discover("--json", "--wait", "3")
    listed = {b["name"]: b for b in json.loads(done.stdout)}
    assert "b3" in listed, f"{done.stdout}\n{done.stderr}\n{fleet.log('b3')}"
    assert listed["b3"]["curve"] is True and listed["b3"]["curve_key"] == expected
    assert listed["b3"]["state"] == "curve (not probed)"
    # a client without CURVE keys leaves the CURVE board out rather than fail its handshake
    assert worker.ask("send 10") == {"ok": 10, "errors": []}
    assert not any(fleet.lan.addresses["b3"] in e for e in worker.ask("boards"))
