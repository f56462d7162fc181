"""Read-only probes of the Rockchip NPU stack: SoC, driver, librknnrt, device node, load.

Every probe takes ``root`` (default ``/``) and reads the board's files below it, so tests
run against fixture trees holding the exact strings seen on real boards. Probes never
import the runtime, never raise on a missing or unreadable file (they return ``None``,
``{}`` or a :class:`DeviceAccess` saying so) and are cheap enough to run at every metrics
scrape. The strings they parse are listed in ``docs/DOCTOR.md``::

    >>> soc(Path("/"))
    'rk3568'
    >>> driver_version(Path("/"))
    ('0.9.6', '/sys/kernel/debug/rknpu/version')
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .devices import FALLBACK_PATHS, DeviceAccess, NpuNode, npu_device, npu_nodes

__all__ = [
    "CONTAINER_MARKS",
    "DEFAULT_LIBRKNNRT_PATHS",
    "DEVICE_PATHS",
    "DRIVER_VERSION_PATHS",
    "RKNN_SERVER_PATH",
    "SUPPORTED_SOCS",
    "DeviceAccess",
    "NpuNode",
    "container",
    "driver_version",
    "librknnrt_version",
    "npu_device",
    "npu_family",
    "npu_frequency_hz",
    "npu_load",
    "npu_nodes",
    "rknn_server_version",
    "scan_version",
    "shown",
    "soc",
    "supported_soc",
    "toolkit_lite2_version",
]

ROOT = Path("/")

# Tried in this order: debugfs is what Rockchip documents but needs root; procfs exists on
# older vendor kernels; the module parameter file only when rknpu is built as a module.
DRIVER_VERSION_PATHS = (
    "sys/kernel/debug/rknpu/version",
    "proc/rknpu/version",
    "sys/module/rknpu/version",
)
DEFAULT_LIBRKNNRT_PATHS = (
    "usr/lib/librknnrt.so",
    "usr/lib64/librknnrt.so",
    "usr/local/lib/librknnrt.so",
    "usr/lib/aarch64-linux-gnu/librknnrt.so",
)
RKNN_SERVER_PATH = "usr/bin/rknn_server"
DEVICE_PATHS = FALLBACK_PATHS
DEBUGFS_LOAD = "sys/kernel/debug/rknpu/load"
DEBUGFS_FREQ = "sys/kernel/debug/rknpu/freq"
DEVFREQ_GLOB = "sys/class/devfreq/*.npu/cur_freq"

# NPU generation per SoC: models are compiled for a family, not a chip. A letter after the
# number is a variant of the same chip (rk3588s, and the Rock 5C's rk3588f, are RK3588s).
_FAMILIES = {
    "rk3566": "rk356x",
    "rk3568": "rk356x",
    "rk3588": "rk3588",
    "rk3576": "rk3576",
    "rk3562": "rk3562",
}
SUPPORTED_SOCS = tuple(_FAMILIES)
_VARIANT = re.compile(r"(r[kv]\d{4})[a-z]?")
# Files that exist only inside a container, and the engine that put them there
CONTAINER_MARKS = (
    ("var/run/secrets/kubernetes.io", "kubernetes"),
    ("run/secrets/kubernetes.io", "kubernetes"),
    ("run/.containerenv", "podman"),
    (".dockerenv", "docker"),
)
_CGROUP_WORDS = (("kubepods", "kubernetes"), ("libpod", "podman"), ("docker", "docker"))
_NPU_CORES = {"rk3588": 3, "rk3576": 2}  # by family; the others have one core


def npu_cores(soc_name: Optional[str]) -> int:
    """NPU cores of a SoC (RK3588: 3, RK3576: 2, RK3566/RK3568 and unknown: 1)."""
    return _NPU_CORES.get(npu_family(soc_name), 1) if soc_name else 1


_SOC_NAME = re.compile(r"r[kv]\d{4}[a-z]?")
_VERSION = re.compile(r"v?(\d+\.\d+\.\d+)")
_CHUNK = 1 << 20
_SCAN_CACHE: Dict[Tuple[str, bytes, int, int, int], Optional[str]] = {}


def _read_text(path: Path) -> Optional[str]:
    try:
        return path.read_bytes().decode("utf-8", "replace")
    except (OSError, ValueError):
        return None


def shown(relative: str) -> str:
    """How a path looks on the board, whatever the probe's root."""
    return "/" + relative


def soc(root: Path = ROOT) -> Optional[str]:
    """The SoC named in ``/proc/device-tree/compatible``, e.g. ``"rk3568"``.

    The file lists NUL-separated entries from most to least specific
    (``rockchip,rk3568-evb1-ddr4-v10\\0rockchip,rk3568\\0``); an exact SoC entry wins over
    a board entry that merely starts with one.
    """
    text = _read_text(root / "proc/device-tree/compatible")
    if text is None:
        return None
    names = [entry.split(",", 1)[1] for entry in text.split("\0") if entry.startswith("rockchip,")]
    exact = [name for name in names if _SOC_NAME.fullmatch(name)]
    if exact:
        return exact[0]
    for name in names:
        match = _SOC_NAME.match(name)
        if match:
            return match.group(0)
    return None


def chip(soc_name: str) -> str:
    """The chip a SoC name is a variant of: ``rk3588f`` and ``rk3588s`` → ``rk3588``."""
    name = soc_name.strip().lower()
    match = _VARIANT.fullmatch(name)
    return match.group(1) if match else name


def npu_family(soc_name: str) -> str:
    """The NPU family models are compiled for: rk3566 and rk3568 are both ``"rk356x"``,
    rk3588s and rk3588f are ``"rk3588"``.

    Unknown names are returned lower-cased, so two equal unknown SoCs still match.
    """
    name = soc_name.strip().lower()
    return _FAMILIES.get(chip(name), name)


def supported_soc(soc_name: str) -> bool:
    """True for the SoCs rknn-toolkit-lite2 supports (RKNPU2 with a Python runtime), and
    their lettered variants."""
    return chip(soc_name) in SUPPORTED_SOCS


def container(root: Path = ROOT) -> Optional[str]:
    """``"docker"``, ``"podman"`` or ``"kubernetes"`` when this runs in a container (its
    marker files, then ``/proc/1/cgroup``), else None."""
    for relative, engine in CONTAINER_MARKS:
        if (root / relative).exists():
            return engine
    cgroup = _read_text(root / "proc/1/cgroup") or ""
    return next((engine for word, engine in _CGROUP_WORDS if word in cgroup), None)


def driver_version(root: Path = ROOT) -> Optional[Tuple[str, str]]:
    """``(version, file it came from)`` of the RKNPU kernel driver, or None if unreadable.

    Parses ``RKNPU driver: v0.8.2`` and a bare ``0.9.6``; tries
    :data:`DRIVER_VERSION_PATHS` in order.
    """
    for relative in DRIVER_VERSION_PATHS:
        text = _read_text(root / relative)
        if text is None:
            continue
        match = _VERSION.search(text)
        if match:
            return match.group(1), shown(relative)
    return None


def librknnrt_version(
    root: Path = ROOT, paths: Sequence[str] = DEFAULT_LIBRKNNRT_PATHS
) -> Optional[Tuple[str, Path]]:
    """``(version, path on the board)`` of the first librknnrt.so found among ``paths``.

    ``paths`` are taken relative to ``root`` (a leading ``/`` is ignored). The version is
    the one in the library's ``librknnrt version: 2.3.0 (c949ad889d@...)`` string; a
    library without a readable version string gives ``("unknown", path)``.
    """
    for candidate in paths:
        relative = str(candidate).lstrip("/")
        path = root / relative
        if path.is_file():
            return scan_version(path, b"librknnrt version:") or "unknown", ROOT / relative
    return None


def rknn_server_version(root: Path = ROOT) -> Optional[str]:
    """Version of ``/usr/bin/rknn_server`` (the PC debugging proxy), None if absent."""
    path = root / RKNN_SERVER_PATH
    if not path.is_file():
        return None
    return scan_version(path, b"rknn_server version:") or "unknown"


def scan_version(path: Path, marker: bytes, chunk_size: int = _CHUNK) -> Optional[str]:
    """The ``x.y.z`` following ``marker`` inside a binary file, read in chunks.

    Results are cached per (path, inode, size, mtime): the real library is ~7 MB and this
    runs at metrics scrape time.
    """
    try:
        stat = path.stat()
    except OSError:
        return None
    key = (str(path), marker, stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if key not in _SCAN_CACHE:
        _SCAN_CACHE[key] = _scan(path, marker, chunk_size)
    return _SCAN_CACHE[key]


def _scan(path: Path, marker: bytes, chunk_size: int) -> Optional[str]:
    pattern = re.compile(re.escape(marker) + rb"\s*v?(\d+\.\d+\.\d+)")
    keep = len(marker) + 64  # enough to carry a marker and its version over a boundary
    tail = b""
    try:
        with path.open("rb") as stream:
            while True:
                chunk = stream.read(chunk_size)
                buffer = tail + chunk
                match = pattern.search(buffer)
                # A match touching the buffer's end may still grow ("2.3.0" -> "2.3.01").
                if match and (match.end() < len(buffer) or not chunk):
                    return match.group(1).decode()
                if not chunk:
                    return None
                tail = buffer[-keep:]
    except OSError:
        return None


def toolkit_lite2_version(path: Optional[Sequence[str]] = None) -> Optional[str]:
    """Installed version of rknn-toolkit-lite2 from package metadata (``path``: sys.path)."""
    import importlib.metadata as metadata

    search = list(path) if path is not None else sys.path
    try:
        for dist in metadata.distributions(name="rknn-toolkit-lite2", path=search):
            return str(dist.version)
    except (OSError, ValueError):
        pass
    return None


def npu_load(root: Path = ROOT) -> Dict[str, float]:
    """NPU load per core as a 0..1 ratio, e.g. ``{"0": 0.37}``; ``{}`` if unreadable.

    Reads debugfs (root only): ``NPU load:  37%`` on one-core NPUs and
    ``NPU load:  Core0: 37%, Core1: 0%, Core2: 0%,`` on RK3588.
    """
    text = _read_text(root / DEBUGFS_LOAD)
    if text is None:
        return {}
    cores = re.findall(r"Core(\d+):\s*(\d+(?:\.\d+)?)\s*%", text)
    if not cores:
        single = re.search(r"NPU load:\s*(\d+(?:\.\d+)?)\s*%", text)
        cores = [("0", single.group(1))] if single else []
    return {core: float(percent) / 100.0 for core, percent in cores}


def npu_frequency_hz(root: Path = ROOT) -> Optional[float]:
    """Current NPU clock in Hz from devfreq (world-readable), else from debugfs."""
    candidates: List[Path] = sorted(root.glob(DEVFREQ_GLOB))
    candidates.append(root / DEBUGFS_FREQ)
    for path in candidates:
        text = _read_text(path)
        match = re.search(r"\d+", text or "")
        if match:
            return float(match.group(0))
    return None
