"""What the benchmark scripts share: a daemon in a subprocess, fake model folders, test
images, latency statistics and the report's building blocks."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from tools.demo import shapes as demo
from tools.harness import Daemon, free_port

ROOT = Path(__file__).resolve().parents[1]

DEMO_MODELS = ROOT / "models"


@dataclass
class Target:
    """One goal of the brief and what this run measured against it."""

    name: str
    measured: str
    goal: str
    met: Optional[bool]  # None: not applicable here
    note: str = ""


@dataclass
class Section:
    title: str
    body: List[str] = field(default_factory=list)  # markdown lines
    targets: List[Target] = field(default_factory=list)
    figures: Dict[str, Any] = field(default_factory=dict)  # raw numbers for --json


class ServerProcess:
    """A comparison server (a script, or ``-m module``) in its own Python process, bound to a
    free loopback TCP port that is given as its last argument."""

    def __init__(self, *args: str) -> None:
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        self.proc = subprocess.Popen(
            [sys.executable, *args, self.endpoint],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            cwd=str(ROOT),
        )

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def rkserve_daemon(models: Path, *flags: str, source: Path = ROOT, name: str = "") -> Daemon:
    """The daemon for a benchmark: loopback TCP (what a board's clients use), warnings only,
    no metrics exporter; its folder (log, nothing else) beside ``models``. ``source``: the
    checkout whose code runs; ``name`` tells the folders of daemons run side by side apart."""
    quiet = ("--log-level", "warning", "--metrics-port", "0")
    folder = models.parent / f"{models.name}-daemon{name}"
    return Daemon(folder, models, *quiet, *flags, transport="tcp", source=source)


def busy_cpu_seconds() -> float:
    """CPU time all processes have used on this machine (``/proc/stat``; steal included)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def fake_model(root: Path, name: str, task: str, size: int, classes: int) -> Path:
    """A model folder the fake backend serves: ``classes`` labels, a square input."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "labels.txt").write_text("".join(f"class{i}\n" for i in range(classes)))
    (folder / "model.onnx").write_bytes(b"placeholder: the fake backend never reads it")
    (folder / "model.yaml").write_text(
        f"task: {task}\nlabels: labels.txt\ninput: {{size: {size}}}\n"
    )
    return folder


def demo_models() -> List[str]:
    """The demo models present in ``models/`` with an ONNX file (trained by someone)."""
    found = []
    for name in ("shapes", "shapes-seg"):
        if (DEMO_MODELS / name / "model.yaml").is_file() and any(
            (DEMO_MODELS / name).glob("*.onnx")
        ):
            found.append(name)
    return found


def demo_repository(work: Path, names: Sequence[str]) -> Path:
    """A model folder holding links to just these demo models (a half-written one beside
    them must not keep the daemon from being ready)."""
    folder = work / "demo-models"
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        if not (folder / name).exists():
            (folder / name).symlink_to(DEMO_MODELS / name, target_is_directory=True)
    return folder


def jpeg(folder: Path, width: int, height: int, task: str = "segmentation") -> Path:
    """A synthetic-shapes JPEG of exactly ``width`` x ``height`` (quality 90)."""
    (path,) = demo.write_samples(
        task, folder / f"{width}x{height}", 1, seed=11, size=(height, width)
    )
    return path


def median_ms(seconds: Sequence[float]) -> float:
    return statistics.median(seconds) * 1000.0


def time_calls(call: Callable[[], Any], count: int, warmup: int = 5) -> List[float]:
    """Seconds per call, ``count`` calls after ``warmup`` unmeasured ones."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(count):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return times


def best_ms(call: Callable[[], Any], repeat: int = 15) -> float:
    """The fastest of ``repeat`` calls: the least disturbed by other jobs on the machine."""
    return min(time_calls(call, repeat, warmup=2)) * 1000.0


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> List[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def ratio(value: float) -> str:
    return f"{value:.2f}x"


def main(run: Callable[[Path], Any]) -> None:
    """Run one benchmark alone: print its section, its target lines and how long it took."""
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        result = run(Path(tmp))
        print("\n".join(result.body))
        for target in getattr(result, "targets", []):
            print(target)
        print(f"({time.perf_counter() - started:.0f} s)")
