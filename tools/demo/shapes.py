"""Synthetic images for the demo models in ``models/shapes``, ``models/shapes-seg`` and
``models/shapes-det``.

Coloured shapes on textured backgrounds, drawn with numpy and OpenCV only, deterministic for
a given :class:`numpy.random.Generator`. The training scripts
(``tools/demo/train_models.py``, ``tools/demo/train_detector.py``), the tests and the benchmarks all draw fresh images from here,
so every seed gives an unlimited held-out set::

    rng = np.random.default_rng(7)
    image, label = classification_sample(rng)  # HxWx3 uint8 RGB, index into CLASSES
    image, mask = segmentation_sample(rng, size=(240, 320))  # mask: HxW uint8, SEG_CLASSES
    image, boxes, classes = detection_sample(rng)  # boxes: Nx4 float32 x1,y1,x2,y2; CLASSES

Images come at arbitrary, non-square sizes (unless ``size`` is given) so that the resize
step of a serving pipeline is exercised.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, List, Optional, Tuple, Union

import cv2
import numpy as np

CLASSES: Tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")
SEG_CLASSES: Tuple[str, ...] = ("background", "circle", "square", "triangle")
TASKS = ("classification", "segmentation", "detection")

Size = Tuple[int, int]  # (height, width)
_SUBPIXEL = 4  # fractional bits for cv2 drawing: sub-pixel vertex positions


def random_size(rng: np.random.Generator, min_width: int = 160, max_width: int = 640) -> Size:
    """A (height, width) with width in [min_width, max_width] and aspect ratio 0.5..1.6."""
    width = int(rng.integers(min_width, max_width + 1))
    height = int(np.clip(width * rng.uniform(0.5, 1.6), 120, 640))
    return height, width


def sample_rng(seed: int, index: int) -> np.random.Generator:
    """The generator for image ``index`` of the stream ``seed`` (independent of any count)."""
    return np.random.default_rng([seed, index])


# --- backgrounds -------------------------------------------------------------------------


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, 3).astype(np.float32)


def _two_tone(rng: np.random.Generator, t: np.ndarray) -> np.ndarray:
    """Blend two random colours by ``t`` (HxW uint8, 0..255) into an HxWx3 uint8 image."""
    a, b = _colour(rng), _colour(rng)
    b = a + (b - a) * rng.uniform(0.15, 1.0)  # textures range from faint to loud
    ramp = np.linspace(0.0, 1.0, 256, dtype=np.float32)[:, None]
    table = np.round(a + (b - a) * ramp).astype(np.uint8).reshape(256, 1, 3)
    return cv2.LUT(cv2.merge([t, t, t]), table)


def _axes(h: int, w: int, angle: float) -> Tuple[np.ndarray, np.ndarray]:
    """Coordinates along ``angle`` split by axis: value(y, x) = ys[y] + xs[x]."""
    ys = np.arange(h, dtype=np.float32)[:, None] * np.float32(np.sin(angle))
    xs = np.arange(w, dtype=np.float32)[None, :] * np.float32(np.cos(angle))
    return ys, xs


def _gradient(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    ys, xs = _axes(h, w, rng.uniform(0, 2 * np.pi))
    ys, xs = ys - ys.min(), xs - xs.min()
    span = max(float(ys.max() + xs.max()), 1e-6)
    return _two_tone(rng, cv2.convertScaleAbs(ys + xs, alpha=255.0 / span))


def _stripes(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    ys, xs = _axes(h, w, rng.uniform(0, np.pi))
    k = np.float32(2 * np.pi / rng.uniform(6, 60))
    wave = np.sin(ys * k) * np.cos(xs * k) + np.cos(ys * k) * np.sin(xs * k)  # sin(k(y + x))
    if rng.random() < 0.5:
        return _two_tone(rng, cv2.convertScaleAbs(wave, alpha=127.5, beta=127.5))
    return _two_tone(rng, ((wave > 0) * 255).astype(np.uint8))


def _checkers(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    cell = rng.uniform(8, 48)
    ys = (np.arange(h) // cell).astype(np.uint8)[:, None] & 1
    xs = (np.arange(w) // cell).astype(np.uint8)[None, :] & 1
    return _two_tone(rng, (ys ^ xs) * np.uint8(255))


def _noise(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Value noise: a small random grid blown up smoothly (blotchy to grainy)."""
    cells = int(rng.integers(3, 40))
    small = rng.integers(0, 256, (max(2, cells * h // w), cells), dtype=np.uint8)
    return _two_tone(rng, cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC))


def _blobs(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Soft coloured ellipses, drawn at quarter size (blurring is cheaper there)."""
    sh, sw = h // 4 + 1, w // 4 + 1
    img = np.empty((sh, sw, 3), np.uint8)
    img[:] = _colour(rng)
    for _ in range(int(rng.integers(3, 12))):
        centre = (int(rng.integers(0, sw)), int(rng.integers(0, sh)))
        axes = (int(rng.integers(2, sw // 3 + 3)), int(rng.integers(2, sh // 3 + 3)))
        angle = float(rng.uniform(0, 180))
        cv2.ellipse(img, centre, axes, angle, 0, 360, _colour(rng).tolist(), -1)
    soft = cv2.GaussianBlur(img, (0, 0), rng.uniform(1, 5))
    return cv2.resize(soft, (w, h), interpolation=cv2.INTER_LINEAR)


_TEXTURES: Tuple[Callable[[np.random.Generator, int, int], np.ndarray], ...] = (
    _gradient,
    _stripes,
    _checkers,
    _noise,
    _blobs,
)


def background(rng: np.random.Generator, size: Size) -> np.ndarray:
    """A textured HxWx3 uint8 background: one texture, sometimes two mixed."""
    h, w = size
    img = _texture(rng, h, w)
    if rng.random() < 0.35:
        img = cv2.addWeighted(img, 0.6, _texture(rng, h, w), 0.4, 0.0)
    return img


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    return _TEXTURES[int(rng.integers(len(_TEXTURES)))](rng, h, w)


# --- shapes --------------------------------------------------------------------------------


def _regular(
    n: int, radius: float, angle: float, jitter: float, rng: np.random.Generator
) -> np.ndarray:
    turns = angle + 2 * np.pi * np.arange(n) / n + rng.uniform(-jitter, jitter, n)
    return np.stack([np.cos(turns), np.sin(turns)], 1) * radius


def _star(radius: float, angle: float, rng: np.random.Generator) -> np.ndarray:
    turns = angle + np.pi * np.arange(10) / 5
    radii = np.where(np.arange(10) % 2 == 0, radius, radius * rng.uniform(0.38, 0.55))
    return np.stack([np.cos(turns) * radii, np.sin(turns) * radii], 1)


def _cross(radius: float, angle: float, rng: np.random.Generator) -> np.ndarray:
    a, r = rng.uniform(0.22, 0.38) * radius, radius * 0.92
    pts = np.array([(a, r), (a, a), (r, a), (r, -a), (a, -a), (a, -r)])
    pts = np.concatenate([pts, -pts])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return pts @ rot.T


def _outline(name: str, radius: float, rng: np.random.Generator) -> Optional[np.ndarray]:
    """Polygon vertices around (0, 0); None for a circle."""
    angle = rng.uniform(0, 2 * np.pi)
    if name == "square":
        return _regular(4, radius, angle, 0.0, rng)
    if name == "triangle":
        return _regular(3, radius, angle, 0.15, rng)
    if name == "star":
        return _star(radius, angle, rng)
    if name == "cross":
        return _cross(radius, angle, rng)
    return None


Window = Tuple[slice, slice]


def _coverage(
    name: str, centre: Tuple[float, float], radius: float, size: Size, rng: np.random.Generator
) -> Tuple[np.ndarray, Window]:
    """Anti-aliased uint8 coverage (0..255) of one shape inside its bounding window."""
    h, w = size
    x0, y0 = (max(0, int(v - radius) - 2) for v in centre)
    x1, y1 = min(w, int(centre[0] + radius) + 3), min(h, int(centre[1] + radius) + 3)
    cover = np.zeros((max(1, y1 - y0), max(1, x1 - x0)), np.uint8)
    scale = 1 << _SUBPIXEL
    c = np.array(centre) - (x0, y0)
    pts = _outline(name, radius, rng)
    if pts is None:
        at = tuple(int(v) for v in np.round(c * scale))
        cv2.circle(cover, at, int(radius * scale), 255, -1, cv2.LINE_AA, _SUBPIXEL)
    else:
        poly = np.round((pts + c) * scale).astype(np.int32)
        cv2.fillPoly(cover, [poly], 255, cv2.LINE_AA, _SUBPIXEL)
    return cover, (slice(y0, y0 + cover.shape[0]), slice(x0, x0 + cover.shape[1]))


def _shape_colour(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """A colour that stands out from ``under`` (the mean colour it covers), sometimes barely."""
    low = rng.random() < 0.15
    lo, hi = (35.0, 60.0) if low else (70.0, 442.0)
    colour = _colour(rng)
    for _ in range(30):
        if lo <= float(np.linalg.norm(colour - under)) <= hi:
            return colour
        colour = _colour(rng)
    return colour if low else np.where(under > 127, under - 80, under + 80).astype(np.float32)


def _paint(img: np.ndarray, cover: np.ndarray, window: Window, rng: np.random.Generator) -> None:
    """Blend a flat or shaded colour into ``img[window]`` by ``cover``, in place."""
    alpha = cover[..., None].astype(np.float32) / 255.0
    patch = img[window].astype(np.float32)
    inside = cover > 127
    colour = _shape_colour(rng, patch[inside].mean(0) if inside.any() else patch.mean((0, 1)))
    fill = np.broadcast_to(colour, patch.shape)
    if rng.random() < 0.4:  # shading: a gentle gradient across the shape
        shade = _gradient(rng, *cover.shape).astype(np.float32) - 127.5
        fill = fill + shade * rng.uniform(0.1, 0.3)
    img[window] = np.clip(patch + (fill - patch) * alpha + 0.5, 0, 255).astype(np.uint8)


Placement = Tuple[Tuple[float, float], float]  # centre (x, y), radius


def _place(rng: np.random.Generator, size: Size, lo: float, hi: float) -> Placement:
    """A shape of radius lo..hi times the short side, wholly inside the image."""
    h, w = size
    radius = rng.uniform(lo, hi) * min(h, w)
    cx = rng.uniform(radius, max(radius, w - radius))
    cy = rng.uniform(radius, max(radius, h - radius))
    return (cx, cy), radius


def _place_apart(
    rng: np.random.Generator,
    size: Size,
    taken: List[Placement],
    tries: int = 12,
    radii: Tuple[float, float] = (0.09, 0.24),
    apart: float = 0.75,
) -> Optional[Placement]:
    """Like :func:`_place` (radius ``radii`` times the short side), but overlapping earlier
    shapes only partly: centres at least ``apart`` times the sum of the radii from each other,
    so each shape keeps most of itself in view and its class stays recognisable. None when no
    such place was found."""
    for _ in range(tries):
        (x, y), r = _place(rng, size, *radii)
        if all(np.hypot(x - ox, y - oy) >= apart * (r + orad) for (ox, oy), orad in taken):
            return (x, y), r
    return None


# --- degradations and samples --------------------------------------------------------------


def _degrade(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Blur, sensor noise and JPEG artefacts, each sometimes."""
    if rng.random() < 0.4:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 1.6))
    if rng.random() < 0.5:
        amp = int(rng.integers(4, 20))
        noise = rng.integers(-amp, amp + 1, img.shape[:2], dtype=np.int16)
        img = cv2.add(img, cv2.merge([noise, noise, noise]), dtype=cv2.CV_8U)
    if rng.random() < 0.5:
        quality = int(rng.integers(30, 90))
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
        decoded = cv2.imdecode(buf, cv2.IMREAD_COLOR) if ok else None
        img = img if decoded is None else decoded
    return img


def classification_sample(
    rng: np.random.Generator, size: Optional[Size] = None
) -> Tuple[np.ndarray, int]:
    """One shape on a textured background: (HxWx3 uint8 RGB image, index into CLASSES)."""
    size = size or random_size(rng)
    label = int(rng.integers(len(CLASSES)))
    img = background(rng, size)
    centre, radius = _place(rng, size, 0.18, 0.42)
    cover, window = _coverage(CLASSES[label], centre, radius, size, rng)
    _paint(img, cover, window, rng)
    return _degrade(rng, img), label


def segmentation_sample(
    rng: np.random.Generator, size: Optional[Size] = None
) -> Tuple[np.ndarray, np.ndarray]:
    """0-4 shapes, possibly overlapping: (HxWx3 uint8 RGB image, HxW uint8 map of SEG_CLASSES)."""
    size = size or random_size(rng)
    img = background(rng, size)
    mask = np.zeros(size, np.uint8)
    taken: List[Placement] = []
    for _ in range(int(rng.choice(5, p=[0.08, 0.22, 0.25, 0.25, 0.2]))):
        label = int(rng.integers(1, len(SEG_CLASSES)))
        place = _place_apart(rng, size, taken)
        if place is None:
            continue
        taken.append(place)
        cover, window = _coverage(SEG_CLASSES[label], place[0], place[1], size, rng)
        _paint(img, cover, window, rng)
        mask[window][cover > 127] = label  # later shapes hide earlier ones
    return _degrade(rng, img), mask


def detection_sample(
    rng: np.random.Generator, size: Optional[Size] = None
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """0-6 shapes of any of CLASSES, overlapping only at their edges.

    Returns (HxWx3 uint8 RGB image, Nx4 float32 boxes, N int64 indices into CLASSES). A box is
    ``[x1, y1, x2, y2]`` in pixels around the shape's visible pixels (coverage > 50%, later
    shapes hide earlier ones): ``x1`` is its first column, ``x2`` one past its last. Centres
    are at least 0.9 times the sum of the radii apart, so no shape is hidden past its centre.
    """
    size = size or random_size(rng)
    img = background(rng, size)
    owner = np.zeros(size, np.uint8)  # 1 + the shape's position in ``labels``, 0 for none
    taken: List[Placement] = []
    labels: List[int] = []
    for _ in range(int(rng.choice(7, p=[0.04, 0.12, 0.18, 0.2, 0.2, 0.14, 0.12]))):
        label = int(rng.integers(len(CLASSES)))
        place = _place_apart(rng, size, taken, 20, (0.07, 0.22), 0.9)
        if place is None:
            continue
        taken.append(place)
        cover, window = _coverage(CLASSES[label], place[0], place[1], size, rng)
        _paint(img, cover, window, rng)
        owner[window][cover > 127] = len(taken)
        labels.append(label)
    boxes, classes = _boxes(owner, labels)
    return _degrade(rng, img), boxes, classes


def _boxes(owner: np.ndarray, labels: List[int]) -> Tuple[np.ndarray, np.ndarray]:
    """The pixel boxes of ``owner``'s shapes 1..len(labels) that are still in view."""
    boxes, kept = [], []
    for number, label in enumerate(labels, 1):
        ys, xs = np.nonzero(owner == number)
        if len(xs):
            boxes.append((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))
            kept.append(label)
    return np.array(boxes, np.float32).reshape(-1, 4), np.array(kept, np.int64)


def _boxes_json(boxes: np.ndarray, classes: np.ndarray) -> str:
    items = [
        {"index": int(c), "label": CLASSES[int(c)], "box": [float(v) for v in box]}
        for box, c in zip(boxes, classes)
    ]
    return json.dumps(items, indent=None) + "\n"


def write_samples(
    task: str,
    folder: Union[str, Path],
    count: int,
    seed: int,
    size: Optional[Size] = None,
    quality: int = 90,
    max_width: int = 640,
) -> List[Path]:
    """Write ``count`` images of stream ``seed`` to ``folder`` and return their paths.

    Each image has the given ``size=(height, width)``, or a random one at most ``max_width``
    wide; JPEGs are saved at ``quality``.

    Classification images are named ``<index>_<class>.jpg``; segmentation images
    ``<index>.jpg`` with their ground truth as ``<index>.mask.png`` (pixel = class index);
    detection images ``<index>.jpg`` with their ground truth as ``<index>.boxes.json``: a list
    of ``{"index", "label", "box": [x1, y1, x2, y2]}`` (pixels, as in a detection reply).
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    params = [cv2.IMWRITE_JPEG_QUALITY, quality]
    paths: List[Path] = []
    for index in range(count):
        rng = sample_rng(seed, index)
        shape = size or random_size(rng, max_width=max_width)
        if task == "classification":
            image, label = classification_sample(rng, shape)
            path = folder / f"{index:03d}_{CLASSES[label]}.jpg"
        elif task == "segmentation":
            image, mask = segmentation_sample(rng, shape)
            path = folder / f"{index:03d}.jpg"
            cv2.imwrite(str(path.with_suffix(".mask.png")), mask)
        else:
            image, boxes, classes = detection_sample(rng, shape)
            path = folder / f"{index:03d}.jpg"
            path.with_suffix(".boxes.json").write_text(_boxes_json(boxes, classes), "utf-8")
        cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params)
        paths.append(path)
    return paths
