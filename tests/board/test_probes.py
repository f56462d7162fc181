"""The probes against fixture boards holding the strings real boards show."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Iterator

import pytest

from rkserve.board import probes
from tests.boards import (
    call_unprivileged,
    fake_binary,
    librknnrt_line,
    make_board,
    noise,
    open_tmp,
    write_lite2,
)


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    yield from open_tmp()


@pytest.mark.parametrize(
    "compatible, expected",
    [
        ("rockchip,rk3568-evb1-ddr4-v10\0rockchip,rk3568\0", "rk3568"),
        ("radxa,rock3a\0rockchip,rk3568\0", "rk3568"),
        ("pine64,quartz64-a\0rockchip,rk3566\0", "rk3566"),
        ("xunlong,orangepi-5\0rockchip,rk3588s\0", "rk3588s"),
        ("rockchip,rk3566-box-demo\0", "rk3566"),
        ("raspberrypi,4-model-b\0brcm,bcm2711\0", None),
        ("", None),
    ],
)
def test_soc_from_device_tree(tmp_path: Path, compatible: str, expected: str) -> None:
    root = make_board(tmp_path, soc=None)
    (root / "proc/device-tree").mkdir(parents=True)
    (root / "proc/device-tree/compatible").write_bytes(compatible.encode())
    assert probes.soc(root) == expected


def test_soc_without_device_tree(tmp_path: Path) -> None:
    assert probes.soc(make_board(tmp_path, soc=None)) is None


@pytest.mark.parametrize(
    "soc, family",
    [
        ("rk3566", "rk356x"),
        ("rk3568", "rk356x"),
        ("rk3588", "rk3588"),
        ("RK3588S", "rk3588"),
        ("rk3576", "rk3576"),
        ("rk3562", "rk3562"),
        ("rv1126", "rv1126"),
    ],
)
def test_npu_family(soc: str, family: str) -> None:
    assert probes.npu_family(soc) == family


@pytest.mark.parametrize(
    "relative, text, version",
    [
        ("sys/kernel/debug/rknpu/version", "RKNPU driver: v0.8.2\n", "0.8.2"),
        ("proc/rknpu/version", "RKNPU driver: v0.9.6\n", "0.9.6"),
        ("sys/module/rknpu/version", "0.9.6\n", "0.9.6"),
    ],
)
def test_driver_version_from_each_source(
    tmp_path: Path, relative: str, text: str, version: str
) -> None:
    root = make_board(tmp_path, driver=None)
    (root / relative).parent.mkdir(parents=True)
    (root / relative).write_text(text)
    assert probes.driver_version(root) == (version, "/" + relative)


def test_driver_version_prefers_debugfs(tmp_path: Path) -> None:
    root = make_board(tmp_path, driver="0.9.2")
    (root / "proc/rknpu").mkdir(parents=True)
    (root / "proc/rknpu/version").write_text("RKNPU driver: v0.8.8\n")
    assert probes.driver_version(root) == ("0.9.2", "/sys/kernel/debug/rknpu/version")


def test_driver_version_absent_or_garbled(tmp_path: Path) -> None:
    root = make_board(tmp_path, driver=None)
    assert probes.driver_version(root) is None
    (root / "proc/rknpu").mkdir(parents=True)
    (root / "proc/rknpu/version").write_text("RKNPU driver: unknown\n")
    assert probes.driver_version(root) is None


def test_unreadable_debugfs_falls_back(shared_tmp: Path) -> None:
    root = make_board(shared_tmp, driver="0.9.6")
    (root / "proc/rknpu").mkdir(parents=True)
    (root / "proc/rknpu/version").write_text("RKNPU driver: v0.9.6\n")
    (root / "sys/kernel/debug").chmod(0)  # debugfs is root-only on real boards
    assert call_unprivileged(probes.driver_version, root) == ("0.9.6", "/proc/rknpu/version")
    (root / "proc/rknpu/version").unlink()
    assert call_unprivileged(probes.driver_version, root) is None


@pytest.mark.parametrize("relative", probes.DEFAULT_LIBRKNNRT_PATHS)
def test_librknnrt_in_each_standard_path(tmp_path: Path, relative: str) -> None:
    root = make_board(tmp_path, librknnrt="2.3.0", librknnrt_path=relative)
    assert probes.librknnrt_version(root) == ("2.3.0", Path("/") / relative)


def test_librknnrt_custom_path_and_absence(tmp_path: Path) -> None:
    root = make_board(tmp_path, librknnrt="1.5.0", librknnrt_path="opt/rk/librknnrt.so")
    assert probes.librknnrt_version(root) is None
    found = probes.librknnrt_version(root, ["/opt/rk/librknnrt.so"])
    assert found == ("1.5.0", Path("/opt/rk/librknnrt.so"))


def test_librknnrt_without_version_string(tmp_path: Path) -> None:
    root = make_board(tmp_path, librknnrt=None)
    (root / "usr/lib").mkdir(parents=True)
    (root / "usr/lib/librknnrt.so").write_bytes(noise(10_000, 3) + b"librknnrt version: %s\0")
    assert probes.librknnrt_version(root) == ("unknown", Path("/usr/lib/librknnrt.so"))


@pytest.mark.parametrize("version", ["2.3.0", "1.5.0", "2.3.10"])
def test_version_split_across_chunks(tmp_path: Path, version: str) -> None:
    line = librknnrt_line(version).encode()
    chunk = 4096
    for cut in range(1, len(line)):  # the chunk boundary falls inside the line at ``cut``
        path = tmp_path / f"lib{cut}.so"
        path.write_bytes(noise(chunk - cut, cut) + line + b"\0" + noise(5000, 99))
        assert probes.scan_version(path, b"librknnrt version:", chunk_size=chunk) == version


def test_version_at_end_of_file(tmp_path: Path) -> None:
    path = tmp_path / "lib.so"
    path.write_bytes(noise(100, 1) + b"librknnrt version: 2.3.1")
    assert probes.scan_version(path, b"librknnrt version:", chunk_size=64) == "2.3.1"


def test_replaced_library_is_read_again(tmp_path: Path) -> None:
    root = make_board(tmp_path, librknnrt="1.5.0")
    assert probes.librknnrt_version(root) == ("1.5.0", Path("/usr/lib/librknnrt.so"))
    lib = root / "usr/lib/librknnrt.so"
    lib.write_bytes(fake_binary(librknnrt_line("2.3.0"), before=123_456))
    os.utime(lib, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert probes.librknnrt_version(root) == ("2.3.0", Path("/usr/lib/librknnrt.so"))


def test_full_size_library_scan_is_fast(tmp_path: Path) -> None:
    lib = tmp_path / "librknnrt.so"  # ~7 MB like the real one, version string near the end
    lib.write_bytes(fake_binary(librknnrt_line("2.3.0"), before=7_000_000, after=200_000))
    started = time.perf_counter()
    assert probes.scan_version(lib, b"librknnrt version:") == "2.3.0"
    assert time.perf_counter() - started < 2.0


def test_rknn_server_version(tmp_path: Path) -> None:
    assert probes.rknn_server_version(make_board(tmp_path / "a")) == "2.3.0"
    assert probes.rknn_server_version(make_board(tmp_path / "b", rknn_server=None)) is None


def test_toolkit_lite2_from_metadata(tmp_path: Path) -> None:
    assert probes.toolkit_lite2_version([str(tmp_path)]) is None
    write_lite2(tmp_path, "2.3.2")
    assert probes.toolkit_lite2_version([str(tmp_path)]) == "2.3.2"


def test_device_found_in_order(tmp_path: Path) -> None:
    drm = probes.npu_device(make_board(tmp_path / "a"))
    assert (drm.path, drm.exists, drm.accessible) == ("/dev/dri/renderD129", True, True)
    assert drm.mode == "0660"
    misc = probes.npu_device(make_board(tmp_path / "b", device="dev/rknpu"))
    assert misc.path == "/dev/rknpu"
    none = probes.npu_device(make_board(tmp_path / "c", device=None))
    assert (none.path, none.exists, none.accessible) == (None, False, False)


def test_device_denied_to_other_users(shared_tmp: Path) -> None:
    root = make_board(shared_tmp, device_mode=0)
    device = call_unprivileged(probes.npu_device, root)
    assert device.exists
    assert not device.readable and not device.writable
    assert not device.in_group
    assert device.group and device.group not in device.user_groups
    (root / "dev/dri/renderD129").chmod(0o666)
    assert call_unprivileged(probes.npu_device, root).accessible


@pytest.mark.parametrize(
    "text, expected",
    [
        ("NPU load:  37%\n", {"0": 0.37}),
        ("NPU load:  Core0: 37%, Core1: 0%, Core2: 0%,\n", {"0": 0.37, "1": 0.0, "2": 0.0}),
        ("NPU load:  Core0: 100%, Core1: 12%, Core2: 5%,\n", {"0": 1.0, "1": 0.12, "2": 0.05}),
        ("", {}),
    ],
)
def test_npu_load(tmp_path: Path, text: str, expected: dict) -> None:
    assert probes.npu_load(make_board(tmp_path, load=text)) == pytest.approx(expected)


def test_npu_load_unreadable(shared_tmp: Path) -> None:
    root = make_board(shared_tmp, load="NPU load:  37%\n")
    assert probes.npu_load(root) == pytest.approx({"0": 0.37})
    (root / "sys/kernel/debug").chmod(0)
    assert call_unprivileged(probes.npu_load, root) == {}
    assert probes.npu_load(make_board(shared_tmp / "none", load=None)) == {}


@pytest.mark.parametrize("soc, node", [("rk3568", "fde40000.npu"), ("rk3588", "fdab0000.npu")])
def test_npu_frequency_from_devfreq(tmp_path: Path, soc: str, node: str) -> None:
    root = make_board(tmp_path, soc=soc, freq=600000000)
    assert (root / "sys/class/devfreq" / node / "cur_freq").is_file()
    assert probes.npu_frequency_hz(root) == 600e6


def test_npu_frequency_falls_back_to_debugfs(tmp_path: Path) -> None:
    root = make_board(tmp_path)
    assert probes.npu_frequency_hz(root) is None
    (root / "sys/kernel/debug/rknpu/freq").write_text("1000000000\n")
    assert probes.npu_frequency_hz(root) == 1e9
