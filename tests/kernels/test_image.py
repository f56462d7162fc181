from __future__ import annotations

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
