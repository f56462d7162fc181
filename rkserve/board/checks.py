"""Does this board's NPU stack fit together, and can it run this model?

The policy is a set of pure functions over :mod:`rkserve.board.probes` results, applied by the
daemon at start-up and at every model load and printed by ``rkserve doctor``::

    >>> board = probe_board()
    >>> [c.status for c in board_checks(board)]
    ['OK', 'WARN', 'OK', 'OK', 'OK', 'OK']
    >>> refusal(model_checks(board, read_rknn("models/mobilenet_v2/model.rknn")))
    None

Every :class:`Check` names what it read, what is wrong and the command that fixes it. The
version rules come from Rockchip's release notes and user reports (``docs/DOCTOR.md``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from . import probes
from .devices import LITE2_NODE, DeviceAccess, NpuNode
from .probes import DEFAULT_LIBRKNNRT_PATHS, npu_family
from .rknnfile import RknnInfo, parse_version

__all__ = [
    "FAIL",
    "OK",
    "SKIP",
    "WARN",
    "Board",
    "Check",
    "board_checks",
    "model_checks",
    "probe_board",
    "refusal",
]

OK, WARN, FAIL, SKIP = "OK", "WARN", "FAIL", "SKIP"
# A FAIL of any of these and no model can run on the NPU: no SoC the wheel accepts, the rocket
# driver, no librknnrt, no rknn-toolkit-lite2, no usable device node
RUNTIME_CHECKS = ("soc", "driver", "librknnrt", "rknn-toolkit-lite2", "device")
Version = Tuple[int, int, int]

RECOMMENDED_DRIVER: Version = (0, 9, 2)  # Rockchip's recommendation
WARNED_DRIVER: Version = (0, 8, 8)  # runtimes 1.5-1.6 print a warning below this
FORMAT6_TOOLKIT: Version = (1, 5, 2)  # first toolkit writing RKNN format version 6
SDK_RUNTIME = "rknpu2/runtime/Linux/librknn_api/aarch64/librknnrt.so"
COMPATIBLE_VOLUME = "-v /proc/device-tree/compatible:/proc/device-tree/compatible:ro"
LITE2_NODE_SHOWN = "/" + LITE2_NODE
DEBUGFS_VOLUME = "-v /sys/kernel/debug/rknpu:/sys/kernel/debug/rknpu:ro"


@dataclass(frozen=True)
class Check:
    """One verdict: ``status`` is OK, WARN, FAIL or SKIP; ``fix`` says what to do about it."""

    name: str
    status: str
    detail: str
    fix: str = ""

    def to_dict(self) -> Dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class Board:
    """A snapshot of the board's NPU stack; ``None`` means absent or unreadable."""

    soc: Optional[str]
    family: Optional[str]
    driver: Optional[str]
    driver_source: Optional[str]  # the file the driver version was read from
    librknnrt: Optional[str]  # "unknown" if the library has no readable version string
    librknnrt_path: Optional[str]
    rknn_server: Optional[str]
    toolkit_lite2: Optional[str]
    device: DeviceAccess
    librknnrt_searched: Tuple[str, ...] = DEFAULT_LIBRKNNRT_PATHS  # relative to the root
    npu_nodes: Tuple[NpuNode, ...] = ()  # every node sysfs shows for the NPU
    container: Optional[str] = None  # "docker", "podman", "kubernetes"; None on the host

    @property
    def rocket(self) -> Optional[NpuNode]:
        """The NPU's node when only the mainline rocket driver runs it (no rknpu node)."""
        if self.device.path is not None:
            return None
        return next((n for n in self.npu_nodes if n.driver == "rocket"), None)

    def runtime_info(self) -> Dict[str, str]:
        """Labels for ``rkserve_runtime_info``: every value a string, "unknown" if absent."""
        fields = ("soc", "driver", "librknnrt", "rknn_server", "toolkit_lite2")
        return {name: getattr(self, name) or "unknown" for name in fields}

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def probe_board(
    root: Path = probes.ROOT, librknnrt_paths: Sequence[str] = DEFAULT_LIBRKNNRT_PATHS
) -> Board:
    """Read everything :func:`board_checks` and :func:`model_checks` need."""
    soc = probes.soc(root)
    driver = probes.driver_version(root)
    lib = probes.librknnrt_version(root, librknnrt_paths)
    return Board(
        soc=soc,
        family=npu_family(soc) if soc else None,
        driver=driver[0] if driver else None,
        driver_source=driver[1] if driver else None,
        librknnrt=lib[0] if lib else None,
        librknnrt_path=str(lib[1]) if lib else None,
        rknn_server=probes.rknn_server_version(root),
        toolkit_lite2=probes.toolkit_lite2_version(),
        device=probes.npu_device(root),
        librknnrt_searched=tuple(str(path) for path in librknnrt_paths),
        npu_nodes=tuple(probes.npu_nodes(root)),
        container=probes.container(root),
    )


def missing_runtime(board: Board) -> Optional[str]:
    """Why the NPU backend cannot run any model here (a FAIL of :data:`RUNTIME_CHECKS`: no
    librknnrt, no rknn-toolkit-lite2, no NPU node the wheel accepts, the rocket driver, no
    SoC), with each fix; None when none fails."""
    failed = [c for c in board_checks(board) if c.name in RUNTIME_CHECKS and c.status == FAIL]
    return "; ".join(f"{c.detail} (fix: {c.fix})" for c in failed) or None


def refusal(checks: Sequence[Check]) -> Optional[str]:
    """Why a model (or the board) is refused: the first FAIL's detail, or None."""
    return next((check.detail for check in checks if check.status == FAIL), None)


def _strict(checks: List[Check], strict: bool) -> List[Check]:
    if not strict:
        return checks
    return [
        replace(c, status=FAIL, detail=f"{c.detail} (strict mode: warnings fail)")
        if c.status == WARN
        else c
        for c in checks
    ]


def _known(version: Optional[str]) -> Optional[Version]:
    release = parse_version(version or "")
    return release if release != (0, 0, 0) else None


def _series(version: Version) -> str:
    return f"{version[0]}.{version[1]}"


def board_checks(board: Board, strict: bool = False) -> List[Check]:
    """Checks of the board alone, in the order a user should fix them."""
    checks = [
        _check_soc(board),
        _check_driver(board),
        _check_librknnrt(board),
        _check_rknn_server(board),
        _check_toolkit_lite2(board),
        _check_device(board),
    ]
    return _strict(checks, strict)


def _check_soc(board: Board) -> Check:
    supported = ", ".join(sorted(probes.SUPPORTED_SOCS))
    if board.soc is None and board.container:
        return Check(
            "soc",
            FAIL,
            f"/proc/device-tree/compatible is not visible in this {board.container} "
            "container (Docker masks /sys/firmware, where it lives): the SoC is unknown, and "
            "rknn-toolkit-lite2 refuses to start without the file",
            f"pass it in: {COMPATIBLE_VOLUME} (docs/CONTAINERS.md)",
        )
    if board.soc is None:
        return Check(
            "soc",
            FAIL,
            "no Rockchip SoC named in /proc/device-tree/compatible: not an RK board",
            "run on the board itself; on a PC serve the models' ONNX twins (onnx backend)",
        )
    if not probes.supported_soc(board.soc):
        return Check(
            "soc",
            FAIL,
            f"{board.soc} is a Rockchip SoC without an NPU rknn-toolkit-lite2 supports "
            f"({supported}, and their variants such as rk3588s)",
            "use a supported board, or the onnx backend on this one",
        )
    variant = (
        "" if board.soc in probes.SUPPORTED_SOCS else f", a variant of {probes.chip(board.soc)}"
    )
    return Check("soc", OK, f"{board.soc} (NPU family {board.family}{variant})")


def _check_driver(board: Board) -> Check:
    rocket = board.rocket
    if rocket is not None:
        return Check(
            "driver",
            FAIL,
            f"the NPU is run by the mainline rocket driver ({rocket.path}, {rocket.evidence}), "
            "not Rockchip's rknpu: librknnrt, and so rknn-toolkit-lite2, cannot use it",
            "to serve .rknn models boot a vendor (BSP) kernel with the rknpu driver, or "
            "blacklist rocket where the kernel also has rknpu; rocket runs .tflite models "
            "through Mesa's Teflon delegate instead, which rkserve does not serve; meanwhile "
            "the onnx backend serves the models on the CPU",
        )
    if board.driver is None and board.container:
        tried = ", ".join(probes.shown(p) for p in probes.DRIVER_VERSION_PATHS)
        return Check(
            "driver",
            WARN,
            f"RKNPU driver version unknown: not readable from {tried} in this "
            f"{board.container} container (debugfs is not mounted in containers)",
            f"pass it in: {DEBUGFS_VOLUME} (the host must have debugfs mounted), or run "
            "`sudo rkserve doctor` on the host",
        )
    if board.driver is None:
        tried = ", ".join(probes.shown(p) for p in probes.DRIVER_VERSION_PATHS)
        return Check(
            "driver",
            WARN,
            f"RKNPU driver version unknown: not readable from {tried}",
            "debugfs is root-only: run `sudo rkserve doctor`; if /sys/kernel/debug is empty, "
            "`sudo mount -t debugfs none /sys/kernel/debug`; or look for "
            "`Initialized rknpu` in `sudo dmesg`",
        )
    release = parse_version(board.driver)
    if release >= RECOMMENDED_DRIVER:
        return Check("driver", OK, f"RKNPU driver {board.driver} ({board.driver_source})")
    old = f" (runtimes 1.5-1.6 warn below {_dotted(WARNED_DRIVER)})"
    return Check(
        "driver",
        WARN,
        f"RKNPU driver {board.driver} ({board.driver_source}) is older than "
        f"{_dotted(RECOMMENDED_DRIVER)}, the version Rockchip recommends"
        + (old if release < WARNED_DRIVER else ""),
        "the driver is part of the kernel: flash or install a newer kernel/BSP image from "
        "the board vendor (RKNPU driver >= 0.9.2)",
    )


def _dotted(version: Version) -> str:
    return ".".join(str(part) for part in version)


def _check_librknnrt(board: Board) -> Check:
    if board.librknnrt_path is None:
        chip = (board.soc or "rk3566").upper()
        searched = ", ".join(probes.shown(p.lstrip("/")) for p in board.librknnrt_searched)
        return Check(
            "librknnrt",
            FAIL,
            f"librknnrt.so not found (searched {searched}): rknn-toolkit-lite2 fails with "
            f"`Can not find dynamic library on {chip}!`",
            f"copy {SDK_RUNTIME} from Rockchip's rknn-toolkit2 release (the same version as "
            "the toolkit that builds your models) to /usr/lib/librknnrt.so",
        )
    if _known(board.librknnrt) is None:
        return Check(
            "librknnrt",
            WARN,
            f"{board.librknnrt_path} has no readable `librknnrt version:` string",
            f"replace it with {SDK_RUNTIME} from a Rockchip rknn-toolkit2 release",
        )
    return Check("librknnrt", OK, f"librknnrt {board.librknnrt} ({board.librknnrt_path})")


def _check_rknn_server(board: Board) -> Check:
    role = "only the PC-to-board debugging proxy, not needed for on-board inference"
    if board.rknn_server is None:
        return Check("rknn_server", SKIP, f"not installed: {role}")
    if board.rknn_server == board.librknnrt or _known(board.librknnrt) is None:
        return Check("rknn_server", OK, f"rknn_server {board.rknn_server} ({role})")
    return Check(
        "rknn_server",
        WARN,
        f"rknn_server {board.rknn_server} with librknnrt {board.librknnrt}: Rockchip "
        f"ships them as one version ({role})",
        "install rknn_server from the same rknn-toolkit2 release as librknnrt "
        "(rknpu2/runtime/Linux/rknn_server/aarch64/usr/bin/) and restart it, or remove it",
    )


def _check_toolkit_lite2(board: Board) -> Check:
    lite = _known(board.toolkit_lite2)
    if board.toolkit_lite2 is None:
        return Check(
            "rknn-toolkit-lite2",
            FAIL,
            "rknn-toolkit-lite2 is not installed in this Python: the NPU backend cannot load",
            "`pip install rknn-toolkit-lite2` (aarch64 wheels only, CPython 3.7-3.12)",
        )
    runtime = _known(board.librknnrt)
    if lite and runtime and lite[:2] != runtime[:2]:
        return Check(
            "rknn-toolkit-lite2",
            WARN,
            f"rknn-toolkit-lite2 {board.toolkit_lite2} with librknnrt {board.librknnrt}: "
            "use the same release of both",
            f"`pip install 'rknn-toolkit-lite2=={_series(runtime)}.*'` or update librknnrt",
        )
    return Check("rknn-toolkit-lite2", OK, f"rknn-toolkit-lite2 {board.toolkit_lite2}")


def _check_device(board: Board) -> Check:
    device = board.device
    if device.path is None:
        return _no_device(board)
    if not device.present:
        return _missing_node(board)
    where = f"{device.path} ({device.owner}:{device.group} {device.mode})"
    if not device.accessible:
        return _denied(device, where)
    if not device.lite2_node:
        return _lite2_refuses(board)
    named = f", named by {device.evidence}" if device.evidence else ""
    return Check("device", OK, f"{where} readable and writable by {device.user}{named}")


def _no_device(board: Board) -> Check:
    nodes = " or ".join(probes.shown(p) for p in probes.DEVICE_PATHS)
    if board.rocket is not None:
        return Check(
            "device",
            FAIL,
            f"no rknpu device node: the NPU is {board.rocket.path}, the rocket driver's",
            "see the driver check",
        )
    if board.container:
        return Check(
            "device",
            FAIL,
            f"no NPU device node in this {board.container} container ({nodes}; /sys names "
            "none either): librknnrt cannot open the NPU (inside pods it has reported "
            "hw_version=-1)",
            f"pass the NPU in: `--device {LITE2_NODE_SHOWN}` (or the node `ls -l "
            "/sys/class/drm/renderD*/device/of_node` names npu on the host); Kubernetes: a "
            "device plugin or a hostPath volume of it (docs/CONTAINERS.md)",
        )
    return Check(
        "device",
        FAIL,
        f"no NPU device node ({nodes}, nor one in /sys/class/drm, /sys/class/misc): the "
        "rknpu kernel driver is not loaded",
        "check `sudo dmesg | grep -i rknpu`; use the vendor kernel with the RKNPU driver",
    )


def _missing_node(board: Board) -> Check:
    device = board.device
    if board.container:
        same = device.path == LITE2_NODE_SHOWN or device.lite2_node
        target = device.path if same else f"{device.path}:{LITE2_NODE_SHOWN}"
        return Check(
            "device",
            FAIL,
            f"the NPU is {device.path} ({device.evidence} names it) but this "
            f"{board.container} container has no {device.path}: librknnrt cannot open the NPU "
            "(inside pods it has reported hw_version=-1)",
            f"pass it in: `--device {target}` (docs/CONTAINERS.md)",
        )
    return Check(
        "device",
        FAIL,
        f"the NPU is {device.path} ({device.evidence} names it) but there is no {device.path}",
        "udev did not create the node: check `sudo dmesg | grep -i rknpu` and `udevadm trigger`",
    )


def _lite2_refuses(board: Board) -> Check:
    device = board.device
    name = Path(device.path or "").name
    if board.container:
        fix = f"map it to that name: `--device {device.path}:{LITE2_NODE_SHOWN}`"
    elif device.path == "/dev/rknpu":
        fix = (
            "/dev/rknpu is the old vendor driver's misc device: install a kernel/BSP image whose "
            "rknpu driver is a DRM one (>= 0.8: /dev/dri/renderD*); a symlink "
            f"`sudo ln -s /dev/rknpu {LITE2_NODE_SHOWN}` gets past the wheel's check, but "
            "whether librknnrt 2.x then drives the misc device is unverified"
        )
    else:
        fix = (
            f'a udev rule: SUBSYSTEM=="{_subsystem(device.path)}", KERNEL=="{name}", '
            f'SYMLINK+="dri/renderD129" in /etc/udev/rules.d/99-rknpu.rules, then `sudo '
            f"udevadm trigger` (or now: `sudo ln -s {device.path} {LITE2_NODE_SHOWN}`)"
        )
    return Check(
        "device",
        FAIL,
        f"the NPU is {device.path} (named by {device.evidence or 'its usual path'}), and there "
        f"is no {LITE2_NODE_SHOWN}: rknn-toolkit-lite2 (2.3.0-2.5.0) refuses to start "
        "without that file, before it loads librknnrt (`It is detected that some necessary "
        "files are missing in the container`, init_runtime returns -1)",
        fix,
    )


def _subsystem(path: Optional[str]) -> str:
    return "drm" if (path or "").startswith("/dev/dri/") else "misc"


def _denied(device: DeviceAccess, where: str) -> Check:
    member = "" if device.in_group else f", who is not in group {device.group}"
    name = Path(device.path or "").name
    return Check(
        "device",
        FAIL,
        f"{where} is not readable and writable by {device.user}{member}: the runtime "
        "fails with `failed to open rknpu module, need to insmod rknpu dirver!`",
        f"`sudo usermod -aG video,render {device.user}` and log in again (or restart the "
        f'service); or a udev rule: KERNEL=="{name}", GROUP="render", MODE="0660"',
    )


def model_checks(board: Board, info: RknnInfo, strict: bool = False) -> List[Check]:
    """Can this board run the model ``info`` describes? Refuse it if any check FAILs."""
    return _strict([_check_target(board, info), _check_toolkit(board, info)], strict)


def _check_target(board: Board, info: RknnInfo) -> Check:
    targets = ", ".join(info.target_platforms) or "none"
    if not info.target_platforms:
        return Check("target", WARN, "the file names no target_platform")
    if board.family is None:
        return Check("target", WARN, f"built for {targets}; the board's SoC is unknown")
    if any(npu_family(p) == board.family for p in info.target_platforms):
        return Check("target", OK, f"built for {targets}, runs on {board.soc} ({board.family})")
    return Check(
        "target",
        FAIL,
        f"built for {targets}, not for this {board.soc} ({board.family} NPU): the runtime "
        "refuses it with `The rknn model does not match the RKNPU hardware version!`",
        f"rebuild it with rknn-toolkit2: config(target_platform='{board.soc}')",
    )


def _check_toolkit(board: Board, info: RknnInfo) -> Check:
    built = info.toolkit_release
    runtime = _known(board.librknnrt)
    if runtime is None:
        state = "not found" if board.librknnrt_path is None else "of unknown version"
        return Check("toolkit", WARN, f"toolkit {info.toolkit_version}; librknnrt {state}")
    if built == (0, 0, 0):
        return Check("toolkit", WARN, "the file names no toolkit version")
    lib = board.librknnrt_path or "/usr/lib/librknnrt.so"
    summary = f"toolkit {info.toolkit_version}, librknnrt {board.librknnrt}"
    if info.format_version >= 6 and runtime < FORMAT6_TOOLKIT:
        why = f"RKNN format version {info.format_version} needs librknnrt >= 1.5.2"
        if runtime >= (1, 3, 0):
            why += "; runtimes 1.3-1.5.0 reject it with `Invalid RKNN model version 6`"
        return Check("toolkit", FAIL, f"{summary}: {why}", _update(lib, built, FORMAT6_TOOLKIT))
    fix = _update(lib, built)
    if built[:2] > runtime[:2]:
        return Check("toolkit", FAIL, f"{summary}: the model is newer than {lib}", fix)
    if built > runtime:
        return Check(
            "toolkit",
            WARN,
            f"{summary}: same {_series(built)} series, but Rockchip asks for librknnrt >= "
            "the toolkit (1.5.0 could not load 1.5.2's models)",
            fix,
        )
    return Check("toolkit", OK, summary)


def _update(lib: str, *needed: Version) -> str:
    version = _dotted(max(needed))
    return f"update {lib} to librknnrt >= {version} ({SDK_RUNTIME} of that release)"
