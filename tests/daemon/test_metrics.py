"""Prometheus metrics of the real daemon, scraped over HTTP and parsed the way Prometheus does."""

from __future__ import annotations

import math
import os
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Dict, FrozenSet, Iterator, List, Set, Tuple

import cv2
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from rkserve.errors import BadImage, BadRequest, ModelUnavailable, UnknownModel
from rkserve.metrics import BUCKETS
from tests.board.test_rknnfile import SYNTHETIC_META, container
from tests.boards import (
    AFTER_UPDATE,
    BEFORE_UPDATE,
    DEVFREQ_NODES,
    LIBRKNNRT,
    fake_binary,
    librknnrt_line,
    make_board,
    shared_rknn,
    write_lite2,
)
from tests.helpers import write_model
from tools.harness import Daemon, fake_models

pytestmark = pytest.mark.process  # every test here starts a process

Labels = FrozenSet[Tuple[str, str]]
LITE2 = "2.3.0"  # the rknn-toolkit-lite2 "installed" beside the double


class Scrape:
    """One GET of /metrics, parsed with prometheus_client's own exposition parser."""

    def __init__(self, port: int) -> None:
        url = f"http://127.0.0.1:{port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            self.text = response.read().decode()
        self.types: Dict[str, str] = {}
        self.samples: Dict[str, Dict[Labels, float]] = {}
        for family in text_string_to_metric_families(self.text):
            self.types[family.name] = family.type
            for sample in family.samples:
                by_labels = self.samples.setdefault(sample.name, {})
                by_labels[frozenset(sample.labels.items())] = sample.value

    def value(self, name: str, **labels: str) -> float:
        found = self.samples.get(name, {})
        key = frozenset(labels.items())
        assert key in found, f"{name}{labels} not exposed; have {sorted(found, key=sorted)}"
        return found[key]

    def by(self, name: str, *keys: str) -> Dict[Tuple[str, ...], float]:
        """Every sample of ``name`` keyed by the values of ``keys`` (other labels must agree)."""
        table: Dict[Tuple[str, ...], float] = {}
        for labels, value in self.samples.get(name, {}).items():
            key = tuple(dict(labels)[k] for k in keys)
            assert key not in table, f"{name}: {key} twice"
            table[key] = value
        return table

    def labels(self, name: str) -> List[Dict[str, str]]:
        return [dict(labels) for labels in self.samples.get(name, {})]


def jpeg(seed: int, size: int = 40) -> bytes:
    image = np.random.default_rng(seed).integers(0, 255, (size, size, 3), np.uint8)
    return bytes(cv2.imencode(".jpg", image)[1])


def settle(daemon: Daemon, timeout: float = 5.0) -> Scrape:
    """A scrape once the last reply's bookkeeping is done (in-flight back to 0)."""
    until = time.monotonic() + timeout
    while True:
        scrape = Scrape(daemon.metrics_port)
        if scrape.value("rkserve_inflight_requests") == 0 or time.monotonic() > until:
            return scrape
        time.sleep(0.02)


# --- requests, stages, models ------------------------------------------------------------


@pytest.fixture
def fake_daemon(tmp_path: Path) -> Iterator[Daemon]:
    models = fake_models(tmp_path / "models")
    d = Daemon(tmp_path, models, "--backend", "fake", "--fake-latency-ms", "5").start()
    yield d
    assert d.stop() == 0, d.log()


def test_request_counters_and_stage_histograms_count_exactly_what_was_sent(
    fake_daemon: Daemon,
) -> None:
    with fake_daemon.client() as client:
        for seed in range(7):
            client.classify("cls", jpeg(seed), top_k=2)
        for seed in range(3):
            client.segment("seg", jpeg(100 + seed), mask="raw")
        for junk in (b"not an image", b"\xff\xd8\xff\xe0 truncated jpeg"):
            with pytest.raises(BadImage):
                client.classify("cls", junk)
        with pytest.raises(UnknownModel):
            client.classify("nope", jpeg(0))
        with pytest.raises(BadRequest):
            client.classify("cls", jpeg(0), top_k=0)
        client.health()  # status requests are not counted
        client.models()
    scrape = settle(fake_daemon)

    assert scrape.types["rkserve_requests"] == "counter"
    assert scrape.by("rkserve_requests_total", "model", "code") == {
        ("cls", "ok"): 7,
        ("seg", "ok"): 3,
        ("cls", "bad_image"): 2,
        ("cls", "bad_request"): 1,  # refused at admission: labelled with the model it named
        ("", "unknown_model"): 1,  # a name no model has: not a label (clients choose it)
    }
    # Answered requests record the stages they went through: an image that does not decode
    # never reaches decode's end, so it counts in queue and total only; requests refused at
    # admission (unknown model, bad params) are never timed.
    counts = scrape.by("rkserve_request_duration_seconds_count", "model", "stage")
    full = ("queue", "decode", "preprocess", "inference", "postprocess", "total")
    expected = {("cls", stage): 7.0 for stage in full}
    expected.update({("cls", "queue"): 9.0, ("cls", "total"): 9.0})
    expected.update({("seg", stage): 3.0 for stage in full})
    assert counts == expected

    sums = scrape.by("rkserve_request_duration_seconds_sum", "model", "stage")
    assert sums[("cls", "inference")] >= 7 * 0.005  # the fake NPU sleeps 5 ms per call
    assert sums[("seg", "inference")] >= 3 * 0.005
    for model in ("cls", "seg"):
        parts = sum(sums[(model, s)] for s in full if s != "total")
        assert sums[(model, "total")] == pytest.approx(parts, rel=1e-6)  # queue is the rest

    buckets = scrape.by("rkserve_request_duration_seconds_bucket", "model", "stage", "le")
    bounds = sorted({float(le) for (m, s, le) in buckets if m == "cls" and s == "inference"})
    assert bounds == [*BUCKETS, math.inf]
    assert buckets[("cls", "inference", "0.002")] == 0  # every call took >= 5 ms
    assert buckets[("cls", "inference", "+Inf")] == 7
    assert buckets[("cls", "total", "+Inf")] == 9

    assert scrape.value("rkserve_inflight_requests") == 0
    assert scrape.by("rkserve_queue_depth", "model") == {("cls",): 0, ("seg",): 0}
    assert scrape.by("rkserve_model_ready", "model") == {("cls",): 1, ("seg",): 1}
    info = sorted(scrape.labels("rkserve_model_info"), key=lambda labels: labels["model"])
    assert info == [
        {
            "model": "cls",
            "task": "classification",
            "backend": "fake",
            "toolkit_version": "",  # no model.rknn in the folder: nothing to read
            "target_platform": "",
        },
        {
            "model": "seg",
            "task": "segmentation",
            "backend": "fake",
            "toolkit_version": "",
            "target_platform": "",
        },
    ]
    assert scrape.value("rkserve_model_info", **info[0]) == 1
    assert "rkserve_runtime_info" not in scrape.samples  # the fake backend probes no board
    assert scrape.value("process_resident_memory_bytes") > 10e6


def test_inflight_and_queue_depth_rise_while_requests_wait(tmp_path: Path) -> None:
    models = fake_models(tmp_path / "models")
    d = Daemon(tmp_path, models, "--backend", "fake", "--fake-latency-ms", "800").start()
    try:

        def one(seed: int) -> None:
            with d.client(timeout=20.0) as client:
                client.classify("cls", jpeg(seed))

        threads = [threading.Thread(target=one, args=(n,)) for n in range(3)]
        for t in threads:
            t.start()
        seen: Set[Tuple[float, float]] = set()

        def all_admitted() -> bool:  # one on the NPU (or about to be), two or three waiting
            return any(inflight == 3 and depth >= 2 for inflight, depth in seen)

        until = time.monotonic() + 5.0
        while time.monotonic() < until and not all_admitted():
            scrape = Scrape(d.metrics_port)
            depth = scrape.by("rkserve_queue_depth", "model").get(("cls",), 0.0)
            seen.add((scrape.value("rkserve_inflight_requests"), depth))
            time.sleep(0.02)
        for t in threads:
            t.join()
        assert all_admitted(), seen
        scrape = settle(d)
        assert scrape.value("rkserve_inflight_requests") == 0
        assert scrape.value("rkserve_queue_depth", model="cls") == 0
    finally:
        assert d.stop() == 0, d.log()


# --- the board: NPU gauges, runtime versions, refused models ------------------------------


def synthetic_model(folder: Path, toolkit: str, target: str, format_version: int = 6) -> Path:
    """A classifier folder with a minimal .rknn (32x32 input, 10 scores) the double runs."""
    folder.mkdir(parents=True, exist_ok=True)
    meta = {**SYNTHETIC_META, "version": toolkit, "target_platform": [target]}
    (folder / "model.rknn").write_bytes(container(format_version, b"", meta))
    (folder / "labels.txt").write_text("".join(f"class {i}\n" for i in range(10)))
    spec = "task: classification\nlabels: labels.txt\ninput: {size: 32}\n"
    (folder / "model.yaml").write_text(spec)
    return folder


def board_daemon(tmp_path: Path, board: Path, models: Path, *flags: str, soc: str) -> Daemon:
    """The daemon on a fixture board, rknnlite backend (the double), lite2 "installed"."""
    site = write_lite2(tmp_path / "site", LITE2)
    d = Daemon(
        tmp_path,
        models,
        "--backend",
        "rknnlite",
        "--sysroot",
        str(board),
        *flags,
        env={"RKNNLITE_DOUBLE_SOC": soc},
    )
    d.env["PYTHONPATH"] = os.pathsep.join([d.env["PYTHONPATH"], str(site)])
    return d


@pytest.mark.parametrize(
    "soc,lines,expected",
    [
        ("rk3568", ("NPU load:  37%\n", "NPU load:  80%\n"), ({"0": 0.37}, {"0": 0.8})),
        (
            "rk3588",
            (
                "NPU load:  Core0: 37%, Core1:  0%, Core2: 12%,\n",
                "NPU load:  Core0:  5%, Core1: 99%, Core2:  0%,\n",
            ),
            ({"0": 0.37, "1": 0.0, "2": 0.12}, {"0": 0.05, "1": 0.99, "2": 0.0}),
        ),
    ],
)
def test_npu_gauges_read_the_board_at_scrape_time(
    tmp_path: Path,
    soc: str,
    lines: Tuple[str, str],
    expected: Tuple[Dict[str, float], Dict[str, float]],
) -> None:
    board = make_board(tmp_path, soc=soc, **AFTER_UPDATE, freq=600_000_000)
    models = tmp_path / "models"
    models.mkdir()
    d = board_daemon(tmp_path, board, models, soc=soc).start()
    try:
        load_file = board / "sys/kernel/debug/rknpu/load"
        freq_file = board / f"sys/class/devfreq/{DEVFREQ_NODES[soc]}/cur_freq"

        def gauges() -> Tuple[Dict[str, float], float]:
            scrape = Scrape(d.metrics_port)
            load = {k[0]: v for k, v in scrape.by("rkserve_npu_load_ratio", "core").items()}
            return load, scrape.value("rkserve_npu_frequency_hertz")

        # debugfs unreadable (here: absent): the load family is exposed with no samples
        assert gauges() == ({}, 600e6)
        load_file.parent.mkdir(parents=True, exist_ok=True)
        load_file.write_text(lines[0])
        load, _ = gauges()
        assert load == pytest.approx(expected[0])
        load_file.write_text(lines[1])
        freq_file.write_text("1000000000\n")
        load, frequency = gauges()
        assert load == pytest.approx(expected[1]) and frequency == 1e9

        scrape = Scrape(d.metrics_port)
        assert scrape.types["rkserve_npu_load_ratio"] == "gauge"
        assert scrape.labels("rkserve_runtime_info") == [
            {
                "soc": soc,
                "driver": AFTER_UPDATE["driver"],
                "librknnrt": AFTER_UPDATE["librknnrt"],
                "rknn_server": AFTER_UPDATE["rknn_server"],
                "toolkit_lite2": LITE2,
            }
        ]
    finally:
        assert d.stop() == 0, d.log()


def test_refused_models_show_with_their_reason_and_the_others_serve(tmp_path: Path) -> None:
    board = make_board(tmp_path, soc="rk3568", **AFTER_UPDATE)
    models = tmp_path / "models"
    synthetic_model(models / "for_rk3566", toolkit="2.3.0", target="rk3566")
    synthetic_model(models / "for_rk3588", toolkit="2.3.0", target="rk3588")
    d = board_daemon(tmp_path, board, models, soc="rk3568").start()
    try:
        health = d.health()
        assert health["models"]["for_rk3566"] == {"ready": True, "state": "ready", "error": None}
        refused = health["models"]["for_rk3588"]
        assert refused["state"] == "refused" and not refused["ready"] and not health["ready"]
        assert "built for rk3588, not for this rk3568 (rk356x NPU)" in refused["error"]
        with d.client() as client:
            listed = {m["name"]: m for m in client.models()}
            assert listed["for_rk3588"]["error"] == refused["error"]
            for seed in range(2):
                assert len(client.classify("for_rk3566", jpeg(seed), top_k=3).classes) == 3
            with pytest.raises(ModelUnavailable, match="refused: built for rk3588"):
                client.classify("for_rk3588", jpeg(0))
        scrape = settle(d)
        assert scrape.by("rkserve_model_ready", "model") == {("for_rk3566",): 1, ("for_rk3588",): 0}
        assert scrape.labels("rkserve_model_info") == [
            {
                "model": "for_rk3566",
                "task": "classification",
                "backend": "rknnlite",
                "toolkit_version": "2.3.0",
                "target_platform": "rk3566",
            }
        ]
        assert scrape.by("rkserve_requests_total", "model", "code") == {
            ("for_rk3566", "ok"): 2,
            ("for_rk3588", "model_unavailable"): 1,
        }
        assert (
            scrape.value(
                "rkserve_runtime_info",
                soc="rk3568",
                toolkit_lite2=LITE2,
                **{k: AFTER_UPDATE[k] for k in ("driver", "librknnrt", "rknn_server")},
            )
            == 1
        )
    finally:
        assert d.stop() == 0, d.log()


def test_real_models_refused_on_an_old_runtime_then_served_after_its_update(tmp_path: Path) -> None:
    mobilenet = shared_rknn("built/mobilenet_v2_1.0_224_rk3568_i8_tk2.3.2.rknn")
    rk3588 = shared_rknn("rockchip/multiple_input_demo_RK3588_tk1.6.2.rknn")
    board = make_board(tmp_path, soc="rk3568", **BEFORE_UPDATE)
    models = tmp_path / "models"
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"class {i}\n" for i in range(1000)))
    spec = {"task": "classification", "input": {"size": 224}}
    write_model(models / "mobilenet", spec, rknn=mobilenet, labels=labels)
    write_model(models / "rk3588", spec, rknn=rk3588, labels=labels)
    synthetic_model(models / "legacy", toolkit="1.4.0", target="rk3566", format_version=2)
    d = board_daemon(tmp_path, board, models, soc="rk3568").start()
    try:
        states = d.health()["models"]
        assert states["legacy"]["state"] == "ready"
        assert states["mobilenet"]["state"] == states["rk3588"]["state"] == "refused"
        assert "RKNN format version 6 needs librknnrt >= 1.5.2" in states["mobilenet"]["error"]
        assert "built for rk3566" not in states["rk3588"]["error"]
        assert "built for rk3588, not for this rk3568" in states["rk3588"]["error"]
        with d.client() as client:
            assert client.classify("legacy", jpeg(1)).model == "legacy"
        scrape = settle(d)
        assert scrape.by("rkserve_model_ready", "model") == {
            ("legacy",): 1,
            ("mobilenet",): 0,
            ("rk3588",): 0,
        }
        assert (
            scrape.value(
                "rkserve_runtime_info",
                soc="rk3568",
                toolkit_lite2=LITE2,
                **{k: BEFORE_UPDATE[k] for k in ("driver", "librknnrt", "rknn_server")},
            )
            == 1
        )

        # The runtime update of the field notes, then a reload: same files, new verdicts.
        (board / LIBRKNNRT).write_bytes(fake_binary(librknnrt_line("2.3.0")))
        d.signal(signal.SIGHUP)
        d.wait(lambda h: h["models"]["mobilenet"]["state"] == "ready", timeout=30)
        scrape = settle(d)
        assert scrape.by("rkserve_model_ready", "model") == {
            ("legacy",): 1,
            ("mobilenet",): 1,
            ("rk3588",): 0,
        }
        assert scrape.labels("rkserve_runtime_info")[0]["librknnrt"] == "2.3.0"
        info = {i["model"]: i for i in scrape.labels("rkserve_model_info")}
        assert info["mobilenet"]["toolkit_version"] == "2.3.2"
        assert info["mobilenet"]["target_platform"] == "rk3568"
    finally:
        assert d.stop() == 0, d.log()


# --- the exporter's port -------------------------------------------------------------------


def listening_tcp_ports(pid: int) -> Set[int]:
    """TCP ports process ``pid`` listens on, from its socket fds and /proc/net/tcp{,6}."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def test_port_in_use_exits_with_one_clear_line(tmp_path: Path) -> None:
    models = fake_models(tmp_path / "models")
    d = Daemon(tmp_path, models, "--backend", "fake")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", d.metrics_port))
        taken.listen()
        d.start(wait_ready=False)
        assert d.proc is not None
        code = d.proc.wait(30)
        d.stop()
    lines = d.log().strip().splitlines()
    assert code != 0
    assert len(lines) == 1, lines
    assert "Traceback" not in lines[0]
    assert f"127.0.0.1:{d.metrics_port}" in lines[0]
    assert "metrics" in lines[0] and "in use" in lines[0]


def test_metrics_port_0_turns_the_exporter_off(tmp_path: Path) -> None:
    models = fake_models(tmp_path / "models")
    on = Daemon(tmp_path / "on", models, "--backend", "fake")
    off = Daemon(tmp_path / "off", models, "--backend", "fake", "--metrics-port", "0")
    for d in (on, off):
        d.start()
    try:
        assert off.proc is not None and on.proc is not None
        assert listening_tcp_ports(on.proc.pid) == {on.metrics_port}  # the control
        assert listening_tcp_ports(off.proc.pid) == set()
        with off.client() as client:
            assert client.classify("cls", jpeg(0)).model == "cls"
        with pytest.raises(urllib.error.URLError):
            Scrape(off.metrics_port)  # the port it was not given stays closed
    finally:
        assert on.stop() == 0, on.log()
        assert off.stop() == 0, off.log()
