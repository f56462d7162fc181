"""9. CPU per request: what the daemon spends beyond the work itself.

The daemon serves the demo classifier (``models/shapes``, 96x96 input) on the fake backend
with no simulated NPU time, so every CPU second it spends is decoding, resizing, its own
Python and its transport. Its CPU time per request (all threads, from ``/proc/<pid>/stat``)
is set against the *bare work*: decode, resize to 96x96, BGR→RGB in a tight loop in one
thread of this process (OpenCV single-threaded), the least any server must spend.

Rounds alternate bare work and daemon for each image, so other jobs on the machine fall on
both alike; CPU-time ratios are robust to that load, wall-clock times are not. Per-thread
CPU (``/proc/<pid>/task/*/schedstat``) says where the rest goes. At concurrency 1 the same
rounds measure the serial server of section 6 and the two minimal servers of
:mod:`benchmarks.minimal` (the bare work between a receive and a send, in one thread or
handed to a second): what a server of either shape spends with none of the daemon's work.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import cv2
import msgpack
import numpy as np
import zmq

from benchmarks.baseline import Serial
from benchmarks.common import (
    ROOT,
    Section,
    ServerProcess,
    Target,
    demo_repository,
    jpeg,
    main,
    ratio,
    rkserve_daemon,
    table,
)

ROUNDS = 5
CPU_SECONDS = 0.6  # daemon CPU per round and image: 60 clock ticks or more
SIZE = (96, 96)  # the demo classifier's input (height, width)
TICK = os.sysconf("SC_CLK_TCK")


def images(work: Path) -> Dict[str, bytes]:
    return {
        "1920x1080": jpeg(work, 1920, 1080, "classification").read_bytes(),
        "640x480": jpeg(work, 640, 480, "classification").read_bytes(),
        "160x161": (ROOT / "models" / "shapes" / "samples" / "000_square.jpg").read_bytes(),
    }


def bare(data: bytes) -> np.ndarray:
    """The irreducible work: decode, resize to the model input, BGR→RGB."""
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    small = cv2.resize(bgr, (SIZE[1], SIZE[0]), interpolation=cv2.INTER_LINEAR)
    return cv2.cvtColor(small, cv2.COLOR_BGR2RGB)


def bare_cpu_ms(data: bytes, count: int) -> float:
    """CPU ms per bare call, this process's time (no other thread of it is busy)."""
    bare(data)
    before = os.times()
    for _ in range(count):
        bare(data)
    after = os.times()
    return (after.user + after.system - before.user - before.system) * 1000.0 / count


def process_cpu(pid: int) -> float:
    """Seconds of CPU a process used, every thread (dead ones too), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def thread_cpu(pid: int) -> Dict[str, float]:
    """Seconds of CPU per thread name (threads of one name summed), nanosecond clock."""
    found: Dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            ns = int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError):
            continue  # the thread ended
        key = _family(name)
        found[key] = found.get(key, 0.0) + ns / 1e9
    return found


def _family(name: str) -> str:
    """``cpu_0``..``cpu_3`` → ``cpu``; OpenCV's pool threads carry the process name."""
    return name.rstrip("0123456789").rstrip("_-") or name


def load(
    endpoint: str,
    data: bytes,
    concurrency: int,
    count: int,
    timeout_ms: int = 10000,
    model: str = "shapes",
) -> float:
    """Send ``count`` requests from ``concurrency`` closed-loop clients; seconds taken."""
    ctx = zmq.Context.instance()
    per = max(1, count // concurrency)
    message = msgpack.packb({"v": 1, "id": 0, "op": "infer", "model": model, "image": data})

    def client() -> None:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        for _ in range(per):
            sock.send_multipart([b"", message])
            if not sock.poll(timeout_ms):
                raise RuntimeError(f"no reply from {endpoint} within {timeout_ms} ms")
            reply = msgpack.unpackb(sock.recv_multipart()[-1], raw=False)
            if not reply["ok"]:
                raise RuntimeError(f"{endpoint}: {reply['error']}")
        sock.close()

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


SHAPES = ("one", "two")  # the minimal servers


def measure(
    models: Path, pictures: Dict[str, bytes], concurrencies: Tuple[int, ...], flags: List[str]
) -> Dict[str, Any]:
    """Interleaved rounds: per image and concurrency, bare work then the daemon."""
    daemon = rkserve_daemon(models, "--backend", "fake", *flags).start(timeout=120.0)
    serial = Serial(models, "shapes", "fake", 0.0)
    minimal = {shape: ServerProcess("-m", "benchmarks.minimal", shape) for shape in SHAPES}
    pid = daemon.pid
    found: Dict[str, Any] = {}
    try:
        for data in pictures.values():
            load(daemon.endpoint, data, 1, 20)  # warm: heaps grown, code paths taken
            load(serial.endpoint, data, 1, 20, timeout_ms=60000)
            for server in minimal.values():
                load(server.endpoint, data, 1, 20, timeout_ms=60000)
        counts = {name: _count(bare_cpu_ms(data, 20)) for name, data in pictures.items()}
        for _ in range(ROUNDS):
            for name, data in pictures.items():
                count = counts[name]
                for conc in concurrencies:
                    entry = found.setdefault(f"{name}/c{conc}", _empty())
                    entry["bare"].append(bare_cpu_ms(data, count))
                    before, threads = process_cpu(pid), thread_cpu(pid)
                    seconds = load(daemon.endpoint, data, conc, count)
                    sent = max(1, count // conc) * conc
                    entry["daemon"].append((process_cpu(pid) - before) * 1000.0 / sent)
                    entry["rps"].append(sent / seconds)
                    after = thread_cpu(pid)
                    for key, value in after.items():
                        share = (value - threads.get(key, 0.0)) * 1000.0 / sent
                        entry["threads"].setdefault(key, []).append(share)
                    if conc == 1:
                        entry["serial"].append(
                            _served_ms(serial.proc.pid, serial.endpoint, data, count)
                        )
                        for shape, server in minimal.items():
                            entry[shape].append(
                                _served_ms(server.proc.pid, server.endpoint, data, count)
                            )
    finally:
        daemon.stop()
        serial.stop()
        for server in minimal.values():
            server.stop()
    return found


def _served_ms(pid: int, endpoint: str, data: bytes, count: int) -> float:
    """CPU ms per request of the server ``pid`` for ``count`` requests at concurrency 1."""
    before = process_cpu(pid)
    load(endpoint, data, 1, count)
    return (process_cpu(pid) - before) * 1000.0 / count


def _count(bare_ms: float) -> int:
    """Requests per round: enough daemon CPU to read it off /proc's 10 ms clock."""
    return int(max(200, min(4000, CPU_SECONDS * 1000.0 / max(bare_ms, 0.05) / 2)))


def _empty() -> Dict[str, Any]:
    return {"bare": [], "daemon": [], "rps": [], "threads": {}, "serial": [], "one": [], "two": []}


def summarise(found: Dict[str, Any]) -> Dict[str, Any]:
    """Medians; every server's ratio is the median of its rounds' ratios, each over the
    bare work of the same round (the machine's pace drifts between rounds)."""
    out = {}
    for key, entry in found.items():
        ratios = _ratios(entry["daemon"], entry["bare"])
        out[key] = {
            "bare_ms": statistics.median(entry["bare"]),
            "daemon_ms": statistics.median(entry["daemon"]),
            "ratio": statistics.median(ratios),
            "ratios": ratios,
            "rps": statistics.median(entry["rps"]),
            "threads": {k: statistics.median(v) for k, v in entry["threads"].items()},
        }
        for server in ("serial", *SHAPES):
            if entry[server]:
                out[key][f"{server}_ms"] = statistics.median(entry[server])
                out[key][server] = statistics.median(_ratios(entry[server], entry["bare"]))
    return out


def _ratios(spent: List[float], bare: List[float]) -> List[float]:
    return [s / b for s, b in zip(spent, bare)]


def run(work: Path) -> Section:
    section = Section("9. CPU per request against the bare work")
    cv2.setNumThreads(1)  # the bare work runs in one thread
    models = demo_repository(work, ["shapes"])
    pictures = images(work)
    load1 = os.getloadavg()[0]
    figures = summarise(measure(models, pictures, (1, 4, 8), ["--fake-latency-ms", "0"]))
    load2 = os.getloadavg()[0]
    rows = []
    for key, f in figures.items():
        threads = ", ".join(
            f"{k} {v:.2f}"
            for k, v in sorted(f["threads"].items(), key=lambda kv: -kv[1])
            if v >= 0.01
        )
        rows.append(
            [
                key.replace("/c", ", c="),
                f"{f['bare_ms']:.2f}",
                f"{f['daemon_ms']:.2f}",
                ratio(f["ratio"]),
                " / ".join(f"{r:.2f}" for r in f["ratios"]),
                f"{f['serial_ms']:.2f} ({ratio(f['serial'])})" if "serial" in f else "",
                " / ".join(ratio(f[shape]) for shape in SHAPES if shape in f),
                f"{f['rps']:.0f}",
                threads,
            ]
        )
    section.body += [
        f"The demo classifier on the fake backend (no NPU time); {ROUNDS} interleaved rounds "
        "per image and concurrency; medians. Load average "
        f"{load1:.1f} at the start and {load2:.1f} at the end, on {os.cpu_count()} cores.",
        "",
        *table(
            [
                "image, concurrency",
                "bare work CPU ms",
                "daemon CPU ms / request",
                "ratio",
                "ratio per round",
                "serial server CPU ms (x bare)",
                "minimal server, one thread / two (x bare)",
                "req/s",
                "daemon CPU ms / request by thread",
            ],
            rows,
        ),
    ]
    section.figures = figures
    section.targets = _targets(figures)
    return section


def _targets(figures: Dict[str, Any]) -> List[Target]:
    targets = []
    for conc in (1, 4):
        for name, goal in (("1920x1080", 1.15), ("640x480", 1.15), ("160x161", 2.0)):
            value = figures[f"{name}/c{conc}"]["ratio"]
            targets.append(
                Target(
                    f"daemon CPU per request, {name} JPEG, concurrency {conc}",
                    f"{ratio(value)} the bare work",
                    f"<= {goal}x",
                    value <= goal,
                )
            )
    return targets


if __name__ == "__main__":
    main(run)
