"""Which device node is the NPU, which kernel driver runs it, and who may open it.

The node is not always ``/dev/dri/renderD129``: on an RK3568 image without a GPU driver the
NPU is the first DRM render node, ``renderD128``; older vendor kernels give ``/dev/rknpu``;
Linux 6.18+ can run the RK3588 NPU with the mainline ``rocket`` driver as
``/dev/accel/accel0``, which Rockchip's librknnrt cannot use. sysfs tells them apart: the
node whose device's device-tree node is named ``npu``, and the driver bound to it::

    >>> [n.path for n in npu_nodes(Path("/"))]
    ['/dev/dri/renderD129']
    >>> npu_device(Path("/")).accessible
    True

Like every probe this takes ``root`` and never raises on a missing or unreadable file.
"""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass, replace
from pathlib import Path
from typing import List, Optional, Tuple

__all__ = [
    "FALLBACK_PATHS",
    "LITE2_NODE",
    "NODE_CLASSES",
    "DeviceAccess",
    "NpuNode",
    "npu_device",
    "npu_nodes",
]

# (sysfs class folder, entries, their folder under /dev): DRM render nodes (the vendor
# rknpu driver), the misc device of older vendor kernels, DRM accel nodes (rocket)
NODE_CLASSES = (
    ("sys/class/drm", "renderD*", "dev/dri"),
    ("sys/class/misc", "rknpu", "dev"),
    ("sys/class/accel", "accel*", "dev/accel"),
)
# Looked for when sysfs names no NPU (a container without /sys, a fixture without it)
FALLBACK_PATHS = ("dev/dri/renderD129", "dev/rknpu")
# rknn-toolkit-lite2 2.3.0-2.5.0 refuse to start without this file, whatever the NPU's node
LITE2_NODE = "dev/dri/renderD129"
_DRIVERS = {"rknpu": "rknpu", "rocket": "rocket"}  # sysfs driver name, lower-cased → ours


@dataclass(frozen=True)
class NpuNode:
    """A device node sysfs says is the NPU's."""

    path: str  # as on the board: "/dev/dri/renderD128", "/dev/rknpu", "/dev/accel/accel0"
    driver: str  # "rknpu" (Rockchip's), "rocket" (mainline), or the name sysfs gives
    evidence: str  # the sysfs entry that says so, e.g. "/sys/class/drm/renderD128"


@dataclass(frozen=True)
class DeviceAccess:
    """The NPU device node librknnrt would open, and whether this process may use it."""

    path: Optional[str]  # as on the board, e.g. "/dev/dri/renderD129"; None if none found
    readable: bool = False
    writable: bool = False
    owner: str = ""
    group: str = ""  # the group that owns the node (render or video on vendor images)
    mode: str = ""  # e.g. "0660"
    user: str = ""  # who this process runs as
    user_groups: Tuple[str, ...] = ()
    present: bool = False  # the node exists under /dev (sysfs may name one that does not)
    driver: str = ""  # the kernel driver sysfs names for it; "" when sysfs said nothing
    evidence: str = ""  # the sysfs entry naming it; "" when found by its usual path only
    lite2_node: bool = False  # /dev/dri/renderD129, the file rknn-toolkit-lite2 insists on

    @property
    def exists(self) -> bool:
        return self.path is not None and self.present

    @property
    def accessible(self) -> bool:
        return self.readable and self.writable

    @property
    def in_group(self) -> bool:
        return bool(self.group) and self.group in self.user_groups


def _read_name(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8", "replace").strip("\0\n ")
    except (OSError, ValueError):
        return ""


def _driver(device: Path) -> str:
    try:
        name = os.path.basename(os.readlink(device / "driver")).lower()
    except OSError:
        return ""
    return _DRIVERS.get(name, name)


def npu_nodes(root: Path) -> List[NpuNode]:
    """Every node sysfs shows for the NPU (its device-tree node is named ``npu``, or the
    rknpu or rocket driver is bound to it), in :data:`NODE_CLASSES` order."""
    nodes = []
    for folder, pattern, dev in NODE_CLASSES:
        for entry in sorted((root / folder).glob(pattern)):
            device = entry / "device"
            driver = _driver(device)
            if _read_name(device / "of_node/name") == "npu" or driver in _DRIVERS.values():
                relative = f"{folder}/{entry.name}"
                nodes.append(NpuNode(f"/{dev}/{entry.name}", driver, "/" + relative))
    return nodes


def npu_device(root: Path) -> DeviceAccess:
    """The node librknnrt would use: the first NPU node of a driver other than rocket that
    sysfs names (present under /dev or not), else the first of :data:`FALLBACK_PATHS` that
    exists; ``path`` None when there is neither."""
    lite2 = (root / LITE2_NODE).exists()
    usable = [n for n in npu_nodes(root) if n.driver != "rocket"]
    if usable:
        node = usable[0]
        relative = node.path.lstrip("/")
        if not (root / relative).exists() and _mapped_in(root, node):
            evidence = f"{node.evidence}, mapped in as /{LITE2_NODE}"
            return _access(root, LITE2_NODE, node.driver, evidence, lite2)
        return _access(root, relative, node.driver, node.evidence, lite2)
    for relative in FALLBACK_PATHS:
        if (root / relative).exists():
            return _access(root, relative, "", "", lite2)
    user, groups = _identity()
    return DeviceAccess(path=None, user=user, user_groups=groups, lite2_node=lite2)


def _mapped_in(root: Path, node: NpuNode) -> bool:
    """Is ``/dev/dri/renderD129`` the NPU under another name, as a container gets it with
    ``--device /dev/dri/renderD128:/dev/dri/renderD129``? Yes when its device number is the
    NPU's, or (numbers unknown) when the host's sysfs has no renderD129 of its own."""
    try:
        rdev = (root / LITE2_NODE).stat().st_rdev
    except OSError:
        return False
    number = _read_name(root / node.evidence.lstrip("/") / "dev")  # "226:128"
    if rdev and number:
        return number == f"{os.major(rdev)}:{os.minor(rdev)}"
    return not (root / "sys/class/drm" / os.path.basename(LITE2_NODE)).exists()


def _access(root: Path, relative: str, driver: str, evidence: str, lite2: bool) -> DeviceAccess:
    user, groups = _identity()
    path = root / relative
    named = DeviceAccess(
        "/" + relative,
        user=user,
        user_groups=groups,
        driver=driver,
        evidence=evidence,
        lite2_node=lite2,
    )
    try:
        stat = path.stat()
    except OSError:
        return named
    return replace(
        named,
        readable=os.access(path, os.R_OK),
        writable=os.access(path, os.W_OK),
        owner=_user_name(stat.st_uid),
        group=_group_name(stat.st_gid),
        mode=f"{stat.st_mode & 0o7777:04o}",
        present=True,
    )


def _identity() -> Tuple[str, Tuple[str, ...]]:
    gids = sorted({os.getegid(), *os.getgroups()})
    return _user_name(os.geteuid()), tuple(_group_name(gid) for gid in gids)


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
