"""Image decoding and the model-input transforms shared by every task.

Arrays are ``HxWx3 uint8`` in RGB order unless a name says otherwise. Nothing here knows
about backends: the engine picks :func:`to_raw_input` (what the NPU takes) or
:func:`to_onnx_input` (the ONNX twin's normalised tensor).
"""

from __future__ import annotations

import functools
import math
import re
import struct
from dataclasses import dataclass, field, replace
from typing import Optional, Sequence, Tuple, Union

import cv2
import numpy as np

from ..errors import BadImage, TooLarge

MAX_PIXELS = 16_000_000  # 16 MP (4608x3456); the daemon's max_pixels setting overrides it
MIN_SIDE = 8  # smaller images carry no usable signal for any model we serve
LETTERBOX_FILL = 114  # the grey YOLO-style letterboxing uses
MAX_JPEG_SEGMENTS = 1000  # markers before the first scan (cameras write about a dozen)
_FILL = re.compile(rb"\xff+")
# The working memory of one request per decoded pixel (docs/SECURITY.md: 6.0 and 11.0 measured
# for every kind of PNG, BMP and row-by-row JPEG): the decode and its colour conversion with the
# model input; a segmentation overlay adds its blend and JPEG. A JPEG whose coefficients
# libjpeg keeps for the whole image adds COEFFICIENT_BYTES per component sample (Header.held).
BYTES_PER_PIXEL = 6.5
OVERLAY_BYTES_PER_PIXEL = 11.5
COEFFICIENT_BYTES = 2  # libjpeg's JCOEF: one per sample of a progressive or multi-scan JPEG
MAX_HELD = 4.0  # samples a pixel at most: 4 components (CMYK), none subsampled
JPEG_PROCESSES = {0xC0: False, 0xC1: False, 0xC2: True, 0xC9: False, 0xCA: True}  # progressive?
JPEG_COMPONENTS = (1, 3, 4)  # grey, YCbCr/RGB, CMYK/YCCK: what OpenCV decodes
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # SOFn; not DHT, JPG, DAC
_U16, _U16X2 = struct.Struct(">H"), struct.Struct(">HH")


@dataclass(frozen=True)
class Header:
    """What an image's header says about decoding it, read before any decoder runs.

    ``held``: component samples per pixel a JPEG decoder keeps for the whole image before it
    writes a row (libjpeg buffers every coefficient of a progressive JPEG, or one whose first
    scan holds fewer components than the frame): 1.5 for a 4:2:0 YCbCr one, 3 for 4:4:4, 4
    for CMYK, 0 for a JPEG decoded row by row and for PNG and BMP. ``problem``: why a decoder
    will not be asked to decode it (empty: none)."""

    width: int
    height: int
    held: float = 0.0
    problem: str = ""

    def working_bytes(self, overlay: bool = False) -> int:
        """The bytes a request for this image may hold at its peak (docs/SECURITY.md)."""
        per_pixel = OVERLAY_BYTES_PER_PIXEL if overlay else BYTES_PER_PIXEL
        per_pixel += COEFFICIENT_BYTES * self.held
        return math.ceil(self.width * self.height * per_pixel)


@dataclass(frozen=True)
class Placement:
    """Where the resized image sits inside the model input (for mapping results back)."""

    scale_x: float
    scale_y: float
    pad_x: int = 0
    pad_y: int = 0
    width: int = 0  # resized content size inside the input
    height: int = 0


@dataclass(frozen=True)
class Encoded:
    """Encoded image bytes and their :class:`Header`, read once: the daemon reads it at
    admission to charge the request's memory, and its decode, reduced scale and source
    size come from the same reading. Made by :func:`encoded` only: the decoder trusts the
    header to describe these bytes. ``header`` is None for an unknown format or a header
    that cannot be read (the decoder refuses both)."""

    data: bytes = field(repr=False)
    header: Optional[Header]


Image = Union[bytes, bytearray, memoryview, Encoded]  # bytes: the decoder reads the header


def encoded(data: Image) -> Encoded:
    """``data`` with its header read (as it is when already :class:`Encoded`)."""
    if isinstance(data, Encoded):
        return data
    data = bytes(data)  # the same object when it is bytes already: no copy
    return Encoded(data, image_header(data))


def image_size(data: bytes) -> Optional[Tuple[int, int]]:
    """``(width, height)`` from a PNG, JPEG or BMP header, without decoding; None if unknown.

    Only images whose size is known this way are decoded: the header is read the way the
    decoder reads it, so the decoder cannot find a larger size than the one checked.
    """
    header = image_header(data)
    return None if header is None else (header.width, header.height)


def image_header(data: bytes) -> Optional[Header]:
    """The :class:`Header` of a PNG, JPEG or BMP, without decoding; None if unknown."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24 and data[12:16] == b"IHDR":
        width, height = struct.unpack(">II", data[16:24])
        return Header(int(width), int(height))
    if data[:2] == b"\xff\xd8":
        return _jpeg_header(data)
    if data[:2] == b"BM" and len(data) >= 26:
        size = _bmp_size(data)
        return None if size is None else Header(*size)
    return None


def _jpeg_header(data: bytes) -> Optional[Header]:
    """The first SOFn's size and components, then whether its first scan holds them all,
    walking the markers strictly: libjpeg skips stray bytes (and ``FF 00``) between markers,
    so anything but a marker here could hide another SOF.

    The frontend reads this for every request, so it is one loop over the segments (a few
    microseconds for a camera's dozen): runs of fill bytes are skipped in C, and a file with
    more than ``MAX_JPEG_SEGMENTS`` markers before its first scan is refused (an 8 MB file of
    4-byte markers, or of fill bytes, took 1.3 s of the frontend each). When the first scan
    cannot be read, the whole image is assumed held (the costlier case).
    """
    frame: Optional[Header] = None
    components, progressive = 0, True
    pos, segments, end = 2, 0, len(data)
    while pos + 4 <= end and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xFF:  # fill bytes: up to the last 0xFF of the run
            pos = _FILL.match(data, pos).end() - 1  # type: ignore[union-attr]
            continue
        segments += 1
        if segments > MAX_JPEG_SEGMENTS or marker in (0x00, 0xD8, 0xD9):
            break  # too many; not a marker, SOI again, EOI
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # TEM, RSTn: no length field
            pos += 2
            continue
        (length,) = _U16.unpack_from(data, pos + 2)
        if length < 2:
            break
        if marker == 0xDA:  # SOS: its component count decides how the frame is decoded
            if frame is None:
                return None  # a scan before any frame header
            scan = data[pos + 4] if pos + 4 < end else 0
            if not progressive and not frame.problem and scan == components:
                return Header(frame.width, frame.height)  # one scan: decoded row by row
            return frame
        if frame is None and marker in _SOF:
            if pos + 9 > end:
                return None
            frame, components = _jpeg_frame(data, pos, marker)
            progressive = JPEG_PROCESSES.get(marker, True)
        pos += 2 + length
    return frame


def _jpeg_frame(data: bytes, pos: int, marker: int) -> Tuple[Header, int]:
    """The frame header (SOFn) at ``pos``: its size, components, sampling and precision, with
    every sample held (until a scan says otherwise)."""
    precision = data[pos + 4]
    height, width = _U16X2.unpack_from(data, pos + 5)
    count = data[pos + 9] if pos + 9 < len(data) else 0
    factors = bytes(data[pos + 10 : pos + 10 + 3 * count][1::3])  # Hi << 4 | Vi per component
    problem = ""
    if marker not in JPEG_PROCESSES:
        problem = f"JPEG process SOF{marker - 0xC0} (lossless or hierarchical) is not decoded"
    elif precision != 8:
        problem = f"JPEG of {precision}-bit samples: only 8-bit JPEGs are decoded"
    elif count not in JPEG_COMPONENTS:
        problem = f"JPEG of {count} components: only 1, 3 or 4 are decoded"
    elif len(factors) != count:
        problem = "JPEG frame header cut short"
    held = None if problem else _held(factors)
    if held is None:
        problem = problem or "JPEG sampling factors outside 1..4"
        return Header(int(width), int(height), MAX_HELD, problem), count
    return Header(int(width), int(height), held), count


@functools.lru_cache(maxsize=256)  # cameras use a handful of samplings; 4:2:0 most
def _held(factors: bytes) -> Optional[float]:
    """Component samples per pixel for these sampling factors (``Hi << 4 | Vi`` each), None
    when one is outside 1..4."""
    if not factors or any(not (1 <= f >> 4 <= 4 and 1 <= f & 15 <= 4) for f in factors):
        return None
    most = max(f >> 4 for f in factors) * max(f & 15 for f in factors)
    return sum((f >> 4) * (f & 15) for f in factors) / most


def _png_chunks_fit(data: bytes) -> bool:
    """Every PNG chunk lies inside the data. OpenCV 5 reserves a chunk's declared length before
    reading it: a 3.7 kB file declaring a 3.9 GB IDAT took 3.8 GB and 4 s to refuse."""
    pos = 8
    while pos + 8 <= len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        if length > 0x7FFFFFFF or pos + 12 + length > len(data):
            return False
        if data[pos + 4 : pos + 8] == b"IEND":
            break
        pos += 12 + length
    return True


def _bmp_size(data: bytes) -> Optional[Tuple[int, int]]:
    """BITMAPCOREHEADER (12 bytes: 16-bit sides) or a later header (signed 32-bit sides;
    a negative height means top-down rows)."""
    (header,) = struct.unpack("<I", data[14:18])
    if header == 12:
        width, height = struct.unpack("<HH", data[18:22])
    elif header >= 36:
        width, height = struct.unpack("<ii", data[18:26])
    else:
        return None
    return abs(int(width)), abs(int(height))


def check_pixels(width: int, height: int, max_pixels: int = MAX_PIXELS) -> None:
    if width * height > max_pixels:
        raise TooLarge(
            f"image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}"
        )
    if min(width, height) < MIN_SIDE:
        raise BadImage(f"image is {width}x{height}; both sides must be at least {MIN_SIDE} px")


REDUCTIONS = (8, 4, 2)  # the scales libjpeg decodes at directly, 1/8 first
_REDUCED = {
    1: cv2.IMREAD_COLOR,
    2: cv2.IMREAD_REDUCED_COLOR_2,
    4: cv2.IMREAD_REDUCED_COLOR_4,
    8: cv2.IMREAD_REDUCED_COLOR_8,
}


def use_threads(count: int) -> None:
    """OpenCV's own threads per call: 1 runs each call in its caller's thread, 0 restores
    OpenCV's default (one per core). A daemon that runs requests side by side on its own
    workers gains nothing from OpenCV's pool, whose threads compete with those workers."""
    cv2.setNumThreads(count if count > 0 else -1)


def decode_image(data: Image, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """JPEG/PNG/BMP bytes (or :class:`Encoded`) → ``HxWx3 uint8`` RGB. The pixel limit is
    checked before decoding."""
    bgr = decode_bgr(data, max_pixels)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB, dst=bgr)  # in place: no second copy


def decode_bgr(source: Image, max_pixels: int = MAX_PIXELS, factor: int = 1) -> np.ndarray:
    """JPEG/PNG/BMP bytes (or :class:`Encoded`) → ``HxWx3 uint8`` in OpenCV's BGR order
    (convert the colours after shrinking: fewer pixels). ``factor`` 2, 4 or 8 decodes a
    JPEG at that fraction of its size in libjpeg's DCT (``ceil(side / factor)`` pixels a
    side, each the average of its block); other formats ignore it. The pixel limit is
    checked before decoding."""
    read = encoded(source)
    data, header = read.data, read.header
    if not data:
        raise BadImage("image is empty (0 bytes)")
    if header is None:  # never let a decoder allocate for a size nobody checked
        raise _undecodable(data)
    size = (header.width, header.height)
    check_pixels(size[0], size[1], max_pixels)
    if header.problem:  # nor one it would not decode, or decode at a cost nobody counted
        raise BadImage(f"{header.problem} ({len(data)} bytes)")
    if data[:1] == b"\x89" and not _png_chunks_fit(data):
        raise BadImage(
            f"PNG of {len(data)} bytes has a chunk running past its end: truncated or corrupt"
        )
    if data[:2] != b"\xff\xd8":
        factor = 1
    image = cv2.imdecode(np.frombuffer(data, np.uint8), _REDUCED[factor])
    if image is None:
        raise _undecodable(data)
    expected = sorted(-(-side // factor) for side in size)
    if sorted(image.shape[:2]) != expected:  # EXIF orientation may swap the sides
        raise BadImage(
            f"image header says {size[0]}x{size[1]} but it decodes to {image.shape[1]}x{image.shape[0]}"
            + (f" at 1/{factor} scale" if factor > 1 else "")
        )
    return image


def reduction(width: int, height: int, least: Tuple[int, int]) -> int:
    """The largest libjpeg factor (8, 4, 2; else 1) whose decode of a ``width`` x ``height``
    image is still at least ``least = (height, width)``: decode no more pixels than the
    resize keeps, never fewer."""
    for factor in REDUCTIONS:
        if -(-width // factor) >= least[1] and -(-height // factor) >= least[0]:
            return factor
    return 1


def resized_size(
    width: int, height: int, size: Tuple[int, int], mode: str, shorter_side: int = 0
) -> Tuple[int, int]:
    """``(height, width)`` that :func:`resize` scales a ``width`` x ``height`` image to,
    before any padding or crop."""
    if mode == "stretch":
        return size
    if mode == "crop":
        shorter = shorter_side or crop_side(size)
        return (shorter, shorter)  # both sides cover at least the shorter side
    scale = min(size[1] / width, size[0] / height)
    return max(1, round(height * scale)), max(1, round(width * scale))


def unreduce(placement: Placement, factor: int) -> Placement:
    """A placement measured on an image decoded at ``1/factor`` scale, in source pixels:
    reduced pixel ``x`` covers source pixels ``[x * factor, (x + 1) * factor)``."""
    if factor == 1:
        return placement
    return replace(
        placement, scale_x=placement.scale_x / factor, scale_y=placement.scale_y / factor
    )


def swap_colour(image: np.ndarray, have: str, want: str) -> np.ndarray:
    """``image`` in channel order ``want`` (``rgb`` or ``bgr``) from ``have``; a new array
    only when they differ."""
    if have == want:
        return image
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)  # the same swap either way


def _undecodable(data: bytes) -> BadImage:
    return BadImage(
        f"cannot decode image ({len(data)} bytes starting {bytes(data[:8])!r}): "
        "not a JPEG/PNG/BMP or corrupt"
    )


def check_tensor(array: np.ndarray, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """A raw image tensor must be ``HxWx3 uint8`` (RGB)."""
    if array.dtype != np.uint8:
        raise BadImage(f"tensor dtype must be uint8, got {array.dtype}")
    if array.ndim != 3 or array.shape[2] != 3:
        raise BadImage(f"tensor shape must be [height, width, 3], got {list(array.shape)}")
    check_pixels(array.shape[1], array.shape[0], max_pixels)
    return array


INTERPOLATIONS = {
    "nearest": cv2.INTER_NEAREST,
    "linear": cv2.INTER_LINEAR,  # bilinear; no antialiasing when shrinking
    # the same bilinear resize in exact fixed point: INTER_LINEAR's SIMD paths differ by one
    # level between OpenCV's x86-64 and aarch64 builds, this one gives the board the PC's bytes
    "linear_exact": cv2.INTER_LINEAR_EXACT,
    "area": cv2.INTER_AREA,  # pixel-area averaging when shrinking (linear when enlarging)
}
CROP_RATIO = 0.875  # torchvision's ImageNet convention: resize to 256, crop 224
CROP_ASPECT = 16  # an image enlarged for a crop: at most this many shorter sides long


def resize(
    image: np.ndarray,
    size: Tuple[int, int],
    mode: str = "stretch",
    interpolation: str = "linear",
    shorter_side: int = 0,
    fill: int = LETTERBOX_FILL,
) -> Tuple[np.ndarray, Placement]:
    """Resize to ``size=(height, width)``: a plain ``stretch`` (Rockchip's examples), a
    ``letterbox`` (aspect kept, padded with grey level ``fill``: the model zoo's letter_box,
    the same size and place; its detection examples pad with 0, as RGA does, Ultralytics
    with 114) or a ``crop`` (the shorter side to ``shorter_side``, default ``size / 0.875``,
    then the centre: torchvision's ImageNet ``Resize(256)`` + ``CenterCrop(224)``), with
    cv2's ``interpolation``."""
    flag = INTERPOLATIONS[interpolation]
    if mode == "crop":
        return _resize_crop(image, size, flag, shorter_side or crop_side(size))
    height, width = size
    src_h, src_w = image.shape[:2]
    if mode == "stretch":
        out = (
            image
            if (src_h, src_w) == size
            else cv2.resize(image, (width, height), interpolation=flag)
        )
        return out, Placement(width / src_w, height / src_h, 0, 0, width, height)
    scale = min(width / src_w, height / src_h)
    new_w, new_h = max(1, round(src_w * scale)), max(1, round(src_h * scale))
    pad_x, pad_y = (width - new_w) // 2, (height - new_h) // 2
    out = np.full((height, width, 3), fill, np.uint8)
    out[pad_y : pad_y + new_h, pad_x : pad_x + new_w] = cv2.resize(
        image, (new_w, new_h), interpolation=flag
    )
    return out, Placement(scale, scale, pad_x, pad_y, new_w, new_h)


def crop_side(size: Tuple[int, int]) -> int:
    """The default shorter side before a centre crop of ``size``: 224 → 256."""
    return round(max(size) / CROP_RATIO)


def _resize_crop(
    image: np.ndarray, size: Tuple[int, int], flag: int, shorter: int
) -> Tuple[np.ndarray, Placement]:
    """Shorter side to ``shorter`` (the longer one truncated, as torchvision), then the
    centre ``size`` (offsets rounded, as torchvision's center_crop). ``shorter`` must be at
    least both sides of ``size``. The placement's negative padding is the crop offset."""
    height, width = size
    src_h, src_w = image.shape[:2]
    if src_w <= src_h:
        new_w, new_h = shorter, int(shorter * src_h / src_w)
    else:
        new_w, new_h = int(shorter * src_w / src_h), shorter
    check_enlargement(src_w, src_h, new_w, new_h, shorter)
    resized = cv2.resize(image, (new_w, new_h), interpolation=flag)
    top, left = round((new_h - height) / 2.0), round((new_w - width) / 2.0)
    out = np.ascontiguousarray(resized[top : top + height, left : left + width])
    return out, Placement(new_w / src_w, new_h / src_h, -left, -top, new_w, new_h)


def check_enlargement(src_w: int, src_h: int, new_w: int, new_h: int, shorter: int) -> None:
    """A crop resizes the whole image before cutting its centre: an image thinner than the
    shorter side grows by its aspect ratio (8x64000 → 110x880000, 290 MB, for a 96 px crop),
    past anything the memory budget counted for it. Refused unless it stays within the
    larger of the image itself and ``CROP_ASPECT`` squares of the shorter side."""
    if new_w * new_h <= max(src_w * src_h, CROP_ASPECT * shorter * shorter):
        return
    raise BadImage(
        f"image is {src_w}x{src_h}: a centre crop would first scale it to {new_w}x{new_h}; "
        f"an image smaller than the crop's shorter side ({shorter} px) may be at most "
        f"{CROP_ASPECT} times longer than wide"
    )


def to_model_colour(rgb: np.ndarray, colour: str) -> np.ndarray:
    return rgb[:, :, ::-1] if colour == "bgr" else rgb


def to_raw_input(image: np.ndarray) -> np.ndarray:
    """``HxWx3 uint8`` → ``1xHxWx3 uint8`` NHWC: what RKNNLite takes (mean/std are in the model)."""
    return np.ascontiguousarray(image)[None]


def to_onnx_input(
    image: np.ndarray,
    layout: str,
    dtype: str,
    mean: Tuple[float, float, float],
    std: Tuple[float, float, float],
) -> np.ndarray:
    """``HxWx3 uint8`` → the ONNX twin's input: ``(x - mean) / std`` as float32, NCHW or NHWC."""
    if dtype == "uint8":
        tensor = np.ascontiguousarray(image)
    else:
        tensor = (image.astype(np.float32) - np.asarray(mean, np.float32)) / np.asarray(
            std, np.float32
        )
    if layout == "nchw":
        tensor = np.ascontiguousarray(tensor.transpose(2, 0, 1))
    return tensor[None]


def nhwc(shape: Sequence[int]) -> Tuple[int, ...]:
    """The runtime's NHWC view of an input the toolkit recorded as NCHW ``[1,C,H,W]``."""
    shape = tuple(shape)
    if len(shape) == 4 and shape[1] in (1, 3, 4) and shape[3] not in (1, 3, 4):
        return (shape[0], shape[2], shape[3], shape[1])
    return shape
