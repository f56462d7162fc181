"""12. Frigate: what its socket adds to a request, and two Frigates sharing the NPU.

Overhead: a 320x320 uint8 region sent as Frigate's plugin sends it (a REQ socket,
``[header_json, tensor]``, a 480-byte ``[20, 6]`` reply) against the same pixels as a
native ``tensor`` request (the Python client), one at a time, to a fake detector with no NPU
time: what remains is each door's own cost. Sharing: two Frigate processes (the plugin's
framing and its 200 ms timeout, back to back) and a native client at once, against a fake
NPU of 20 ms per inference: what each one gets of it.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence

import msgpack
import numpy as np
import zmq

from benchmarks.common import Section, best_ms, main, rkserve_daemon, table
from rkserve import frigate as wire
from rkserve import protocol
from rkserve.client import Client
from tools.harness import free_port

SIDE = 320
REQUESTS = 400  # per door, after a warm-up
NPU_MS = 20.0  # the shared run's fake inference time (a small YOLO on an RK3566 is ~20-40 ms)
SHARE_S = 10.0
TIMEOUT_MS = 200  # Frigate's request_timeout_ms default

FRIGATE_CLIENT = """
import json, sys, time
import numpy as np, zmq
endpoint, seconds, side, timeout = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
ctx = zmq.Context()
def socket():
    sock = ctx.socket(zmq.REQ)
    for option, value in ((zmq.RCVTIMEO, timeout), (zmq.SNDTIMEO, timeout), (zmq.LINGER, 0)):
        sock.setsockopt(option, value)
    sock.connect(endpoint)
    sock.send_multipart([json.dumps({"model_request": True, "model_name": "boxes.onnx"}).encode()])
    sock.setsockopt(zmq.RCVTIMEO, 30000)
    assert json.loads(sock.recv())["model_loaded"]
    sock.setsockopt(zmq.RCVTIMEO, timeout)
    return sock
sock = socket()
pixels = np.zeros((1, side, side, 3), np.uint8)
pixels[0, 40:200, 60:220] = 255
header = json.dumps({"shape": list(pixels.shape), "dtype": "uint8", "model_type": "yologeneric"}).encode()
times, timeouts, until = [], 0, time.monotonic() + seconds
while time.monotonic() < until:
    started = time.perf_counter()
    sock.send_multipart([header, pixels.tobytes()])
    try:
        reply = sock.recv()
    except zmq.Again:
        timeouts += 1
        sock.close()
        sock = socket()
        continue
    assert len(reply) == 480 and np.frombuffer(reply, np.float32)[1] > 0
    times.append(time.perf_counter() - started)
print(json.dumps({"times": times, "timeouts": timeouts}))
"""


def detector_folder(root: Path) -> Path:
    """A 320x320 detector of the fake backend (one box around the bright pixels)."""
    folder = root / "models" / "boxes"
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"placeholder: the fake backend never reads it")
    (folder / "model.yaml").write_text(
        f"task: detection\ninput: {{size: {SIDE}}}\noutput: {{format: yolo, classes: 4}}\n"
    )
    return folder.parent


def picture() -> np.ndarray:
    pixels = np.zeros((SIDE, SIDE, 3), np.uint8)
    pixels[40:200, 60:220] = 255
    return pixels


def frigate_socket(endpoint: str) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.RCVTIMEO, 5000)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    sock.send_multipart([json.dumps({"model_request": True, "model_name": "boxes.onnx"}).encode()])
    assert json.loads(sock.recv())["model_loaded"]
    return sock


def times_frigate(endpoint: str, count: int) -> List[float]:
    sock = frigate_socket(endpoint)
    tensor = picture()[None]
    header = json.dumps({"shape": list(tensor.shape), "dtype": "uint8"}).encode()
    found = []
    try:
        for index in range(count + 20):
            started = time.perf_counter()
            sock.send_multipart([header, tensor.tobytes()])
            reply = sock.recv()
            if index >= 20:
                found.append(time.perf_counter() - started)
            assert len(reply) == 480
    finally:
        sock.close()
    return found


def times_native(endpoint: str, count: int) -> List[float]:
    pixels = picture()
    found = []
    with Client(endpoint, timeout=5.0) as client:
        for index in range(count + 20):
            started = time.perf_counter()
            client.infer("boxes", pixels)
            if index >= 20:
                found.append(time.perf_counter() - started)
    return found


def ms(values: Sequence[float], q: float) -> float:
    return float(np.quantile(np.asarray(values), q)) * 1000.0 if values else float("nan")


def overhead(work: Path) -> Dict[str, Any]:
    frigate_endpoint = f"tcp://127.0.0.1:{free_port()}"  # the same transport as the native one
    daemon = rkserve_daemon(
        detector_folder(work / "overhead"), "--backend", "fake", "--frigate", frigate_endpoint
    )
    daemon.start()
    try:
        rounds: Dict[str, List[float]] = {"frigate": [], "native": []}
        for _ in range(8):  # interleaved, so that a busy spell of the machine hits both
            rounds["native"] += times_native(daemon.endpoint, REQUESTS // 8)
            rounds["frigate"] += times_frigate(frigate_endpoint, REQUESTS // 8)
    finally:
        daemon.stop()
    return rounds


def share(work: Path) -> Dict[str, Any]:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    daemon = rkserve_daemon(
        detector_folder(work / "share"),
        "--backend",
        "fake",
        "--fake-latency-ms",
        str(NPU_MS),
        "--frigate",
        endpoint,
    )
    daemon.start()
    try:
        args = [
            sys.executable,
            "-c",
            FRIGATE_CLIENT,
            endpoint,
            str(SHARE_S),
            str(SIDE),
            str(TIMEOUT_MS),
        ]
        frigates = [subprocess.Popen(args, stdout=subprocess.PIPE, text=True) for _ in range(2)]
        native = times_for(daemon.endpoint, SHARE_S)
        results = [json.loads(p.communicate(timeout=SHARE_S + 60)[0]) for p in frigates]
    finally:
        daemon.stop()
    return {
        "frigate 1": results[0],
        "frigate 2": results[1],
        "native": {"times": native, "timeouts": 0},
    }


def times_for(endpoint: str, seconds: float) -> List[float]:
    pixels = picture()
    found = []
    with Client(endpoint, timeout=5.0) as client:
        client.infer("boxes", pixels)
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            started = time.perf_counter()
            client.infer("boxes", pixels)
            found.append(time.perf_counter() - started)
    return found


def translation_ms() -> Dict[str, float]:
    """Each door's own work on one request and its reply, in-process, best of 200."""
    pixels = picture()
    header = json.dumps({"shape": [1, SIDE, SIDE, 3], "dtype": "uint8"}).encode()
    frames = [memoryview(header), memoryview(pixels[None].tobytes())]
    found = {
        "detections": [{"index": 1, "score": 0.9, "box": [40.0, 60.0, 200.0, 220.0]}],
        "width": SIDE,
        "height": SIDE,
    }
    message = msgpack.packb(
        {"v": 1, "id": 1, "op": "infer", "model": "boxes", "tensor": protocol.encode_tensor(pixels)}
    )
    timings = {stage: 1.0 for stage in protocol.STAGES}

    def frigate_door() -> None:
        parsed = wire.parse(frames)
        wire.to_pixels(wire.tensor(parsed), (SIDE, SIDE), "float", "rgb")
        wire.rows(found)

    def native_door() -> None:
        protocol.decode_request(message, 2**24)
        protocol.ok_reply(1, {"model": "boxes", "task": "detection", "result": found}, timings)

    return {
        name: best_ms(call, 200)
        for name, call in (("frigate", frigate_door), ("native", native_door))
    }


def run(work: Path) -> Section:
    section = Section("12. Frigate's zmq detector")
    load = os.getloadavg()[0]
    rounds = overhead(work)
    translation = translation_ms()
    p50 = {door: statistics.median(t) * 1000 for door, t in rounds.items()}
    section.body += [
        f"One {SIDE}x{SIDE} uint8 region at a time ({REQUESTS} each, interleaved in blocks "
        "of 50, both over loopback TCP), a fake detector with no NPU time: the cost of each "
        "door. Native: the Python client's `infer(model, pixels)` (msgpack, a DEALER); "
        "Frigate: a REQ socket sending what the plugin sends.",
        "",
        *table(
            ["door", "fastest ms", "p50 ms", "p90 ms", "p99 ms"],
            [
                [
                    door,
                    f"{ms(t, 0.0):.2f}",
                    f"{ms(t, 0.5):.2f}",
                    f"{ms(t, 0.9):.2f}",
                    f"{ms(t, 0.99):.2f}",
                ]
                for door, t in rounds.items()
            ],
        ),
        "",
        f"The Frigate door: {p50['frigate'] - p50['native']:+.2f} ms at the median, "
        f"{(min(rounds['frigate']) - min(rounds['native'])) * 1000:+.2f} ms fastest against fastest, "
        "against a native tensor request of the same pixels. The translation alone, in-process "
        "(best of 200): Frigate's frames to the detection task's image and its result to the "
        f"480-byte reply {translation['frigate']:.3f} ms; the msgpack request decoded and its "
        f"reply encoded {translation['native']:.3f} ms.",
        "",
    ]
    shared = share(work)
    rows = []
    total = sum(len(r["times"]) for r in shared.values())
    for name, result in shared.items():
        count = len(result["times"])
        rows.append(
            [
                name,
                f"{count / SHARE_S:.1f}",
                f"{100 * count / max(total, 1):.0f}%",
                f"{ms(result['times'], 0.5):.1f}",
                f"{ms(result['times'], 0.99):.1f}",
                str(result["timeouts"]),
            ]
        )
    section.body += [
        f"Two Frigate processes (the plugin's framing, {TIMEOUT_MS} ms timeout, back to back) "
        f"and a native client at once, {SHARE_S:.0f} s, a fake NPU of {NPU_MS:.0f} ms per "
        f"inference ({1000 / NPU_MS:.0f} inferences/s at most):",
        "",
        *table(["client", "answers/s", "share", "p50 ms", "p99 ms", "timeouts"], rows),
        "",
        f"Load average of this machine (2 cores, shared) when the section started: {load:.1f}, "
        f"when it ended: {os.getloadavg()[0]:.1f}.",
        "",
    ]
    section.figures = {
        "translation_ms": translation,
        "overhead_p50_ms": p50,
        "share": {
            k: {"answers": len(v["times"]), "timeouts": v["timeouts"]} for k, v in shared.items()
        },
    }
    return section


if __name__ == "__main__":
    main(run)
