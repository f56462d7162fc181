"""A day of running, compressed: does anything grow while the daemon serves?

The real daemon (``rkserve serve`` in a subprocess) serves the three demo models and a
``task: tensor`` model while, for ``--minutes``:

- two clients send requests of every task in turn (classification, segmentation with a PNG
  mask and with an overlay, detection, raw tensors), each waiting for its reply;
- every ``--reload-s`` one model's labels are rewritten and the daemon gets SIGHUP (0: never);
- a client sends a request every second and never reads a reply;
- every second a client connects, sends a segmentation request and closes at once.

Every ``--sample-s`` it reads the daemon's RSS, open descriptors and threads from
``/proc/PID`` and the p99 latency of the replies since the last sample, and prints a line.
The summary gives each series' least-squares slope per hour over the samples after the
first fifth (the warm-up), and how long a board would run before that slope adds 1 MB::

    python -m benchmarks.soak --backend onnx --minutes 30 --json soak-onnx.json
    python -m benchmarks.soak --backend rknnlite --minutes 30 --json soak-board.json

``rknnlite`` runs the daemon on the emulated RK3568 (tests/emulated) through the real
rknn-toolkit-lite2 wheel; the stand-in runtime replays the ONNX twin's outputs, recorded
first for every input the mix sends. There the daemon is the ``qemu-aarch64-static``
process: its RSS is the guest's memory plus qemu's own. ``--requests N`` stops after N
replies instead; ``--mix tensor --calm`` sends only tensor requests, with no reloads and
no misbehaving clients (what the garbage-guard measurement of RELIABILITY.md runs).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import yaml
import zmq

from rkserve import protocol
from rkserve.client import Client
from rkserve.errors import RkserveError
from tests import emuboard
from tools.harness import Daemon

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
LITE2 = "2.3.0"  # the seed board's release
SAMPLES = 3  # images per demo model
MB = 1024 * 1024
KINDS = ("classification", "segmentation", "overlay", "detection", "tensor")
TENSOR_MODEL = "shapes-tensor"  # the classifier's files served as task: tensor

Request = Callable[[Client], Any]


@dataclass
class Sample:
    t: float  # seconds since the mix started
    rss_mb: float
    fds: int
    threads: int
    p99_ms: float
    replies: int  # replies in the window
    errors: int  # error replies in the window


@dataclass
class Log:
    """What the clients saw: (when, latency) of each reply, error codes, chaos counts."""

    latencies: List[float] = field(default_factory=list)
    errors: Dict[str, int] = field(default_factory=dict)
    counts: Dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, name: str, n: int = 1) -> None:
        with self.lock:
            self.counts[name] = self.counts.get(name, 0) + n

    def error(self, code: str) -> None:
        with self.lock:
            self.errors[code] = self.errors.get(code, 0) + 1

    def take(self) -> List[float]:
        with self.lock:
            taken, self.latencies = self.latencies, []
        return taken


# ------------------------------------------------------------------------- the repository


def repository(work: Path, backend: str) -> Path:
    """The demo models and the classifier again as a tensor model, copied under ``work``."""
    models = work / "models"
    for name in ("shapes", "shapes-seg", "shapes-det"):
        shutil.copytree(MODELS / name, models / name, ignore=shutil.ignore_patterns("calib"))
    tensor = models / TENSOR_MODEL
    tensor.mkdir()
    for name in ("model.onnx", "model.rknn"):
        os.link(models / "shapes" / name, tensor / name)
    spec: Dict[str, Any] = {"task": "tensor", "onnx": {"file": "model.onnx"}}
    if backend == "rknnlite":
        spec["rknn"] = {"file": "model.rknn"}
    (tensor / "model.yaml").write_text(yaml.safe_dump(spec), encoding="utf-8")
    return models


def samples(model: str) -> List[Path]:
    return sorted((MODELS / model / "samples").glob("*.jpg"))[:SAMPLES]


def image_requests(kinds: Sequence[str]) -> List[Request]:
    """One request per sample image and kind, for the models of ``kinds``."""
    plan: Dict[str, Tuple[str, Dict[str, Any]]] = {
        "classification": ("shapes", {"top_k": 3}),
        "segmentation": ("shapes-seg", {"mask": "png"}),
        "overlay": ("shapes-seg", {"mask": "none", "overlay": True}),
        "detection": ("shapes-det", {}),
    }
    requests: List[Request] = []
    for kind in kinds:
        if kind not in plan:
            continue
        model, params = plan[kind]
        for path in samples(model):
            requests.append(_image_request(model, path.read_bytes(), params))
    return requests


def _image_request(model: str, image: bytes, params: Dict[str, Any]) -> Request:
    return lambda client: client.infer(model, image, **params)


def tensor_requests(tensors: Sequence[np.ndarray]) -> List[Request]:
    return [_tensor_request(t) for t in tensors]


def _tensor_request(tensor: np.ndarray) -> Request:
    return lambda client: client.infer_tensors(TENSOR_MODEL, [tensor])


def onnx_tensors() -> List[np.ndarray]:
    """Inputs of the classifier's ONNX twin: float32 NCHW, normalised like an image."""
    rng = np.random.default_rng(0)
    return [rng.uniform(-1, 1, (1, 3, 96, 96)).astype(np.float32) for _ in range(SAMPLES)]


# ------------------------------------------------------------------------- the daemon


def board_daemon(work: Path, models: Path, flags: Sequence[str]) -> Tuple[Daemon, List[Any]]:
    """The daemon on the emulated RK3568, with the twin's outputs recorded for every input
    the mix sends; returns it and the tensor requests' inputs (the board's own)."""
    rk3568 = emuboard.board("rk3568")
    records, tensors = work / "records", []
    for model in ("shapes", "shapes-seg", "shapes-det"):
        inputs = emuboard.board_inputs(rk3568, LITE2, MODELS / model, samples(model), work)
        emuboard.record_twin(records, MODELS / model, inputs, samples(model), {})
        if model == "shapes":
            tensors = [inputs[p.name] for p in samples(model)]
    daemon = Daemon(work, models, "--backend", "rknnlite", *flags)
    emuboard.on_board(daemon, rk3568, LITE2, RKNN_STANDIN_DIR=str(records))
    return daemon, tensors


def proc_figures(pid: int) -> Tuple[float, int, int]:
    """RSS (MB), open descriptors and threads of process ``pid``."""
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    rss = int(fields["VmRSS"].split()[0]) / 1024
    return rss, len(os.listdir(f"/proc/{pid}/fd")), int(fields["Threads"])


# ------------------------------------------------------------------------- the load


def worker(endpoint: str, requests: List[Request], log: Log, stop: threading.Event, n: int):  # type: ignore[no-untyped-def]
    """A client that sends the mix in turn, each request once its reply is in."""
    with Client(endpoint, timeout=120.0, retries=0) as client:
        turn = n
        while not stop.is_set():
            request = requests[turn % len(requests)]
            turn += 1
            started = time.perf_counter()
            try:
                request(client)
            except RkserveError as exc:
                log.error(exc.code)
                continue
            with log.lock:
                log.latencies.append(time.perf_counter() - started)


def reloader(daemon: Daemon, models: Path, every: float, log: Log, stop: threading.Event):  # type: ignore[no-untyped-def]
    """Every ``every`` seconds one model's labels change (in turn), then SIGHUP."""
    names = ["shapes", "shapes-seg", "shapes-det"]
    turn = 0
    while not stop.wait(every):
        labels = models / names[turn % len(names)] / "labels.txt"
        stamp = time.time_ns() + 1_000_000_000
        os.utime(labels, ns=(stamp, stamp))  # same labels, new mtime: the model reloads
        daemon.signal(signal.SIGHUP)
        log.count("reloads")
        turn += 1


def stalled(endpoint: str, request: Dict[str, Any], log: Log, stop: threading.Event):  # type: ignore[no-untyped-def]
    """A client that sends a request every second and never reads a reply."""
    sock: zmq.Socket = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 4)
    sock.connect(endpoint)
    try:
        while not stop.wait(1.0):
            try:
                sock.send(protocol.encode(request), zmq.NOBLOCK)
                log.count("unread requests")
            except zmq.Again:
                log.count("unread requests refused by zmq")
    finally:
        sock.close()


def quitter(endpoint: str, request: Dict[str, Any], log: Log, stop: threading.Event):  # type: ignore[no-untyped-def]
    """Every second a client connects, sends a request and closes before the reply."""
    context: zmq.Context = zmq.Context.instance()
    while not stop.wait(1.0):
        sock = context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 100)  # long enough for the request to leave
        sock.connect(endpoint)
        sock.send(protocol.encode(request))
        time.sleep(0.05)
        sock.close()
        log.count("requests abandoned")


# ------------------------------------------------------------------------- the run


def run(backend: str, minutes: float, work: Path, options: argparse.Namespace) -> Dict[str, Any]:
    models = repository(work, backend)
    flags = ["--workers", "2", *options.serve_flag]
    if backend == "rknnlite":
        daemon, tensors = board_daemon(work, models, flags)
    else:
        daemon, tensors = Daemon(work, models, "--backend", backend, *flags), onnx_tensors()
    kinds = options.mix.split(",")
    requests = image_requests(kinds) + (tensor_requests(tensors) if "tensor" in kinds else [])
    daemon.start(timeout=300)
    try:
        return _soak(daemon, models, requests, minutes, options)
    finally:
        code = daemon.stop(timeout=60)
        print(f"daemon stopped with {code}", file=sys.stderr)


def _soak(
    daemon: Daemon,
    models: Path,
    requests: List[Request],
    minutes: float,
    options: argparse.Namespace,
) -> Dict[str, Any]:
    assert daemon.proc is not None
    log, stop = Log(), threading.Event()
    seg = samples("shapes-seg")[0].read_bytes()
    slow = {"v": 1, "id": "x", "op": "infer", "model": "shapes-seg", "image": seg}
    threads = [
        threading.Thread(target=worker, args=(daemon.endpoint, requests, log, stop, n))
        for n in range(options.clients)
    ]
    if not options.calm:
        threads += [
            threading.Thread(target=stalled, args=(daemon.endpoint, slow, log, stop)),
            threading.Thread(target=quitter, args=(daemon.endpoint, slow, log, stop)),
        ]
    if not options.calm and options.reload_s > 0:
        reloads = (daemon, models, options.reload_s, log, stop)
        threads.append(threading.Thread(target=reloader, args=reloads))
    for thread in threads:
        thread.start()
    try:
        series = _sample(daemon.proc.pid, log, minutes, options)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    return {"samples": [asdict(s) for s in series], "summary": summary(series, log)}


def _sample(pid: int, log: Log, minutes: float, options: argparse.Namespace) -> List[Sample]:
    started = time.monotonic()
    series: List[Sample] = []
    replies = 0
    while True:
        time.sleep(options.sample_s)
        window = log.take()
        replies += len(window)
        rss, fds, threads = proc_figures(pid)
        p99 = float(np.percentile(window, 99)) * 1000 if window else float("nan")
        errors = sum(log.errors.values())
        sample = Sample(time.monotonic() - started, rss, fds, threads, p99, len(window), errors)
        series.append(sample)
        print(
            f"{sample.t:7.0f} s  rss {rss:7.1f} MB  fds {fds:3d}  threads {threads:3d}  "
            f"p99 {p99:7.1f} ms  replies {replies}",
            flush=True,
        )
        done = options.requests and replies >= options.requests
        if done or time.monotonic() - started >= minutes * 60:
            return series


def slope_per_hour(times: Sequence[float], values: Sequence[float]) -> float:
    """Least-squares slope of ``values`` over ``times`` (seconds), per hour."""
    t, v = np.asarray(times, float), np.asarray(values, float)
    keep = np.isfinite(v)
    if keep.sum() < 2:
        return float("nan")
    return float(np.polyfit(t[keep], v[keep], 1)[0] * 3600)


def summary(series: List[Sample], log: Log) -> Dict[str, Any]:
    """First/last values and slopes per hour after the warm-up (the first fifth)."""
    settled = series[len(series) // 5 :] if len(series) >= 5 else series
    times = [s.t for s in settled]
    out: Dict[str, Any] = {
        "seconds": series[-1].t,
        "replies": sum(s.replies for s in series),
        "errors": dict(log.errors),
        "counts": dict(log.counts),
    }
    for name in ("rss_mb", "fds", "threads", "p99_ms"):
        values = [getattr(s, name) for s in settled]
        out[name] = {
            "first": getattr(series[0], name),
            "settled": values[0],
            "last": values[-1],
            "max": max(getattr(s, name) for s in series),
            "slope_per_hour": slope_per_hour(times, values),
        }
    rss_slope = out["rss_mb"]["slope_per_hour"]
    out["hours_per_mb"] = (1 / rss_slope) if rss_slope > 0 else float("inf")
    return out


def parse(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("onnx", "rknnlite", "fake"), default="onnx")
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--requests", type=int, default=0, help="stop after this many replies")
    parser.add_argument("--sample-s", type=float, default=30.0)
    parser.add_argument("--reload-s", type=float, default=60.0, help="0: no reloads")
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--mix", default=",".join(KINDS), help=f"of {', '.join(KINDS)}")
    parser.add_argument("--calm", action="store_true", help="no reloads, no bad clients")
    parser.add_argument(
        "--serve-flag", action="append", default=[], help="a flag for rkserve serve (repeatable)"
    )
    parser.add_argument("--json", type=Path, help="write the samples and the summary here")
    parser.add_argument("--work", type=Path, help="keep the run's files here (default: a temp dir)")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    options = parse(argv)
    work = options.work or Path(tempfile.mkdtemp(prefix="rkserve-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    result = run(options.backend, options.minutes, work, options)
    result["options"] = {k: str(v) for k, v in vars(options).items()}
    print(json.dumps(result["summary"], indent=2))
    if options.json:
        options.json.write_text(json.dumps(result, indent=1), encoding="utf-8")
    if options.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
