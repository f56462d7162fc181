"""Frigate's wire, in-process: parsing, tensors back to pixels, rows, names, labelmaps, uploads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest

from rkserve import frigate, frigate_upload
from rkserve.cli import main
from rkserve.modelhost import ModelHost
from rkserve.repository import load_entry
from tests.frigate.plugin import frigate_tensor

MODELS = Path(__file__).resolve().parents[2] / "models"


def frames(header: Dict[str, Any], payload: bytes = b"") -> List[memoryview]:
    found = [memoryview(json.dumps(header).encode())]
    return found + [memoryview(payload)] * bool(payload)


def test_messages_are_told_apart() -> None:
    assert (
        frigate.parse(frames({"model_request": True, "model_name": "a.rknn"})).kind
        == "model_request"
    )
    data = frigate.parse(frames({"model_data": True, "model_name": "a.rknn"}, b"x"))
    assert (
        data.kind == "model_data"
        and data.model_name == "a.rknn"
        and bytes(data.payload or b"") == b"x"
    )
    assert frigate.parse(frames({"shape": [1], "dtype": "uint8"}, b"x")).kind == "infer"
    for bad, words in [
        ([], "1 or 2 frames"),
        ([memoryview(b"[1]")], "not a JSON object"),
        ([memoryview(b"\xff")], "not a JSON object"),
        ([memoryview(b" " * 5000)], "header frame of 5000 bytes"),
        (frames({"model_data": True}), "without the model file"),
        (frames({"shape": [1]}), "needs the tensor frame"),
    ]:
        with pytest.raises(frigate.Refused, match=words):
            frigate.parse(bad)


@pytest.mark.parametrize("input_tensor", ["nhwc", "nchw"])
@pytest.mark.parametrize("input_dtype", ["int", "float", "float_denorm"])
@pytest.mark.parametrize("pixel_format", ["rgb", "bgr"])
def test_frigates_tensors_come_back_to_its_pixels(
    input_tensor: str, input_dtype: str, pixel_format: str
) -> None:
    rgb = np.random.default_rng(1).integers(0, 256, (48, 64, 3), np.uint8)
    region = rgb[..., ::-1] if pixel_format == "bgr" else rgb
    sent = frigate_tensor(region, 64, input_tensor, input_dtype)  # stretched to 64x64
    scale = "float_denorm" if input_dtype == "float_denorm" else "float"
    message = frigate.Message(
        "infer", {"shape": list(sent.shape), "dtype": sent.dtype.name}, memoryview(sent.tobytes())
    )
    pixels = frigate.to_pixels(frigate.tensor(message), (64, 64), scale, pixel_format)
    expected = frigate_tensor(rgb, 64, "nhwc", "int")[0]
    assert pixels.dtype == np.uint8 and pixels.flags.c_contiguous
    np.testing.assert_array_equal(pixels, expected)


def test_tensors_that_cannot_be_pixels_are_refused_with_the_reason() -> None:
    def refused(array: np.ndarray, size=(8, 8), scale="float") -> str:
        with pytest.raises(frigate.Refused) as caught:
            frigate.to_pixels(array, size, scale, "rgb")
        return caught.value.reason

    assert refused(np.zeros((1, 8, 8, 3), np.uint8), size=(16, 16)) == "wrong_size"
    assert refused(np.zeros((1, 8, 8, 4), np.uint8)) == "bad_shape"
    assert refused(np.zeros((8, 8, 3), np.uint8)) == "bad_shape"
    assert refused(np.full((1, 8, 8, 3), np.inf, np.float32)) == "not_finite"
    assert refused(np.full((1, 3, 8, 8), 2.0, np.float32)) == "out_of_range"
    assert refused(np.full((1, 3, 8, 8), -1.0, np.float32), scale="float_denorm") == "out_of_range"

    def header(shape: Any, dtype: Any, payload: bytes = b"") -> str:
        with pytest.raises(frigate.Refused) as caught:
            frigate.tensor(
                frigate.Message("infer", {"shape": shape, "dtype": dtype}, memoryview(payload))
            )
        return caught.value.reason

    assert header([1, 2], "int16") == "bad_dtype"
    assert header("1x2", "uint8") == "bad_shape"
    assert header([1, True], "uint8") == "bad_shape"
    assert header([1, 2, 3, 4, 5], "uint8") == "bad_shape"
    assert header([1, 2**40], "uint8") == "bad_shape"
    assert header([1, 4], "float32", b"1234") == "bad_size"


def test_rows_are_frigates_table() -> None:
    result = {
        "width": 200,
        "height": 100,
        "detections": [
            {"index": 3, "score": 0.9, "box": [20.0, 10.0, 120.0, 60.0]},
            {"index": 0, "score": 0.5, "box": [0.0, 0.0, 200.0, 100.0]},
        ]
        + [{"index": 1, "score": 0.3, "box": [1.0, 1.0, 2.0, 2.0]}] * 30,
    }
    table = np.frombuffer(frigate.rows(result), np.float32).reshape(20, 6)
    np.testing.assert_allclose(table[0], [3, 0.9, 0.1, 0.1, 0.6, 0.6], rtol=1e-6)
    np.testing.assert_allclose(table[1], [0, 0.5, 0, 0, 1, 1])
    assert (table[19] != 0).any()  # 20 rows kept of 32
    assert frigate.rows({"width": 1, "height": 1, "detections": []}) == frigate.ZEROS


def host(folder: Path) -> ModelHost:
    return ModelHost(load_entry(folder), "loading", 1)


def test_frigates_model_names_find_models(tmp_path) -> None:
    aliased = tmp_path / "zoo-v8"
    aliased.mkdir()
    (aliased / "model.onnx").write_bytes(b"x")
    (aliased / "model.yaml").write_text(
        "task: detection\naliases: [yolov8n-320.rknn, other]\ninput: {size: 320}\n"
        "output: {format: yolov8, classes: 80}\n"
    )
    hosts = {"zoo-v8": host(aliased), "shapes-det": host(MODELS / "shapes-det")}
    assert frigate.find_model("shapes-det.rknn", hosts) is hosts["shapes-det"]
    assert frigate.find_model("shapes-det", hosts) is hosts["shapes-det"]
    assert frigate.find_model("yolov8n-320.rknn", hosts) is hosts["zoo-v8"]
    assert frigate.find_model("other.onnx", hosts) is hosts["zoo-v8"]
    assert frigate.find_model("yolov8n-320.onnx", hosts) is None
    assert frigate.find_model("../shapes-det.rknn", hosts) is hosts["shapes-det"]  # a name only
    assert frigate.stem(".hidden") == ".hidden" and frigate.stem("a.b.c") == "a.b"
    assert frigate.handshake(None) == {"model_available": False, "model_loaded": False}
    assert frigate.handshake(hosts["zoo-v8"]) == {"model_available": True, "model_loaded": False}


def test_the_labelmap_is_id_label_lines() -> None:
    assert frigate.labelmap(["circle", "traffic light"]) == "0 circle\n1 traffic light\n"
    assert frigate.labelmap([], classes=2) == "0 0\n1 1\n"


def test_upload_names_never_become_paths(tmp_path) -> None:
    (tmp_path / "taken").mkdir()
    for name, reason in [
        ("../x.onnx", "upload_name"),
        ("/etc/x.onnx", "upload_name"),
        (".x.onnx", "upload_name"),
        ("a/b.onnx", "upload_name"),
        ("x" * 120 + ".onnx", "upload_name"),
        ("x.rknn", "upload_kind"),
        ("x.pt", "upload_kind"),
        ("taken.onnx", "upload_exists"),
    ]:
        with pytest.raises(frigate.Refused) as caught:
            frigate_upload.check_name(name, tmp_path, "onnx")
        assert caught.value.reason == reason, name
    assert frigate_upload.check_name("yolo-v8n_320.onnx", tmp_path, "onnx") == (
        "yolo-v8n_320",
        ".onnx",
    )
    assert frigate_upload.check_name("m.rknn", tmp_path, "rknnlite") == ("m", ".rknn")


def test_an_uploaded_rknn_gets_its_layout_from_the_file(tmp_path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    data = (MODELS / "shapes-det" / "model.rknn").read_bytes()
    assert frigate_upload.save("det.rknn", data, models, "rknnlite", "float", "rgb") == "det"
    spec = (models / "det" / "model.yaml").read_text()
    assert "input: {size: [160, 160], color: rgb, resize: stretch}" in spec
    assert "output: {format: yolov8, classes: 5, strides: [8, 16, 32], nms: classwise}" in spec
    assert load_entry(models / "det").spec is not None
    assert sorted(p.name for p in models.iterdir()) == ["det"]
    with pytest.raises(frigate.Refused, match="no detector layout"):
        frigate_upload.save(
            "cls.rknn",
            (MODELS / "shapes" / "model.rknn").read_bytes(),
            models,
            "rknnlite",
            "float",
            "rgb",
        )
    assert sorted(p.name for p in models.iterdir()) == ["det"]  # nothing left behind


def test_the_labelmap_command_writes_the_models_labels(tmp_path, capsys) -> None:
    assert main(["frigate-labelmap", "shapes-det.rknn", "--models-dir", str(MODELS)]) == 0
    assert capsys.readouterr().out == "0 circle\n1 square\n2 triangle\n3 star\n4 cross\n"
    out = tmp_path / "labels"
    assert (
        main(["frigate-labelmap", "shapes-det", "--models-dir", str(MODELS), "-o", str(out)]) == 0
    )
    assert out.read_text().splitlines()[4] == "4 cross"
    assert main(["frigate-labelmap", "shapes", "--models-dir", str(MODELS)]) == 1
    assert main(["frigate-labelmap", "nothing.rknn", "--models-dir", str(MODELS)]) == 1
    errors = capsys.readouterr().err
    assert "'shapes' is a classification model; Frigate needs a detector" in errors
    assert "no model named 'nothing.rknn'" in errors
