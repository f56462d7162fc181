"""Property-based tests of image decoding, alone and through ``Engine.prepare``: whatever bytes
arrive, the answer is an image of a checked size, or BadImage / TooLarge.

The key property: an image is only ever decoded at the size its header declared and the pixel
limit allowed, so no input can make a decoder allocate for a size nobody checked.
"""

from __future__ import annotations

import resource
import struct
import zlib
from typing import Any

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rkserve.backends.fake import FakeBackend
from rkserve.engine import Engine
from rkserve.errors import BadImage, TooLarge
from rkserve.kernels import image
from rkserve.tasks import load_spec
from rkserve.tasks.segmentation import Params

MAX_PIXELS = 64 * 64  # small, so that "absurd" sizes are cheap even if something decodes them
FUZZ = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FORMATS = (".jpg", ".png", ".bmp")


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    folder = tmp_path_factory.mktemp("m")
    (folder / "model.yaml").write_text("task: segmentation\ninput: {size: 16}\n")
    (folder / "model.onnx").write_bytes(b"placeholder: the fake backend never reads it")
    spec = load_spec(folder)
    return Engine(spec, FakeBackend(spec, classes=3), max_pixels=MAX_PIXELS)


def decoded(data: bytes, engine: Engine) -> Any:
    """The property, checked on ``decode_image`` and on ``Engine.prepare`` alike: a small
    image or a specific error, and never a large allocation on the way (the peak RSS)."""
    peak = _peak_rss_mb()
    try:
        rgb = image.decode_image(data, MAX_PIXELS)
    except (BadImage, TooLarge) as exc:
        assert _peak_rss_mb() - peak < 64
        with pytest.raises(type(exc)):
            engine.prepare(data, Params())
        return exc
    assert _peak_rss_mb() - peak < 64
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    height, width = rgb.shape[:2]
    assert width * height <= MAX_PIXELS and min(width, height) >= image.MIN_SIDE
    size = image.image_size(data)
    assert size is not None and sorted(size) == sorted((width, height))
    prepared = engine.prepare(data, Params())
    assert prepared.tensors[0].shape == (1, 16, 16, 3)
    return rgb


def encode(fmt: str, width: int, height: int, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), np.uint8)
    return cv2.imencode(fmt, pixels)[1].tobytes()


def png_with_size(width: int, height: int, body: bytes) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + crc + body


def jpeg_with_size(width: int, height: int, seed: int = 0) -> bytes:
    data = encode(".jpg", 16, 16, seed)
    sof = data.index(b"\xff\xc0")
    return data[: sof + 5] + struct.pack(">HH", height, width) + data[sof + 9 :]


def bmp_with_size(width: int, height: int, body: bytes) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 0, 0, 0, 0)
    return b"BM" + struct.pack("<IHHI", 54 + len(body), 0, 0, 54) + info + body


@FUZZ
@given(st.binary(max_size=400))
def test_random_bytes(engine, data):
    decoded(data, engine)


@FUZZ
@given(
    st.sampled_from([b"\x89PNG\r\n\x1a\n", b"\xff\xd8", b"\xff\xd8\xff\xe0", b"BM"]),
    st.binary(max_size=300),
)
def test_random_bytes_behind_an_image_signature(engine, magic, rest):
    decoded(magic + rest, engine)


@FUZZ
@given(
    st.sampled_from(FORMATS),
    st.integers(min_value=1, max_value=70),
    st.integers(min_value=1, max_value=70),
    st.sampled_from(["signature", "header", "body", "tail", "whole"]),
    st.integers(min_value=0, max_value=2**16),
)
def test_truncated_images_at_every_length_class(engine, fmt, width, height, where, seed):
    data = encode(fmt, width, height, seed)
    cut = {
        "signature": seed % 4,
        "header": 4 + seed % 40,
        "body": 44 + seed % max(1, len(data) - 60),
        "tail": len(data) - 1 - seed % 16,
        "whole": len(data),
    }[where]
    truncated = data[: max(0, cut)]
    result = decoded(truncated, engine)
    if where == "whole" and width * height <= MAX_PIXELS and min(width, height) >= 8:
        assert isinstance(result, np.ndarray)
    if width * height > MAX_PIXELS and image.image_size(truncated) is not None:
        assert isinstance(result, TooLarge)


@FUZZ
@given(
    st.sampled_from(["png", "jpeg", "bmp"]),
    st.integers(min_value=0, max_value=2**32 - 1),
    st.integers(min_value=0, max_value=2**32 - 1),
    st.binary(max_size=64),
)
def test_absurd_declared_dimensions(engine, kind, width, height, body):
    if kind == "png":
        data = png_with_size(width, height, body)
    elif kind == "jpeg":
        width, height = width % 65536, height % 65536
        data = jpeg_with_size(width, height)
    else:
        width, height = width % 2**31, height % 2**31
        data = bmp_with_size(width, height, body)
    result = decoded(data, engine)
    if width * height > MAX_PIXELS:
        assert isinstance(result, TooLarge), result
    elif min(width, height) < image.MIN_SIDE:
        assert isinstance(result, BadImage) and not isinstance(result, TooLarge)


def with_chunk_length(png: bytes, index: int, length: int) -> bytes:
    """``png`` with the declared length of its ``index``-th chunk replaced."""
    pos = 8
    for _ in range(index):
        pos += 12 + struct.unpack_from(">I", png, pos)[0]
    return png[:pos] + struct.pack(">I", length) + png[pos + 4 :]


@FUZZ
@given(st.integers(min_value=1, max_value=3), st.integers(min_value=0, max_value=2**32 - 1))
def test_png_chunk_lengths(engine, index, length):
    png = encode(".png", 40, 30, 0)
    chunks = 0
    pos = 8
    while pos < len(png):
        chunks += 1
        pos += 12 + struct.unpack_from(">I", png, pos)[0]
    decoded(with_chunk_length(png, min(index, chunks - 1), length), engine)


@FUZZ
@given(
    st.sampled_from(FORMATS),
    st.integers(min_value=8, max_value=60),
    st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), min_size=1, max_size=12),
)
def test_corrupted_bodies(engine, fmt, side, edits):
    data = bytearray(encode(fmt, side, 64 - side, side))
    for position, value in edits:
        data[2 + position % (len(data) - 2)] = value  # keep the signature
    decoded(bytes(data), engine)


@FUZZ
@given(
    st.sampled_from([np.uint8, np.float32, np.int16]),
    st.lists(st.integers(min_value=0, max_value=80), min_size=1, max_size=4),
)
def test_tensors(engine, dtype, shape):
    array = np.zeros(shape, dtype)
    try:
        prepared = engine.prepare(array, Params())
    except (BadImage, TooLarge):
        return
    assert dtype == np.uint8 and len(shape) == 3 and shape[2] == 3
    assert prepared.tensors[0].shape == (1, 16, 16, 3)


def exif_rotated_jpeg(width: int, height: int) -> bytes:
    """A JPEG whose EXIF orientation (6: rotate 90°) makes it decode as height x width."""
    entry = struct.pack(">HHIHH", 0x0112, 3, 1, 6, 0)
    tiff = b"MM\x00*" + struct.pack(">I", 8) + struct.pack(">H", 1) + entry + b"\x00" * 4
    app1 = b"Exif\x00\x00" + tiff
    data = encode(".jpg", width, height, 1)
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + data[2:]


def test_exif_rotated_jpeg_is_accepted(engine):
    rgb = decoded(exif_rotated_jpeg(40, 16), engine)
    assert isinstance(rgb, np.ndarray) and rgb.shape[:2] == (40, 16)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _stray_byte_before_sof(width: int, height: int) -> bytes:
    data = jpeg_with_size(width, height)
    sof = data.index(b"\xff\xc0")
    return data[:sof] + b"\x00" + data[sof:]


# Inputs that got past the header check (regressions: each was found by the tests above).
REGRESSIONS = [
    pytest.param(
        _stray_byte_before_sof(30000, 30000),
        BadImage,
        id="jpeg-stray-byte-before-SOF-30000x30000:5GB-allocated-before-the-fix",
    ),
    pytest.param(
        (lambda d: d[:2] + b"\xff\x00" + d[2:])(jpeg_with_size(30000, 30000)),
        BadImage,
        id="jpeg-FF00-before-the-markers",
    ),
    pytest.param(
        bmp_with_size(30000, 30000, b"\x00" * 64), TooLarge, id="bmp-30000x30000-unchecked"
    ),
    pytest.param(
        bmp_with_size(30000, -30000, b"\x00" * 64), TooLarge, id="bmp-top-down-negative-height"
    ),
    pytest.param(
        bmp_with_size(3057, 351241, b""),
        TooLarge,
        id="bmp-3057x351241:cv2.error-answered-internal-before-the-fix",
    ),
    pytest.param(
        b"P6\n30000 30000\n255\n" + b"\x00" * 64, BadImage, id="ppm-30000x30000-unchecked"
    ),
    pytest.param(
        with_chunk_length(encode(".png", 40, 30, 0), 1, 3959426617),
        BadImage,
        id="png-40x30-declaring-a-3.9GB-IDAT:3.8GB-and-4s-in-OpenCV-5-before-the-fix",
    ),
    pytest.param(
        b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 30000 +X 30000\n" + b"\x00" * 64,
        BadImage,
        id="radiance-hdr-30000x30000-unchecked",
    ),
]


@pytest.mark.parametrize("data,error", REGRESSIONS)
def test_regressions_are_refused_before_any_decoder_allocates(data, error):
    before = _peak_rss_mb()
    with pytest.raises(error) as caught:
        image.decode_image(data)  # the default limit: 40 Mpx
    assert type(caught.value) is error
    assert _peak_rss_mb() - before < 100


def test_only_jpeg_png_bmp_reach_a_decoder():
    """A valid PPM (which OpenCV decodes) is refused: other formats' headers are not checked."""
    ppm = cv2.imencode(".ppm", np.zeros((16, 16, 3), np.uint8))[1].tobytes()
    assert cv2.imdecode(np.frombuffer(ppm, np.uint8), cv2.IMREAD_COLOR) is not None
    with pytest.raises(BadImage, match="not a JPEG/PNG/BMP"):
        image.decode_image(ppm)
