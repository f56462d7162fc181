from __future__ import annotations

import io
import struct
import zlib

import cv2
import numpy as np
import pytest

from rkserve.errors import BadImage, TooLarge
from rkserve.kernels import image


def _png(array: np.ndarray) -> bytes:
    return cv2.imencode(".png", array)[1].tobytes()


def _forged_png(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height, with a tiny body: a decompression bomb."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = (
        struct.pack(">I", len(ihdr))
        + b"IHDR"
        + ihdr
        + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    )
    return b"\x89PNG\r\n\x1a\n" + chunk + b"\x00" * 64


def test_decode_png_and_jpeg_to_rgb():
    bgr = np.zeros((20, 30, 3), np.uint8)
    bgr[:, :, 2] = 200  # red in BGR
    rgb = image.decode_image(_png(bgr))
    assert rgb.shape == (20, 30, 3) and rgb[0, 0].tolist() == [200, 0, 0]
    jpeg = cv2.imencode(".jpg", bgr)[1].tobytes()
    assert image.image_size(jpeg) == (30, 20)
    assert abs(int(image.decode_image(jpeg)[5, 5, 0]) - 200) < 8


@pytest.mark.parametrize(
    "data,error,words",
    [
        (b"", BadImage, "empty"),
        (b"not an image at all", BadImage, "cannot decode"),
        (_forged_png(20000, 20000), TooLarge, "20000x20000"),
    ],
)
def test_bad_bytes(data, error, words):
    with pytest.raises(error, match=words):
        image.decode_image(data)


def test_jpeg_header_walk_is_bounded():
    """The frontend reads every image's header: 2 million 4-byte comment markers before the
    frame header took it 1.3 s (every other client waiting) and were then decoded."""
    sof = b"\xff\xc0\x00\x11\x08\x00\x14\x00\x1e"  # a 30x20 frame header
    markers = b"\xff\xd8" + b"\xff\xfe\x00\x02" * 2_000_000 + sof
    assert image.image_size(markers) is None
    few = b"\xff\xd8" + b"\xff\xfe\x00\x02" * (image.MAX_JPEG_SEGMENTS - 1) + sof
    assert image.image_size(few) == (30, 20)
    filled = b"\xff\xd8" + b"\xff" * 8_000_000 + sof  # fill bytes: skipped, not counted
    assert image.image_size(filled) == (30, 20)
    jpeg = cv2.imencode(".jpg", np.zeros((20, 30, 3), np.uint8))[1].tobytes()
    assert image.image_size(jpeg.replace(b"\xff\xdb", b"\xff\xff\xff\xdb", 1)) == (30, 20)


def test_tiny_image_refused():
    with pytest.raises(BadImage, match="1x1"):
        image.decode_image(_png(np.zeros((1, 1, 3), np.uint8)))


def test_truncated_jpeg_refused():
    jpeg = cv2.imencode(".jpg", np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8))[
        1
    ].tobytes()
    with pytest.raises(BadImage):
        image.decode_image(jpeg[:40])


@pytest.mark.parametrize(
    "array,words",
    [
        (np.zeros((32, 32, 3), np.float32), "dtype must be uint8"),
        (np.zeros((32, 32), np.uint8), "shape must be"),
        (np.zeros((32, 32, 4), np.uint8), "shape must be"),
    ],
)
def test_bad_tensor(array, words):
    with pytest.raises(BadImage, match=words):
        image.check_tensor(array)


def test_pixel_limit_applies_to_tensors():
    with pytest.raises(TooLarge):
        image.check_tensor(np.zeros((100, 100, 3), np.uint8), max_pixels=5000)


def test_stretch_and_letterbox():
    src = np.full((100, 200, 3), 255, np.uint8)
    out, place = image.resize(src, (50, 50), "stretch")
    assert out.shape == (50, 50, 3) and place.scale_x == 0.25 and place.scale_y == 0.5
    out, place = image.resize(src, (50, 50), "letterbox")
    assert out.shape == (50, 50, 3)
    assert (place.pad_x, place.pad_y, place.width, place.height) == (0, 12, 50, 25)
    assert out[0, 0, 0] == image.LETTERBOX_FILL and out[25, 25, 0] == 255


def test_onnx_input_normalisation_and_layout():
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[..., 0] = 255
    tensor = image.to_onnx_input(rgb, "nchw", "float32", (127.5,) * 3, (127.5,) * 3)
    assert tensor.shape == (1, 3, 2, 3) and tensor.dtype == np.float32
    assert tensor[0, 0].max() == 1.0 and tensor[0, 1].min() == -1.0
    raw = image.to_onnx_input(rgb, "nhwc", "uint8", (0,) * 3, (1,) * 3)
    assert raw.shape == (1, 2, 3, 3) and raw.dtype == np.uint8
    assert image.to_raw_input(rgb).shape == (1, 2, 3, 3)


def test_bgr_models_get_swapped_channels():
    rgb = np.zeros((1, 1, 3), np.uint8)
    rgb[0, 0] = (1, 2, 3)
    assert image.to_model_colour(rgb, "bgr")[0, 0].tolist() == [3, 2, 1]
    assert image.to_model_colour(rgb, "rgb")[0, 0].tolist() == [1, 2, 3]


def _pil_jpeg(mode: str, **options: object) -> bytes:
    """A small JPEG written by Pillow (another encoder than OpenCV's): ``mode`` L, RGB or CMYK."""
    from PIL import Image

    ramp = np.tile(np.linspace(0, 255, 48, dtype=np.float32).astype(np.uint8), (32, 1))
    picture = Image.fromarray(np.dstack([ramp, ramp.T[:32, :32].repeat(2, 1)[:, :48], ramp]))
    out = io.BytesIO()
    picture.convert(mode).save(out, "JPEG", quality=90, **options)
    return out.getvalue()


@pytest.mark.parametrize(
    ("mode", "options", "held"),
    [
        ("RGB", {"subsampling": 2}, 0.0),  # baseline: decoded row by row
        ("RGB", {"subsampling": 2, "progressive": True}, 1.5),  # Y + Cb/4 + Cr/4
        ("RGB", {"subsampling": 1, "progressive": True}, 2.0),  # 4:2:2
        ("RGB", {"subsampling": 0, "progressive": True}, 3.0),
        ("L", {"progressive": True}, 1.0),
        ("CMYK", {}, 0.0),
        ("CMYK", {"progressive": True}, 4.0),
    ],
    ids=[
        "baseline",
        "progressive-420",
        "progressive-422",
        "progressive-444",
        "progressive-grey",
        "cmyk",
        "progressive-cmyk",
    ],
)
def test_the_header_says_what_a_jpeg_decoder_holds(mode, options, held):
    """libjpeg keeps every coefficient of a progressive JPEG (2 bytes a component sample)
    until the last scan: the charge reads that from the frame and first scan headers."""
    data = _pil_jpeg(mode, **options)
    header = image.image_header(data)
    assert (header.width, header.height, header.held, header.problem) == (48, 32, held, "")
    assert header.working_bytes() == 48 * 32 * (image.BYTES_PER_PIXEL + 2 * held)
    assert image.decode_image(data).shape == (32, 48, 3)


def _frame(marker: int = 0xC0, precision: int = 8, components: int = 3) -> bytes:
    """A 30x20 frame header: ``components`` of sampling 1x1, then a first scan of all."""
    body = bytes([precision]) + struct.pack(">HH", 20, 30) + bytes([components])
    body += b"".join(bytes([n + 1, 0x11, 0]) for n in range(components))
    return b"\xff" + bytes([marker]) + struct.pack(">H", 2 + len(body)) + body


def _scan(components: int) -> bytes:
    body = (
        bytes([components])
        + b"".join(bytes([n + 1, 0]) for n in range(components))
        + b"\x00\x3f\x00"
    )
    return b"\xff\xda" + struct.pack(">H", 2 + len(body)) + body


def test_a_baseline_jpeg_of_several_scans_is_charged_as_held():
    """A baseline frame whose first scan carries one of three components is decoded as a
    progressive one (libjpeg's multi-scan buffer); a header cut before any scan likewise."""
    one_scan = image.image_header(b"\xff\xd8" + _frame() + _scan(3))
    assert (one_scan.width, one_scan.height, one_scan.held) == (30, 20, 0.0)
    assert image.image_header(b"\xff\xd8" + _frame() + _scan(1)).held == 3.0
    assert image.image_header(b"\xff\xd8" + _frame()).held == 3.0


@pytest.mark.parametrize(
    ("frame", "words"),
    [
        (_frame(marker=0xC3), "SOF3 \\(lossless or hierarchical\\) is not decoded"),
        (_frame(precision=12), "12-bit samples: only 8-bit JPEGs are decoded"),
        (_frame(components=2), "2 components: only 1, 3 or 4 are decoded"),
    ],
)
def test_jpegs_the_charge_cannot_bound_are_refused_before_decoding(frame, words):
    data = b"\xff\xd8" + frame + _scan(1) + b"\x00" * 64 + b"\xff\xd9"
    assert image.image_size(data) == (30, 20)
    with pytest.raises(BadImage, match=words):
        image.decode_image(data)
