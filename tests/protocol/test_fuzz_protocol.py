"""Property-based tests of the wire decoder: whatever bytes arrive, the answer is a Request or
an RkserveError with a specific code, a short message and the request id when readable.

Inputs that once broke the decoder are kept below as explicit regression cases.
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rkserve import msgcheck, protocol
from rkserve.engine import Engine
from rkserve.errors import BadRequest, RkserveError
from rkserve.tasks import load_spec
from rkserve.tasks.classification import Params

LIMIT = 4096  # a small max_bytes, so "near and over the limit" is cheap to generate
DECODE_CODES = {"bad_request", "bad_image", "too_large", "unsupported_version"}
MAX_MESSAGE_CHARS = 600  # an error message never grows with the input
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True),
    st.text(max_size=40),
    st.binary(max_size=40),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.dictionaries(st.one_of(st.text(max_size=8), st.binary(max_size=8)), inner, max_size=5),
    ),
    max_leaves=20,
)
keys = st.one_of(st.sampled_from(sorted(protocol.REQUEST_KEYS)), st.text(max_size=8))


def nested(depth: int, leaf: Any, as_map: bool) -> bytes:
    """msgpack of ``depth`` nested one-element arrays (or maps), built without recursion."""
    head = b"\x81\xa1k" if as_map else b"\x91"
    return head * depth + msgpack.packb(leaf)


def field_map(fields: dict) -> bytes:
    return msgpack.packb(fields, use_bin_type=True)


def check(payload: bytes, max_bytes: int = LIMIT) -> Any:
    """The property: a Request, or a coded RkserveError carrying ``request_id``."""
    try:
        request = protocol.decode_request(payload, max_bytes)
    except RkserveError as exc:
        assert exc.code in DECODE_CODES, exc
        assert exc.message and len(exc.message) <= MAX_MESSAGE_CHARS, len(exc.message)
        assert hasattr(exc, "request_id")
        protocol.error_reply(exc.request_id, exc)  # the reply always encodes
        return exc
    assert request.op in protocol.OPS
    assert request.id is None or isinstance(request.id, (int, str, bytes))
    if request.op == "infer":
        assert request.model and ((request.image is None) != (request.tensor is None))
    return request


@FUZZ
@given(st.binary(max_size=600))
def test_random_bytes(payload):
    check(payload)


@FUZZ
@given(values)
def test_random_msgpack_of_any_shape(value):
    check(msgpack.packb(value, use_bin_type=True))


@FUZZ
@given(st.dictionaries(keys, values, max_size=8), st.sampled_from([None, *protocol.OPS]))
def test_request_shaped_maps_with_wrong_types(fields, op):
    if op is not None:
        fields = {"v": 1, **fields, "op": op}
    check(field_map(fields))


@FUZZ
@given(
    st.sampled_from(["v", "id", "op", "model", "params", "deadline_ms", "image", "tensor"]),
    st.integers(min_value=1, max_value=1100),
    st.booleans(),
)
def test_deeply_nested_values_in_every_field(key, depth, as_map):
    head = field_map({"v": 1, "op": "infer", "model": "m"})
    # replace the map's size byte (3 entries) by 4 and append the nested field
    payload = b"\x84" + head[1:] + msgpack.packb(key) + nested(depth, 0, as_map)
    check(payload)


@FUZZ
@given(
    st.sampled_from(["id", "op", "model", "image", "unknown"]),
    st.integers(min_value=LIMIT - 64, max_value=LIMIT + 64),
    st.booleans(),
)
def test_giant_strings_and_bins_near_the_limit(key, size, as_bin):
    value: Any = b"x" * size if as_bin else "x" * size
    payload = field_map({"v": 1, "id": 7, "op": "infer", "model": "m", key: value})
    result = check(payload)
    if len(payload) > LIMIT:
        assert isinstance(result, RkserveError) and result.code == "too_large"


shapes = st.lists(
    st.one_of(
        st.integers(min_value=-5, max_value=64),
        st.integers(min_value=2**31, max_value=2**64 - 1),
        st.booleans(),
        st.text(max_size=2),
    ),
    max_size=6,
)


@FUZZ
@given(
    st.one_of(st.sampled_from(["uint8", "float32", "uint16"]), values),
    st.one_of(shapes, values),
    st.one_of(st.binary(max_size=300), values),
)
def test_tensor_maps(dtype, shape, data):
    tensor = {"dtype": dtype, "shape": shape, "data": data}
    result = check(field_map({"v": 1, "id": 1, "op": "infer", "model": "m", "tensor": tensor}))
    if not isinstance(result, RkserveError):
        array = result.tensor
        assert array.dtype == np.uint8 and array.nbytes == len(data)
        assert list(array.shape) == shape


@FUZZ
@given(values)
def test_the_structure_check_accepts_what_msgpack_packs(value):
    data = msgpack.packb(value, use_bin_type=True)
    msgcheck.check_message(data)
    assert msgpack.packb(msgpack.unpackb(data, raw=False), use_bin_type=True) == data


@FUZZ
@given(values, st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), max_size=4))
def test_what_passes_the_structure_check_unpacks_without_an_error(value, edits):
    """The check's promise: msgpack's error paths (which leak before 1.2) are never taken."""
    data = bytearray(msgpack.packb(value, use_bin_type=True))
    for position, byte in edits:
        data[position % len(data)] = byte
    try:
        msgcheck.check_message(bytes(data))
    except BadRequest:
        return
    msgpack.unpackb(bytes(data), raw=False)


def rss_kb() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


@pytest.mark.parametrize(
    "payload",
    [
        b"\x91" * 1030 + b"\x00",
        b"\x91" * 10 + b"\xa2\xff\xfe",
        b"\x91" * 10 + b"\x81\x01\x01",
        b"\x91" * 10 + b"\xd5\xff\x00\x00",
        b"\x91" * 10 + b"\xa5ab",
        b"\x91" * 10 + b"\xdd\xff\xff\xff\xff",
    ],
    ids=["1030-deep", "bad-utf8", "int-map-key", "timestamp-ext", "truncated-str", "huge-array"],
)
def test_malformed_nested_messages_do_not_leak(payload):
    """msgpack 1.1.1 (Python 3.8) leaked 80 kB per 1030-deep message, ~0.7 kB per other one."""
    for _ in range(100):  # warm-up
        with pytest.raises(BadRequest):
            protocol.decode_request(payload, LIMIT)
    before = rss_kb()
    for _ in range(3000):
        with pytest.raises(BadRequest):
            protocol.decode_request(payload, LIMIT)
    assert rss_kb() - before < 2048


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    from rkserve.backends.fake import FakeBackend

    folder = tmp_path_factory.mktemp("m")
    (folder / "model.yaml").write_text("task: classification\ninput: {size: 16}\n")
    (folder / "model.onnx").write_bytes(b"placeholder: the fake backend never reads it")
    spec = load_spec(folder)
    return Engine(spec, FakeBackend(spec, classes=4))


@FUZZ
@given(st.dictionaries(st.one_of(st.text(max_size=8), st.binary(max_size=8)), values, max_size=5))
def test_params_only_raise_bad_request(engine, raw):
    payload = field_map({"v": 1, "op": "infer", "model": "m", "image": b"x", "params": raw})
    request = check(payload)
    try:
        params = engine.parse_params(request.params)
    except BadRequest as exc:
        assert exc.code == "bad_request" and len(exc.message) <= MAX_MESSAGE_CHARS
        return
    assert isinstance(params, Params)


# Inputs that broke the decoder (each crashed the daemon's frontend thread before the fix).
REGRESSIONS = [
    pytest.param(
        b"\x82\xa1v\x01\xa2op" + b"\x91" * 1000 + b"\x00",
        "bad_request",
        id="op-nested-1000-deep:RecursionError-in-repr",
    ),
    pytest.param(
        b"\x83\xa1v\x01\xa2op" + b"\x91" * 1010 + b"\x00" + b"\xa1v\x01",
        "bad_request",
        id="op-nested-1010-deep-then-more-keys",
    ),
    pytest.param(
        field_map(
            {
                "v": 1,
                "op": "infer",
                "model": "m",
                "tensor": {"dtype": "uint8", "shape": [2**32, 2**32], "data": b""},
            }
        ),
        "bad_image",
        id="tensor-shape-product-wraps-to-0:ValueError-in-reshape",
    ),
    pytest.param(
        field_map(
            {
                "v": 1,
                "op": "infer",
                "model": "m",
                "tensor": {"dtype": "uint8", "shape": [2**64 - 1, 2], "data": b""},
            }
        ),
        "bad_image",
        id="tensor-shape-over-int64",
    ),
    pytest.param(field_map({"v": True, "op": "health"}), "unsupported_version", id="v-true"),
    pytest.param(field_map({"v": 1.0, "op": "health"}), "unsupported_version", id="v-float"),
    pytest.param(
        field_map({"v": 1, "id": "\u00e9" * 200, "op": "health"}),
        "bad_request",
        id="id-200-chars-400-bytes",
    ),
]


@pytest.mark.parametrize("payload,code", REGRESSIONS)
def test_regressions(payload, code):
    result = check(payload, max_bytes=1 << 20)
    assert isinstance(result, RkserveError) and result.code == code


@pytest.mark.parametrize(
    "fields",
    [
        {"v": 1, "op": b"x" * 1_000_000},
        {"v": [b"x" * 1000] * 1000, "op": "health"},
        {"v": 1, "op": "health", **{str(i): i for i in range(100_000)}},
        {"v": 1, "op": "infer", "model": "m", "deadline_ms": "x" * 1_000_000},
    ],
    ids=["op-1MB", "v-1MB-list", "100k-unknown-keys", "deadline-1MB"],
)
def test_error_messages_do_not_grow_with_the_input(fields):
    """A 1 MB field once came back (repr'd, 4x larger) inside the error message."""
    result = check(field_map(fields), max_bytes=8 << 20)
    assert isinstance(result, RkserveError)


@pytest.mark.parametrize(
    "raw",
    [{b"top_k": 1, "mask": "png"}, {b"a": 1, "b": 2}],
    ids=["bytes-and-str-keys", "bytes-and-str-unknown-keys"],
)
def test_params_regressions(engine, raw):
    """Mixed str/bytes keys made ``sorted`` raise TypeError, which killed the frontend."""
    with pytest.raises(BadRequest, match="unknown params"):
        engine.parse_params(raw)
