"""rkserve.board.rknnfile against every shared .rknn file, synthetic containers and broken files."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import tempfile
import tracemalloc
from pathlib import Path
from typing import Any, Dict, NamedTuple, Optional, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rkserve.board.rknnfile import RknnInfo, describe, parse_version, read_rknn
from rkserve.board.rknnops import custom_ops
from rkserve.errors import RknnFileError
from tests.helpers import run_rkserve

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("RKSERVE_SHARED_DATA") or REPO.parent / "shared" / "data")
RKNN_DIR = SHARED / "rknn"


class Facts(NamedTuple):
    """What data/README.md says about a file (dtypes and layouts as the file states them)."""

    format_version: int
    toolkit: str
    compiler: str
    platform: str
    inputs: Tuple[Tuple[str, Tuple[int, ...], str], ...]  # (name, shape, dtype)
    outputs: Tuple[Tuple[str, Tuple[int, ...], str], ...]


MULTI_IN = (("input.1", (1, 1, 128, 128), "int8"), ("input", (1, 3, 128, 128), "int8"))
MULTI_OUT = (("8", (1, 8, 128, 128), "int8"),)
EXPECTED: Dict[str, Facts] = {
    "rockchip/multiple_input_demo_RK3566_RK3568_tk1.6.2.rknn": Facts(
        6, "1.6.2-source_code", "1.6.2b0", "rk3566", MULTI_IN, MULTI_OUT
    ),
    "rockchip/multiple_input_demo_RK3566_RK3568_tk1.3.4.rknn": Facts(
        2, "1.3.4-source_code", "1.4.2b4", "rk3566", MULTI_IN, MULTI_OUT
    ),
    "rockchip/multiple_input_demo_RK356X_tk1.1.0.rknn": Facts(
        1,
        "1.1.0",
        "1.1.0",
        "rk3566",
        (("input.1", (1, 1, 128, 128), "uint8"), ("input", (1, 3, 128, 128), "uint8")),
        (("8", (1, 8, 128, 128), "float32"),),
    ),
    "rockchip/multiple_input_demo_RK3588_tk1.6.2.rknn": Facts(
        6, "1.6.2-source_code", "1.6.2b0", "rk3588", MULTI_IN, MULTI_OUT
    ),
    "rockchip/dual_residual_custom_RK3566_RK3568_tk1.6.1.rknn": Facts(
        6,
        "1.6.1-source_code",
        "1.6.1b12",
        "rk3566",
        (("0", (1, 3, 10, 10), "float16"), ("1", (1, 3, 10, 10), "float16")),
        (("2", (1, 3, 10, 10), "float16"), ("3", (1, 3, 10, 10), "float16")),
    ),
    "rockchip/pp_human_segv2_custom_argmax_RK3566_RK3568_tk2.3.1.rknn": Facts(
        6,
        "2.3.1-source_code",
        "2.3.2",
        "rk3566",
        (("x", (1, 3, 192, 192), "int8"),),
        (("argmax_0.tmp_0", (1, 192, 192), "int64"),),
    ),
    "thirdparty/yolov5n-640-640-rk3568_tk2.3.2_thirdparty.rknn": Facts(
        6,
        "2.3.2",
        "2.3.2",
        "rk3568",
        (("images", (1, 3, 640, 640), "int8"),),
        (
            ("output0", (1, 255, 80, 80), "int8"),
            ("343", (1, 255, 40, 40), "int8"),
            ("345", (1, 255, 20, 20), "int8"),
        ),
    ),
    "built/mobilenet_v2_1.0_224_rk3568_i8_tk2.3.2.rknn": Facts(
        6,
        "2.3.2",
        "2.3.2",
        "rk3568",
        (("input", (1, 3, 224, 224), "int8"),),
        (("output", (1, 1000), "float16"),),
    ),
    "built/deeplabv3_257_voc_rk3568_i8_tk2.3.2.rknn": Facts(
        6,
        "2.3.2",
        "2.3.2",
        "rk3568",
        (("input", (1, 3, 257, 257), "int8"),),
        (("output", (1, 21, 257, 257), "int8"),),
    ),
    "built/multiple_input_demo_rk3568_i8_tk2.3.2.rknn": Facts(
        6, "2.3.2", "2.3.2", "rk3568", MULTI_IN, MULTI_OUT
    ),
}


def shared_file(rel: str) -> Path:
    if not RKNN_DIR.is_dir():
        pytest.skip(f"shared test data not found at {RKNN_DIR} (set RKSERVE_SHARED_DATA)")
    return RKNN_DIR / rel


# --- every shared file --------------------------------------------------------------------


def test_every_shared_file_has_expected_facts() -> None:
    shared_file("")
    found = {p.relative_to(RKNN_DIR).as_posix() for p in RKNN_DIR.rglob("*.rknn")}
    assert found == set(EXPECTED)


@pytest.mark.parametrize("rel", sorted(EXPECTED))
def test_shared_file_facts(rel: str) -> None:
    path = shared_file(rel)
    facts = EXPECTED[rel]
    info = read_rknn(path)
    assert info.path == str(path)
    assert info.size == path.stat().st_size
    assert info.format_version == facts.format_version
    assert info.toolkit_version == facts.toolkit
    assert info.compiler_version == facts.compiler
    assert info.target_platforms == (facts.platform,)
    assert info.toolkit_release == parse_version(facts.toolkit)
    assert [(t.name, t.shape, t.dtype) for t in info.inputs] == list(facts.inputs)
    assert [(t.name, t.shape, t.dtype) for t in info.outputs] == list(facts.outputs)


@pytest.mark.parametrize("rel", sorted(EXPECTED))
def test_layouts_declared_nchw_runtime_nhwc_inputs(rel: str) -> None:
    info = read_rknn(shared_file(rel))
    for tensor in info.inputs + info.outputs:
        if len(tensor.shape) == 4:
            assert tensor.layout == "nchw"
        else:
            assert (tensor.layout, tensor.runtime_layout) == ("undefined", "undefined")
    assert {t.runtime_layout for t in info.inputs} == {"nhwc"}
    assert {t.runtime_layout for t in info.outputs if len(t.shape) == 4} <= {"nchw"}


@pytest.mark.parametrize(
    ("rel", "mean", "std"),
    [
        ("rockchip/pp_human_segv2_custom_argmax_RK3566_RK3568_tk2.3.1.rknn", 127.5, 127.5),
        ("built/deeplabv3_257_voc_rk3568_i8_tk2.3.2.rknn", 127.5, 127.5),
        ("built/mobilenet_v2_1.0_224_rk3568_i8_tk2.3.2.rknn", 127.0, 127.5),
        ("thirdparty/yolov5n-640-640-rk3568_tk2.3.2_thirdparty.rknn", 0.0, 255.0),
    ],
)
def test_mean_std_of_image_inputs(rel: str, mean: float, std: float) -> None:
    info = read_rknn(shared_file(rel))
    assert info.inputs[0].mean == (mean,) * 3
    assert info.inputs[0].std == (std,) * 3
    assert all(t.mean is None and t.std is None for t in info.outputs)


def test_mean_std_per_input_and_absent_in_old_formats() -> None:
    new = read_rknn(shared_file("rockchip/multiple_input_demo_RK3566_RK3568_tk1.6.2.rknn"))
    assert [(t.mean, t.std) for t in new.inputs] == [((0.0,), (1.0,)), ((0.0,) * 3, (1.0,) * 3)]
    for rel in (
        "rockchip/multiple_input_demo_RK3566_RK3568_tk1.3.4.rknn",
        "rockchip/multiple_input_demo_RK356X_tk1.1.0.rknn",
    ):
        assert all(t.mean is None and t.std is None for t in read_rknn(shared_file(rel)).inputs)


def test_to_dict_is_json_and_complete() -> None:
    info = read_rknn(shared_file("built/mobilenet_v2_1.0_224_rk3568_i8_tk2.3.2.rknn"))
    data = json.loads(json.dumps(info.to_dict()))
    assert data["toolkit_version"] == "2.3.2"
    assert data["target_platforms"] == ["rk3568"]
    assert data["inputs"][0]["shape"] == [1, 3, 224, 224]
    assert data["inputs"][0]["mean"] == [127.0] * 3
    assert data["outputs"][0] == {
        "name": "output",
        "shape": [1, 1000],
        "dtype": "float16",
        "layout": "undefined",
        "mean": None,
        "std": None,
        "runtime_layout": "undefined",
    }


def test_describe_shows_tensors() -> None:
    info = read_rknn(
        shared_file("rockchip/pp_human_segv2_custom_argmax_RK3566_RK3568_tk2.3.1.rknn")
    )
    text = describe(info)
    assert "2.3.1-source_code (compiler 2.3.2)" in text
    assert "rk3566" in text
    x_row = next(line for line in text.splitlines() if line.split()[0] == "x")
    assert (
        x_row.split()[1:]
        == ["[1,", "3,", "192,", "192]", "int8", "nchw", "nhwc"]
        + [
            "[127.5,",
            "127.5,",
            "127.5]",
        ]
        * 2
    )
    assert any(line.split()[:2] == ["argmax_0.tmp_0", "[1,"] for line in text.splitlines())


# --- parse_version --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("librknnrt version: 2.3.0 (c949ad889d@2024-11-07T11:35:33)", (2, 3, 0)),
        ("rknn_server version: 2.3.0 (e80ac5c build@2024-11-07T12:52:53)", (2, 3, 0)),
        ("RKNPU driver: v0.8.2", (0, 8, 2)),
        ("1.6.2-source_code", (1, 6, 2)),
        ("1.6.2b0", (1, 6, 2)),
        ("2.3.2(compiler version: 2.3.2 (e045de294f@2025-04-07T19:48:25))", (2, 3, 2)),
        ("1.5", (1, 5, 0)),
        ("10.12.3", (10, 12, 3)),
        ("", (0, 0, 0)),
        ("unknown", (0, 0, 0)),
    ],
)
def test_parse_version(text: str, expected: Tuple[int, int, int]) -> None:
    assert parse_version(text) == expected


# --- synthetic containers (no shared data needed) -------------------------------------------


def flatbuffer(strings: Dict[int, str]) -> bytes:
    """A flatbuffer with identifier RKNN whose root table has string fields ``strings``."""
    count = max(strings) + 1
    vtable_at = 8
    vtable = struct.pack(
        f"<HH{count}H",
        4 + 2 * count,
        4 + 4 * count,
        *(4 + 4 * i if i in strings else 0 for i in range(count)),
    )
    root = vtable_at + len(vtable) + (-(vtable_at + len(vtable)) % 4)
    blob_at = root + 4 + 4 * count
    fields, blobs = [], b""
    for index in range(count):
        if index not in strings:
            fields.append(0)
            continue
        fields.append(blob_at + len(blobs) - (root + 4 + 4 * index))
        data = strings[index].encode()
        blobs += struct.pack("<I", len(data)) + data + b"\0"
        blobs += b"\0" * (-len(blobs) % 4)
    head = struct.pack("<I", root) + b"RKNN" + vtable
    head += b"\0" * (root - len(head))
    return head + struct.pack(f"<i{count}I", root - vtable_at, *fields) + blobs


def container(
    version: int = 6,
    payload: bytes = b"",
    meta: Optional[Dict[str, Any]] = None,
    payload_length: Optional[int] = None,
) -> bytes:
    header_size = 0x18 if version == 1 else 0x40
    length = len(payload) if payload_length is None else payload_length
    header = b"RKNN\0\0\0\0" + struct.pack("<QQ", version, length)
    header += b"\0" * (header_size - len(header))
    text = json.dumps(meta if meta is not None else SYNTHETIC_META).encode()
    return header + payload + struct.pack("<Q", len(text)) + text


SYNTHETIC_META: Dict[str, Any] = {
    "graph": [
        {"left": "output", "left_tensor_id": 0, "right": "norm_tensor", "right_tensor_id": 0},
        {"left": "input", "left_tensor_id": 0, "right": "norm_tensor", "right_tensor_id": 1},
    ],
    "norm_tensor": [
        {"tensor_id": 0, "url": "probs", "size": [1, 10], "dtype": {"vx_type": ""}},
        {"tensor_id": 1, "url": "image", "size": [1, 3, 32, 32], "dtype": {"vx_type": "int8"}},
    ],
    "ori_network_platform": "ONNX",
    "target_platform": ["RK3568", "rk3566"],
    "version": "2.3.2",
}
SYNTHETIC_STRINGS = {
    3: "{'attrs': {'image': {'layout': 'nchw', 'mean': [1, 2, 3], 'std': [4.5, 5, 6]}},"
    " 'quant_tab': {'probs': {'min': [-inf], 'max': [inf], 'ori_min': [nan]}}}",
    7: "2.3.2(compiler version: 2.3.2b1 (0123abcdef@2025-01-01T00:00:00))",
    8: "rk3568",
    12: '{"image": {"dtype": "int8", "layout": "NHWC"}}',
    13: '{"probs": {"dtype": "float16", "layout": "NCHW"}}',
}


@pytest.mark.parametrize("version", [1, 2, 6])
def test_synthetic_container(tmp_path: Path, version: int) -> None:
    path = tmp_path / "model.rknn"
    path.write_bytes(container(version, flatbuffer(SYNTHETIC_STRINGS)))
    info = read_rknn(path)
    assert info.format_version == version
    assert (info.toolkit_version, info.compiler_version) == ("2.3.2", "2.3.2b1")
    assert info.target_platforms == ("rk3568", "rk3566")
    (image,) = info.inputs
    assert image == image.__class__(
        "image", (1, 3, 32, 32), "int8", "nchw", (1.0, 2.0, 3.0), (4.5, 5.0, 6.0), "nhwc"
    )
    (probs,) = info.outputs
    assert (probs.name, probs.shape, probs.dtype, probs.layout) == (
        "probs",
        (1, 10),
        "float16",
        "undefined",
    )


def test_without_payload_strings_falls_back_to_json(tmp_path: Path) -> None:
    path = tmp_path / "model.rknn"
    path.write_bytes(container(6, b"\xff" * 256))
    info = read_rknn(path)
    assert (info.toolkit_version, info.compiler_version) == ("2.3.2", "")
    assert [(t.name, t.shape, t.dtype, t.layout, t.mean) for t in info.inputs] == [
        ("image", (1, 3, 32, 32), "int8", "nchw", None)
    ]
    assert info.outputs[0].dtype == ""


def test_large_payload_is_skipped_not_read(tmp_path: Path) -> None:
    path = tmp_path / "big.rknn"
    head = container(6, flatbuffer(SYNTHETIC_STRINGS))
    payload_length = 512 << 20
    with path.open("wb") as fh:  # sparse: the 512 MiB of payload cost no disk
        fh.write(head[: 0x40 + len(flatbuffer(SYNTHETIC_STRINGS))])
        fh.seek(0x40 + payload_length)
        fh.write(head[0x40 + len(flatbuffer(SYNTHETIC_STRINGS)) :])
    with path.open("r+b") as fh:
        fh.seek(16)
        fh.write(struct.pack("<Q", payload_length))
    tracemalloc.start()
    try:
        info = read_rknn(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.inputs[0].name == "image"
    assert peak < 1 << 20


# --- broken files ----------------------------------------------------------------------------


def expect_error(path: Path, *parts: str) -> str:
    with pytest.raises(RknnFileError) as caught:
        read_rknn(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    for part in parts:
        assert part in message
    assert caught.value.code == "bad_rknn_file"
    return message


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.rknn"
    path.write_bytes(b"")
    expect_error(path, "empty")


def test_onnx_file(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\x08\x07\x12\x07tf2onnx" + b"\0" * 100)
    expect_error(path, "not an RKNN model", r"b'\x08\x07\x12\x07'", "b'RKNN'", "rkserve convert")


def test_jpeg_file(tmp_path: Path) -> None:
    path = tmp_path / "photo.rknn"
    path.write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF" + b"\0" * 100)
    expect_error(path, "not an RKNN model", "JPEG")


def test_short_header(tmp_path: Path) -> None:
    path = tmp_path / "short.rknn"
    path.write_bytes(b"RKNN\0\0\0\0\x06\0")
    expect_error(path, "truncated", "header")


def test_bogus_payload_length(tmp_path: Path) -> None:
    path = tmp_path / "bogus.rknn"
    path.write_bytes(container(6, flatbuffer(SYNTHETIC_STRINGS), payload_length=10**12))
    expect_error(path, "truncated", "payload", f"{path.stat().st_size:,} bytes")


def test_no_json_after_payload(tmp_path: Path) -> None:
    path = tmp_path / "nojson.rknn"
    payload = flatbuffer(SYNTHETIC_STRINGS)
    path.write_bytes(container(6, payload)[: 0x40 + len(payload)])
    expect_error(path, "truncated", "no metadata JSON")


def test_short_json(tmp_path: Path) -> None:
    path = tmp_path / "shortjson.rknn"
    path.write_bytes(container(6, flatbuffer(SYNTHETIC_STRINGS))[:-10])
    expect_error(path, "truncated", "metadata JSON")


@pytest.mark.parametrize(
    ("text", "why"), [(b"{not json", "not valid"), (b"[1, 2]", "not an object")]
)
def test_bad_json(tmp_path: Path, text: bytes, why: str) -> None:
    path = tmp_path / "badjson.rknn"
    path.write_bytes(container(6, b"")[:0x40] + struct.pack("<Q", len(text)) + text)
    expect_error(path, "metadata JSON", why)


def test_directory(tmp_path: Path) -> None:
    expect_error(tmp_path, "directory")


def test_missing_file(tmp_path: Path) -> None:
    expect_error(tmp_path / "nope.rknn", "no such file")


def test_path_through_a_file(tmp_path: Path) -> None:
    parent = tmp_path / "model.rknn"
    parent.write_bytes(b"RKNN")
    expect_error(parent / "child.rknn", "cannot read", "Not a directory")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads anything")
def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "locked.rknn"
    path.write_bytes(container(6, flatbuffer(SYNTHETIC_STRINGS)))
    path.chmod(0)
    expect_error(path, "cannot read", "Permission denied")


@pytest.mark.parametrize(
    "rel",
    [
        "rockchip/multiple_input_demo_RK356X_tk1.1.0.rknn",
        "rockchip/multiple_input_demo_RK3566_RK3568_tk1.3.4.rknn",
        "built/mobilenet_v2_1.0_224_rk3568_i8_tk2.3.2.rknn",
    ],
)
def test_truncated_real_files(tmp_path: Path, rel: str) -> None:
    data = shared_file(rel).read_bytes()
    json_length = len(data) - data.rindex(b'{"connection"')  # the JSON ends every shared file
    payload_end = len(data) - json_length - 8
    for keep in (
        10,
        0x30,
        len(data) // 2,
        payload_end,
        payload_end + 4,
        len(data) - json_length // 2,
    ):
        path = tmp_path / f"cut{keep}.rknn"
        path.write_bytes(data[:keep])
        expect_error(path, "truncated")


@settings(max_examples=300, deadline=None)
@given(
    prefix=st.sampled_from([b"", b"RKNN", b"RKNN\0\0\0\0"]),
    body=st.binary(max_size=400),
    flips=st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), max_size=6),
)
def test_garbage_only_raises_rknn_file_error(prefix: bytes, body: bytes, flips: Any) -> None:
    data = (
        bytearray(prefix + body) if body else bytearray(container(6, flatbuffer(SYNTHETIC_STRINGS)))
    )
    for at, value in flips:
        if data:
            data[at % len(data)] = value
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.rknn"
        path.write_bytes(bytes(data))
        try:
            info = read_rknn(path)
        except RknnFileError:
            return
    assert isinstance(info, RknnInfo)
    json.dumps(info.to_dict())
    describe(info)


# --- rkserve inspect -------------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return run_rkserve("inspect", *args, timeout=60)


@pytest.mark.process
def test_cli_text() -> None:
    path = shared_file("rockchip/multiple_input_demo_RK3566_RK3568_tk1.6.2.rknn")
    done = run_cli(str(path))
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert str(path) in done.stdout
    assert "1.6.2-source_code (compiler 1.6.2b0)" in done.stdout
    assert "[1, 1, 128, 128]" in done.stdout and "[1, 8, 128, 128]" in done.stdout


@pytest.mark.process
def test_cli_json() -> None:
    paths = [shared_file(rel) for rel in sorted(EXPECTED)]
    done = run_cli("--json", *map(str, paths))
    assert done.returncode == 0, done.stderr
    listed = json.loads(done.stdout)
    assert [item["path"] for item in listed] == [str(p) for p in paths]
    assert listed == [{**read_rknn(p).to_dict(), "custom_ops": list(custom_ops(p))} for p in paths]


@pytest.mark.process
def test_cli_bad_file_fails_but_reports_the_others(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.rknn", tmp_path / "bad.onnx"
    good.write_bytes(container(6, flatbuffer(SYNTHETIC_STRINGS)))
    bad.write_bytes(b"\x08\x07\x12\x07tf2onnx")
    done = run_cli(str(bad), str(good))
    assert done.returncode == 1
    assert f"{bad}: not an RKNN model" in done.stderr
    assert "Traceback" not in done.stderr
    assert str(good) in done.stdout and "image" in done.stdout
    done = run_cli("--json", str(good), str(bad))
    assert done.returncode == 1
    assert [item["path"] for item in json.loads(done.stdout)] == [str(good)]
    assert f"{bad}: not an RKNN model" in done.stderr
