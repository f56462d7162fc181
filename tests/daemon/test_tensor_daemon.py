"""Any RKNN model end to end: the real daemon in a subprocess, the real client and CLI.

On onnxruntime: Rockchip's multiple_input_demo (task tensor), an ImageNet classifier with
the crop preprocessing, and a misdeclared segmenter that must be refused. On a fixture
board with the RKNNLite double: the demo's .rknn, an argmaxed segmenter and a 6-output
detector declared as a classifier.
"""

from __future__ import annotations

import cv2
import msgpack
import numpy as np
import pytest
import zmq

from rkserve import repository
from rkserve.errors import BadRequest, BadTensor, ModelUnavailable
from rkserve.protocol import STAGES, decode_output
from tests.boards import AFTER_UPDATE, make_board
from tests.daemon.test_metrics import board_daemon
from tests.helpers import run_rkserve, shared, write_model
from tests.tasks.test_tasks import YOLOV8_OUTPUTS, labels_file, synthetic_rknn
from tests.tasks.test_tensor import MULTI_SPEC, demo_inputs, onnxruntime_direct
from tools.harness import Daemon


@pytest.fixture(scope="module")
def onnx_daemon(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tensor")
    models = folder / "models"
    write_model(models / "multi", MULTI_SPEC, onnx=shared("onnx", "multiple_input_demo_test.onnx"))
    write_model(
        models / "mobilenet",
        {
            "task": "classification",
            "input": {"size": 224, "resize": "crop"},
            "onnx": {"mean": 127, "std": 127.5},
        },
        onnx=shared("onnx", "mobilenet_v2_1.0_224_dequant_fp32.onnx"),
        labels=shared("labels", "synset.txt"),
    )
    write_model(  # 20 labels for a 21-class model: refused at load
        models / "deeplab20",
        {"task": "segmentation", "input": {"size": 257}, "onnx": {"mean": 127.5, "std": 127.5}},
        onnx=shared("onnx", "deeplabv3_257_voc_fp32.onnx"),
        labels=labels_file(folder / "labels20.txt", 20),
    )
    d = Daemon(folder, models, "--backend", "onnx").start(wait_ready=False, timeout=90)
    d.wait(lambda h: h["status"] == "serving", timeout=90)
    yield d
    assert d.stop() == 0, d.log()


@pytest.mark.process
def test_tensor_reply_equals_onnxruntime_and_the_engine(onnx_daemon):
    first, second = demo_inputs()
    expected = onnxruntime_direct(first, second)
    local = repository.open_engine(onnx_daemon.args[5], "multi", backend="onnx")
    with onnx_daemon.client(timeout=30) as client:
        by_name = client.infer_tensors("multi", {"input.1": first, "input": second})
        by_order = client.infer_tensors("multi", [first, second])
    assert by_name.task == "tensor" and set(by_name.timings) == set(STAGES)
    (output,) = by_name.outputs.values()
    assert list(by_name.outputs) == ["8"] and output.shape == (1, 8, 128, 128)
    assert np.abs(output - expected).max() == 0
    assert by_order.result == by_name.result
    assert by_name.result == local.infer([first, second]).result


@pytest.mark.process
def test_models_describe_tensor_inputs(onnx_daemon):
    with onnx_daemon.client() as client:
        listed = {m["name"]: m for m in client.models()}
    assert listed["multi"]["inputs"] == [
        {"name": "input.1", "shape": [1, 128, 128, 1], "dtype": "uint8"},
        {"name": "input", "shape": [1, 128, 128, 3], "dtype": "uint8"},
    ]
    assert listed["multi"]["outputs"] == [
        {"name": "8", "shape": [1, 8, 128, 128], "dtype": "float32"}
    ]
    assert listed["mobilenet"]["input_shape"] == [224, 224, 3]


def raw_request(daemon, fields):
    """One request over a bare DEALER socket: the reply map, whatever it says."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(daemon.endpoint)
    try:
        message = {"v": 1, "id": 7, "op": "infer", **fields}
        sock.send_multipart([b"", msgpack.packb(message, use_bin_type=True)])
        assert sock.poll(30_000), "no reply"
        return msgpack.unpackb(sock.recv_multipart()[-1], raw=False)
    finally:
        sock.close()


def tensor(array, name=None):
    t = {"dtype": array.dtype.name, "shape": list(array.shape), "data": array.tobytes()}
    return t if name is None else {"name": name, **t}


@pytest.mark.process
def test_bad_tensor_requests_each_get_a_specific_error(onnx_daemon):
    first, second = demo_inputs()
    nan = np.full((1, 128, 128, 3), np.nan, np.float32)
    short = {**tensor(second, "input"), "data": second.tobytes()[:-1]}
    cases = [
        ([tensor(first)], "bad_tensor", "takes 2 inputs"),
        (
            [tensor(first.astype(np.int16)), tensor(second)],
            "bad_tensor",
            "input 'input.1': dtype int16",
        ),
        (
            [tensor(first), tensor(second[:, :, :100])],
            "bad_tensor",
            "input 'input': shape [1, 128, 100, 3]",
        ),
        ([tensor(first, "input.1"), short], "bad_tensor", "inputs['input']: data is 49151 bytes"),
        ([tensor(first), tensor(nan)], "bad_tensor", "input 'input': dtype float32"),
        ({"input.1": tensor(first), "nope": tensor(second)}, "bad_tensor", "no input named 'nope'"),
    ]
    for inputs, code, words in cases:
        reply = raw_request(onnx_daemon, {"model": "multi", "inputs": inputs})
        assert not reply["ok"] and reply["error"]["code"] == code, reply
        assert words in reply["error"]["message"], reply["error"]
    image = cv2.imencode(".jpg", np.zeros((32, 32, 3), np.uint8))[1].tobytes()
    reply = raw_request(onnx_daemon, {"model": "multi", "image": image})
    assert reply["error"]["code"] == "bad_request"
    assert "task tensor) takes named tensors: send inputs" in reply["error"]["message"]
    reply = raw_request(onnx_daemon, {"model": "mobilenet", "inputs": [tensor(second)]})
    assert reply["error"]["code"] == "bad_request"
    assert "takes an image: send image" in reply["error"]["message"]
    with onnx_daemon.client() as client:  # the same errors through the client's classes
        with pytest.raises(BadTensor, match="takes 2 inputs"):
            client.infer_tensors("multi", [first])
        with pytest.raises(BadRequest, match="takes named tensors"):
            client.infer("multi", image)
        out = client.infer_tensors("multi", [first, second]).outputs["8"]  # still serving
        assert out.shape == (1, 8, 128, 128)


@pytest.mark.process
def test_nan_in_a_float_input_is_refused(tmp_path):
    spec = {"task": "tensor", "inputs": [{"name": "x", "shape": [1, 3], "dtype": "float32"}]}
    models = tmp_path / "models"
    write_model(models / "f", spec, onnx=shared("onnx", "multiple_input_demo_test.onnx"))
    d = Daemon(tmp_path, models, "--backend", "fake").start()
    try:
        with d.client() as client:
            with pytest.raises(BadTensor, match="input 'x': 1 of 3 values are NaN or infinite"):
                client.infer_tensors("f", [np.array([[1, np.nan, 2]], np.float32)])
            sums = client.infer_tensors("f", {"x": np.array([[1, 2, 3.5]], np.float32)})
            assert sums.outputs["sums"].tolist() == [[6.5]]
    finally:
        assert d.stop() == 0, d.log()


@pytest.mark.process
def test_misdeclared_segmenter_refused_with_its_reason_everywhere(onnx_daemon):
    reason = "labels: 20 labels but the model scores 21 classes (output [1, 21, 257, 257]"
    health = onnx_daemon.health()
    assert health["models"]["deeplab20"]["state"] == "refused" and not health["ready"]
    assert reason in health["models"]["deeplab20"]["error"]
    done = run_rkserve("models", "-e", onnx_daemon.endpoint)
    assert done.returncode == 1, done.stderr  # a model is not ready
    row = next(line for line in done.stdout.splitlines() if line.startswith("deeplab20 "))
    assert row.split()[-1] == "refused"
    assert f"deeplab20: {onnx_daemon.args[5]}/deeplab20/model.yaml: {reason}" in done.stdout
    lines = [line for line in onnx_daemon.log().splitlines() if "model deeplab20" in line]
    assert len(lines) == 1 and "ERROR model deeplab20 refused: " in lines[0] and reason in lines[0]
    with onnx_daemon.client() as client, pytest.raises(ModelUnavailable, match="20 labels"):
        client.segment("deeplab20", b"x")


@pytest.mark.process
def test_cli_infer_tensor_writes_npy_outputs(onnx_daemon, tmp_path):
    first, second = demo_inputs()
    np.save(tmp_path / "a.npy", first)
    np.save(tmp_path / "b.npy", second)
    out = tmp_path / "out"
    done = run_rkserve(
        "infer", "-e", onnx_daemon.endpoint, "-m", "multi", "--out", str(out),
        "--tensor", f"input={tmp_path / 'b.npy'}", "--tensor", f"input.1={tmp_path / 'a.npy'}",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert any(
        line.split()[:3] == ["8", "float32", "1x8x128x128"] for line in done.stdout.splitlines()
    )
    written = np.load(out / "8.npy")
    assert np.abs(written - onnxruntime_direct(first, second)).max() == 0
    done = run_rkserve(
        "infer", "-e", onnx_daemon.endpoint, "-m", "multi", "--tensor", str(tmp_path / "a.npy")
    )
    assert done.returncode == 1 and "takes 2 inputs" in done.stderr
    (tmp_path / "text.npy").write_text("not an array")
    done = run_rkserve(
        "infer", "-e", onnx_daemon.endpoint, "-m", "multi", "--tensor", str(tmp_path / "text.npy")
    )
    assert done.returncode == 1 and "not a readable .npy array" in done.stderr


@pytest.mark.process
def test_bench_tensor_on_a_tensor_model(onnx_daemon, tmp_path):
    report = tmp_path / "bench.json"
    done = run_rkserve(
        "bench", "-e", onnx_daemon.endpoint, "-m", "multi", "--tensor", "-c", "1",
        "--requests", "4", "--warmup", "0", "--json", str(report),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr + done.stdout
    import json

    plan = json.loads(report.read_text())["plan"]
    assert plan["inputs"] == [
        {
            "inputs": [
                {"name": "input.1", "dtype": "uint8", "shape": [1, 128, 128, 1]},
                {"name": "input", "dtype": "uint8", "shape": [1, 128, 128, 3]},
            ]
        }
    ]


@pytest.mark.process
def test_crop_classifier_over_the_daemon_matches_the_engine(onnx_daemon):
    bell = shared("images", "bell.jpg").read_bytes()
    local = repository.open_engine(onnx_daemon.args[5], "mobilenet", backend="onnx")
    with onnx_daemon.client(timeout=30) as client:
        remote = client.classify("mobilenet", bell, top_k=5)
    assert remote.classes[0]["index"] == 494
    assert remote.result == local.infer(bell, {"top_k": 5}).result


@pytest.mark.process
def test_every_shape_on_the_board_double(tmp_path):
    board = make_board(tmp_path, soc="rk3568", **AFTER_UPDATE)
    models = tmp_path / "models"
    write_model(
        models / "multi", {"task": "tensor"},
        rknn=shared("rknn", "built", "multiple_input_demo_rk3568_i8_tk2.3.2.rknn"),
    )  # fmt: skip
    write_model(
        models / "human",
        {"task": "segmentation", "input": {"size": 192}, "output": {"kind": "class_map"}},
        rknn=shared("rknn", "rockchip", "pp_human_segv2_custom_argmax_RK3566_RK3568_tk2.3.1.rknn"),
    )
    synthetic_rknn(models / "yolo" / "model.rknn", YOLOV8_OUTPUTS)
    write_model(models / "yolo", {"task": "classification", "input": {"size": 32}})
    d = board_daemon(tmp_path, board, models, soc="rk3568").start()
    try:
        health = d.health()
        assert health["models"]["multi"]["state"] == "ready", d.log()
        assert health["models"]["human"]["state"] == "ready", d.log()
        yolo = health["models"]["yolo"]
        assert (
            yolo["state"] == "refused" and "has 6 output(s): out1 [1, 64, 80, 80]" in yolo["error"]
        )
        first, second = demo_inputs()
        with d.client() as client:
            reply = client.infer_tensors("multi", [first, second])
            assert reply.outputs["8"].shape == (1, 8, 128, 128)
            assert reply.outputs["8"].dtype == np.float32
            nchw = client.infer_tensors(
                "multi", [first.transpose(0, 3, 1, 2), second.transpose(0, 3, 1, 2)]
            )
            assert np.array_equal(
                nchw.outputs["8"], reply.outputs["8"]
            )  # the same bytes reached the NPU
            image = cv2.imencode(".png", np.zeros((50, 70, 3), np.uint8))[1].tobytes()
            seg = client.segment("human", image, mask="raw")
            assert (seg.result["width"], seg.result["height"]) == (70, 50)
            assert len(seg.result["mask"]["data"]) == 70 * 50
            listed = {m["name"]: m for m in client.models()}
            assert listed["yolo"]["error"] == yolo["error"]
        refusals = [line for line in d.log().splitlines() if "model yolo refused:" in line]
        assert len(refusals) == 1 and "task classification reads one output" in refusals[0]
    finally:
        assert d.stop() == 0, d.log()


def test_decode_output_copies():
    array = np.arange(4, dtype=np.int64)
    decoded = decode_output({"dtype": "int64", "shape": [4], "data": array.tobytes()})
    decoded[0] = 9
    assert decoded.flags.writeable and array[0] == 0
