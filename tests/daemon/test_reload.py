"""The model table while models load and reload: what clients see, what SIGHUP picks up.

The loader thread owns the table (rkserve/loader.py): models are listed from the moment
their folder is seen, a reload asked for at any moment is never lost, and every file a
model is made of (labels.txt included) is part of what a SIGHUP compares.
"""

from __future__ import annotations

import re
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rkserve import repository
from rkserve.builder import HostBuilder, core_masks
from rkserve.config import Settings
from rkserve.errors import ModelUnavailable
from rkserve.loader import Loader
from rkserve.metrics import Metrics
from tools.harness import ROOT, Daemon, fake_models

CLS = np.zeros((32, 32, 3), np.uint8)
SEG = np.zeros((16, 16, 3), np.uint8)


@pytest.mark.process
def test_models_are_listed_as_loading_and_answer_model_unavailable_while_they_load(tmp_path):
    """Before: `models` was empty until every model had loaded, and infer answered
    `unknown_model` (permanent, per PROTOCOL.md) to clients of a restarting daemon."""
    models = fake_models(tmp_path / "models")
    (models / "seg" / "fake-fault").write_text("slow-load:4000")
    d = Daemon(tmp_path, models, "--backend", "fake").start(wait_ready=False)
    try:
        d.wait(lambda h: h["models"].get("cls", {}).get("ready"), 20)
        with d.client(retries=0) as client:
            listed = {m["name"]: m for m in client.models()}
            assert listed["seg"]["state"] == "loading", listed
            assert listed["seg"]["task"] == "segmentation"
            assert client.health()["status"] == "loading"
            with pytest.raises(ModelUnavailable, match="'seg' is loading"):
                client.infer("seg", SEG)
            assert client.infer("cls", CLS).task == "classification"
        d.wait(lambda h: h["status"] == "serving", 20)
        with d.client(retries=0) as client:
            assert client.infer("seg", SEG).task == "segmentation"
    finally:
        assert d.stop() == 0, d.log()


@pytest.mark.process
def test_a_model_whose_load_crashes_fails_alone(tmp_path):
    """Before: an error that is not rkserve's own while loading one model (here numpy's
    MemoryError for a 3.6 TB warm-up tensor) ended the whole pass: the models after it
    stayed `loading` for good and the daemon never reported serving."""
    models = fake_models(tmp_path / "models")
    huge = models / "a-huge"
    huge.mkdir()
    huge.joinpath("model.onnx").write_bytes(b"placeholder")
    huge.joinpath("model.yaml").write_text(
        "task: tensor\ninputs: [{name: x, shape: [100000, 100000, 100], dtype: float32}]\n"
    )
    d = Daemon(tmp_path, models, "--backend", "fake").start(wait_ready=False)
    try:
        health = d.wait(lambda h: h["status"] == "serving" and h["models"]["cls"]["ready"], 20)
        assert health["models"]["a-huge"]["state"] == "failed"
        assert "MemoryError" in health["models"]["a-huge"]["error"]
        with d.client(retries=0) as client:
            assert client.infer("seg", SEG).task == "segmentation"
    finally:
        assert d.stop() == 0, d.log()


def test_a_reload_asked_for_as_a_pass_ends_is_never_lost(tmp_path, monkeypatch):
    """Before: a SIGHUP that arrived after the loader's last look for more work, but before
    its thread ended, was dropped (the thread was still alive, so no new one started)."""
    passes = []

    def scan(models_dir: Path) -> dict:
        passes.append(time.perf_counter())
        return {}

    def slow(frame: Any, event: str, arg: Any) -> None:
        """A loaded board: the loader thread takes a while over every step it finishes."""
        if event == "return" and frame.f_code.co_filename.endswith("loader.py"):
            time.sleep(0.001)

    monkeypatch.setattr(repository, "scan", scan)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: widen every race
    threading.setprofile(slow)  # threads started from now on: the loader's
    settings = Settings(models_dir=str(tmp_path), backend="fake")
    build = HostBuilder(settings, Metrics(tmp_path))
    loader = Loader(settings, build, lambda host: None, lambda host, error: None)
    try:
        loader.start()
        for attempt in range(100):
            until = time.monotonic() + 5.0
            while (loader.loading or not passes) and time.monotonic() < until:
                pass  # spin: ask again the moment the pass is over
            asked = time.perf_counter()
            loader.reload()
            while not any(p > asked for p in passes) and time.monotonic() < until:
                time.sleep(0)
            assert any(p > asked for p in passes), f"reload {attempt} was lost"
    finally:
        sys.setswitchinterval(interval)
        threading.setprofile(None)  # type: ignore[arg-type]
        loader.stop(timeout=1.0)


@pytest.mark.process
def test_sighup_reloads_a_changed_labels_file(tmp_path):
    """Before: labels.txt was not part of the fingerprint: SIGHUP did nothing."""
    models = fake_models(tmp_path / "models")
    d = Daemon(tmp_path, models, "--backend", "fake").start()
    try:
        (models / "cls" / "labels.txt").write_text("a\nb\nc\nd\ne\nf\n")
        d.signal(signal.SIGHUP)
        d.wait(lambda h: True)  # the signal is handled between two polls
        with d.client(retries=0) as client:
            until = time.monotonic() + 10
            while time.monotonic() < until:
                listed = {m["name"]: m for m in client.models()}
                if listed["cls"]["labels"] == 6:
                    break
                time.sleep(0.05)
            assert listed["cls"]["labels"] == 6, listed
            assert listed["cls"]["state"] == "ready"
            assert len(client.infer("cls", CLS, top_k=6).classes) == 6
    finally:
        assert d.stop() == 0, d.log()


def demo_copy(folder: Path, name: str) -> Path:
    """A model folder of the committed demo model ``name``, its ONNX file linked in."""
    source = ROOT / "models" / name
    folder.mkdir(parents=True)
    (folder / "model.onnx").symlink_to(source / "model.onnx")
    (folder / "model.yaml").write_text((source / "model.yaml").read_text())
    (folder / "labels.txt").write_text((source / "labels.txt").read_text())
    return folder


@pytest.mark.process
@pytest.mark.parametrize(
    "name,labels,state,words",
    [
        ("shapes-seg", "a\nb\nc\nd\ne\nf\ng\n", "refused", "7 labels but the model scores 4"),
        ("shapes", "a\nb\nc\nd\ne\nf\ng\n", "refused", "7 labels .* outputs 5 scores"),
        ("shapes", "\n\n", "failed", "holds no labels"),
    ],
    ids=["segmentation-7-for-4", "classification-7-for-5", "empty"],
)
def test_a_labels_file_that_does_not_fit_the_model_is_refused_with_its_reason(
    tmp_path, name, labels, state, words
):
    pytest.importorskip("onnxruntime")
    models = tmp_path / "models"
    (demo_copy(models / "m", name) / "labels.txt").write_text(labels)
    d = Daemon(tmp_path, models, "--backend", "onnx").start(wait_ready=False)
    try:
        health = d.wait(lambda h: h["status"] == "serving", 30)
        assert health["models"]["m"]["state"] == state, health
        assert re.search(words, health["models"]["m"]["error"]), health
    finally:
        assert d.stop() == 0, d.log()


@pytest.mark.process
@pytest.mark.parametrize("backend", ["onnx", "fake"])
def test_rss_growth_per_reload_is_bounded(tmp_path, backend):
    """Ten models, every file changed before each of 8 reloads. Before, with ONNX: +27 MB
    per reload of 30 models without levelling off (a new loader thread per pass, each with
    its own malloc heap, loaded every new version before closing any old one). Now one
    thread loads, one model at a time, and RSS levels off (docs/RELIABILITY.md). RKNNLite:
    tests/emulated/test_emulated_daemon.py."""
    if backend == "onnx":
        pytest.importorskip("onnxruntime")
    models = tmp_path / "models"
    for n in range(10):
        demo_copy(models / f"m{n}", "shapes")
    d = Daemon(tmp_path, models, "--backend", backend).start(timeout=60)
    try:
        sizes = []
        for round_ in range(8):
            for spec in models.glob("*/model.yaml"):
                spec.write_text(spec.read_text() + f"# {round_}\n")
            passes = d.log().count("serving 10/10 models")
            d.signal(signal.SIGHUP)
            until = time.monotonic() + 60
            while d.log().count("serving 10/10 models") == passes and time.monotonic() < until:
                time.sleep(0.05)
            time.sleep(0.5)  # the replaced versions close
            with open(f"/proc/{d.proc.pid}/status") as status:
                sizes.append(next(int(s.split()[1]) for s in status if s.startswith("VmRSS:")))
        per_reload = (sizes[-1] - sizes[2]) / 1024 / (len(sizes) - 3)
        print(f"\nRSS per reload (MB): {[round(s / 1024) for s in sizes]}; {per_reload:+.2f} MB")
        # the old loader grew +9.9 MB per reload here; a flat daemon measures +0.0 to +1.1
        # (malloc keeps up to 16 MB free at the top of each heap, docs/BENCHMARKS.md)
        assert per_reload < 2.5, sizes
    finally:
        assert d.stop() == 0, d.log()


@pytest.mark.process
def test_instances_serve_a_model_in_parallel(tmp_path):
    """`instances: 3` (an RK3588's three NPU cores): three requests run at once."""
    models = fake_models(tmp_path / "models")
    spec = models / "cls" / "model.yaml"
    spec.write_text(spec.read_text() + "instances: 3\n")
    d = Daemon(tmp_path, models, "--backend", "fake", "--fake-latency-ms", "400").start()
    try:
        with d.client(retries=0) as client:
            assert {m["name"]: m for m in client.models()}["cls"]["instances"] == 3

        def one() -> None:
            with d.client(retries=0) as client:
                client.infer("cls", CLS)

        started = time.monotonic()
        threads = [threading.Thread(target=one) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        took = time.monotonic() - started
        assert took < 2 * 0.4, f"{took:.2f} s for 3 requests of 0.4 s on 3 instances"
    finally:
        assert d.stop() == 0, d.log()


def test_each_instance_gets_its_own_core_only_on_a_multi_core_npu():
    from rkserve.board.probes import npu_cores

    assert [npu_cores(s) for s in ("rk3588", "rk3588s", "rk3576", "rk3568", "rk3566", None)] == [
        3,
        3,
        2,
        1,
        1,
        1,
    ]
    assert core_masks(3, 3) == [1, 2, 4]
    assert core_masks(2, 3) == [1, 2, 1]
    assert core_masks(1, 2) == [None, None]  # RK3566/RK3568 refuse core_mask (-13)
