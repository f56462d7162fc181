"""The real daemon in a subprocess, talked to by the real client and by bare sockets."""

from __future__ import annotations

import shutil
import signal
import threading
import time
import urllib.request

import cv2
import msgpack
import numpy as np
import pytest
import zmq

from rkserve import repository
from rkserve.errors import BadImage, DeadlineExceeded, Overloaded, UnknownModel
from rkserve.protocol import STAGES
from tests.helpers import MODELS, shared, write_model
from tools.harness import Daemon, fake_models

pytestmark = pytest.mark.process  # every test here starts a process

RNG = np.random.default_rng(7)


def jpeg(height: int = 48, width: int = 64, seed: int = 0) -> bytes:
    image = np.random.default_rng(seed).integers(0, 255, (height, width, 3), np.uint8)
    return cv2.imencode(".jpg", image)[1].tobytes()


@pytest.fixture
def models(tmp_path):
    return fake_models(tmp_path / "models")


@pytest.fixture
def daemon(tmp_path, models):
    d = Daemon(tmp_path, models, "--backend", "fake", "--max-message-mb", "1").start()
    yield d
    assert d.stop() == 0, d.log()


def test_round_trips_match_the_in_process_engine(daemon, models):
    with daemon.client() as client:
        for seed in range(3):
            image = jpeg(seed=seed)
            local = repository.open_engine(models, "cls", backend="fake").infer(image, {"top_k": 3})
            remote = client.classify("cls", image, top_k=3)
            assert remote.result == local.result and remote.task == "classification"
            assert set(remote.timings) == set(STAGES)
        seg = repository.open_engine(models, "seg", backend="fake")
        image = jpeg(seed=9)
        for mask in ("png", "raw"):
            remote = client.segment("seg", image, mask=mask, overlay=True)
            assert remote.result == seg.infer(image, {"mask": mask, "overlay": True}).result
        tensor = np.random.default_rng(3).integers(0, 255, (20, 30, 3), np.uint8)
        assert (
            client.infer("cls", tensor).result
            == repository.open_engine(models, "cls", backend="fake").infer(tensor).result
        )


def test_models_and_health(daemon):
    with daemon.client() as client:
        health = client.health()
        assert health["live"] and health["ready"] and health["status"] == "serving"
        assert health["models"]["cls"] == {"ready": True, "state": "ready", "error": None}
        models = {m["name"]: m for m in client.models()}
    assert models["cls"]["task"] == "classification" and models["cls"]["input_shape"] == [32, 32, 3]
    assert models["seg"]["labels"] == 4 and models["seg"]["backend"] == "fake"


def test_sixteen_clients_each_request_answered_exactly_once(daemon):
    answered = {}
    errors = []

    def worker(n: int) -> None:
        # generous timeout: on a loaded 2-core machine a reply may take seconds
        with daemon.client(timeout=60, retries=0) as client:
            for i in range(200):
                tensor = np.full((16, 16, 3), (n * 200 + i) % 251, np.uint8)
                try:
                    reply = client.infer("cls", tensor, deadline_ms=60000)
                    answered.setdefault(reply.id, 0)
                    answered[reply.id] += 1
                except Exception as exc:  # collected, asserted below
                    errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    overloaded = [e for e in errors if isinstance(e, Overloaded)]
    assert not [e for e in errors if not isinstance(e, Overloaded)]
    assert len(answered) + len(overloaded) == 3200 and set(answered.values()) == {1}
    counts = scrape(daemon)
    assert counts[("cls", "ok")] == len(answered)


def scrape(daemon):
    text = (
        urllib.request.urlopen(f"http://127.0.0.1:{daemon.metrics_port}/metrics", timeout=5)
        .read()
        .decode()
    )
    counts = {}
    for line in text.splitlines():
        if line.startswith("rkserve_requests_total{"):
            labels = dict(
                part.split("=") for part in line[line.index("{") + 1 : line.index("}")].split(",")
            )
            counts[(labels["model"].strip('"'), labels["code"].strip('"'))] = float(
                line.rsplit(" ", 1)[1]
            )
    return counts


def raw_call(endpoint: str, payload: bytes, timeout_ms: int = 5000):
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        sock.send_multipart([b"", payload])
        if not sock.poll(timeout_ms):
            return None
        return msgpack.unpackb(sock.recv_multipart()[-1], raw=False)
    finally:
        sock.close()


@pytest.mark.parametrize(
    "message,code",
    [
        (b"\xc1\xc1 not msgpack", "bad_request"),
        (msgpack.packb([1, 2, 3]), "bad_request"),
        (
            msgpack.packb({"v": 1, "id": 5, "op": "infer", "model": 42, "image": b"x"}),
            "bad_request",
        ),
        (msgpack.packb({"v": 1, "id": 5, "op": "infer", "model": "cls"}), "bad_request"),
        (
            msgpack.packb(
                {"v": 1, "id": 5, "op": "infer", "model": "cls", "image": "text, not bin"}
            ),
            "bad_request",
        ),
        (
            msgpack.packb(
                {
                    "v": 1,
                    "id": 5,
                    "op": "infer",
                    "model": "cls",
                    "image": b"x",
                    "params": {"top_k": "many"},
                }
            ),
            "bad_request",
        ),
        (msgpack.packb({"v": 1, "id": 5, "op": "explode"}), "bad_request"),
        (msgpack.packb({"v": 2, "id": 5, "op": "health"}), "unsupported_version"),
        (msgpack.packb({"v": 1, "id": 5, "op": "health", "extra": 1}), "bad_request"),
        (
            msgpack.packb({"v": 1, "id": 5, "op": "infer", "model": "nope", "image": b"x"}),
            "unknown_model",
        ),
        (
            msgpack.packb({"v": 1, "id": 5, "op": "infer", "model": "cls", "image": b"garbage"}),
            "bad_image",
        ),
        (
            msgpack.packb(
                {
                    "v": 1,
                    "id": 5,
                    "op": "infer",
                    "model": "cls",
                    "tensor": {"dtype": "float32", "shape": [2, 2, 3], "data": b"x" * 48},
                }
            ),
            "bad_image",
        ),
        (
            msgpack.packb(
                {"v": 1, "id": 5, "op": "infer", "model": "cls", "image": b"x" * (1024 * 1024 + 10)}
            ),
            "too_large",
        ),
    ],
    ids=[
        "not-msgpack",
        "not-a-map",
        "model-not-a-string",
        "no-image-or-tensor",
        "image-as-text",
        "bad-params",
        "unknown-op",
        "version-2",
        "unknown-field",
        "unknown-model",
        "undecodable-image",
        "float-tensor",
        "oversized",
    ],
)
def test_malformed_messages_get_coded_errors_and_the_daemon_keeps_serving(daemon, message, code):
    reply = raw_call(daemon.endpoint, message)
    assert reply is not None and reply["ok"] is False, reply
    assert reply["error"]["code"] == code and reply["error"]["message"]
    assert "total" in reply["timing_ms"]
    if code not in ("bad_request",) or b"\xc1" not in message[:1]:
        assert reply["id"] in (5, None)
    assert daemon.health()["live"]


def test_a_message_over_the_socket_limit_is_dropped_unread(daemon):
    assert raw_call(daemon.endpoint, b"\x00" * (5 * 1024 * 1024), timeout_ms=1000) is None
    assert daemon.health()["ready"]


def test_unknown_model_and_bad_image_raise_the_same_classes_on_the_client(daemon):
    with daemon.client() as client:
        with pytest.raises(UnknownModel, match="no model named 'x'"):
            client.classify("x", jpeg())
        with pytest.raises(BadImage):
            client.classify("cls", b"\x89PNG broken")


def _parallel(daemon, count, **kw):
    results = [None] * count

    def call(i: int) -> None:
        with daemon.client() as client:
            try:
                results[i] = client.infer("cls", jpeg(seed=i), **kw)
            except Exception as exc:  # collected
                results[i] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
        time.sleep(0.01)
    return threads, results


def test_overload_and_deadline(tmp_path, models):
    d = Daemon(
        tmp_path, models, "--backend", "fake", "--fake-latency-ms", "300", "--queue-size", "2"
    ).start()
    try:
        threads, results = _parallel(d, 6)
        for t in threads:
            t.join()
        assert any(isinstance(r, Overloaded) for r in results)
        assert sum(1 for r in results if not isinstance(r, Exception)) >= 2
        threads, results = _parallel(d, 2, deadline_ms=150)
        for t in threads:
            t.join()
        # one runs; the other waits past its deadline (whichever reached the daemon second:
        # the threads' 10 ms stagger does not order them on a busy machine)
        assert sorted(isinstance(r, DeadlineExceeded) for r in results) == [False, True], results
        assert not any(
            isinstance(r, Exception) and not isinstance(r, DeadlineExceeded) for r in results
        )
    finally:
        assert d.stop() == 0


def test_sigterm_under_load_finishes_in_flight_work_and_exits_0(tmp_path, models):
    d = Daemon(
        tmp_path,
        models,
        "--backend",
        "fake",
        "--fake-latency-ms",
        "200",
        "--queue-size",
        "16",
        "--drain-timeout-s",
        "10",
    ).start()
    threads, results = _parallel(d, 6)
    time.sleep(0.2)
    started = time.monotonic()
    d.signal(signal.SIGTERM)
    for t in threads:
        t.join()
    assert d.stop() == 0
    assert time.monotonic() - started < 10
    assert all(not isinstance(r, Exception) for r in results), results
    assert "draining" in d.log()


def test_health_is_answered_while_models_load(tmp_path, models):
    d = Daemon(tmp_path, models, "--backend", "fake", "--fake-latency-ms", "3000").start(
        wait_ready=False
    )
    try:
        health = d.wait(lambda h: True, timeout=10)
        assert health["status"] == "loading" and not health["ready"]
        d.wait(lambda h: h["ready"], timeout=30)
    finally:
        assert d.stop() == 0


def test_sighup_reloads_new_changed_and_removed_models(tmp_path, models):
    d = Daemon(tmp_path, models, "--backend", "fake").start()
    try:
        shutil.copytree(models / "cls", models / "cls2")
        shutil.rmtree(models / "cls")
        (models / "seg" / "model.yaml").write_text("task: segmentation\ninput: {size: 0}\n")
        d.signal(signal.SIGHUP)
        # a new model is listed (as loading) from the moment its folder is seen: wait for the pass
        health = d.wait(
            lambda h: (
                "cls2" in h["models"] and "cls" not in h["models"] and h["status"] == "serving"
            )
        )
        assert health["models"]["cls2"]["ready"]
        seg = health["models"]["seg"]
        assert seg["ready"] and "reload failed, still serving the previous version" in seg["error"]
        with d.client() as client:
            assert client.segment("seg", jpeg()).task == "segmentation"
            with pytest.raises(UnknownModel):
                client.classify("cls", jpeg())
    finally:
        assert d.stop() == 0


@pytest.fixture(scope="module")
def real_models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("real")
    write_model(
        folder / "models" / "mobilenet",
        {"task": "classification", "input": {"size": 224}, "onnx": {"mean": 127, "std": 127.5}},
        onnx=shared("onnx", "mobilenet_v2_1.0_224_dequant_fp32.onnx"),
        labels=shared("labels", "synset.txt"),
    )
    write_model(
        folder / "models" / "deeplab",
        {"task": "segmentation", "input": {"size": 257}, "onnx": {"mean": 127.5, "std": 127.5}},
        onnx=shared("onnx", "deeplabv3_257_voc_fp32.onnx"),
        labels=shared("labels", "st_labels_pascalvoc.txt"),
    )
    for demo in ("shapes", "shapes-seg", "shapes-det"):
        if (MODELS / demo / "model.yaml").exists():
            shutil.copytree(MODELS / demo, folder / "models" / demo)
    return folder


def test_real_models_over_the_daemon_match_the_engine(real_models):
    models = real_models / "models"
    d = Daemon(real_models, models, "--backend", "onnx").start(timeout=60)
    try:
        with d.client(timeout=30) as client:
            bell = shared("images", "bell.jpg").read_bytes()
            remote = client.classify("mobilenet", bell, top_k=5)
            assert remote.classes[0]["index"] == 494
            assert (
                remote.result
                == repository.open_engine(models, "mobilenet", backend="onnx")
                .infer(bell, {"top_k": 5})
                .result
            )
            cyclist = shared("images", "deeplabv3_test_image.jpg").read_bytes()
            remote = client.segment("deeplab", cyclist, mask="png", overlay=True)
            local = repository.open_engine(models, "deeplab", backend="onnx").infer(
                cyclist, {"mask": "png", "overlay": True}
            )
            assert remote.result == local.result
            assert [c["label"] for c in remote.classes] == ["background", "bicycle", "person"]
            for demo in ("shapes", "shapes-seg", "shapes-det"):
                if (models / demo).exists():
                    engine = repository.open_engine(models, demo, backend="onnx")
                    for sample in sorted((models / demo / "samples").glob("*.jpg")):
                        data = sample.read_bytes()
                        assert client.infer(demo, data).result == engine.infer(data).result
    finally:
        assert d.stop() == 0
