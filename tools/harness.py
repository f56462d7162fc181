"""The real daemon in a subprocess, for the tests and the benchmarks: start, wait, measure, stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from rkserve.client import Client
from rkserve.errors import RkserveError

ROOT = Path(__file__).resolve().parents[1]
DOUBLES = ROOT / "tests" / "doubles"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Daemon:
    """``rkserve serve`` in a subprocess: its endpoint (``ipc://`` in ``folder``, or a free
    loopback TCP port with ``transport="tcp"``), metrics on a free port, its log in
    ``folder/daemon.log``. Tests and benchmarks both start the daemon through this class."""

    def __init__(
        self,
        folder: Path,
        models: Path,
        *flags: str,
        env: Optional[Dict[str, str]] = None,
        transport: str = "ipc",
        source: Path = ROOT,
    ) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.source = source  # the checkout whose rkserve runs (another commit's, for an A/B)
        self.endpoint = (
            f"tcp://127.0.0.1:{free_port()}"
            if transport == "tcp"
            else f"ipc://{folder}/rkserve.sock"
        )
        self.metrics_port = free_port()
        self.log_path = folder / "daemon.log"
        self.args = [
            sys.executable,
            "-m",
            "rkserve",
            "serve",
            "--models-dir",
            str(models),
            "--endpoint",
            self.endpoint,
            "--metrics-host",
            "127.0.0.1",
            "--metrics-port",
            str(self.metrics_port),
            *flags,
        ]
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                [str(source), str(DOUBLES), os.environ.get("PYTHONPATH", "")]
            ),
            **(env or {}),
        }
        self.proc: Optional[subprocess.Popen] = None
        self.ready_after = 0.0  # seconds from start to serving

    def start(self, wait_ready: bool = True, timeout: float = 30.0) -> Daemon:
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - open for the process lifetime
        started = time.perf_counter()
        self.proc = subprocess.Popen(
            self.args,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=str(self.source),
        )
        if wait_ready:
            self.wait(lambda h: h["status"] == "serving", timeout)
            self.ready_after = time.perf_counter() - started
        return self

    def __enter__(self) -> Daemon:
        return self.start(timeout=120.0) if self.proc is None else self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def client(self, **kw: Any) -> Client:
        return Client(self.endpoint, **{"timeout": 10.0, **kw})

    def health(self) -> Dict[str, Any]:
        with self.client(timeout=2.0, retries=0) as c:
            return c.health()

    def wait(self, condition: Any, timeout: float = 30.0) -> Dict[str, Any]:
        until = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < until:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.log()}")
            try:
                last = self.health()
                if condition(last):
                    return last
            except RkserveError as exc:
                last = exc
            time.sleep(0.01)
        raise AssertionError(
            f"condition not met within {timeout} s; last health: {last}\n{self.log()}"
        )

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._log.close()
        return code

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def status(self) -> str:
        """``running``, or how it ended and the end of its log."""
        assert self.proc is not None
        if self.proc.poll() is None:
            return "the daemon is running"
        return f"the daemon exited with {self.proc.returncode}: {self.log()[-2000:]}"

    # what the process uses, from /proc ------------------------------------------------------
    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS in /proc/<pid>/status")

    def cpu_seconds(self) -> float:
        """User + system CPU time the daemon has used so far (all its threads)."""
        return sum(_stat(self.pid)[11:13]) / os.sysconf("SC_CLK_TCK")

    def minor_faults(self) -> int:
        """Page faults served without I/O so far: memory mapped in afresh."""
        return _stat(self.pid)[7]


def _stat(pid: int) -> List[int]:
    """``/proc/PID/stat``'s numeric fields after the command name (field 3 is index 0)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return [int(f) if f.lstrip("-").isdigit() else 0 for f in fields]


def fake_models(folder: Path, classes: List[str] = ("a", "b", "c", "d")) -> Path:  # type: ignore[assignment]
    """Two tiny models for the fake backend: a classifier and a segmenter."""
    for name, task, size in (("cls", "classification", 32), ("seg", "segmentation", 16)):
        model = folder / name
        model.mkdir(parents=True, exist_ok=True)
        (model / "labels.txt").write_text("\n".join(classes) + "\n")
        (model / "model.onnx").write_bytes(b"placeholder: the fake backend never reads it")
        (model / "model.yaml").write_text(
            f"task: {task}\nlabels: labels.txt\ninput: {{size: {size}}}\n"
        )
    return folder
