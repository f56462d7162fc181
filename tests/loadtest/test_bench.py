"""``rkserve bench`` against a real daemon, and the fast segmentation argmax."""

from __future__ import annotations

import csv
import json
import os
import platform
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from rkserve import memory
from rkserve.kernels import segment
from rkserve.loadtest import percentile
from rkserve.loadtest.report import COLUMNS
from tools.harness import Daemon, fake_models

STAGE_COLUMNS = [c for c in COLUMNS if c.startswith("server_")]


@pytest.fixture
def daemon(tmp_path):
    models = fake_models(tmp_path / "models")
    d = Daemon(
        tmp_path, models, "--backend", "fake", "--fake-latency-ms", "2", "--queue-size", "32"
    )
    yield d.start()
    assert d.stop() == 0, d.log()


def bench(daemon, tmp_path, *args):
    """``rkserve bench`` in a subprocess → (exit code, CSV rows, JSON document, output)."""
    out_csv, out_json = tmp_path / "bench.csv", tmp_path / "bench.json"
    command = [sys.executable, "-m", "rkserve", "bench", "-e", daemon.endpoint, *args]
    command += ["--warmup", "0.2", "--csv", str(out_csv), "--json", str(out_json)]
    proc = subprocess.run(
        command, env=daemon.env, capture_output=True, text=True, timeout=120, cwd=str(tmp_path)
    )
    output = proc.stdout + proc.stderr
    assert out_csv.exists() and out_json.exists(), output
    with out_csv.open(newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames or ()) == COLUMNS
        rows = list(reader)
    return proc.returncode, rows, json.loads(out_json.read_text()), output


@pytest.mark.process
def test_bench_closed_loop_counts_every_request(daemon, tmp_path):
    image = tmp_path / "a.jpg"
    cv2.imwrite(str(image), np.random.default_rng(1).integers(0, 255, (60, 80, 3), np.uint8))
    code, rows, doc, output = bench(
        daemon, tmp_path, "-m", "cls", "--images", str(tmp_path / "*.jpg"),
        "-c", "1,4", "--requests", "60", "--param", "top_k=2",
    )  # fmt: skip
    assert code == 0, output
    assert [int(r["concurrency"]) for r in rows] == [1, 4]
    for row, step in zip(rows, doc["steps"]):
        assert int(row["requests"]) == int(row["ok"]) == 60 and int(row["errors"]) == 0
        assert row["error_codes"] == "" and step["errors"] == {}
        p50, p90, p99 = (float(row[f"latency_p{p}_ms"]) for p in (50, 90, 99))
        assert 2.0 <= p50 <= p90 <= p99 <= float(row["latency_max_ms"])  # the NPU takes 2 ms
        # a counted step: the answer rate between the first and the last answer
        assert float(row["throughput_rps"]) * float(row["seconds"]) == pytest.approx(59, rel=0.01)
        assert all(float(row[c]) >= 0 for c in STAGE_COLUMNS)
        assert float(row["server_inference_ms"]) >= 2.0
        assert float(row["server_total_ms"]) <= p50 * 2
    assert doc["plan"]["inputs"] == [{"image_bytes": image.stat().st_size}]
    assert doc["plan"]["params"] == {"top_k": 2} and doc["machine"]["cores"]
    assert "req/s" in output and "p99" in output


@pytest.mark.process
def test_bench_open_loop_and_errors_by_code(daemon, tmp_path):
    (tmp_path / "models" / "seg" / "fake-fault").write_text("raise")
    code, rows, doc, output = bench(
        daemon, tmp_path, "-m", "seg", "--tensor", "24x32", "--rate", "100,200",
        "-c", "4", "--requests", "40", "--param", "mask=none",
    )  # fmt: skip
    assert code == 1, output  # failed requests make the run fail
    assert [float(r["rate"]) for r in rows] == [100.0, 200.0]
    for row, step in zip(rows, doc["steps"]):
        assert int(row["requests"]) == 40 and int(row["ok"]) == 0
        assert row["error_codes"] == "backend_error=40" and step["errors"] == {"backend_error": 40}
        assert row["latency_p50_ms"] == "" and step["latency_ms"]["p50"] is None
        # 40 requests due 10 ms (5 ms) apart take about 0.4 s (0.2 s)
        assert 0.3 < float(row["seconds"]) * float(row["rate"]) / 40 < 2.0
    assert doc["plan"]["inputs"] == [{"tensor_shape": [24, 32, 3]}]


@pytest.mark.process
def test_bench_timed_steps_count_the_answers_inside_the_window(daemon, tmp_path):
    code, rows, doc, output = bench(daemon, tmp_path, "-m", "cls", "-c", "2", "--duration", "1")
    assert code == 0, output
    (row,) = rows
    assert float(row["seconds"]) == 1.0 and int(row["requests"]) == int(row["ok"]) > 20
    assert float(row["throughput_rps"]) == int(row["ok"])  # answers in one second
    # two workers and a 2 ms NPU: at most one answer per 2 ms
    assert float(row["throughput_rps"]) <= 500
    assert doc["plan"]["inputs"] == [{"tensor_shape": [32, 32, 3]}]  # the model's input size


@pytest.mark.process
def test_bench_ends_a_step_when_no_reply_comes(tmp_path):
    command = [sys.executable, "-m", "rkserve", "bench", "-e", f"ipc://{tmp_path}/nobody"]
    command += ["-m", "cls", "--tensor", "8x8", "-c", "2", "--requests", "50", "--timeout", "0.5"]
    started = time.monotonic()
    proc = subprocess.run(
        [*command, "--warmup", "0", "--csv", str(tmp_path / "b.csv")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert proc.returncode == 1, proc.stderr
    assert time.monotonic() - started < 10  # not 50 requests x 0.5 s / 2 workers
    with (tmp_path / "b.csv").open(newline="") as f:
        (row,) = csv.DictReader(f)
    assert row["ok"] == "0" and row["error_codes"] == f"unavailable={row['requests']}"
    assert 1 <= int(row["requests"]) <= 2  # each worker's first request, then the step ends


@pytest.mark.process
def test_bench_refuses_an_unknown_model_and_missing_images(daemon, tmp_path):
    base = [sys.executable, "-m", "rkserve", "bench", "-e", daemon.endpoint, "--duration", "1"]
    for extra, message in (
        (["-m", "nope"], "no model named 'nope'"),
        (["-m", "cls", "--images", str(tmp_path / "none*.jpg")], "no image file matches"),
        (["-m", "cls", "--concurrency", "0,2"], "values must be positive"),
    ):
        proc = subprocess.run(
            base + extra, env=daemon.env, capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 1 and message in proc.stderr, proc.stderr


def minor_faults(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[7])


@pytest.mark.process
@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the top pad is a glibc setting")
@pytest.mark.parametrize("malloc", ["daemon's", "128 kB"])
def test_requests_reuse_memory_instead_of_faulting_it_in(tmp_path, malloc):
    models = fake_models(tmp_path / "models")
    # "128 kB": a fixed 128 kB mmap threshold and glibc's default trimming, as before
    old = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TOP_PAD_": "131072"}
    env = {} if malloc == "daemon's" else old
    d = Daemon(tmp_path, models, "--backend", "fake", env=env).start()
    image = np.random.default_rng(2).integers(0, 255, (480, 640, 3), np.uint8)
    # 25 kB on the wire (messages over 128 kB are still mapped afresh), 900 kB decoded
    jpeg = cv2.imencode(".jpg", cv2.GaussianBlur(image, (0, 0), 8))[1].tobytes()
    try:
        with d.client() as client:
            for _ in range(20):
                client.infer("cls", jpeg)
            before = minor_faults(d.proc.pid)
            for _ in range(100):
                client.infer("cls", jpeg)
            per_request = (minor_faults(d.proc.pid) - before) / 100
    finally:
        assert d.stop() == 0, d.log()
    if malloc == "daemon's":
        assert per_request < 20
    else:
        assert per_request > 200  # the decoded image is mapped afresh every time


@pytest.mark.process  # ctypes.util.find_library runs ldconfig
def test_keep_top_pad_respects_the_environment(monkeypatch):
    monkeypatch.setenv("MALLOC_TOP_PAD_", "0")
    assert memory.keep_top_pad() is False
    monkeypatch.delenv("MALLOC_TOP_PAD_")
    assert memory.keep_top_pad() is (platform.libc_ver()[0] == "glibc")


def test_onnx_backend_threads_sleep_instead_of_spinning(tmp_path):
    from rkserve.backends import open_backend
    from rkserve.tasks import load_spec
    from tests.helpers import shared

    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model.onnx").symlink_to(shared("onnx", "mobilenet_v2_1.0_224_dequant_fp32.onnx"))
    (folder / "model.yaml").write_text("task: classification\ninput: {size: 224}\n")
    backend = open_backend("onnx", load_spec(folder))
    options = backend._session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert [percentile(values, p) for p in (1, 50, 90, 99, 100)] == [1, 50, 90, 99, 100]
    assert percentile([7.0], 99) == 7.0


@st.composite
def score_maps(draw: st.DrawFn) -> np.ndarray:
    shape = (
        draw(st.integers(1, 24)),
        draw(st.integers(1, 40)),
        draw(st.integers(1, 40)),
    )
    dtype = draw(st.sampled_from([np.float32, np.float16, np.float64]))
    # a few distinct values make ties common; specials check NaN and infinity handling
    pool = draw(
        st.lists(
            st.sampled_from([0.0, -0.0, 1.0, -1.5, 2.0, np.inf, -np.inf, np.nan]),
            min_size=1,
            max_size=4,
        )
        | st.lists(st.floats(-1e4, 1e4, width=16), min_size=1, max_size=6)
    )
    return draw(hnp.arrays(dtype, shape, elements=st.sampled_from(pool)))


@settings(max_examples=300, deadline=None)
@given(score_maps())
def test_argmax_channels_equals_numpy(scores):
    assert (segment.argmax_channels(scores) == np.argmax(scores, axis=0)).all()


@pytest.mark.parametrize("shape", [(19, 512, 512), (21, 257, 257), (3, 1000, 7)])
def test_argmax_channels_equals_numpy_across_blocks(shape):
    rng = np.random.default_rng(sum(shape))
    scores = rng.standard_normal(shape).astype(np.float32)
    scores[1, ::7] = scores[0, ::7]  # ties spanning several row blocks
    scores[:, -1, -1] = 3.0  # a pixel where every class ties
    expected = np.argmax(scores, axis=0)
    assert expected[-1, -1] == 0
    assert (segment.argmax_channels(scores) == expected).all()


def test_argmax_channels_refuses_more_classes_than_uint8_holds():
    with pytest.raises(ValueError, match="257 classes"):
        segment.argmax_channels(np.zeros((257, 2, 2), np.float32))


def test_class_counts_equal_bincount_across_float32_slices(monkeypatch):
    rng = np.random.default_rng(5)
    classes = rng.integers(0, 7, (123, 77)).astype(np.uint8)
    expected = np.bincount(classes.reshape(-1), minlength=256)
    assert (segment.class_counts(classes) == expected).all()
    monkeypatch.setattr(segment, "_EXACT_FLOAT32", 1000)  # several slices, the last one short
    assert (segment.class_counts(classes) == expected).all()


def test_overlay_equals_the_plain_numpy_blend():
    rng = np.random.default_rng(6)
    rgb = rng.integers(0, 256, (37, 53, 3)).astype(np.uint8)
    classes = rng.integers(0, 5, (37, 53)).astype(np.uint8)
    palette = segment.palette_array([(10, 200, 30), (255, 0, 0)])
    expected = cv2.addWeighted(rgb, 0.5, palette[classes], 0.5, 0.0)
    expected[classes == 0] = rgb[classes == 0]
    assert (segment.overlay(rgb, classes, palette) == expected).all()
    short = segment.overlay(rgb, classes, palette[:3])  # classes 3, 4 have no colour: black
    assert (short[classes == 1] == expected[classes == 1]).all()
    black = cv2.addWeighted(rgb, 0.5, np.zeros_like(rgb), 0.5, 0.0)
    assert (short[classes == 4] == black[classes == 4]).all()


def test_indexed_png_decodes_to_the_class_map():
    rng = np.random.default_rng(7)
    classes = rng.integers(0, 19, (40, 300)).astype(np.uint8)
    classes[10:20] = classes[9]  # repeated rows, as nearest-neighbour scaling makes
    png = segment.indexed_png(classes, segment.palette_array(None))
    start = png.index(b"IDAT") + 4
    (length,) = struct.unpack(">I", png[start - 8 : start - 4])
    rows = np.frombuffer(zlib.decompress(png[start : start + length]), np.uint8)
    rows = rows.reshape(classes.shape[0], classes.shape[1] + 1)
    assert (rows[:, 0] == 2).all()  # the "Up" filter: each byte minus the one above
    assert (np.cumsum(rows[:, 1:], axis=0, dtype=np.uint8) == classes).all()
    decoded = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
    assert (decoded == segment.palette_array(None)[classes]).all()
