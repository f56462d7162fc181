"""Task tensor in-process: named tensors in, output tensors out, every bad input refused by
name; Rockchip's multiple_input_demo on onnxruntime and on the RKNNLite double."""

from __future__ import annotations

from pathlib import Path

import msgpack
import numpy as np
import pytest

from rkserve import protocol
from rkserve.backends import open_backend
from rkserve.engine import Engine
from rkserve.errors import BadRequest, BadTensor, ConfigError
from rkserve.protocol import Inputs, decode_output, decode_request
from rkserve.tasks import load_spec
from tests.helpers import shared, write_model

MULTI_SPEC = {"task": "tensor", "inputs": [{"dtype": "uint8"}, {"dtype": "uint8"}]}
RKNN_BUILDS = [
    ("built", "multiple_input_demo_rk3568_i8_tk2.3.2.rknn"),
    ("rockchip", "multiple_input_demo_RK3566_RK3568_tk1.6.2.rknn"),
    ("rockchip", "multiple_input_demo_RK3566_RK3568_tk1.3.4.rknn"),
    ("rockchip", "multiple_input_demo_RK356X_tk1.1.0.rknn"),
]


def demo_inputs():
    """The demo's two inputs, uint8 NHWC: [1,128,128,1] and [1,128,128,3]."""
    first = np.fromfile(shared("images", "multiple_input_demo_input1.bin"), np.uint8)
    second = np.fromfile(shared("images", "multiple_input_demo_input2.bin"), np.uint8)
    return first.reshape(1, 128, 128, 1), second.reshape(1, 128, 128, 3)


def onnxruntime_direct(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """The ONNX model run by onnxruntime itself on the same inputs (NCHW float32)."""
    import onnxruntime as ort

    session = ort.InferenceSession(
        str(shared("onnx", "multiple_input_demo_test.onnx")), providers=["CPUExecutionProvider"]
    )
    feed = {
        "input.1": first.transpose(0, 3, 1, 2).astype(np.float32),
        "input": second.transpose(0, 3, 1, 2).astype(np.float32),
    }
    return session.run(None, feed)[0]


@pytest.fixture(scope="module")
def multi(tmp_path_factory):
    folder = tmp_path_factory.mktemp("m") / "multi"
    write_model(folder, MULTI_SPEC, onnx=shared("onnx", "multiple_input_demo_test.onnx"))
    spec = load_spec(folder)
    return Engine(spec, open_backend("onnx", spec))


def output_of(result) -> np.ndarray:
    (tensor,) = result.result["outputs"]
    assert tensor["name"] == "8" and tensor["dtype"] == "float32"
    return decode_output(tensor)


def test_onnx_twin_reply_equals_onnxruntime_exactly(multi):
    first, second = demo_inputs()
    expected = onnxruntime_direct(first, second)
    by_order = output_of(multi.infer([first, second]))
    assert by_order.shape == (1, 8, 128, 128)
    assert np.abs(by_order - expected).max() == 0
    assert np.array_equal(output_of(multi.infer({"input": second, "input.1": first})), by_order)
    # NCHW tensors of the same inputs are taken too (transposed to NHWC by the daemon)
    nchw = [first.transpose(0, 3, 1, 2), second.transpose(0, 3, 1, 2)]
    assert np.array_equal(output_of(multi.infer(nchw)), by_order)


def test_describe_and_warm_up(multi):
    assert multi.describe() == {
        "inputs": [
            {"name": "input.1", "shape": [1, 128, 128, 1], "dtype": "uint8"},
            {"name": "input", "shape": [1, 128, 128, 3], "dtype": "uint8"},
        ],
        "outputs": [{"name": "8", "shape": [1, 8, 128, 128], "dtype": "float32"}],
    }
    result = multi.warm_up()
    assert set(result.timings) == {"decode", "preprocess", "inference", "postprocess"}


def test_mean_std_per_input_for_the_onnx_twin(tmp_path):
    spec = {
        "task": "tensor",
        "inputs": {
            "input.1": {"dtype": "uint8", "mean": 10, "std": 2},
            "input": {"dtype": "uint8"},
        },
    }
    folder = write_model(tmp_path / "m", spec, onnx=shared("onnx", "multiple_input_demo_test.onnx"))
    engine = Engine(load_spec(folder), open_backend("onnx", load_spec(folder)))
    first, second = demo_inputs()
    got = output_of(engine.infer([first, second]))
    normalised = ((first.astype(np.float32) - 10) / 2).astype(np.float32)
    import onnxruntime as ort

    session = ort.InferenceSession(str(shared("onnx", "multiple_input_demo_test.onnx")))
    feed = {
        "input.1": normalised.transpose(0, 3, 1, 2),
        "input": second.transpose(0, 3, 1, 2).astype(np.float32),
    }
    assert np.abs(got - session.run(None, feed)[0]).max() == 0


@pytest.mark.parametrize("build", RKNN_BUILDS, ids=lambda b: b[1])
def test_rknn_builds_load_as_two_input_models_in_the_double(tmp_path, rknnlite_double, build):
    folder = write_model(tmp_path / "multi", {"task": "tensor"}, rknn=shared("rknn", *build))
    spec = load_spec(folder)
    engine = Engine(spec, open_backend("rknnlite", spec))
    assert [i["shape"] for i in engine.describe()["inputs"]] == [[1, 128, 128, 1], [1, 128, 128, 3]]
    assert [i["dtype"] for i in engine.describe()["inputs"]] == ["uint8", "uint8"]
    engine.warm_up()  # as the loader does: zeros of every input's shape and dtype
    first, second = demo_inputs()
    (output,) = engine.infer([first, second]).result["outputs"]
    assert output["shape"] == [1, 8, 128, 128] and output["dtype"] == "float32"
    (runtime,) = rknnlite_double.instances
    assert runtime.calls == 2
    engine.backend.close()


def test_bad_requests_each_name_the_input(multi):
    first, second = demo_inputs()
    cases = [
        ([first], "takes 2 inputs \\(input.1 \\[1, 128, 128, 1\\] uint8, input "),
        ([first.astype(np.float32), second], "input 'input.1': dtype float32, but the model"),
        ([first, second[:, :64]], "input 'input': shape \\[1, 64, 128, 3\\], but the model takes"),
        ({"input.1": first, "x": second}, "no input named 'x'; model 'multi' takes 'input.1'"),
    ]
    for inputs, words in cases:
        with pytest.raises(BadTensor, match=words):
            multi.infer(inputs)
    mixed = Inputs([protocol.NamedTensor("input", second), protocol.NamedTensor(None, first)])
    with pytest.raises(BadTensor, match="name every tensor or none"):
        multi.infer(mixed)
    with pytest.raises(BadRequest, match="task tensor\\) takes named tensors: send inputs"):
        multi.infer(b"\xff\xd8 a jpeg")
    with pytest.raises(BadRequest, match="unknown params \\['top_k'\\] for a tensor model"):
        multi.parse_params({"top_k": 3})


@pytest.fixture
def float_model(tmp_path):
    spec = {"task": "tensor", "inputs": [{"name": "x", "shape": [1, 4], "dtype": "float32"}]}
    folder = write_model(tmp_path / "f", spec, onnx=Path(__file__))
    return Engine(load_spec(folder), open_backend("fake", load_spec(folder)))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_float_inputs_are_refused(float_model, bad):
    values = np.array([[1.0, bad, 2.0, 3.0]], np.float32)
    with pytest.raises(BadTensor, match="input 'x': 1 of 4 values are NaN or infinite"):
        float_model.infer([values])


def test_fake_tensor_backend_sums_each_input(float_model):
    out = float_model.infer({"x": np.array([[1, 2, 3, 4.5]], np.float32)}).result["outputs"]
    assert out[0]["name"] == "sums" and decode_output(out[0]).tolist() == [[10.5]]


def test_image_task_refuses_named_inputs(tmp_path):
    folder = write_model(
        tmp_path / "cls", {"task": "classification", "input": {"size": 8}}, onnx=Path(__file__)
    )
    engine = Engine(load_spec(folder), open_backend("fake", load_spec(folder), classes=3))
    with pytest.raises(BadRequest, match="takes an image: send image .* or tensor .*, not inputs"):
        engine.infer(Inputs.of([np.zeros((1, 8, 8, 3), np.uint8)]))


def request(inputs) -> bytes:
    message = {"v": 1, "id": 1, "op": "infer", "model": "m", "inputs": inputs}
    return msgpack.packb(message, use_bin_type=True)


@pytest.mark.parametrize(
    "inputs,error,words",
    [
        (
            [{"dtype": "uint8", "shape": [2, 3], "data": b"12345"}],
            BadTensor,
            "inputs\\[0\\]: data is 5 bytes; shape \\[2, 3\\] uint8 needs 6",
        ),
        (
            [{"name": "a", "dtype": "float64", "shape": [1], "data": b"12345678"}],
            BadTensor,
            "inputs\\['a'\\]: dtype must be one of uint8, int8, int16, float16, float32",
        ),
        (
            {"a": {"name": "b", "dtype": "uint8", "shape": [1], "data": b"1"}},
            BadTensor,
            "name 'b' differs from its key",
        ),
        ([{"dtype": "uint8", "shape": [1], "data": b"1", "layout": "nchw"}], BadTensor, "unknown"),
        ([], BadTensor, "1..64 tensors"),
        ("x", BadRequest, "inputs must be a list of tensors or a map"),
    ],
)
def test_wire_inputs_refused_by_name(inputs, error, words):
    with pytest.raises(error, match=words):
        decode_request(request(inputs), 1 << 20)


def test_wire_inputs_round_trip_little_endian():
    array = np.arange(6, dtype=">f4").reshape(2, 3)  # big-endian in, little-endian on the wire
    tensor = protocol.encode_tensor(array, "x")
    assert tensor["data"] == array.astype("<f4").tobytes() and tensor["dtype"] == "float32"
    decoded = decode_request(request([tensor]), 1 << 20)
    assert decoded.inputs is not None and decoded.input is decoded.inputs
    (named,) = decoded.inputs.tensors
    assert named.name == "x" and np.array_equal(named.array, array)
    both = {"v": 1, "op": "infer", "model": "m", "image": b"x", "inputs": [tensor]}
    with pytest.raises(BadRequest, match="exactly one of image .* got image, inputs"):
        decode_request(msgpack.packb(both, use_bin_type=True), 1 << 20)


@pytest.mark.parametrize(
    "change,words",
    [
        ({"input": {"size": 8}}, "input: not used by task tensor"),
        ({"inputs": [{"dtype": "float64"}]}, "inputs\\[0\\].dtype: expected one of uint8"),
        (
            {"inputs": {"x": {"std": [1, 0]}}},
            "inputs.x.std: expected a number or a list of positive",
        ),
        ({"inputs": [{"shape": [1, -2]}]}, "inputs\\[0\\].shape: expected a list of positive"),
        ({"inputs": 3}, "inputs: expected a list"),
        ({"inputs": {"x": "uint8"}}, "inputs.x: expected a mapping"),
        ({"inputs": ["uint8"]}, "inputs\\[0\\]: expected a mapping"),
    ],
)
def test_spec_errors_name_the_field(tmp_path, change, words):
    folder = write_model(tmp_path / "m", {"task": "tensor", **change}, onnx=Path(__file__))
    with pytest.raises(ConfigError, match=words):
        load_spec(folder)


@pytest.mark.parametrize(
    "inputs,words",
    [
        ([{"dtype": "uint8"}], "declares 1 inputs but the onnx model has 2"),
        ([{"dtype": "uint8", "mean": [1, 2]}, {}], "mean has 2 values; the input has 1 channels"),
        ([{"shape": [1, 3, 128, 128]}, {}], "model.yaml says shape \\[1, 3, 128, 128\\]"),
    ],
)
def test_model_checked_against_declared_inputs_at_load(tmp_path, inputs, words):
    spec = {"task": "tensor", "inputs": inputs}
    folder = write_model(tmp_path / "m", spec, onnx=shared("onnx", "multiple_input_demo_test.onnx"))
    with pytest.raises(ConfigError, match=words):
        Engine(load_spec(folder), open_backend("onnx", load_spec(folder)))


def test_convert_refuses_a_tensor_model_with_its_reason(tmp_path):
    from rkserve.convert.recipe import load_recipe

    folder = write_model(
        tmp_path / "m", MULTI_SPEC, onnx=shared("onnx", "multiple_input_demo_test.onnx")
    )
    with pytest.raises(
        ConfigError,
        match="accuracy gate for classification, segmentation, detection models, not tensor",
    ):
        load_recipe(load_spec(folder))
