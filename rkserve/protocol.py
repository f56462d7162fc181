"""Wire protocol v1: one msgpack map per ZeroMQ message (after the ROUTER envelope).

Documented for other languages in ``docs/PROTOCOL.md``. Decoding is strict: wrong types,
missing fields and unknown keys are :class:`BadRequest` errors carrying the request id
when it could be read, so the reply still reaches the right caller.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import msgpack
import numpy as np

from .errors import BadImage, BadRequest, BadTensor, RkserveError, TooLarge, UnsupportedVersion
from .msgcheck import check_message

VERSION = 1
STAGES = ("queue", "decode", "preprocess", "inference", "postprocess", "total")  # timing_ms keys
OPS = ("infer", "models", "health")
REQUEST_KEYS = {"v", "id", "op", "model", "image", "tensor", "inputs", "params", "deadline_ms"}
TENSOR_DTYPES = ("uint8",)  # an image given as pixels (``tensor``)
INPUT_DTYPES = ("uint8", "int8", "int16", "float16", "float32")  # named inputs (``inputs``)
TENSOR_KEYS = {"name", "dtype", "shape", "data"}
MAX_INPUTS = 64
MAX_DIMS = 8
MAX_ID_BYTES = 256
SHOW_CHARS = 60  # how much of a client's value an error message quotes
MAX_ERROR_CHARS = 2000  # error replies never grow with the request


@dataclass
class Request:
    id: Any
    op: str
    model: str = ""
    image: Optional[bytes] = None
    tensor: Optional[np.ndarray] = None
    inputs: Optional[Inputs] = None
    params: Dict[str, Any] = field(default_factory=dict)
    deadline_ms: Optional[int] = None

    @property
    def input(self) -> Any:
        """What the model's task gets: image bytes, an image array or the named inputs."""
        if self.image is not None:
            return self.image
        return self.tensor if self.tensor is not None else self.inputs


@dataclass(frozen=True)
class NamedTensor:
    """One tensor of a request's ``inputs``; ``name`` is None when the client gave none."""

    name: Optional[str]
    array: np.ndarray


@dataclass(frozen=True)
class Inputs:
    """A request's named inputs, in the order sent; ``keyed`` when sent as a name → tensor map."""

    tensors: List[NamedTensor]
    keyed: bool = False

    @staticmethod
    def of(arrays: Union[Sequence[np.ndarray], Mapping[str, np.ndarray]]) -> Inputs:
        """In-process use: a list of arrays (model order) or a name → array map."""
        if isinstance(arrays, Mapping):
            return Inputs([NamedTensor(str(k), np.asarray(v)) for k, v in arrays.items()], True)
        return Inputs([NamedTensor(None, np.asarray(a)) for a in arrays])


def show(value: Any) -> str:
    """A client's value for an error message: short, and never the repr of a whole structure
    (a 1 MB field must not come back 4x larger; a 1000-deep array must not recurse)."""
    if isinstance(value, dict):
        return f"a map of {len(value)} entries"
    if isinstance(value, (list, tuple)):
        return f"an array of {len(value)} items"
    if isinstance(value, (str, bytes)):
        text = repr(value[:SHOW_CHARS])
        return text if len(value) <= SHOW_CHARS else f"{text}... ({len(value)} long)"
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)[:SHOW_CHARS]
    return f"a {type(value).__name__}"


def _names(keys: Any) -> str:
    """Sorted, truncated key names (keys may mix str and bytes)."""
    names = sorted(str(k)[:SHOW_CHARS] for k in keys)
    more = f" and {len(names) - 10} more" if len(names) > 10 else ""
    return f"{names[:10]}{more}"


def _fail(error: RkserveError, request_id: Any) -> RkserveError:
    error.request_id = request_id
    return error


def decode_request(payload: Union[bytes, memoryview], max_bytes: int) -> Request:
    """Parse and validate one request; errors carry ``request_id`` (None if unreadable)."""
    if len(payload) > max_bytes:
        raise _fail(
            TooLarge(f"message of {len(payload)} bytes is over the limit of {max_bytes}"), None
        )
    try:
        check_message(payload)  # before unpackb: its error paths leak (msgpack < 1.2)
        message = msgpack.unpackb(payload, raw=False)
    except BadRequest as exc:
        raise _fail(exc, None) from None
    except Exception as exc:  # msgpack raises several unrelated types
        raise _fail(
            BadRequest(f"message is not valid msgpack: {type(exc).__name__}: {exc}"), None
        ) from None
    if not isinstance(message, dict):
        raise _fail(
            BadRequest(f"message must be a msgpack map, got {type(message).__name__}"), None
        )
    request_id = _request_id(message.get("id"))
    try:
        return _request(message, request_id)
    except RkserveError as exc:
        raise _fail(exc, request_id) from None


def _request_id(value: Any) -> Any:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int) or (isinstance(value, bytes) and len(value) <= MAX_ID_BYTES):
        return value
    if isinstance(value, str) and len(value.encode("utf-8")[: MAX_ID_BYTES + 1]) <= MAX_ID_BYTES:
        return value
    return None


def _request(message: Mapping[str, Any], request_id: Any) -> Request:
    version = message.get("v")
    if isinstance(version, bool) or not isinstance(version, int) or version != VERSION:
        raise UnsupportedVersion(
            f"protocol version {show(version)} is not supported; this server speaks v{VERSION}"
        )
    if "id" in message and request_id is None and message["id"] is not None:
        raise BadRequest(
            f"id must be an integer, or a string/bytes of at most {MAX_ID_BYTES} bytes"
        )
    unknown = set(message) - REQUEST_KEYS
    if unknown:
        raise BadRequest(f"unknown fields {_names(unknown)}")
    op = message.get("op")
    if op not in OPS:
        raise BadRequest(f"op must be one of {', '.join(OPS)}, got {show(op)}")
    request = Request(id=request_id, op=op)
    if op == "infer":
        _infer_fields(message, request)
    return request


def _infer_fields(message: Mapping[str, Any], request: Request) -> None:
    request.model = _typed(message, "model", str, "a string")
    if not request.model:
        raise BadRequest("infer needs a model name")
    params = message.get("params", {})
    if not isinstance(params, dict):
        raise BadRequest(f"params must be a map, got {type(params).__name__}")
    request.params = params
    deadline = message.get("deadline_ms")
    if deadline is not None and (
        isinstance(deadline, bool) or not isinstance(deadline, int) or deadline <= 0
    ):
        raise BadRequest(f"deadline_ms must be a positive integer, got {show(deadline)}")
    request.deadline_ms = deadline
    given = [k for k in ("image", "tensor", "inputs") if message.get(k) is not None]
    if len(given) != 1:
        raise BadRequest(
            "infer needs exactly one of image (encoded JPEG/PNG bytes), tensor (an image as "
            f"HxWx3 uint8 pixels) or inputs (named tensors); got {', '.join(given) or 'none'}"
        )
    if given[0] == "image":
        request.image = _typed(message, "image", bytes, "bytes (msgpack bin)")
    elif given[0] == "tensor":
        request.tensor = decode_tensor(message["tensor"])
    else:
        request.inputs = decode_inputs(message["inputs"])


def _typed(message: Mapping[str, Any], key: str, kind: type, what: str) -> Any:
    value = message.get(key)
    if not isinstance(value, kind):
        raise BadRequest(f"{key} must be {what}, got {type(value).__name__}")
    return value


def decode_tensor(value: Any) -> np.ndarray:
    """``{"dtype": "uint8", "shape": [h, w, 3], "data": bin}`` → array (no copy)."""
    if not isinstance(value, dict):
        raise BadRequest("tensor must be a map with dtype, shape and data")
    return _array("tensor", value, TENSOR_DTYPES, BadImage)


def decode_inputs(value: Any) -> Inputs:
    """``[{"name"?, "dtype", "shape", "data"}, ...]`` or ``{name: {"dtype", "shape", "data"}}``
    → :class:`Inputs` (arrays are views of the message: no copy). Errors name the input."""
    if isinstance(value, dict):
        items = [(f"inputs[{show(k)}]", k, v) for k, v in value.items()]
    elif isinstance(value, list):
        items = [(f"inputs[{n}]", None, v) for n, v in enumerate(value)]
    else:
        raise BadRequest(
            f"inputs must be a list of tensors or a map of name → tensor, got {show(value)}"
        )
    if not items or len(items) > MAX_INPUTS:
        raise BadTensor(f"inputs must hold 1..{MAX_INPUTS} tensors, got {len(items)}")
    tensors = [_named_tensor(where, key, v) for where, key, v in items]
    return Inputs(tensors, keyed=isinstance(value, dict))


def _named_tensor(where: str, key: Any, value: Any) -> NamedTensor:
    if not isinstance(value, dict):
        raise BadTensor(f"{where} must be a map with dtype, shape and data, got {show(value)}")
    unknown = set(value) - TENSOR_KEYS
    if unknown:
        raise BadTensor(f"{where}: unknown fields {_names(unknown)}; known: {sorted(TENSOR_KEYS)}")
    name = value.get("name", key)
    if name is not None and not (isinstance(name, str) and 0 < len(name) <= 256):
        raise BadTensor(f"{where}: name must be a string of 1..256 characters, got {show(name)}")
    if key is not None and value.get("name", key) != key:
        raise BadTensor(f"{where}: name {show(value['name'])} differs from its key")
    if name is not None:
        where = f"{where.split('[')[0]}[{show(name)}]" if key is None else where
    return NamedTensor(name, _array(where, value, INPUT_DTYPES, BadTensor))


def _array(where: str, value: Mapping[str, Any], dtypes: Sequence[str], error: type) -> np.ndarray:
    dtype, shape, data = value.get("dtype"), value.get("shape"), value.get("data")
    if dtype not in dtypes:
        raise error(f"{where}: dtype must be one of {', '.join(dtypes)}, got {show(dtype)}")
    if not (
        isinstance(shape, list)
        and 0 < len(shape) <= MAX_DIMS
        and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)
    ):
        raise error(
            f"{where}: shape must be a list of 1..{MAX_DIMS} positive integers, got {show(shape)}"
        )
    if not isinstance(data, bytes):
        raise error(f"{where}: data must be bytes (msgpack bin), got {type(data).__name__}")
    expected = np.dtype(dtype).itemsize
    for size in shape:  # Python integers: a product over 2**64 must not wrap around
        expected *= size
    if len(data) != expected:
        raise error(f"{where}: data is {len(data)} bytes; shape {shape} {dtype} needs {expected}")
    return np.frombuffer(data, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape)


def encode_tensor(array: np.ndarray, name: Optional[str] = None) -> Dict[str, Any]:
    """An array → ``{"name"?, "dtype", "shape", "data"}``: little-endian, row-major."""
    array = np.asarray(array)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    tensor: Dict[str, Any] = {} if name is None else {"name": name}
    tensor.update(
        dtype=array.dtype.name,
        shape=list(array.shape),
        data=np.ascontiguousarray(array).tobytes(),
    )
    return tensor


def encode_inputs(
    inputs: Union[Sequence[np.ndarray], Mapping[str, np.ndarray]],
) -> List[Dict[str, Any]]:
    """A list of arrays (the model's input order) or a name → array map → the wire's inputs."""
    if isinstance(inputs, Mapping):
        return [encode_tensor(a, str(n)) for n, a in inputs.items()]
    return [encode_tensor(a) for a in inputs]


def decode_output(value: Mapping[str, Any]) -> np.ndarray:
    """A reply's output tensor map → array (a copy: writable, independent of the reply)."""
    dtype = np.dtype(str(value["dtype"])).newbyteorder("<")
    return np.frombuffer(value["data"], dtype=dtype).reshape(value["shape"]).copy()


def encode(message: Mapping[str, Any]) -> bytes:
    return msgpack.packb(message, use_bin_type=True)


def ok_reply(request_id: Any, body: Mapping[str, Any], timings: Mapping[str, float]) -> bytes:
    return encode({"v": VERSION, "id": request_id, "ok": True, **body, "timing_ms": dict(timings)})


def error_reply(
    request_id: Any, error: RkserveError, timings: Optional[Mapping[str, float]] = None
) -> bytes:
    message = error.message
    if len(message) > MAX_ERROR_CHARS:
        message = message[: MAX_ERROR_CHARS - 3] + "..."
    body = {"code": error.code, "message": message}
    return encode(
        {
            "v": VERSION,
            "id": request_id,
            "ok": False,
            "error": body,
            "timing_ms": dict(timings or {}),
        }
    )


def decode_reply(payload: bytes) -> Dict[str, Any]:
    reply = msgpack.unpackb(payload, raw=False)
    if not isinstance(reply, dict) or "ok" not in reply:
        raise BadRequest("reply is not an rkserve v1 reply")
    return reply
