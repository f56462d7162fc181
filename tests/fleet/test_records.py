"""The DNS-SD record, the announce plan, the file_sd file: in-process, no network."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import time
from pathlib import Path
from typing import Any, Dict

import pytest
import zmq
from zmq.utils import z85

from rkserve import announce, dnssd, filesd
from rkserve.client import Client
from rkserve.config import load_settings
from rkserve.discovery import Board, Following, board_from, short_name
from rkserve.errors import BadRequest, ConfigError

FACTS = dnssd.Facts(
    name="board1",
    version="0.1.0",
    soc="rk3568",
    metrics_port=9464,
    curve=False,
    curve_key="",
    models=("cls", "seg"),
    models_digest="0123456789abcdef",
)


def board(**changes: Any) -> Board:
    values: Dict[str, Any] = {
        "name": "board1",
        "address": "10.0.0.21",
        "port": 5555,
        "soc": "rk3568",
        "version": "0.1.0",
        "metrics_port": 9464,
        "curve": False,
        "curve_key": "",
        "models": ("cls",),
        "model_count": 1,
        "models_digest": "",
    }
    values.update(changes)
    return Board(**values)


@pytest.mark.parametrize(
    ("bound", "port", "addresses"),
    [
        (["tcp://0.0.0.0:5555"], 5555, None),
        (["tcp://[::]:6000"], 6000, None),
        (["tcp://[::ffff:10.1.2.3]:5555"], 5555, ("10.1.2.3",)),
        (["ipc:///run/rk.sock", "tcp://192.168.1.5:7000"], 7000, ("192.168.1.5",)),
    ],
)
def test_plan_announces_the_first_lan_endpoint(bound: list, port: int, addresses: Any) -> None:
    where, why = announce.plan(bound)
    assert where == announce.Plan(port, addresses) and why == ""


@pytest.mark.parametrize(
    "bound",
    [
        ["tcp://127.0.0.1:5555"],
        ["tcp://[::ffff:127.0.0.1]:5555", "ipc:///tmp/x.sock"],
        ["tcp://[::1]:5555"],
        ["ipc:///tmp/x.sock"],
    ],
)
def test_loopback_or_ipc_only_announces_nothing(bound: list) -> None:
    where, why = announce.plan(bound)
    assert where is None and "loopback" in why


def test_announce_off_by_one_setting() -> None:
    settings = load_settings(environ={"RKSERVE_ANNOUNCE": "0"})
    assert settings.announce is False
    assert announce.create(settings, ["tcp://0.0.0.0:5555"]) is None


def test_txt_round_trip() -> None:
    txt = dnssd.encode_txt(FACTS)
    assert txt == {
        "txtvers": "1",
        "version": "0.1.0",
        "soc": "rk3568",
        "metrics": "9464",
        "curve": "0",
        "nmodels": "2",
        "mdigest": "0123456789abcdef",
        "models": "cls,seg",
    }
    wire = {k.encode(): v.encode() for k, v in txt.items()}
    found = board_from("board1", ["10.0.0.21"], 5555, dnssd.decode_txt(wire))
    assert found == board(models=("cls", "seg"), model_count=2, models_digest="0123456789abcdef")
    assert found.endpoint == "tcp://10.0.0.21:5555" and found.metrics_target == "10.0.0.21:9464"


def test_many_models_give_their_count_and_digest_only() -> None:
    many = tuple(f"model-number-{i:03d}" for i in range(40))
    txt = dnssd.encode_txt(dnssd.Facts(**{**FACTS.__dict__, "models": many}))
    assert "models" not in txt and txt["nmodels"] == "40"
    assert all(len(f"{k}={v}".encode()) <= 255 for k, v in txt.items())


def test_key_fingerprint_of_z85_and_raw_keys() -> None:
    public, _ = zmq.curve_keypair()
    expected = hashlib.sha256(z85.decode(public)).hexdigest()[:16]
    assert dnssd.key_fingerprint(public) == dnssd.key_fingerprint(z85.decode(public)) == expected
    with pytest.raises(ConfigError, match="32 bytes"):
        dnssd.key_fingerprint(b"short")


def test_names() -> None:
    assert (
        dnssd.valid_name("board-1") and not dnssd.valid_name("-x") and not dnssd.valid_name("a.b")
    )
    assert dnssd.host_label("rk3568-evb.lan") == "rk3568-evb"
    assert dnssd.host_label("___") == "rkserve"
    assert short_name("board1._rkserve._tcp.local.") == "board1"
    with pytest.raises(ConfigError, match="announce_name"):
        load_settings(environ={"RKSERVE_ANNOUNCE_NAME": "not a label"})


def test_board_without_address_is_refused() -> None:
    with pytest.raises(ValueError, match="no address"):
        board_from("b", [], 5555, {})


def test_file_sd_groups_and_atomic_replace(tmp_path: Path) -> None:
    path = tmp_path / "targets.json"
    out = filesd.FileSd(path)
    boards = [board(name="b2", address="10.0.0.22"), board(), board(name="b3", metrics_port=0)]
    assert out.update(boards) is True
    labels = {"soc": "rk3568", "version": "0.1.0"}
    assert json.loads(path.read_text()) == [  # sorted by board name
        {"targets": ["10.0.0.22:9464"], "labels": {"board": "b2", **labels}},
        {"targets": ["10.0.0.21:9464"], "labels": {"board": "board1", **labels}},
    ]
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    inode = path.stat().st_ino
    assert out.update(list(reversed(boards))) is False  # same content: not rewritten
    assert path.stat().st_ino == inode and out.writes == 1
    assert out.update([]) is True and json.loads(path.read_text()) == []
    assert path.stat().st_ino != inode  # replaced by a rename, never written in place
    assert sorted(os.listdir(tmp_path)) == ["targets.json"]


class FakeBrowser:
    generation = 1

    def __init__(self, *boards: Board) -> None:
        self._boards = {b.name: b for b in boards}

    def boards(self) -> Dict[str, Board]:
        return dict(self._boards)


def test_following_picks_the_boards_a_client_can_talk_to() -> None:
    public, _ = zmq.curve_keypair()
    mine = dnssd.key_fingerprint(public)
    found = FakeBrowser(
        board(name="plain"),
        board(name="ours", address="10.0.0.2", curve=True, curve_key=mine),
        board(name="other", address="10.0.0.3", curve=True, curve_key="f" * 16),
    )
    plain = Following(found, False, None)  # type: ignore[arg-type]
    assert plain.endpoints() == ["tcp://10.0.0.21:5555"] and not plain.changed()
    curve = Following(found, False, public)  # type: ignore[arg-type]
    assert curve.endpoints() == ["tcp://10.0.0.2:5555"]


def test_dnssd_stands_alone() -> None:
    with pytest.raises(BadRequest, match="give it alone"):
        Client(["dnssd:", "tcp://10.0.0.1:5555"])


@pytest.mark.process  # importing zeroconf runs ldconfig (ctypes.util.find_library)
def test_an_announcer_whose_mdns_fails_only_logs(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Port 5353 taken (an Avahi that does not share it): a warning, and the daemon goes on."""
    zeroconf = pytest.importorskip("zeroconf")

    def taken(*args: Any, **kwargs: Any) -> None:
        raise OSError(98, "Address already in use")

    monkeypatch.setattr(zeroconf, "Zeroconf", taken)
    caplog.set_level(logging.WARNING, logger="rkserve.announce")
    announcer = announce.Announcer(announce.Plan(5555, ("10.0.0.21",)))
    announcer.publish(FACTS)
    until = time.monotonic() + 5.0  # a stop queued behind the publish would win: wait first
    while "announce: OSError" not in caplog.text and time.monotonic() < until:
        time.sleep(0.01)
    announcer.close(timeout=5.0)
    assert not announcer._thread.is_alive() and announcer.name == ""
    assert "announce: OSError" in caplog.text and "Address already in use" in caplog.text
