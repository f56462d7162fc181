"""``input.decode: reduced``: a JPEG decoded at 1/2, 1/4 or 1/8 scale gives the model what a
plain OpenCV pipeline at that scale gives it, and results still map onto the source's pixels."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Tuple

import cv2
import numpy as np
import pytest
import yaml

from rkserve import repository
from rkserve.errors import ConfigError
from rkserve.kernels import image
from rkserve.spec import ModelSpec
from rkserve.tasks import load_spec, vision
from tools.harness import ROOT

FLAGS = {
    2: cv2.IMREAD_REDUCED_COLOR_2,
    4: cv2.IMREAD_REDUCED_COLOR_4,
    8: cv2.IMREAD_REDUCED_COLOR_8,
}


def photo(width: int, height: int) -> bytes:
    """A smooth JPEG with structure at every scale (gradients and a few discs)."""
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], -1).astype(np.uint8)
    for k in range(5):
        centre = (width * (k + 1) // 6, height // 2)
        cv2.circle(pixels, centre, height // (4 + k), (40 * k, 255 - 40 * k, 128), -1)
    ok, encoded = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return encoded.tobytes()


def spec(size: Tuple[int, int], resize: str = "stretch", decode: str = "reduced") -> ModelSpec:
    return ModelSpec(
        name="m", folder=Path("."), task="classification", input_size=size, resize=resize,
        decode=decode, pad=0,
    )  # fmt: skip


def prepare(data: bytes, model: ModelSpec) -> Any:
    return vision.prepare_image(data, model, True, None, image.MAX_PIXELS, keep=False)


def reference(data: bytes, factor: int, size: Tuple[int, int]) -> np.ndarray:
    """Plain OpenCV: decode at 1/factor, resize, BGR→RGB."""
    flag = FLAGS.get(factor, cv2.IMREAD_COLOR)
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    small = cv2.resize(bgr, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    return cv2.cvtColor(small, cv2.COLOR_BGR2RGB)


@pytest.mark.parametrize(
    "width, height, size, factor",
    [
        (1920, 1080, (224, 224), 4),  # 480x270 covers 224; 240x135 would not
        (1920, 1080, (96, 96), 8),
        (1920, 1080, (640, 640), 1),  # nothing smaller covers 640 rows
        (640, 480, (224, 224), 2),
        (640, 480, (320, 320), 1),
        (1001, 999, (124, 124), 8),  # ceil(999 / 8) = 125 rows
    ],
)
def test_the_model_input_is_opencvs_at_the_largest_covering_scale(
    width: int, height: int, size: Tuple[int, int], factor: int
) -> None:
    data = photo(width, height)
    prepared = prepare(data, spec(size))
    assert np.array_equal(prepared.tensors[0][0], reference(data, factor, size))
    assert prepared.context.size == (height, width)  # the source's, not the decoded one's


def test_full_decode_is_unchanged() -> None:
    data = photo(1920, 1080)
    prepared = prepare(data, spec((224, 224), decode="full"))
    assert np.array_equal(prepared.tensors[0][0], reference(data, 1, (224, 224)))


def test_a_png_is_decoded_whole() -> None:
    ok, encoded = cv2.imencode(".png", np.full((480, 640, 3), 90, np.uint8))
    assert ok
    assert vision.decode_factor(encoded.tobytes(), spec((96, 96))) == 1


def test_letterbox_placement_maps_input_pixels_to_source_pixels() -> None:
    """A point of the model input goes back to the same source pixel whatever the scale."""
    data = photo(1920, 1080)
    full = prepare(data, spec((640, 640), "letterbox", "full")).context
    reduced = prepare(data, spec((640, 640), "letterbox")).context
    assert vision.decode_factor(data, spec((640, 640), "letterbox")) == 2  # 960x540 >= 640x360
    assert reduced.size == full.size == (1080, 1920)
    for x, y in [(0.0, 140.0), (320.0, 320.0), (639.0, 499.0)]:
        for placement in (full.placement, reduced.placement):
            back = (
                (x - placement.pad_x) / placement.scale_x,
                (y - placement.pad_y) / placement.scale_y,
            )
            assert back == pytest.approx(((x - 0) * 3.0, (y - 140) * 3.0))


def test_letterboxed_content_matches_opencv_at_half_scale() -> None:
    data = photo(1920, 1080)
    tensor = prepare(data, spec((640, 640), "letterbox")).tensors[0][0]
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_REDUCED_COLOR_2)
    content = cv2.cvtColor(cv2.resize(bgr, (640, 360)), cv2.COLOR_BGR2RGB)
    assert np.array_equal(tensor[140:500], content)
    assert not tensor[:140].any() and not tensor[500:].any()


def test_model_yaml_decode_is_read_and_checked(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"not read")
    body = {"task": "classification", "input": {"size": 224, "decode": "reduced"}}
    (folder / "model.yaml").write_text(yaml.safe_dump(body))
    assert load_spec(folder).decode == "reduced"
    body["input"]["decode"] = "quarter"  # type: ignore[index]
    (folder / "model.yaml").write_text(yaml.safe_dump(body))
    with pytest.raises(ConfigError, match="decode"):
        load_spec(folder)


def test_detections_at_reduced_scale_land_on_the_source_pixels(tmp_path: Path) -> None:
    """The demo detector on a sample enlarged to 1920x1080: decoded at 1/8, its boxes are
    the full decode's boxes in source pixels (same classes, IoU >= 0.8)."""
    demo = ROOT / "models" / "shapes-det"
    body = yaml.safe_load((demo / "model.yaml").read_text())
    for decode in ("full", "reduced"):
        folder = tmp_path / decode
        folder.mkdir()
        (folder / "model.onnx").symlink_to(demo / "model.onnx")
        (folder / "labels.txt").symlink_to(demo / "labels.txt")
        spec = {k: body[k] for k in ("task", "labels", "onnx", "output")}
        (folder / "model.yaml").write_text(
            yaml.safe_dump({**spec, "input": {**body["input"], "decode": decode}})
        )
    bgr = cv2.imread(str(demo / "samples" / "000.jpg"))
    ok, encoded = cv2.imencode(".jpg", cv2.resize(bgr, (1920, 1080), interpolation=cv2.INTER_CUBIC))
    assert ok
    data = encoded.tobytes()
    full = repository.open_engine(tmp_path, "full", backend="onnx").infer(data).result["detections"]
    reduced = repository.open_engine(tmp_path, "reduced", backend="onnx")
    assert reduced.prepare(data, reduced.parse_params(None)).context.size == (1080, 1920)
    found = reduced.infer(data).result["detections"]
    assert full and len(found) == len(full)
    for box in full:
        assert max(iou(box["box"], o["box"]) for o in found if o["index"] == box["index"]) >= 0.8


def iou(a: List[float], b: List[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union
