"""Fixture boards: filesystem trees holding the exact strings real Rockchip boards show.

``make_board(tmp_path, ...)`` writes ``/proc/device-tree/compatible``, the RKNPU driver
version, a fake ``librknnrt.so`` and ``rknn_server`` (random bytes around the real version
lines), debugfs load/freq, devfreq and a device node stand-in. The reference board of the
field notes is ``make_board(tmp, **BEFORE_UPDATE)``, then ``**AFTER_UPDATE``.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import stat
import struct
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional

from rkserve.board.probes import npu_family
from rkserve.board.rknnfile import RknnInfo
from tests.helpers import shared

ROOT = Path(__file__).resolve().parents[1]

DEBUGFS_VERSION = "sys/kernel/debug/rknpu/version"
LIBRKNNRT = "usr/lib/librknnrt.so"
LIBRKNNRT_BUILD = "c949ad889d@2024-11-07T11:35:33"
RKNN_SERVER_BUILD = "e80ac5c build@2024-11-07T12:52:53"
DEVFREQ_NODES = {"rk3566": "fde40000.npu", "rk3568": "fde40000.npu", "rk3588": "fdab0000.npu"}
# sysfs of the NPU and GPU: the platform device, its device-tree node's name and compatible,
# and the driver bound to it. "RKNPU" is the vendor driver's platform driver name
# (rknpu_drv.c); rocket binds each core's "rockchip,rk3588-rknn-core" node.
NPU_DEVICES = {"rk356x": "fde40000.npu", "rk3588": "fdab0000.npu"}
NPU_COMPATIBLE = {"rk356x": "rockchip,rk3568-rknpu", "rk3588": "rockchip,rk3588-rknpu"}
ROCKET_COMPATIBLE = "rockchip,rk3588-rknn-core"
GPU_DEVICES = {"rk356x": ("fde60000.gpu", "panfrost"), "rk3588": ("fb000000.gpu", "panthor")}
# major:minor in sysfs's "dev" files: DRM render nodes are 226:128 up, accel 261:N, misc 10:N
DEVICE_NUMBERS = {"renderD128": "226:128", "renderD129": "226:129", "accel0": "261:0"}
CONTAINER_FILES = {"docker": ".dockerenv", "kubernetes": "var/run/secrets/kubernetes.io/token"}

# The seed board of the field notes, before and after its runtime update.
BEFORE_UPDATE: Dict[str, Any] = {"driver": "0.8.2", "librknnrt": "1.5.0", "rknn_server": "2.3.0"}
AFTER_UPDATE: Dict[str, Any] = {"driver": "0.8.2", "librknnrt": "2.3.0", "rknn_server": "2.3.0"}


def _write(root: Path, relative: str, data: bytes, mode: Optional[int] = None) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mode is not None:
        path.chmod(mode)
    return path


def noise(size: int, seed: int) -> bytes:
    """Deterministic random bytes, like the code around a version string in a binary."""
    return random.Random(seed).getrandbits(8 * size).to_bytes(size, "little") if size else b""


def fake_binary(marker: str, before: int = 200_000, after: int = 50_000, seed: int = 1) -> bytes:
    """A stand-in ELF: random bytes with one NUL-terminated version line at ``before``."""
    return noise(before, seed) + marker.encode() + b"\0" + noise(after, seed + 1)


def librknnrt_line(version: str) -> str:
    return f"librknnrt version: {version} ({LIBRKNNRT_BUILD})"


def make_board(
    tmp_path: Path,
    soc: Optional[str] = "rk3568",
    driver: Optional[str] = "0.8.2",
    driver_path: str = DEBUGFS_VERSION,
    librknnrt: Optional[str] = "1.5.0",
    librknnrt_path: str = LIBRKNNRT,
    rknn_server: Optional[str] = "2.3.0",
    load: Optional[str] = None,
    freq: Optional[int] = None,
    device: Optional[str] = "dev/dri/renderD129",
    device_mode: int = 0o660,
    sysfs: Optional[str] = "same",
    npu_driver: str = "RKNPU",
    compatible: Optional[str] = None,
    container: Optional[str] = None,
) -> Path:
    """A board's filesystem under ``tmp_path / "board"``; ``None`` leaves a part out.

    ``sysfs`` is the node sysfs names for the NPU (``"same"``: ``device``; ``None``: no
    sysfs at all), with ``npu_driver`` bound to it (``"rocket"``: the mainline driver);
    ``compatible`` replaces the board entry of ``/proc/device-tree/compatible``;
    ``container`` (``docker``, ``kubernetes``) writes that engine's marker file.
    """
    root = tmp_path / "board"
    root.mkdir(parents=True, exist_ok=True)
    if soc is not None:
        board = compatible or f"rockchip,{soc}-evb1-ddr4-v10"
        _write(root, "proc/device-tree/compatible", f"{board}\0rockchip,{soc}\0".encode())
    if driver is not None:
        _write(root, driver_path, f"RKNPU driver: v{driver}\n".encode())
    if librknnrt is not None:
        _write(root, librknnrt_path, fake_binary(librknnrt_line(librknnrt)))
    if rknn_server is not None:
        line = f"rknn_server version: {rknn_server} ({RKNN_SERVER_BUILD})"
        _write(root, "usr/bin/rknn_server", fake_binary(line, 30_000, 5_000, seed=7), 0o755)
    if load is not None:
        _write(root, "sys/kernel/debug/rknpu/load", load.encode())
    if freq is not None:
        node = NPU_DEVICES.get(npu_family(soc or "rk3568"), "fde40000.npu")
        _write(root, f"sys/class/devfreq/{node}/cur_freq", f"{freq}\n".encode())
    if device is not None:
        _write(root, device, b"", device_mode)
    node = device if sysfs == "same" else sysfs
    if node is not None:
        write_sysfs(root, node, npu_family(soc or "rk3568"), npu_driver)
    if container is not None:
        _write(root, CONTAINER_FILES[container], b"")
    return root


def write_sysfs(root: Path, node: str, family: str, driver: str = "RKNPU") -> None:
    """sysfs of a board whose NPU is ``node`` (``dev/dri/renderD129``, ``dev/dri/renderD128``,
    ``dev/rknpu``, ``dev/accel/accel0``) bound to ``driver``; a GPU takes renderD128 when the
    NPU does not. Links are relative, as in sysfs, so they resolve under any root."""
    family = family if family in NPU_DEVICES else "rk356x"
    compatible = ROCKET_COMPATIBLE if driver == "rocket" else NPU_COMPATIBLE[family]
    _platform_device(root, NPU_DEVICES[family], "npu", compatible, driver)
    _class_link(root, NPU_DEVICES[family], node)
    if node != "dev/dri/renderD128":
        gpu, gpu_driver = GPU_DEVICES[family]
        _platform_device(root, gpu, "gpu", f"arm,mali-{gpu_driver}", gpu_driver)
        _class_link(root, gpu, "dev/dri/renderD128")


def _platform_device(root: Path, name: str, of_name: str, compatible: str, driver: str) -> None:
    device = root / "sys/devices/platform" / name
    _write(device, "of_node/name", of_name.encode() + b"\0")
    _write(device, "of_node/compatible", compatible.encode() + b"\0")
    _write(root / "sys/bus/platform/drivers" / driver, "uevent", b"", 0o200)  # as sysfs has it
    _link(device / "driver", f"../../../bus/platform/drivers/{driver}")


def _class_link(root: Path, platform_device: str, node: str) -> None:
    """``/sys/class/<class>/<node>`` → the node under its platform device, whose ``device``
    links back to that device."""
    folder, name = node.rsplit("/", 1)
    kind = {"dev/dri": "drm", "dev": "misc", "dev/accel": "accel"}[folder]
    under = root / "sys/devices/platform" / platform_device / kind / name
    under.mkdir(parents=True, exist_ok=True)
    (under / "dev").write_text(DEVICE_NUMBERS.get(name, "10:121") + "\n")
    _link(under / "device", "../../../" + platform_device)
    _link(
        root / "sys/class" / kind / name, f"../../devices/platform/{platform_device}/{kind}/{name}"
    )


def _link(path: Path, target: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.exists():
        path.unlink()
    path.symlink_to(target)


def write_lite2(site: Path, version: str) -> Path:
    """An installed-looking rknn-toolkit-lite2 (its dist-info) in the folder ``site``."""
    info = site / f"rknn_toolkit_lite2-{version}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    metadata = f"Metadata-Version: 2.1\nName: rknn-toolkit-lite2\nVersion: {version}\n"
    (info / "METADATA").write_text(metadata, encoding="utf-8")
    return site


def rknn_info(toolkit: str = "2.3.2", target: str = "rk3568", format_version: int = 6) -> RknnInfo:
    """Metadata of a model that is not on disk: the synthetic twin of a real .rknn."""
    return RknnInfo(
        path=f"synthetic_{target}_tk{toolkit}.rknn",
        size=0,
        format_version=format_version,
        toolkit_version=toolkit,
        compiler_version=toolkit,
        target_platforms=(target,),
        inputs=(),
        outputs=(),
    )


def write_rknn(path: Path, toolkit: str, target: str, format_version: int = 6) -> Path:
    """A minimal .rknn: the header, an empty payload and the metadata JSON (data/README.md)."""
    meta = json.dumps({"version": toolkit, "target_platform": [target]}).encode()
    payload = bytes(64)
    header = b"RKNN" + bytes(4) + struct.pack("<QQ", format_version, len(payload))
    data = header + bytes(0x40 - len(header)) + payload + struct.pack("<Q", len(meta)) + meta
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def shared_rknn(name: str) -> Path:
    """A real .rknn under ../shared/data/rknn (``built/x.rknn``); :func:`helpers.shared`
    skips (fails in CI) when it is absent."""
    return shared("rknn", name)


def open_tmp() -> Iterator[Path]:
    """A temporary folder any user may enter (pytest's tmp_path is private to its owner)."""
    folder = Path(tempfile.mkdtemp(prefix="rkserve-board-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        for path in [folder, *folder.rglob("*")]:
            if path.is_dir() and not path.is_symlink():
                path.chmod(stat.S_IRWXU)
        shutil.rmtree(folder)


def call_unprivileged(func: Callable[..., Any], *args: Any) -> Any:
    """``func(*args)`` in a forked child running as nobody when we are root (else as us).

    Root reads every file, so permission failures can only be seen from another user.
    """
    readable, writable = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        try:
            os.close(readable)
            _drop_privileges()
            payload = pickle.dumps(("ok", func(*args)))
        except BaseException as exc:
            payload = pickle.dumps(("error", repr(exc)))
        try:
            with os.fdopen(writable, "wb") as out:
                out.write(payload)
        finally:
            os._exit(0)
    os.close(writable)
    with os.fdopen(readable, "rb") as stream:
        data = stream.read()
    os.waitpid(pid, 0)
    kind, value = pickle.loads(data)
    if kind != "ok":
        raise AssertionError(f"unprivileged call failed: {value}")
    return value


def _drop_privileges() -> None:
    if os.geteuid() == 0:
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
