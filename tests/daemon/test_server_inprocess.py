"""The server and its front end in this process (a thread), talked to by the real client:
the fast inner loop's view of the whole request path (the subprocess tests hold the rest)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import pytest
import zmq

from rkserve import protocol
from rkserve.client import Client
from rkserve.config import Settings
from rkserve.errors import BadRequest, UnknownModel
from rkserve.server import Server
from tools.harness import fake_models

# the server's start-up runs ldconfig (ctypes.util.find_library, for malloc tuning)
pytestmark = pytest.mark.process


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    settings = Settings(
        models_dir=str(fake_models(tmp_path / "models")),
        backend="fake",
        endpoint=f"ipc://{tmp_path}/s.sock",
        metrics_port=0,
    )
    served = Server(settings)
    thread = threading.Thread(target=served.run, daemon=True)
    thread.start()
    try:
        with Client(settings.endpoints[0], timeout=10.0) as client:
            for _ in range(500):
                if client.health()["status"] == "serving":
                    break
        yield served
    finally:
        served.should_exit = True
        thread.join(10.0)
        assert not thread.is_alive()


def test_health_models_and_an_inference(server: Server) -> None:
    image = cv2.imencode(".png", np.full((20, 30, 3), 200, np.uint8))[1].tobytes()
    with Client(server.bound[0], timeout=10.0) as client:
        health = client.health()
        assert health["ready"] and set(health["models"]) == {"cls", "seg"}
        assert {m["name"] for m in client.models()} == {"cls", "seg"}
        reply = client.classify("cls", image, top_k=2)
        assert len(reply.classes) == 2 and reply.timings["total"] > 0
        with pytest.raises(UnknownModel):
            client.classify("nope", image)
        with pytest.raises(BadRequest):
            client.classify("cls", image, top_k=0)
    counted = server.metrics.registry.get_sample_value(
        "rkserve_requests_total", {"model": "cls", "code": "ok"}
    )
    assert counted == 1.0


def test_a_message_the_protocol_cannot_read_gets_an_error_reply(server: Server) -> None:
    ctx = zmq.Context.instance()
    with ctx.socket(zmq.DEALER) as sock:
        sock.setsockopt(zmq.RCVTIMEO, 10_000)
        sock.connect(server.bound[0])
        sock.send_multipart([b"", b"\x93not a map"])
        reply = protocol.decode_reply(sock.recv_multipart()[-1])
    assert reply["ok"] is False and reply["error"]["code"] == "bad_request"
