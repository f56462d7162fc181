"""A client written only from docs/PROTOCOL.md: bare pyzmq + msgpack, a REQ socket, no rkserve
imports on the wire path. If the document and the daemon drift apart, this fails."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
import zmq

from rkserve.protocol import STAGES
from tools.harness import Daemon, fake_models

pytestmark = pytest.mark.process  # every test here starts a process


class DocClient:
    def __init__(self, endpoint: str) -> None:
        self.sock = zmq.Context.instance().socket(zmq.REQ)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVTIMEO, 10000)
        self.sock.connect(endpoint)
        self.next_id = 0

    def call(self, **request):
        self.next_id += 1
        self.sock.send(msgpack.packb({"v": 1, "id": self.next_id, **request}, use_bin_type=True))
        reply = msgpack.unpackb(self.sock.recv(), raw=False)
        assert reply["v"] == 1 and reply["id"] == self.next_id and "timing_ms" in reply
        return reply


@pytest.fixture(scope="module")
def doc_client(tmp_path_factory):
    folder = tmp_path_factory.mktemp("doc")
    daemon = Daemon(folder, fake_models(folder / "models"), "--backend", "fake").start()
    client = DocClient(daemon.endpoint)
    yield client
    client.sock.close()
    assert daemon.stop() == 0


def test_health_and_models_fields(doc_client):
    health = doc_client.call(op="health")
    assert (
        health["ok"]
        and health["live"] is True
        and health["status"] == "serving"
        and health["ready"] is True
    )
    assert set(health["models"]["cls"]) == {"ready", "state", "error"}
    models = doc_client.call(op="models")["models"]
    for entry in models:
        assert {
            "name",
            "task",
            "ready",
            "state",
            "error",
            "input_shape",
            "labels",
            "backend",
        } <= set(entry)


def test_infer_classification_with_a_tensor(doc_client):
    image = np.full((40, 50, 3), 9, np.uint8)
    tensor = {"dtype": "uint8", "shape": [40, 50, 3], "data": image.tobytes()}
    reply = doc_client.call(
        op="infer", model="cls", tensor=tensor, params={"top_k": 2}, deadline_ms=5000
    )
    assert reply["ok"] and reply["model"] == "cls" and reply["task"] == "classification"
    classes = reply["result"]["classes"]
    assert len(classes) == 2 and classes[0]["score"] >= classes[1]["score"]
    assert set(classes[0]) == {"index", "label", "score"}
    assert set(reply["timing_ms"]) == set(STAGES)


def test_infer_segmentation_masks(doc_client):
    image = np.zeros((30, 20, 3), np.uint8)
    image[:10] = 255
    tensor = {"dtype": "uint8", "shape": [30, 20, 3], "data": image.tobytes()}
    raw = doc_client.call(
        op="infer", model="seg", tensor=tensor, params={"mask": "raw", "overlay": True}
    )["result"]
    assert (raw["width"], raw["height"]) == (20, 30)
    assert raw["mask"]["format"] == "raw" and raw["mask"]["shape"] == [30, 20]
    mask = np.frombuffer(raw["mask"]["data"], np.uint8).reshape(30, 20)
    assert {c["index"] for c in raw["classes"]} == set(np.unique(mask).tolist())
    assert raw["overlay"]["format"] == "jpeg" and raw["overlay"]["data"][:2] == b"\xff\xd8"
    png = doc_client.call(op="infer", model="seg", tensor=tensor)["result"]["mask"]
    assert png["format"] == "png" and png["data"][:8] == b"\x89PNG\r\n\x1a\n"
    none = doc_client.call(op="infer", model="seg", tensor=tensor, params={"mask": "none"})[
        "result"
    ]
    assert "mask" not in none


@pytest.mark.parametrize(
    "request_fields,code",
    [
        ({"op": "infer", "model": "nope", "image": b"x"}, "unknown_model"),
        ({"op": "infer", "model": "cls", "image": b"x", "tensor": {}}, "bad_request"),
        ({"op": "infer", "model": "cls", "image": b"not a jpeg"}, "bad_image"),
        ({"op": "infer", "model": "cls", "image": b"x", "params": {"top_k": 0}}, "bad_request"),
        ({"op": "infer", "model": "cls", "image": b"x", "deadline_ms": -1}, "bad_request"),
    ],
)
def test_error_codes_from_the_table(doc_client, request_fields, code):
    reply = doc_client.call(**request_fields)
    assert reply["ok"] is False and reply["error"]["code"] == code and reply["error"]["message"]
