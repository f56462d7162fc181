"""The memory guard against the runtime's per-call garbage in reference cycles.

The fake backend's ``cycle-leak:<bytes>`` fault reproduces the RKNNLite leak: each call
leaves a buffer in a reference cycle (held until the next call, as a runtime holds its last
buffers) that only the cycle collector frees. With the guard the daemon's memory stays flat
over thousands of requests; with ``gc_every: 0`` it grows: the guard is what keeps it flat.
"""

from __future__ import annotations

import gc
import platform
import time
import weakref
from pathlib import Path

import numpy as np
import pytest

from rkserve import memory
from rkserve.backends.fake import FakeBackend
from rkserve.tasks import load_spec
from tests.daemon.test_fuzz_daemon import rss_kb
from tools.harness import Daemon, fake_models

LEAK = 100_000  # bytes per call, a little over twice RKNNLite's ~42 kB: a clear signal
REQUESTS = 3000


def rss_growth_mb(tmp_path: Path, gc_every: int) -> float:
    """The largest RSS growth seen while sending REQUESTS to a leaking model."""
    models = fake_models(tmp_path / "models")
    d = Daemon(tmp_path, models, "--backend", "fake", "--gc-every", str(gc_every)).start()
    try:
        tensor = np.zeros((32, 32, 3), np.uint8)
        with d.client() as client:
            for _ in range(200):  # warm-up: pools, caches, allocator arenas
                client.infer("cls", tensor)
            before = rss_kb(d.proc.pid)
            (models / "cls" / "fake-fault").write_text(f"cycle-leak:{LEAK}")
            peak = before
            for i in range(REQUESTS):
                client.infer("cls", tensor)
                if i % 100 == 99:
                    peak = max(peak, rss_kb(d.proc.pid))
        return (peak - before) / 1024.0
    finally:
        assert d.stop() == 0, d.log()


@pytest.mark.process
def test_the_guard_keeps_memory_flat_and_without_it_memory_grows(tmp_path):
    guarded = rss_growth_mb(tmp_path / "guarded", 16)
    unguarded = rss_growth_mb(tmp_path / "unguarded", 0)
    print(
        f"\nRSS growth over {REQUESTS} leaking calls: {guarded:.1f} MB guarded, {unguarded:.1f} MB not"
    )
    assert guarded < 8.0
    assert unguarded > 3 * max(guarded, 5.0)


@pytest.fixture
def leaking_backend(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model.yaml").write_text("task: classification\ninput: {size: 8}\n")
    (folder / "model.onnx").write_bytes(b"placeholder: the fake backend never reads it")
    (folder / "fake-fault").write_text("cycle-leak:1000")
    return FakeBackend(load_spec(folder), classes=2)


class Tracked:
    """A weak-referenceable stand-in for one call's garbage."""


def test_the_guard_frees_what_the_fake_leaks_and_costs_microseconds(leaking_backend):
    tensor = np.zeros((1, 8, 8, 3), np.uint8)
    guard = memory.GcGuard(16)
    gc.disable()  # only the guard collects here, so what is freed, it freed
    try:
        memory.settle()
        leaking_backend.run([tensor])
        first = leaking_backend._last_buffers
        assert first is not None
        marker = Tracked()
        first.append(marker)
        alive = weakref.ref(marker)
        del first, marker
        started = time.perf_counter()
        for _ in range(16 * 200):
            leaking_backend.run([tensor])
            guard.tick()
        elapsed = time.perf_counter() - started
        assert alive() is None  # the first call's cycle was collected
        assert guard.collections == 200
    finally:
        gc.enable()
        gc.unfreeze()
    per_collection_ms = guard.seconds / guard.collections * 1000
    per_call_us = guard.seconds / guard.calls * 1e6
    print(
        f"\nguard: {per_collection_ms:.3f} ms per collection, {per_call_us:.2f} us per call "
        f"({100 * guard.seconds / elapsed:.1f}% of a fake call loop)"
    )
    assert per_collection_ms < 2.0  # a full collection of a frozen heap


def test_gc_every_0_turns_the_guard_off():
    guard = memory.GcGuard(0)
    for _ in range(100):
        guard.tick()
    assert guard.collections == 0 and guard.calls == 0


@pytest.mark.process  # ctypes.util.find_library runs ldconfig
def test_pinning_the_mmap_threshold_is_harmless_and_respects_the_environment(monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert memory.pin_mmap_threshold() is False
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    assert memory.pin_mmap_threshold() is (platform.libc_ver()[0] == "glibc")
