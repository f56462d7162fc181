"""The Python client: one DEALER socket connected to one or more daemons (boards).

ZeroMQ spreads requests over the connected endpoints; a request that times out is retried
(a bounded number of times) and, with several endpoints, lands on another board. Errors
come back as the same exception classes the server raised::

    with Client(["tcp://board-1:5555", "tcp://board-2:5555"], timeout=5.0) as client:
        top = client.classify("shapes", open("circle.jpg", "rb").read(), top_k=3)
        print(top.result["classes"][0])

``Client("dnssd:")`` (or ``Client(discovery=browser)``) connects to every board announced
on the LAN instead, and to boards that appear later (:mod:`rkserve.discovery`).

One Client per thread: ZeroMQ sockets are not thread-safe.
"""

from __future__ import annotations

import itertools
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import zmq

from . import protocol
from .discovery import Browser, Following
from .errors import BadRequest, RkserveError, Unavailable, from_code

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"  # the same as the CLI's default
TRANSPORTS = ("tcp://", "ipc://", "inproc://")
DISCOVER = "dnssd:"  # in place of endpoints: the boards announced on the LAN (DNS-SD)
_NO_CONNECTION: Dict[str, Any] = {}  # _exchange's answer when no endpoint ever connected


def check_endpoint(endpoint: str) -> None:
    """Refuse what ZeroMQ cannot connect to, with the forms it can."""
    if not isinstance(endpoint, str) or not endpoint.startswith(TRANSPORTS):
        raise BadRequest(
            f"endpoint {endpoint!r} is not a ZeroMQ address: use tcp://HOST:PORT or ipc:///PATH"
        )
    if endpoint.startswith("tcp://"):
        host, _, port = endpoint[len("tcp://") :].rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise BadRequest(f"endpoint {endpoint!r}: expected tcp://HOST:PORT (port 1-65535)")


_CLIENTS = itertools.count(1)  # numbers the clients of this process


@dataclass
class InferResult:
    model: str
    task: str
    result: Dict[str, Any]
    timings: Dict[str, float] = field(default_factory=dict)
    id: Any = None

    @property
    def classes(self) -> List[Dict[str, Any]]:
        return list(self.result.get("classes", []))

    @property
    def outputs(self) -> Dict[str, np.ndarray]:
        """A tensor model's output tensors by name, as arrays (in the model's order)."""
        return {o["name"]: protocol.decode_output(o) for o in self.result.get("outputs", [])}

    @property
    def detections(self) -> List[Dict[str, Any]]:
        """Detection: ``[{"index", "label", "score", "box": [x1, y1, x2, y2]}]``, best first."""
        return list(self.result.get("detections", []))


class Client:
    def __init__(
        self,
        endpoints: Union[str, Sequence[str]] = DEFAULT_ENDPOINT,
        timeout: float = 10.0,
        retries: int = 1,
        context: Optional[zmq.Context] = None,
        curve: Optional[Dict[str, bytes]] = None,
        connect_timeout: Optional[float] = None,
        discovery: Optional[Browser] = None,
    ) -> None:
        self.endpoints = [endpoints] if isinstance(endpoints, str) else list(endpoints)
        self._follow = _following(self.endpoints, discovery, curve)
        if self._follow is not None:
            self.endpoints = [DISCOVER]
        if not self.endpoints:
            raise BadRequest("a Client needs at least one endpoint")
        for endpoint in self.endpoints if self._follow is None else ():
            check_endpoint(endpoint)
        self.timeout = timeout
        # how long to wait for a first connection before saying no daemon is there
        self.connect_timeout = timeout if connect_timeout is None else connect_timeout
        self.retries = retries
        self._ctx = context or zmq.Context.instance()
        self._curve = curve
        self._ids = itertools.count(1)
        # unique per client in this process (the low bits of id() were not: two clients at
        # addresses 64 kB apart shared their ids, and their replies looked like duplicates)
        self._prefix = f"{os.getpid()}-{next(_CLIENTS)}-"
        self._sock: Optional[zmq.Socket] = None
        self._connected: List[str] = []

    def _socket(self) -> zmq.Socket:
        if self._sock is None:
            sock = self._ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.IMMEDIATE, 1)  # queue only to endpoints that are connected
            if self._curve:
                sock.curve_secretkey = self._curve["secret"]
                sock.curve_publickey = self._curve["public"]
                sock.curve_serverkey = self._curve["server"]
            for endpoint in self._targets():
                try:
                    sock.connect(endpoint)
                except zmq.ZMQError as exc:
                    sock.close(linger=0)
                    raise BadRequest(f"cannot connect to {endpoint!r}: {exc}") from None
            self._sock = sock
        elif self._follow is not None and self._follow.changed():
            self._refollow(self._sock)
        return self._sock

    @property
    def connected(self) -> List[str]:
        """The endpoints the socket is connected to (with discovery: the boards found)."""
        return sorted(self._connected) if self._sock is not None else []

    def _targets(self) -> List[str]:
        self._connected = self.endpoints if self._follow is None else self._follow.endpoints()
        return self._connected

    def _refollow(self, sock: zmq.Socket) -> None:
        """Boards appeared or went away: connect the new ones, disconnect the gone."""
        before = set(self._connected)
        now = set(self._targets())
        for endpoint in sorted(now - before):
            sock.connect(endpoint)
        for endpoint in sorted(before - now):
            sock.disconnect(endpoint)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    def shutdown(self) -> None:
        """Close the socket and the browser this client started (if any)."""
        self.close()
        if self._follow is not None:
            self._follow.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()

    def call(self, message: Dict[str, Any], timeout: Optional[float] = None) -> Dict[str, Any]:
        """Send one request map, return the reply map; error replies raise their exception."""
        request_id = f"{self._prefix}{next(self._ids)}"
        payload = protocol.encode({"v": protocol.VERSION, "id": request_id, **message})
        timeout = self.timeout if timeout is None else timeout
        if self._follow is not None and not self._connected:
            self._follow.wait_any(min(timeout, self.connect_timeout))
        for _attempt in range(self.retries + 1):
            reply = self._exchange(payload, request_id, timeout)
            if reply is _NO_CONNECTION:
                self._reset()
                curve = (
                    "; with CURVE, does the daemon allow this client's key, and is the "
                    "server key its own"
                    if self._curve
                    else ""
                )
                raise Unavailable(
                    f"could not connect to {self._where()} within "
                    f"{min(timeout, self.connect_timeout):g} s: is the daemon running "
                    f"('rkserve serve', 'systemctl status rkserve') and listening there{curve}?"
                )
            if reply is not None:
                if not reply.get("ok"):
                    error = reply.get("error") or {}
                    raise from_code(
                        str(error.get("code", "internal")), str(error.get("message", ""))
                    )
                return reply
            self._reset()  # a lost reply must not be mistaken for the next one's
        raise Unavailable(
            f"no reply from {self._where()} within {timeout:g} s ({self.retries + 1} attempts)"
        )

    def _where(self) -> str:
        if self._follow is None:
            return ", ".join(self.endpoints)
        return f"any board found on the LAN by DNS-SD ({len(self._connected)} usable)"

    def _exchange(
        self, payload: bytes, request_id: str, timeout: float
    ) -> Optional[Dict[str, Any]]:
        sock = self._socket()
        try:
            sock.send_multipart([b"", payload], flags=zmq.NOBLOCK)
        except zmq.Again:  # no endpoint connected yet: wait for one within the timeout
            if not sock.poll(int(min(timeout, self.connect_timeout) * 1000), zmq.POLLOUT):
                return _NO_CONNECTION
            sock.send_multipart([b"", payload])
        until = time.monotonic() + timeout
        while True:
            left = until - time.monotonic()
            if left <= 0 or not sock.poll(int(left * 1000) + 1):
                return None
            frames = sock.recv_multipart()
            reply = protocol.decode_reply(frames[-1])
            # one request is outstanding per socket: an error without an id (the server could
            # not read ours) answers it; anything else with another id is a stale reply
            if reply.get("id") == request_id or (reply.get("id") is None and not reply.get("ok")):
                return reply

    def _reset(self) -> None:
        self.close()

    # operations -------------------------------------------------------------------------
    def health(self) -> Dict[str, Any]:
        return self.call({"op": "health"})

    def models(self) -> List[Dict[str, Any]]:
        return list(self.call({"op": "models"})["models"])

    def infer(
        self,
        model: str,
        image: Union[bytes, np.ndarray],
        deadline_ms: Optional[int] = None,
        **params: Any,
    ) -> InferResult:
        """``image`` is encoded JPEG/PNG bytes, or an ``HxWx3 uint8`` RGB array."""
        message: Dict[str, Any] = {"op": "infer", "model": model, "params": params}
        if isinstance(image, np.ndarray):
            message["tensor"] = protocol.encode_tensor(image)
        else:
            message["image"] = bytes(image)
        if deadline_ms is not None:
            message["deadline_ms"] = deadline_ms
        return self._infer(message)

    def infer_tensors(
        self,
        model: str,
        inputs: Union[Sequence[np.ndarray], Mapping[str, np.ndarray]],
        deadline_ms: Optional[int] = None,
    ) -> InferResult:
        """Raw tensors in, raw tensors out (a ``task: tensor`` model). ``inputs`` is a list in
        the model's input order or a name → array map; ``result.outputs`` maps each output
        name to its array::

            out = client.infer_tensors("multi", {"input.1": a, "input": b}).outputs["8"]
        """
        message: Dict[str, Any] = {
            "op": "infer",
            "model": model,
            "inputs": protocol.encode_inputs(inputs),
        }
        if deadline_ms is not None:
            message["deadline_ms"] = deadline_ms
        return self._infer(message)

    def _infer(self, message: Dict[str, Any]) -> InferResult:
        reply = self.call(message)
        return InferResult(
            reply["model"],
            reply["task"],
            reply["result"],
            reply.get("timing_ms", {}),
            reply.get("id"),
        )

    def classify(
        self, model: str, image: Union[bytes, np.ndarray], top_k: int = 5, **kw: Any
    ) -> InferResult:
        return self.infer(model, image, top_k=top_k, **kw)

    def segment(
        self,
        model: str,
        image: Union[bytes, np.ndarray],
        mask: str = "png",
        overlay: bool = False,
        **kw: Any,
    ) -> InferResult:
        return self.infer(model, image, mask=mask, overlay=overlay, **kw)

    def detect(
        self,
        model: str,
        image: Union[bytes, np.ndarray],
        conf: Optional[float] = None,
        iou: Optional[float] = None,
        max_det: Optional[int] = None,
        classes: Optional[Sequence[int]] = None,
        overlay: bool = False,
        **kw: Any,
    ) -> InferResult:
        """Boxes in source-image pixels, best first (``result.detections``); unset params take
        the model's defaults from its model.yaml::

            found = client.detect("yolov8n", jpeg, conf=0.4, classes=[0])
            for d in found.detections:
                print(d["label"], d["score"], d["box"])
        """
        given: Dict[str, Any] = {"conf": conf, "iou": iou, "max_det": max_det}
        params = {k: v for k, v in given.items() if v is not None}
        if classes is not None:
            params["classes"] = [int(c) for c in classes]
        if overlay:
            params["overlay"] = True
        return self.infer(model, image, **{**params, **kw})


Answer = Union[Dict[str, Any], List[Dict[str, Any]], RkserveError]


def ask_each(endpoints: Sequence[str], op: str, **client_kw: Any) -> List[Tuple[str, Answer]]:
    """``health`` or ``models`` of every endpoint, each on its own socket and at the same
    time, in the order given: ``(endpoint, answer)``, the answer an error when that daemon
    could not answer. One DEALER over several endpoints would ask only the one ZeroMQ picks.
    """
    if op not in ("health", "models"):
        raise BadRequest(f"ask_each asks health or models, not {op!r}")
    for endpoint in endpoints:
        check_endpoint(endpoint)

    def ask(endpoint: str) -> Answer:
        try:
            with Client(endpoint, **client_kw) as client:
                return client.health() if op == "health" else client.models()
        except RkserveError as exc:
            return exc

    if not endpoints:
        return []
    with ThreadPoolExecutor(max_workers=min(len(endpoints), 16)) as pool:
        return list(zip(endpoints, pool.map(ask, endpoints)))


def _following(
    endpoints: List[str], browser: Optional[Browser], curve: Optional[Dict[str, bytes]]
) -> Optional[Following]:
    """Discovery in place of endpoints: ``"dnssd:"`` alone, or a browser passed in."""
    if browser is None and DISCOVER not in endpoints:
        return None
    if endpoints not in ([DISCOVER], [DEFAULT_ENDPOINT]):
        raise BadRequest(
            f"{DISCOVER} stands for every board found: give it alone, not with endpoints"
        )
    server_key = curve["server"] if curve else None
    if browser is None:
        return Following(Browser().start(), True, server_key)
    return Following(browser, False, server_key)
