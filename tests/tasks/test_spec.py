"""model.yaml validation and the repository scan: errors name the file and the field."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from rkserve import repository
from rkserve.errors import BadImage, BadRequest, ConfigError, TooLarge, UnknownModel
from rkserve.tasks import load_spec
from tests.helpers import write_model

GOOD = {
    "task": "segmentation",
    "input": {"size": [16, 24], "color": "bgr"},
    "onnx": {"mean": 127.5, "std": [1, 2, 3]},
}


def _folder(tmp_path: Path, spec) -> Path:
    return write_model(tmp_path / "m", spec, onnx=Path(__file__))


def test_good_spec_and_defaults(tmp_path):
    spec = load_spec(_folder(tmp_path, GOOD))
    assert spec.name == "m" and spec.input_size == (16, 24) and spec.color == "bgr"
    assert spec.onnx.mean == (127.5,) * 3 and spec.onnx.std == (1.0, 2.0, 3.0)
    assert spec.task_config.kind == "logits" and spec.resize == "stretch" and spec.labels == ()


@pytest.mark.parametrize(
    "change,field,words",
    [
        ({"task": "tracking"}, "task", "one of classification, segmentation, tensor, detection"),
        ({"input": {"size": "big"}}, "input.size", "expected \\[height, width\\]"),
        ({"input": {"size": [16, 0]}}, "input.size", "1..8192"),
        ({"input": {"size": 16, "color": "gray"}}, "input.color", "rgb, bgr"),
        ({"onnx": {"std": [1, 0, 1]}}, "onnx.std", "positive"),
        ({"onnx": {"mean": [1, 2]}}, "onnx.mean", "3 numbers"),
        (
            {"output": {"kind": "class_map"}, "task": "classification"},
            "output.kind",
            "probabilities, logits",
        ),
        ({"labels": "missing.txt"}, "labels", "cannot read"),
        ({"palette": [[0, 0, 300]]}, "palette", "0..255"),
        # before: 100,000 runtime objects and runner threads; a 10 Mpx crop side; top_k
        # refused at warm-up as if a client had sent it
        ({"instances": 100_000}, "instances", "0..16"),
        (
            {
                "task": "classification",
                "input": {"size": 16, "resize": "crop", "shorter_side": 10**7},
            },
            "input.shorter_side",
            "0..8192",
        ),
        ({"task": "classification", "output": {"top_k": 10**11}}, "output.top_k", "1..1000"),
    ],
)
def test_errors_name_file_and_field(tmp_path, change, field, words):
    folder = _folder(tmp_path, {**GOOD, **change})
    with pytest.raises(ConfigError) as info:
        load_spec(folder)
    message = str(info.value)
    assert message.startswith(str(folder / "model.yaml")) and f": {field}: " in message
    assert re.search(words, message)


def test_no_model_file_and_bad_yaml(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model.yaml").write_text("task: classification\ninput: {size: 8}\n")
    with pytest.raises(ConfigError, match="needs at least one"):
        load_spec(folder)
    (folder / "model.yaml").write_text("task: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_spec(folder)
    (folder / "model.yaml").write_text("- a list\n")
    with pytest.raises(ConfigError, match="top level: expected a mapping"):
        load_spec(folder)


def test_scan_keeps_going_past_a_bad_model(tmp_path):
    write_model(
        tmp_path / "good", {"task": "classification", "input": {"size": 8}}, onnx=Path(__file__)
    )
    write_model(tmp_path / "bad", {"task": "nope"}, onnx=Path(__file__))
    (tmp_path / "not-a-model").mkdir()
    entries = repository.scan(tmp_path)
    assert list(entries) == ["bad", "good"]
    assert entries["good"].spec is not None and entries["good"].error is None
    assert entries["bad"].spec is None and "task" in (entries["bad"].error or "")
    with pytest.raises(ConfigError, match="does not exist"):
        repository.scan(tmp_path / "nowhere")


def test_fingerprint_changes_with_the_files(tmp_path):
    folder = write_model(
        tmp_path / "m", {"task": "classification", "input": {"size": 8}}, onnx=Path(__file__)
    )
    before = repository.load_entry(folder).fingerprint
    (folder / "model.yaml").write_text(
        (folder / "model.yaml").read_text() + "\ndescription: changed\n"
    )
    assert repository.load_entry(folder).fingerprint != before


@pytest.fixture
def fake_engine(tmp_path):
    write_model(
        tmp_path / "m", {"task": "classification", "input": {"size": 16}}, onnx=Path(__file__)
    )
    return repository.open_engine(tmp_path, "m", backend="fake", classes=4)


@pytest.mark.parametrize(
    "data,error",
    [
        (b"\xff\xd8\xff\xe0 garbage", BadImage),
        (b"", BadImage),
        (np.zeros((1, 1, 3), np.uint8), BadImage),
        (np.zeros((16, 16, 3), np.float64), BadImage),
        (np.zeros((16, 16), np.uint8), BadImage),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00N \x00\x00N \x08\x02\x00\x00\x00", TooLarge),
    ],
)
def test_engine_bad_input_gets_a_specific_error(fake_engine, data, error):
    with pytest.raises(error):
        fake_engine.infer(data)


@pytest.mark.parametrize(
    "params", [{"top_k": 0}, {"top_k": "3"}, {"mask": "gif"}, {"overlay": 1}, {"topk": 3}]
)
def test_engine_bad_params(fake_engine, params):
    with pytest.raises(BadRequest):
        fake_engine.infer(np.zeros((16, 16, 3), np.uint8), params)


def test_unknown_model(tmp_path):
    write_model(
        tmp_path / "m", {"task": "classification", "input": {"size": 16}}, onnx=Path(__file__)
    )
    with pytest.raises(UnknownModel, match="no model named 'x'.*models: m"):
        repository.open_engine(tmp_path, "x", backend="fake")
