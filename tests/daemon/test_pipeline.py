"""The request pipeline in-process: every admitted job answered exactly once, and every
count it holds (the memory budget, a model's pending count) given back, on the paths a
daemon test cannot time: a reply that cannot be built, a job answered while it waits for
a CPU worker, a job admitted to a model version that is being retired.

Real parts: the fake backend's engine, a real :class:`ModelHost` with its runner threads
and the real :class:`Pipeline`; only the socket is replaced by a list of the replies.
"""

from __future__ import annotations

import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import cv2
import msgpack
import numpy as np
import pytest

from rkserve import pipeline as pipeline_module
from rkserve import protocol, repository
from rkserve.backends import open_backend
from rkserve.builder import HostBuilder
from rkserve.config import Settings
from rkserve.cpupool import PREPARE
from rkserve.engine import Engine, Result
from rkserve.errors import BackendError, ModelUnavailable
from rkserve.kernels import image
from rkserve.loader import Loader
from rkserve.metrics import Metrics
from rkserve.modelhost import ModelHost
from rkserve.pipeline import Pipeline
from rkserve.tasks import load_spec
from tests.helpers import shared, write_model
from tools.harness import fake_models

IMAGE = np.full((32, 32, 3), 7, np.uint8)


class Replies:
    """The server's send callback: what each envelope was answered, in order."""

    def __init__(self) -> None:
        self.sent: List[Tuple[bytes, dict]] = []
        self._cond = threading.Condition()

    def __call__(self, envelope: List[bytes], request_id: Any, reply: bytes) -> None:
        with self._cond:
            self.sent.append((envelope[0], msgpack.unpackb(reply, raw=False)))
            self._cond.notify_all()

    def wait(self, count: int, timeout: float = 10.0) -> List[dict]:
        with self._cond:
            self._cond.wait_for(lambda: len(self.sent) >= count, timeout)
            return [r for _, r in self.sent]


def until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


@pytest.fixture
def parts(tmp_path: Path):
    models = fake_models(tmp_path / "models")
    entry = repository.scan(models)["cls"]
    settings = Settings(models_dir=str(models), backend="fake", workers=1)
    replies = Replies()
    pipeline = Pipeline(settings, Metrics(tmp_path), replies)
    hosts: List[ModelHost] = []
    fault = entry.folder / "fake-fault"

    def host(latency_ms: float = 0.0, engine_type: type = Engine) -> ModelHost:
        assert entry.spec is not None
        backend = repository.build_engine(entry.spec, "fake", 16_000_000, latency_ms=latency_ms)
        engine = engine_type(entry.spec, backend.backend)
        made = ModelHost.serving(entry, [engine], {}, settings.queue_size)
        hosts.append(made)
        return made

    yield pipeline, host, replies
    fault.unlink(missing_ok=True)  # a runner hung in the fake runtime returns
    pipeline.stop()
    for made in hosts:
        made.stop(timeout=2.0)


def request(n: int) -> protocol.Request:
    return protocol.Request(id=n, op="infer", model="cls", tensor=IMAGE)


class UnencodableResult(Engine):
    """A task whose result msgpack cannot encode (a numpy scalar): a bug in a task."""

    def finish(self, prepared: Any, outputs: Any) -> Result:
        result = super().finish(prepared, outputs)
        result.result["classes"][0]["index"] = np.int64(1)
        return result


def test_a_reply_that_cannot_be_built_is_answered_internal_and_frees_everything(parts):
    pipeline, make_host, replies = parts
    host = make_host(engine_type=UnencodableResult)
    host.start(pipeline.step)
    for n in range(3):  # one at a time: each would be the runner's last if it died
        pipeline.admit([b"peer%d" % n], request(n), {"cls": host})
        assert replies.wait(n + 1, timeout=5.0)[n:] and len(replies.sent) == n + 1
    codes = [r["error"]["code"] for r in replies.wait(3)]
    assert codes == ["internal"] * 3
    assert until(lambda: pipeline.inflight == 0 and pipeline.held == 0 and host.pending == 0)


def test_a_job_answered_while_it_waits_for_a_cpu_worker_gives_back_its_pending_count(parts):
    pipeline, make_host, replies = parts
    host = make_host(latency_ms=300)
    host.start(pipeline.step)
    gate = threading.Event()
    pipeline.pool.submit(PREPARE, gate.wait, 10.0)  # the only CPU worker is busy
    pipeline.admit([b"a"], request(1), {"cls": host})  # idle runner: straight to it
    assert until(lambda: host.pending == 0)  # the runner took it
    pipeline.admit([b"b"], request(2), {"cls": host})  # runner busy: waits for a worker
    assert host.pending == 1
    pipeline.fail_all(BackendError("the runtime is wedged"), host)  # the loader's watchdog
    gate.set()
    assert len(replies.wait(2)) == 2
    assert until(lambda: host.pending == 0), f"pending stays at {host.pending}"
    assert pipeline.inflight == 0 and pipeline.held == 0


def test_a_job_admitted_to_a_retired_version_is_answered(parts):
    pipeline, make_host, replies = parts
    old = make_host()
    old.start(pipeline.step)
    hosts = {"cls": old}  # a frontend that read the table just before the reload swapped it
    assert old.stop(timeout=2.0)  # the retiring thread found nothing pending and stopped it
    try:
        pipeline.admit([b"late"], request(7), hosts)
    except ModelUnavailable:
        pass  # refused at once: answered by the frontend
    else:
        reply = replies.wait(1, timeout=3.0)
        assert reply, "a job admitted to a stopped model version was never answered"
        assert reply[0]["error"]["code"] == "model_unavailable"
    assert pipeline.inflight == 0 and pipeline.held == 0 and old.pending == 0


def test_a_job_queued_behind_a_wedged_runner_is_answered_when_its_version_retires(parts):
    """The loader's watchdog answers a wedged model's jobs, then retires it; a job admitted
    as the model was found stuck (past the ready check, not yet in the jobs it answered)
    waited behind the hung runtime. Before: never answered (until shutdown)."""
    pipeline, make_host, replies = parts
    host = make_host()
    host.start(pipeline.step)
    (host.entry.folder / "fake-fault").write_text("hang")
    pipeline.admit([b"a"], request(1), {"cls": host})  # the runner hangs in the runtime
    assert until(lambda: host.stuck_for() > 0)
    pipeline.fail_all(BackendError("the runtime is wedged"), host)  # the watchdog
    pipeline.admit([b"b"], request(2), {"cls": host})  # slipped past the ready check
    settings = Settings(models_dir=str(host.entry.folder.parent), drain_timeout_s=0.3)
    loader = Loader(
        settings,
        HostBuilder(settings, pipeline.metrics),
        lambda h: None,
        lambda h, e: pipeline.fail_all(e, h),
    )
    loader._retire(host)  # replaced by a fresh version
    replies.wait(2, timeout=5.0)
    answered = dict(replies.sent)
    assert b"b" in answered, "the job behind the wedged runner was never answered"
    assert answered[b"b"]["error"]["code"] == "model_unavailable"


def test_the_budget_charged_for_named_inputs_covers_their_peak(tmp_path):
    """uint8 inputs to an ONNX twin are cast to float32 (4 bytes an element) and normalised:
    before, 3x the bytes sent was charged for a peak of up to 9x."""
    spec = {
        "task": "tensor",
        "inputs": [{"dtype": "uint8", "mean": 10, "std": 2}, {"dtype": "uint8"}],
    }
    folder = write_model(
        tmp_path / "multi", spec, onnx=shared("onnx", "multiple_input_demo_test.onnx")
    )
    loaded = load_spec(folder)
    engine = Engine(loaded, open_backend("onnx", loaded))
    first = np.fromfile(shared("images", "multiple_input_demo_input1.bin"), np.uint8)
    second = np.fromfile(shared("images", "multiple_input_demo_input2.bin"), np.uint8)
    inputs = protocol.Inputs.of([first.reshape(1, 128, 128, 1), second.reshape(1, 128, 128, 3)])
    params = engine.parse_params({})
    engine.prepare(inputs, params)  # first-call allocations are not the request's
    tracemalloc.start()
    kept = engine.prepare(inputs, params)  # held until the NPU has run it
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    sent = first.nbytes + second.nbytes
    pipeline = Pipeline(Settings(), Metrics(tmp_path), Replies())
    host = ModelHost.serving(repository.load_entry(folder), [engine], {}, 8)  # no runner
    request = protocol.Request(id=1, op="infer", model="multi", inputs=inputs)
    pipeline.admit([b"peer"], request, {"multi": host})
    charged = pipeline.held
    pipeline.stop()
    assert len(kept.tensors) == 2
    assert sent + peak <= charged, f"peak {sent + peak} B, charged {charged} B"


class WhereFinished(Engine):
    """Records the thread each job's ``finish`` ran on."""

    threads: List[str] = []

    def finish(self, prepared: Any, outputs: Any) -> Result:
        WhereFinished.threads.append(threading.current_thread().name)
        return super().finish(prepared, outputs)


@pytest.mark.parametrize(
    "model, size, finished_on",
    [
        ("cls", (1080, 1920), "npu-cls"),  # a top-k: no hand-off, however large the image
        ("seg", (120, 160), "npu-seg"),  # a small map resized to a small image
        ("seg", (1080, 1920), "cpu"),  # resized to 1920x1080: worth a worker
    ],
)
def test_finishing_goes_to_a_worker_only_when_it_costs_more_than_the_hand_off(
    tmp_path: Path, model: str, size: Tuple[int, int], finished_on: str
) -> None:
    models = fake_models(tmp_path / "models")
    entry = repository.scan(models)[model]
    assert entry.spec is not None
    replies = Replies()
    pipeline = Pipeline(Settings(models_dir=str(models), backend="fake"), Metrics(), replies)
    backend = repository.build_engine(entry.spec, "fake", 16_000_000).backend
    host = ModelHost.serving(entry, [WhereFinished(entry.spec, backend)], {}, 4)
    host.start(pipeline.step)
    WhereFinished.threads = []
    try:
        picture = np.full((*size, 3), 9, np.uint8)
        pipeline.admit(
            [b"peer"],
            protocol.Request(id=1, op="infer", model=model, tensor=picture),
            {model: host},
        )
        (reply,) = replies.wait(1)
        assert reply["ok"], reply
        assert [name.split("_")[0] for name in WhereFinished.threads] == [finished_on]
    finally:
        pipeline.stop()
        host.stop(timeout=2.0)


class WherePrepared(Engine):
    """Records the thread each job's ``prepare`` ran on."""

    threads: List[str] = []

    def prepare(self, data: Any, params: Any) -> Any:
        WherePrepared.threads.append(threading.current_thread().name)
        return super().prepare(data, params)


def test_a_request_sent_on_reading_a_reply_goes_straight_to_the_runner(tmp_path: Path) -> None:
    """Concurrency 1: the client sends its next request as soon as it reads a reply. The
    runner is done with the NPU by then, so that request is queued for it (prepared on the
    runner), not handed to a CPU worker first; before, the runner counted as busy until its
    reply had left, and the next request took a hand-off more."""
    models = fake_models(tmp_path / "models")
    entry = repository.scan(models)["cls"]
    assert entry.spec is not None
    replies = Replies()
    hosts: Dict[str, ModelHost] = {}

    def send(envelope: List[bytes], request_id: Any, reply: bytes) -> None:
        replies(envelope, request_id, reply)
        if request_id == 1:  # on the runner, while it answers job 1: the client's next request
            pipeline.admit([b"peer"], request(2), hosts)

    pipeline = Pipeline(Settings(models_dir=str(models), backend="fake"), Metrics(), send)
    backend = repository.build_engine(entry.spec, "fake", 16_000_000).backend
    hosts["cls"] = ModelHost.serving(entry, [WherePrepared(entry.spec, backend)], {}, 4)
    hosts["cls"].start(pipeline.step)
    WherePrepared.threads = []
    try:
        pipeline.admit([b"peer"], request(1), hosts)
        assert [r["ok"] for r in replies.wait(2)] == [True, True]
        assert WherePrepared.threads == ["npu-cls", "npu-cls"]
    finally:
        pipeline.stop()
        hosts["cls"].stop(timeout=2.0)


@pytest.mark.parametrize("decode", ["full", "reduced"])
def test_an_image_header_is_read_once_per_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, decode: str
) -> None:
    """Admission reads a JPEG's header to charge its memory; the decode, its reduced scale
    and the source size use that reading (they read it again: twice a request, four times
    with ``decode: reduced``)."""
    models = fake_models(tmp_path / "models")
    (models / "cls" / "model.yaml").write_text(
        f"task: classification\nlabels: labels.txt\ninput: {{size: 32, decode: {decode}}}\n"
    )
    entry = repository.scan(models)["cls"]
    assert entry.spec is not None
    ok, jpeg = cv2.imencode(
        ".jpg", np.random.default_rng(0).integers(0, 255, (480, 640, 3), np.uint8)
    )
    assert ok
    data = jpeg.tobytes()
    replies = Replies()
    pipeline = Pipeline(Settings(models_dir=str(models), backend="fake"), Metrics(), replies)
    engine = repository.build_engine(entry.spec, "fake", 16_000_000)
    host = ModelHost.serving(entry, [engine], {}, 4)
    host.start(pipeline.step)
    expected = engine.infer(data).result  # in-process, from the bytes alone
    reads: List[int] = []
    read = image.image_header
    counted = lambda d: reads.append(len(d)) or read(d)  # noqa: E731
    monkeypatch.setattr(image, "image_header", counted)
    # where the pipeline once imported it by name (so that the old reading counts too)
    monkeypatch.setattr(pipeline_module, "image_header", counted, raising=False)
    try:
        request = protocol.Request(id=1, op="infer", model="cls", image=data)
        job = pipeline.admit([b"peer"], request, {"cls": host})
        (reply,) = replies.wait(1)
    finally:
        pipeline.stop()
        host.stop(timeout=2.0)
    assert reply["ok"], reply
    assert reply["result"] == expected
    assert reads == [len(data)]
    header = read(data)  # read at admission: the memory charge comes from it
    assert header is not None and job.cost == header.working_bytes()
