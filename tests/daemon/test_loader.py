"""The loader owns the model table; how a model becomes a host is injected (a builder).

These tests inject their own builder instead of steering the fake backend through fault
files: what the loader decides (when to build, what stays serving) is tested apart from how
a model is built."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable, Dict, List

from rkserve import repository
from rkserve.config import Settings
from rkserve.loader import Loader
from rkserve.modelhost import ModelHost
from tools.harness import fake_models


class Builder:
    """Counts what it is asked to build; ``verdict`` says what each model becomes."""

    def __init__(self, verdict: Callable[[repository.Entry], ModelHost]) -> None:
        self.verdict = verdict
        self.built: List[str] = []
        self.passes = 0

    def begin_pass(self) -> None:
        self.passes += 1

    def __call__(self, entry: repository.Entry) -> ModelHost:
        self.built.append(entry.name)
        return self.verdict(entry)


class Closed:
    """An engine that only closes: these hosts never run a job."""

    def __init__(self) -> None:
        self.backend = self

    def close(self) -> None:
        pass


def serving(entry: repository.Entry) -> ModelHost:
    return ModelHost.serving(entry, [Closed()], {"backend": "test"}, 4)  # type: ignore[list-item]


def refused(entry: repository.Entry) -> ModelHost:
    return ModelHost.unserved(entry, "refused", "not for this board", 4)


def settled(loader: Loader, passes: int, timeout: float = 10.0) -> Dict[str, str]:
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        if loader.passes >= passes and not loader.table.loading:
            return {name: host.state for name, host in loader.table.hosts.items()}
        time.sleep(0.01)
    raise AssertionError(f"no settled table after {passes} passes")


def loader_with(tmp_path: Path, builder: Builder, started: List[str]) -> Loader:
    models = fake_models(tmp_path / "models")
    settings = Settings(models_dir=str(models), drain_timeout_s=0.1)
    return Loader(settings, builder, lambda host: started.append(host.name), lambda h, e: None)


def test_the_loader_builds_every_model_once_and_publishes_what_the_builder_says(tmp_path):
    builder = Builder(lambda e: serving(e) if e.name == "cls" else refused(e))
    started: List[str] = []
    loader = loader_with(tmp_path, builder, started)
    loader.start()
    try:
        assert settled(loader, 1) == {"cls": "ready", "seg": "refused"}
        assert sorted(builder.built) == ["cls", "seg"] and builder.passes == 1
        assert started == ["cls"]  # only a serving host gets runners
        assert loader.table.hosts["seg"].error == "not for this board"
    finally:
        loader.stop(timeout=1.0)


def test_a_reload_rebuilds_only_what_changed_and_a_failed_rebuild_keeps_serving(tmp_path):
    verdicts = {"cls": serving, "seg": serving}
    builder = Builder(lambda e: verdicts[e.name](e))
    loader = loader_with(tmp_path, builder, [])
    loader.start()
    try:
        settled(loader, 1)
        first = loader.table.hosts["cls"]
        builder.built.clear()
        spec = first.entry.folder / "model.yaml"
        spec.write_text(spec.read_text() + "description: changed\n")
        verdicts["cls"] = refused
        loader.reload()
        assert settled(loader, 2) == {"cls": "ready", "seg": "ready"}
        assert builder.built == ["cls"]  # seg is unchanged: not rebuilt
        assert loader.table.hosts["cls"] is first  # the previous version keeps serving
        assert "reload failed" in (first.error or "")
    finally:
        loader.stop(timeout=1.0)


def test_the_table_is_replaced_never_changed_in_place(tmp_path):
    """Readers on other threads hold a snapshot: a pass makes new tables."""
    gate = threading.Event()

    def slow(entry: repository.Entry) -> ModelHost:
        gate.wait(5.0)
        return serving(entry)

    loader = loader_with(tmp_path, Builder(slow), [])
    loader.start()
    try:
        time.sleep(0.1)
        loading = loader.table
        assert {h.state for h in loading.hosts.values()} == {"loading"}
        gate.set()
        settled(loader, 1)
        assert {h.state for h in loading.hosts.values()} == {"loading"}  # the old snapshot
        assert loader.table is not loading
    finally:
        loader.stop(timeout=1.0)
