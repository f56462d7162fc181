"""6. Against the server a user would write: a serial pyzmq loop around the same engine.

The baseline is the least a Python user would write to serve a model over ZeroMQ: one
ROUTER, one thread, ``engine.infer()`` (decode, preprocess, inference, postprocess) per
request, msgpack in and out (``SERIAL`` below, 20 lines). Both servers run the same
engine on the same model and image, and the same closed-loop clients (raw DEALER + msgpack,
one thread per concurrent request) measure both in interleaved rounds (rkserve, baseline,
rkserve, ...), so load from other work on the machine falls on both alike.

- **Concurrency 1, the demo classifier (ONNX) and a small JPEG**: what rkserve's hand-offs
  cost when there is nothing to overlap. Goal: p50 at most 0.25 ms above the baseline's,
  throughput >= 1.0x.
- **Concurrency 4 and 8, 1920x1080 JPEGs, a MobileNetV2-like model on the fake NPU
  (5.5 ms, the GIL released)**: what overlapping decode with inference buys. Goal: >= 1.5x
  the baseline's throughput.
"""

from __future__ import annotations

import statistics
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import msgpack
import zmq

from benchmarks.common import (
    ROOT,
    Section,
    ServerProcess,
    Target,
    demo_repository,
    fake_model,
    jpeg,
    main,
    ratio,
    rkserve_daemon,
    table,
)

SERIAL = """
import sys
from pathlib import Path

import msgpack, zmq
from rkserve import repository

models, name, backend, latency, endpoint = sys.argv[1:6]
options = {"latency_ms": float(latency)} if backend == "fake" else {}
engine = repository.open_engine(Path(models), name, backend=backend, **options)
sock = zmq.Context().socket(zmq.ROUTER)
sock.bind(endpoint)
while True:
    *envelope, payload = sock.recv_multipart()
    request = msgpack.unpackb(payload, raw=False)
    try:
        done = engine.infer(request["image"], request.get("params"))
        reply = {"id": request["id"], "ok": True, "result": done.result, "timing_ms": done.timings}
    except Exception as exc:
        reply = {"id": request["id"], "ok": False, "error": {"code": "internal", "message": str(exc)}}
    sock.send_multipart([*envelope, msgpack.packb(reply, use_bin_type=True)])
"""
ROUNDS = 4
SECONDS = 2.0  # measured per round and server
WARMUP_S = 0.5


def Serial(models: Path, name: str, backend: str, latency_ms: float) -> ServerProcess:
    """The baseline server in its own process, on a loopback TCP port."""
    return ServerProcess("-c", SERIAL, str(models), name, backend, str(latency_ms))


def closed_loop(
    endpoint: str, image: bytes, concurrency: int, seconds: float
) -> Tuple[float, List[float]]:
    """Requests/s and per-request seconds of ``concurrency`` clients, one request each in
    flight, for ``seconds`` (after ``WARMUP_S`` unmeasured)."""
    ctx = zmq.Context.instance()
    latencies: List[List[float]] = [[] for _ in range(concurrency)]
    start = time.perf_counter() + WARMUP_S
    stop = start + seconds

    def client(n: int) -> None:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        count = 0
        while True:
            message = {"v": 1, "id": count, "op": "infer", "model": "m", "image": image}
            sent = time.perf_counter()
            if sent >= stop:
                break
            sock.send_multipart([b"", msgpack.packb(message)])
            if not sock.poll(10000):
                raise RuntimeError(f"no reply from {endpoint} within 10 s")
            reply = msgpack.unpackb(sock.recv_multipart()[-1], raw=False)
            if not reply["ok"]:
                raise RuntimeError(f"{endpoint}: {reply['error']}")
            if sent >= start:
                latencies[n].append(time.perf_counter() - sent)
            count += 1
        sock.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    measured = [t for per in latencies for t in per]
    return len(measured) / seconds, measured


def compare(
    models: Path, backend: str, latency_ms: float, image: bytes, concurrency: int
) -> Dict[str, Any]:
    """Interleaved rounds of rkserve and the baseline on the same model ``m``."""
    flags = ["--backend", backend, "--fake-latency-ms", str(latency_ms)]
    daemon = rkserve_daemon(models, *flags).start(timeout=120.0)
    serial = Serial(models, "m", backend, latency_ms)
    found: Dict[str, Dict[str, List[float]]] = {
        "rkserve": {"rps": [], "lat": []},
        "serial": {"rps": [], "lat": []},
    }
    try:
        closed_loop(serial.endpoint, image, 1, 0.5)  # the baseline has loaded its model
        for _ in range(ROUNDS):
            for name, endpoint in (("rkserve", daemon.endpoint), ("serial", serial.endpoint)):
                rps, lat = closed_loop(endpoint, image, concurrency, SECONDS)
                found[name]["rps"].append(rps)
                found[name]["lat"] += lat
    finally:
        daemon.stop()
        serial.stop()
    return {
        name: {
            "rps": statistics.median(f["rps"]),
            "p50_ms": statistics.median(f["lat"]) * 1000,
            "p99_ms": sorted(f["lat"])[int(0.99 * (len(f["lat"]) - 1))] * 1000,
        }
        for name, f in found.items()
    }


def run(work: Path) -> Section:
    section = Section("6. Against a serial pyzmq server running the same engine")
    demo = demo_repository(work, ["shapes"])
    models = work / "baseline-models"
    models.mkdir()
    (models / "m").symlink_to(demo / "shapes", target_is_directory=True)
    small = (ROOT / "models" / "shapes" / "samples" / "000_square.jpg").read_bytes()
    rows, figures = [], {}
    one = compare(models, "onnx", 0.0, small, 1)
    figures["c1"] = one
    rows.append(_row("demo classifier (ONNX), small JPEG", 1, one))
    fake = work / "fake-models"
    fake_model(fake, "m", "classification", 224, 1000)
    frame = jpeg(work, 1920, 1080, "classification").read_bytes()
    for concurrency in (4, 8):
        many = compare(fake, "fake", 5.5, frame, concurrency)
        figures[f"c{concurrency}"] = many
        rows.append(_row("MobileNetV2-like (fake NPU 5.5 ms), 1080p JPEG", concurrency, many))
    section.body += [
        f"Interleaved rounds ({ROUNDS} x {SECONDS:.0f} s per server), the same closed-loop "
        "clients for both; *baseline*: the serial loop in `benchmarks/baseline.py`.",
        "",
        *table(
            [
                "model, image",
                "concurrency",
                "rkserve req/s",
                "baseline req/s",
                "throughput",
                "rkserve p50 ms",
                "baseline p50 ms",
                "p50 difference",
            ],
            rows,
        ),
    ]
    section.figures = figures
    section.targets = _targets(figures)
    return section


def _row(label: str, concurrency: int, r: Dict[str, Any]) -> List[Any]:
    ours, theirs = r["rkserve"], r["serial"]
    return [
        label,
        concurrency,
        f"{ours['rps']:.0f}",
        f"{theirs['rps']:.0f}",
        ratio(ours["rps"] / theirs["rps"]),
        f"{ours['p50_ms']:.2f}",
        f"{theirs['p50_ms']:.2f}",
        f"{ours['p50_ms'] - theirs['p50_ms']:+.2f} ms",
    ]


def _targets(figures: Dict[str, Any]) -> List[Target]:
    one = figures["c1"]
    extra = one["rkserve"]["p50_ms"] - one["serial"]["p50_ms"]
    speed = one["rkserve"]["rps"] / one["serial"]["rps"]
    best: Optional[float] = max(
        figures[k]["rkserve"]["rps"] / figures[k]["serial"]["rps"] for k in ("c4", "c8")
    )
    assert best is not None
    return [
        Target(
            "concurrency 1: p50 over the baseline", f"{extra:+.2f} ms", "<= +0.25 ms", extra <= 0.25
        ),
        Target("concurrency 1: throughput", ratio(speed), ">= 1.0x", speed >= 1.0),
        Target("concurrency 4-8, 1080p: throughput", ratio(best), ">= 1.5x", best >= 1.5),
    ]


if __name__ == "__main__":
    main(run)
