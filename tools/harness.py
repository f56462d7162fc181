"""Start the real daemon in a subprocess for a test, and stop it."""

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
    """``rkserve serve`` on an ipc:// endpoint in ``folder``, metrics on a free port."""

    def __init__(
        self, folder: Path, models: Path, *flags: str, env: Optional[Dict[str, str]] = None
    ) -> None:
        self.endpoint = f"ipc://{folder}/rkserve.sock"
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
                [str(ROOT), str(DOUBLES), os.environ.get("PYTHONPATH", "")]
            ),
            **(env or {}),
        }
        self.proc: Optional[subprocess.Popen] = None

    def start(self, wait_ready: bool = True, timeout: float = 30.0) -> Daemon:
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - open for the process lifetime
        self.proc = subprocess.Popen(
            self.args, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, cwd=str(ROOT)
        )
        if wait_ready:
            self.wait(lambda h: h["status"] == "serving", timeout)
        return self

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
            time.sleep(0.05)
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
