"""A classification score is a probability, whatever the model outputs.

Before: raw logits were served as scores (16.9470) when model.yaml left ``output.kind``
out; a quantized (uint8) output was served as raw integers (254.0000); with
``label_offset: 1`` the background class came back as index -1 with an empty label.
Now integer outputs are dequantized with the model's own scale and zero point (or the
model is refused, saying why), the outputs before ``label_offset`` are never answers, and
the warm-up warns when what model.yaml calls probabilities does not look like them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from rkserve.backends import TensorSpec
from rkserve.backends.onnxquant import output_quantization
from rkserve.errors import ConfigError
from rkserve.kernels import classify
from rkserve.repository import build_engine
from rkserve.tasks import classification, load_spec
from tests.helpers import DATA, MODELS, shared
from tools.harness import Daemon

MNET_YAML = (
    "task: classification\nlabels: labels.txt\ninput: {size: 128}\n"
    "onnx: {layout: nhwc, dtype: uint8}\noutput: {label_offset: 1}\n"
)


@pytest.fixture
def mnet(tmp_path) -> Path:
    """The shared uint8 MobileNetV1 (1001 outputs, 0 = background) with 1000 labels."""
    folder = tmp_path / "mnet"
    folder.mkdir()
    shutil.copy(shared("onnx", "mobilenet_v1_0.5_128_quant.onnx"), folder / "model.onnx")
    shutil.copy(shared("labels", "st_labels_imagenet_2012.txt"), folder / "labels.txt")
    (folder / "model.yaml").write_text(MNET_YAML)
    return folder


def test_integer_scores_are_dequantized():
    raw = np.array([[0, 128, 255]], np.uint8)
    scores = classify.class_scores(raw, "probabilities", (1 / 256, 0))
    assert scores.dtype == np.float32
    assert scores.tolist() == [0.0, 0.5, 255 / 256]
    assert classify.dequantize(np.array([10], np.int8), (0.5, -2)).tolist() == [6.0]


def test_the_quantization_of_an_onnx_output_is_read_from_the_file():
    path = shared("onnx", "mobilenet_v1_0.5_128_quant.onnx")
    assert output_quantization(path) == {"MobilenetV1/Predictions/Reshape_1": (0.00390625, 0)}
    assert output_quantization(MODELS / "shapes" / "model.onnx") == {}  # a float model
    assert output_quantization(Path(__file__)) == {}  # not a protobuf: nothing, no exception


@pytest.mark.process
def test_the_reader_agrees_with_the_onnx_package(converter):
    """An independent reference: the onnx package (in the converter's environment) reads
    each shared model's QuantizeLinear outputs."""
    script = (
        "import json, sys, onnx\n"
        "from onnx import numpy_helper\n"
        "found = {}\n"
        "for path in sys.argv[1:]:\n"
        "    g = onnx.load(path).graph\n"
        "    init = {i.name: numpy_helper.to_array(i) for i in g.initializer}\n"
        "    outs = {o.name for o in g.output}\n"
        "    found[path] = {n.output[0]: [float(init[n.input[1]]), int(init[n.input[2]])]\n"
        "                   for n in g.node if n.op_type == 'QuantizeLinear' and n.output[0] in outs}\n"
        "print(json.dumps(found))\n"
    )
    paths = sorted(str(p) for p in (DATA / "onnx").glob("*.onnx"))
    if not paths:
        pytest.skip(f"shared test data not found: {DATA / 'onnx'}")
    done = subprocess.run(
        [str(converter), "-c", script, *paths], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    reference = json.loads(done.stdout)
    for path in paths:
        ours = {k: list(v) for k, v in output_quantization(Path(path)).items()}
        assert ours == reference[path], path


def test_a_uint8_classifier_answers_probabilities_without_its_background(mnet):
    engine = build_engine(load_spec(mnet), "onnx", 10**8)
    assert engine.warm_up().warnings == []
    # MobileNetV2's reference answers for the same images (../shared/data/README.md)
    for image, index, label in (
        ("space_shuttle_224.jpg", 812, "space shuttle"),
        ("imagenet_val/ILSVRC2012_val_00004646.JPEG", 920, "traffic light"),
    ):
        result = engine.infer(shared("images", image).read_bytes(), {"top_k": 1000}).result
        classes = result["classes"]
        assert (classes[0]["index"], classes[0]["label"]) == (index, label)
        scores = [c["score"] for c in classes]
        assert all(0.0 <= s <= 1.0 for s in scores) and scores[0] > 0.9
        assert len(classes) == 1000 and all(c["index"] >= 0 and c["label"] for c in classes)
        assert sum(scores) == pytest.approx(1.0, abs=0.1)


def backend(name: str, given: TensorSpec, output: TensorSpec) -> Any:
    """What ``check`` reads of a backend: its name, input kind, inputs and outputs."""
    return SimpleNamespace(name=name, raw_input=name != "onnx", inputs=[given], outputs=[output])


def test_an_integer_output_without_quantization_is_refused(tmp_path):
    spec = load_spec(
        _folder(tmp_path, "task: classification\ninput: {size: 8}\n"), need_model=False
    )

    onnx_input = TensorSpec("in", (1, 3, 8, 8), "float32")
    with pytest.raises(ConfigError, match="output 'scores' is uint8, with no scale and zero point"):
        classification.check(
            spec, backend("onnx", onnx_input, TensorSpec("scores", (1, 10), "uint8"))
        )
    quantized = TensorSpec("scores", (1, 10), "uint8", (0.1, 3))
    classification.check(spec, backend("onnx", onnx_input, quantized))


@pytest.mark.process
def test_logits_called_probabilities_are_warned_about_with_the_figures(tmp_path):
    folder = tmp_path / "shapes"
    shutil.copytree(MODELS / "shapes", folder)
    text = (folder / "model.yaml").read_text().replace("kind: logits", "kind: probabilities")
    (folder / "model.yaml").write_text(text)
    warnings = build_engine(load_spec(folder), "onnx", 10**8).warm_up().warnings
    assert len(warnings) == 1
    assert (
        "output.kind is probabilities, but the warm-up's 5 scores do not look like them: "
        in warnings[0]
    )
    assert "(not within 0..1)" in warnings[0] and "set output.kind: logits" in warnings[0]
    # the daemon logs it, once, and serves the model all the same
    models = tmp_path / "repo"
    shutil.copytree(folder, models / "shapes")
    d = Daemon(tmp_path, models, "--backend", "onnx").start()
    try:
        assert d.health()["ready"]
    finally:
        assert d.stop() == 0
    lines = [line for line in d.log().splitlines() if "output.kind is probabilities" in line]
    assert len(lines) == 1 and "WARNING model shapes: " in lines[0], d.log()


def test_a_label_offset_that_leaves_no_class_is_refused(tmp_path):
    spec = load_spec(
        _folder(tmp_path, "task: classification\ninput: {size: 8}\noutput: {label_offset: 10}\n"),
        need_model=False,
    )

    npu_input = TensorSpec("in", (1, 8, 8, 3), "uint8")
    with pytest.raises(ConfigError, match="label_offset: 10 but the model outputs 10 scores"):
        classification.check(
            spec, backend("fake", npu_input, TensorSpec("scores", (1, 10), "float32"))
        )


def _folder(tmp_path: Path, text: str) -> Path:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model.yaml").write_text(text)
    return folder
