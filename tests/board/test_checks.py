"""The version-compatibility policy on fixture boards, with real and synthetic models."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest

from rkserve.board.checks import (
    FAIL,
    OK,
    SKIP,
    WARN,
    Board,
    Check,
    board_checks,
    model_checks,
    probe_board,
    refusal,
)
from rkserve.board.probes import DeviceAccess
from rkserve.board.rknnfile import read_rknn
from tests.boards import (
    AFTER_UPDATE,
    BEFORE_UPDATE,
    call_unprivileged,
    make_board,
    open_tmp,
    rknn_info,
    shared_rknn,
)

BUILT_2_3_2 = [
    "built/mobilenet_v2_1.0_224_rk3568_i8_tk2.3.2.rknn",
    "built/deeplabv3_257_voc_rk3568_i8_tk2.3.2.rknn",
    "built/multiple_input_demo_rk3568_i8_tk2.3.2.rknn",
]
FOR_RK356X = [
    *BUILT_2_3_2,
    "thirdparty/yolov5n-640-640-rk3568_tk2.3.2_thirdparty.rknn",
    "rockchip/multiple_input_demo_RK3566_RK3568_tk1.6.2.rknn",
    "rockchip/multiple_input_demo_RK3566_RK3568_tk1.3.4.rknn",
    "rockchip/multiple_input_demo_RK356X_tk1.1.0.rknn",
    "rockchip/dual_residual_custom_RK3566_RK3568_tk1.6.1.rknn",
    "rockchip/pp_human_segv2_custom_argmax_RK3566_RK3568_tk2.3.1.rknn",
]
FOR_RK3588 = "rockchip/multiple_input_demo_RK3588_tk1.6.2.rknn"


def board(tmp_path: Path, lite2: str = "2.3.0", **parts: Any) -> Board:
    """The board under a fixture tree, with rknn-toolkit-lite2 ``lite2`` installed."""
    return replace(probe_board(make_board(tmp_path, **parts)), toolkit_lite2=lite2)


def by_name(checks: List[Check]) -> Dict[str, Check]:
    return {check.name: check for check in checks}


def statuses(checks: List[Check]) -> Dict[str, str]:
    return {check.name: check.status for check in checks}


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    yield from open_tmp()


# The reference board before its update: driver 0.8.2, librknnrt 1.5.0, rknn_server 2.3.0.


def test_before_update_board_warns_of_server_runtime_mismatch(tmp_path: Path) -> None:
    checks = by_name(board_checks(board(tmp_path, lite2="1.5.0", **BEFORE_UPDATE)))
    assert checks["rknn_server"].status == WARN
    assert "rknn_server 2.3.0 with librknnrt 1.5.0" in checks["rknn_server"].detail
    assert checks["driver"].status == WARN
    assert "0.8.2" in checks["driver"].detail
    assert checks["librknnrt"].status == OK
    assert "1.5.0" in checks["librknnrt"].detail


def test_before_update_refuses_toolkit_2_3_model_synthetic(tmp_path: Path) -> None:
    checks = model_checks(board(tmp_path, **BEFORE_UPDATE), rknn_info("2.3.2"))
    toolkit = by_name(checks)["toolkit"]
    assert toolkit.status == FAIL
    assert "Invalid RKNN model version 6" in toolkit.detail
    assert "/usr/lib/librknnrt.so" in toolkit.fix and ">= 2.3.2" in toolkit.fix
    assert refusal(checks) == toolkit.detail


@pytest.mark.parametrize("name", BUILT_2_3_2)
def test_before_update_refuses_real_2_3_2_builds(tmp_path: Path, name: str) -> None:
    info = read_rknn(shared_rknn(name))
    checks = model_checks(board(tmp_path, **BEFORE_UPDATE), info)
    assert by_name(checks)["target"].status == OK
    reason = refusal(checks)
    assert reason is not None and "Invalid RKNN model version 6" in reason
    assert "toolkit 2.3.2, librknnrt 1.5.0" in reason


def test_model_newer_than_runtime_in_another_series(tmp_path: Path) -> None:
    checks = model_checks(board(tmp_path, librknnrt="1.6.0"), rknn_info("2.3.2"))
    toolkit = by_name(checks)["toolkit"]
    assert toolkit.status == FAIL
    assert "newer than /usr/lib/librknnrt.so" in toolkit.detail
    assert "Invalid RKNN model version 6" not in toolkit.detail  # 1.6.0 reads format 6
    assert "librknnrt >= 2.3.2" in toolkit.fix


def test_format6_message_only_where_documented(tmp_path: Path) -> None:
    old = model_checks(board(tmp_path, librknnrt="1.2.0"), rknn_info("1.6.2"))
    assert by_name(old)["toolkit"].status == FAIL
    assert "Invalid RKNN model version 6" not in by_name(old)["toolkit"].detail
    same = by_name(model_checks(board(tmp_path, librknnrt="1.5.0"), rknn_info("1.5.2")))
    assert same["toolkit"].status == FAIL  # a patch apart, yet unreadable: the 1.5.2 format
    assert "librknnrt >= 1.5.2" in same["toolkit"].fix
    fmt2 = model_checks(board(tmp_path, librknnrt="1.5.0"), rknn_info("1.3.4", "rk3566", 2))
    assert statuses(fmt2) == {"target": OK, "toolkit": OK}


def test_real_format6_model_on_runtime_1_5_0(tmp_path: Path) -> None:
    info = read_rknn(shared_rknn("rockchip/multiple_input_demo_RK3566_RK3568_tk1.6.2.rknn"))
    reason = refusal(model_checks(board(tmp_path, **BEFORE_UPDATE), info))
    assert reason is not None and "Invalid RKNN model version 6" in reason
    older = read_rknn(shared_rknn("rockchip/multiple_input_demo_RK3566_RK3568_tk1.3.4.rknn"))
    assert refusal(model_checks(board(tmp_path, **BEFORE_UPDATE), older)) is None


# After the update: everything 2.3.0 but the kernel's driver.


def test_after_update_only_the_driver_warns(tmp_path: Path) -> None:
    the_board = board(tmp_path, **AFTER_UPDATE)
    checks = board_checks(the_board) + model_checks(the_board, rknn_info("2.3.0"))
    warned = [c.name for c in checks if c.status != OK]
    assert warned == ["driver"]
    assert by_name(checks)["driver"].status == WARN


def test_after_update_accepts_same_series_patch_with_warning(tmp_path: Path) -> None:
    checks = model_checks(board(tmp_path, **AFTER_UPDATE), rknn_info("2.3.2"))
    assert refusal(checks) is None
    toolkit = by_name(checks)["toolkit"]
    assert toolkit.status == WARN and "same 2.3 series" in toolkit.detail


@pytest.mark.parametrize("name", FOR_RK356X)
def test_real_rk356x_builds_accepted_on_rk3568(tmp_path: Path, name: str) -> None:
    info = read_rknn(shared_rknn(name))
    checks = model_checks(board(tmp_path, **AFTER_UPDATE), info)
    assert refusal(checks) is None, checks
    assert by_name(checks)["target"].status == OK


def test_real_rk3588_build_refused_on_rk3568(tmp_path: Path) -> None:
    info = read_rknn(shared_rknn(FOR_RK3588))
    checks = model_checks(board(tmp_path, **AFTER_UPDATE), info)
    target = by_name(checks)["target"]
    assert target.status == FAIL
    assert "The rknn model does not match the RKNPU hardware version!" in target.detail
    assert refusal(checks) == target.detail
    assert "target_platform='rk3568'" in target.fix


@pytest.mark.parametrize(
    "soc, target, status",
    [
        ("rk3566", "rk3568", OK),
        ("rk3568", "rk3566", OK),
        ("rk3588s", "rk3588", OK),
        ("rk3588", "rk3566", FAIL),
        ("rk3576", "rk3588", FAIL),
    ],
)
def test_target_families(tmp_path: Path, soc: str, target: str, status: str) -> None:
    checks = model_checks(board(tmp_path, soc=soc, librknnrt="2.3.2"), rknn_info("2.3.2", target))
    assert statuses(checks) == {"target": status, "toolkit": OK}


# Strict mode, unknowns and the remaining board checks.


def test_strict_turns_every_warning_into_failure(tmp_path: Path) -> None:
    the_board = board(tmp_path, **AFTER_UPDATE)
    strict = by_name(board_checks(the_board, strict=True))
    assert strict["driver"].status == FAIL and "strict" in strict["driver"].detail
    assert [c.status for c in strict.values()].count(FAIL) == 1
    model = model_checks(the_board, rknn_info("2.3.2"), strict=True)
    assert refusal(model) is not None and "same 2.3 series" in (refusal(model) or "")


def test_unreadable_debugfs_is_unknown_and_warns(shared_tmp: Path) -> None:
    root = make_board(shared_tmp, **AFTER_UPDATE)
    (root / "sys/kernel/debug").chmod(0)  # as on a real board, for a non-root user
    the_board = call_unprivileged(probe_board, root)
    assert the_board.driver is None
    assert the_board.runtime_info()["driver"] == "unknown"
    driver = by_name(board_checks(the_board))["driver"]
    assert driver.status == WARN and "unknown" in driver.detail
    assert "sudo rkserve doctor" in driver.fix
    assert "mount -t debugfs none /sys/kernel/debug" in driver.fix


def test_recent_driver_is_ok(tmp_path: Path) -> None:
    driver = by_name(board_checks(board(tmp_path, driver="0.9.6")))["driver"]
    assert (driver.status, driver.detail) == (
        OK,
        "RKNPU driver 0.9.6 (/sys/kernel/debug/rknpu/version)",
    )
    old = by_name(board_checks(board(tmp_path / "b", driver="0.8.2")))["driver"]
    assert "below 0.8.8" in old.detail
    mid = by_name(board_checks(board(tmp_path / "c", driver="0.9.1")))["driver"]
    assert mid.status == WARN and "below 0.8.8" not in mid.detail


def test_missing_librknnrt(tmp_path: Path) -> None:
    the_board = board(tmp_path, librknnrt=None)
    lib = by_name(board_checks(the_board))["librknnrt"]
    assert lib.status == FAIL
    assert "Can not find dynamic library on RK3568!" in lib.detail
    assert "/usr/lib/aarch64-linux-gnu/librknnrt.so" in lib.detail
    assert "/usr/lib/librknnrt.so" in lib.fix
    toolkit = by_name(model_checks(the_board, rknn_info("2.3.2")))["toolkit"]
    assert toolkit.status == WARN and "not found" in toolkit.detail


def test_rknn_server_absent_is_not_needed(tmp_path: Path) -> None:
    server = by_name(board_checks(board(tmp_path, rknn_server=None)))["rknn_server"]
    assert server.status == SKIP and "not needed for on-board inference" in server.detail


def test_toolkit_lite2_missing_or_mismatched(tmp_path: Path) -> None:
    the_board = board(tmp_path, **BEFORE_UPDATE)
    missing = by_name(board_checks(replace(the_board, toolkit_lite2=None)))
    assert missing["rknn-toolkit-lite2"].status == FAIL
    assert "pip install rknn-toolkit-lite2" in missing["rknn-toolkit-lite2"].fix
    mismatch = by_name(board_checks(replace(the_board, toolkit_lite2="2.3.2")))
    assert mismatch["rknn-toolkit-lite2"].status == WARN


@pytest.mark.parametrize("soc, status", [(None, FAIL), ("rk3399pro", FAIL), ("rk3566", OK)])
def test_soc(tmp_path: Path, soc: str, status: str) -> None:
    assert by_name(board_checks(board(tmp_path, soc=soc)))["soc"].status == status


def test_unknown_board_cannot_judge_models(tmp_path: Path) -> None:
    checks = model_checks(board(tmp_path, soc=None), rknn_info("1.5.0", format_version=4))
    assert by_name(checks)["target"].status == WARN
    assert refusal(checks) is None


def test_device_missing_or_denied(tmp_path: Path) -> None:
    missing = by_name(board_checks(board(tmp_path, device=None)))["device"]
    assert missing.status == FAIL and "rknpu" in missing.fix
    denied = DeviceAccess(
        path="/dev/dri/renderD129",
        owner="root",
        group="render",
        mode="0660",
        user="rkserve",
        user_groups=("rkserve",),
        present=True,
        lite2_node=True,
    )
    check = by_name(board_checks(replace(board(tmp_path), device=denied)))["device"]
    assert check.status == FAIL
    assert "not in group render" in check.detail
    assert "failed to open rknpu module, need to insmod rknpu dirver!" in check.detail
    assert "usermod -aG video,render rkserve" in check.fix
    assert 'KERNEL=="renderD129"' in check.fix


def test_device_denied_by_real_permissions(shared_tmp: Path) -> None:
    root = make_board(shared_tmp, device_mode=0o600)
    device = by_name(board_checks(call_unprivileged(probe_board, root)))["device"]
    assert device.status == FAIL and "usermod -aG video,render" in device.fix


def test_refusal_is_first_failure() -> None:
    checks = [
        Check("a", WARN, "warned"),
        Check("b", FAIL, "first"),
        Check("c", FAIL, "second"),
    ]
    assert refusal(checks) == "first"
    assert refusal(checks[:1]) is None
