"""The Frigate front end's own bounds, in-process (no socket): the connections it remembers
and the handshakes it holds for a loading model."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any, List, Tuple

import zmq

from rkserve import frigate_frontend
from rkserve.config import Settings
from rkserve.frigate_frontend import FrigateFrontend
from rkserve.loader import Table
from rkserve.metrics import Metrics
from rkserve.modelhost import ModelHost
from rkserve.repository import load_entry

MODELS = Path(__file__).resolve().parents[2] / "models"


def frontend(table: Table) -> Tuple[FrigateFrontend, List[Tuple[List[bytes], bytes]]]:
    """A front end whose socket is a list of what it sent."""
    loader: Any = types.SimpleNamespace(table=table)
    made = FrigateFrontend(
        Settings(), zmq.Context.instance(), None, loader, Metrics(), lambda: "onnx"
    )  # type: ignore[arg-type]
    sent: List[Tuple[List[bytes], bytes]] = []
    made._send = lambda envelope, reply: sent.append((envelope, reply))  # type: ignore[method-assign]
    return made, sent


def test_connections_remembered_are_bounded_least_recent_first() -> None:
    made, _ = frontend(Table())
    for peer in range(frigate_frontend.MAX_PEERS + 10):
        made._remember(b"peer%d" % peer, "shapes-det")
    assert len(made._peers) == frigate_frontend.MAX_PEERS
    assert b"peer0" not in made._peers and b"peer10" in made._peers


def test_handshakes_for_a_loading_model_wait_up_to_a_bound_then_are_answered() -> None:
    host = ModelHost(load_entry(MODELS / "shapes-det"), "loading", 1)
    made, sent = frontend(Table({"shapes-det": host}, loading=True, scanned=True))
    for peer in range(frigate_frontend.MAX_WAITING + 3):
        made._handshake([b"peer%d" % peer, b""], "shapes-det.rknn")
    assert len(made._waiting) == frigate_frontend.MAX_WAITING
    assert len(sent) == 3  # past the bound: answered at once, as things stand
    assert all(reply == b'{"model_available": true, "model_loaded": false}' for _, reply in sent)
    host.state = "failed"  # the load ended: every waiting handshake is answered
    made._answer_waiting()
    assert not made._waiting and len(sent) == frigate_frontend.MAX_WAITING + 3


def test_one_upload_at_a_time() -> None:
    settings = Settings(frigate_uploads=True)
    made, sent = frontend(Table())
    made.settings = settings
    assert made.uploads.busy.acquire(blocking=False)  # an upload is being checked
    message = frigate_frontend.frigate.Message(
        "model_data", {"model_data": True, "model_name": "b.onnx"}, memoryview(b"x")
    )
    made._upload([b"peer", b""], message)
    assert sent == [([b"peer", b""], b'{"model_saved": false, "model_loaded": false}')]
