"""Tasks: the registry, models checked against their task at load, crop preprocessing,
deterministic top-k, custom ops in .rknn files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rkserve import tasks
from rkserve.backends import open_backend
from rkserve.board.rknnops import custom_ops, describe_custom, plugins
from rkserve.engine import Engine
from rkserve.errors import BadImage, ConfigError, TooLarge
from rkserve.kernels import classify, image
from rkserve.repository import open_engine
from rkserve.tasks import load_spec
from tests.board.test_rknnfile import SYNTHETIC_META, container
from tests.helpers import run_rkserve, shared, write_model
from tools.harness import fake_models

ROOT = Path(__file__).resolve().parents[2]
FUNCTIONS = ("read_spec", "check", "parse_params", "prepare", "finish", "warmup_input", "describe")
# the 6-output YOLOv8 export the issue met: 64 * 80 * 80 = 409,600 "classes" once
YOLOV8_OUTPUTS = [
    [1, 64, 80, 80],
    [1, 80, 80, 80],
    [1, 64, 40, 40],
    [1, 80, 40, 40],
    [1, 64, 20, 20],
    [1, 80, 20, 20],
]


def synthetic_rknn(path: Path, outputs, input_shape=(1, 3, 32, 32)) -> Path:
    """A .rknn the RKNNLite double runs: one int8 image input, outputs of these shapes."""
    tensors = [{"tensor_id": 0, "url": "image", "size": list(input_shape), "dtype": {}}]
    graph = [{"left": "input", "left_tensor_id": 0, "right": "norm_tensor", "right_tensor_id": 0}]
    for n, shape in enumerate(outputs, 1):
        tensors.append({"tensor_id": n, "url": f"out{n}", "size": shape, "dtype": {}})
        graph.append(
            {
                "left": "output",
                "left_tensor_id": n - 1,
                "right": "norm_tensor",
                "right_tensor_id": n,
            }
        )
    meta = {**SYNTHETIC_META, "graph": graph, "norm_tensor": tensors}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(container(6, b"", meta))
    return path


def labels_file(path: Path, count: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"class {i}\n" for i in range(count)))
    return path


def engine_for(folder: Path, backend: str) -> Engine:
    spec = load_spec(folder)
    return Engine(spec, open_backend(backend, spec))


# the registry --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(tasks.TASKS))
def test_every_registered_task_has_the_task_functions(name):
    module = tasks.get_task(name)
    assert all(callable(getattr(module, f, None)) for f in FUNCTIONS)


def test_spec_takes_the_task_names_from_the_registry(tmp_path):
    folder = write_model(
        tmp_path / "m", {"task": "nope", "input": {"size": 8}}, onnx=Path(__file__)
    )
    with pytest.raises(
        ConfigError, match="task: expected one of classification, segmentation, tensor"
    ):
        load_spec(folder)


# models checked against their task at load ----------------------------------------------------
def test_six_output_detector_declared_as_classification_is_refused(tmp_path, rknnlite_double):
    folder = tmp_path / "yolo"
    synthetic_rknn(folder / "model.rknn", YOLOV8_OUTPUTS)
    write_model(folder, {"task": "classification", "input": {"size": 32}})
    with pytest.raises(ConfigError) as info:
        engine_for(folder, "rknnlite")
    message = str(info.value)
    assert "task classification reads one output of N class scores" in message
    assert "has 6 output(s): out1 [1, 64, 80, 80], out2 [1, 80, 80, 80]" in message


def test_segmenter_whose_classes_do_not_match_its_labels_is_refused(tmp_path, rknnlite_double):
    folder = write_model(
        tmp_path / "deeplab",
        {"task": "segmentation", "input": {"size": 257}},
        rknn=shared("rknn", "built", "deeplabv3_257_voc_rk3568_i8_tk2.3.2.rknn"),
        labels=labels_file(tmp_path / "labels.txt", 20),
    )
    with pytest.raises(ConfigError, match=r"20 labels but the model scores 21 classes"):
        engine_for(folder, "rknnlite")


def test_segmenter_reading_scores_of_an_argmaxed_model_is_refused_with_the_fix(
    tmp_path, rknnlite_double
):
    rknn = shared("rknn", "rockchip", "pp_human_segv2_custom_argmax_RK3566_RK3568_tk2.3.1.rknn")
    folder = write_model(
        tmp_path / "human", {"task": "segmentation", "input": {"size": 192}}, rknn=rknn
    )
    with pytest.raises(ConfigError) as info:
        engine_for(folder, "rknnlite")
    assert "with output.kind: class_map, an argmaxed [1, H, W] map" in str(info.value)
    assert "argmax_0.tmp_0 [1, 192, 192]" in str(info.value)


def test_argmaxed_segmenter_is_served(tmp_path, rknnlite_double):
    rknn = shared("rknn", "rockchip", "pp_human_segv2_custom_argmax_RK3566_RK3568_tk2.3.1.rknn")
    spec = {"task": "segmentation", "input": {"size": 192}, "output": {"kind": "class_map"}}
    engine = engine_for(write_model(tmp_path / "human", spec, rknn=rknn), "rknnlite")
    rgb = np.random.default_rng(1).integers(0, 256, (120, 90, 3), np.uint8)
    result = engine.infer(rgb, {"mask": "raw"}).result
    assert (result["height"], result["width"]) == (120, 90)
    assert len(result["mask"]["data"]) == 120 * 90


def test_classifier_with_several_outputs_or_inputs_is_refused(tmp_path, rknnlite_double):
    folder = tmp_path / "two"
    synthetic_rknn(folder / "model.rknn", [[1, 10], [1, 10]])
    write_model(folder, {"task": "classification", "input": {"size": 32}})
    with pytest.raises(ConfigError, match="has 2 output"):
        engine_for(folder, "rknnlite")
    multi = write_model(
        tmp_path / "multi",
        {"task": "classification", "input": {"size": 128}},
        rknn=shared("rknn", "built", "multiple_input_demo_rk3568_i8_tk2.3.2.rknn"),
    )
    with pytest.raises(ConfigError, match="has 2 inputs .*serve it with task: tensor"):
        engine_for(multi, "rknnlite")


@pytest.mark.parametrize("shape", [[1, 10], [10], [1, 10, 1, 1]])
def test_classifier_score_shapes_accepted(tmp_path, rknnlite_double, shape):
    folder = tmp_path / "c"
    synthetic_rknn(folder / "model.rknn", [shape])
    write_model(folder, {"task": "classification", "input": {"size": 32}})
    assert (
        len(engine_for(folder, "rknnlite").infer(np.zeros((32, 32, 3), np.uint8)).result["classes"])
        == 5
    )


# deterministic top-k --------------------------------------------------------------------------
@pytest.mark.parametrize("count", [100, classify.SORT_ALL + 1, 1000])  # one sort; partition
def test_equal_scores_rank_by_lower_index_for_every_k(count):
    rng = np.random.default_rng(3)
    scores = (rng.integers(0, 12, count) / 256).astype(np.float32)  # int8-like steps: many ties
    scores[count // 2] = np.nan  # a broken output's NaN ranks last
    full = [c["index"] for c in classify.top_k(scores, count)]
    expected = sorted(range(count), key=lambda i: (np.isnan(scores[i]), -scores[i], i))
    assert full == expected
    for k in (1, 5, 10, 99, count - 1):
        assert [c["index"] for c in classify.top_k(scores, k)] == expected[:k]


# resize: crop ---------------------------------------------------------------------------------
def test_crop_sizes_and_placement_follow_torchvision():
    src = np.zeros((375, 500, 3), np.uint8)  # landscape: height is the shorter side
    out, placement = image.resize(src, (224, 224), "crop", "linear")
    assert out.shape == (224, 224, 3) and out.flags.c_contiguous
    # Resize(256): 256 x int(256 * 500 / 375) = 256 x 341; CenterCrop(224): left round(58.5)
    assert (placement.width, placement.height) == (341, 256)
    assert (placement.pad_x, placement.pad_y) == (-round((341 - 224) / 2.0), -16)
    marked = src.copy()
    marked[:, 250:] = 200  # right half bright: the crop's centre column sits on the edge
    out, _ = image.resize(marked, (224, 224), "crop", "nearest")
    edge = int(250 * 341 / 500) + placement.pad_x
    assert out[100, edge - 2, 0] == 0 and out[100, edge + 2, 0] == 200


def test_crop_refuses_a_thin_image_it_would_enlarge_past_the_memory_budget():
    thin = np.zeros((64000, 8, 3), np.uint8)  # 1.5 MB; scaled to 110 wide: 110x880000, 290 MB
    with pytest.raises(BadImage, match="8x64000: a centre crop would first scale it"):
        image.resize(thin, (96, 96), "crop", "linear")
    out, _ = image.resize(np.zeros((1600, 100, 3), np.uint8), (96, 96), "crop")  # 16:1
    assert out.shape == (96, 96, 3)
    out, _ = image.resize(np.zeros((8, 4000, 3), np.uint8), (8, 8), "crop", shorter_side=8)
    assert out.shape == (8, 8, 3)  # as long, but shrunk: no larger than the image itself


@pytest.mark.parametrize("interpolation", sorted(image.INTERPOLATIONS))
def test_every_interpolation_is_used(interpolation):
    rng = np.random.default_rng(0)
    src = rng.integers(0, 256, (97, 131, 3), np.uint8)
    import cv2

    out, _ = image.resize(src, (40, 50), "stretch", interpolation)
    want = cv2.resize(src, (50, 40), interpolation=image.INTERPOLATIONS[interpolation])
    assert np.array_equal(out, want)


def test_crop_only_where_results_do_not_map_back(tmp_path):
    spec = {"task": "segmentation", "input": {"size": 64, "resize": "crop"}}
    with pytest.raises(ConfigError, match="input.resize: expected one of stretch, letterbox"):
        load_spec(write_model(tmp_path / "s", spec, onnx=Path(__file__)))
    spec = {"task": "classification", "input": {"size": 224, "resize": "crop", "shorter_side": 200}}
    with pytest.raises(ConfigError, match="input.shorter_side: must be at least"):
        load_spec(write_model(tmp_path / "c", spec, onnx=Path(__file__)))
    spec["input"]["shorter_side"] = 256
    loaded = load_spec(write_model(tmp_path / "c2", spec, onnx=Path(__file__)))
    assert (loaded.resize, loaded.shorter_side, loaded.interpolation) == ("crop", 256, "area")


def _torchvision_style(path: Path) -> np.ndarray:
    """An independent reference: PIL decode, Resize(256) (PIL bilinear, antialiased, as
    torchvision does on PIL images), CenterCrop(224), (x - 127) / 127.5, NCHW."""
    from PIL import Image

    with Image.open(path) as picture:
        rgb = picture.convert("RGB")
    width, height = rgb.size
    size = (256, int(256 * height / width)) if width <= height else (int(256 * width / height), 256)
    rgb = rgb.resize(size, Image.BILINEAR)
    left, top = round((size[0] - 224) / 2.0), round((size[1] - 224) / 2.0)
    pixels = np.asarray(rgb.crop((left, top, left + 224, top + 224)), np.float32)
    return np.ascontiguousarray(((pixels - 127) / 127.5).transpose(2, 0, 1)[None])


def test_crop_gives_the_top1_and_top5_of_a_torchvision_style_reference(tmp_path):
    spec = {
        "task": "classification",
        "input": {"size": 224, "resize": "crop"},
        "onnx": {"mean": 127, "std": 127.5},
    }
    folder = write_model(
        tmp_path / "mobilenet",
        spec,
        onnx=shared("onnx", "mobilenet_v2_1.0_224_dequant_fp32.onnx"),
        labels=shared("labels", "synset.txt"),
    )
    engine = engine_for(folder, "onnx")
    images = sorted(shared("images", "imagenet_val").glob("*.JPEG"))
    assert len(images) == 10
    for path in images:
        reference = engine.backend.run([_torchvision_style(path)])[0].reshape(-1)
        order = np.argsort(-reference, kind="stable")
        ours = engine.infer(path.read_bytes(), {"top_k": 5}).result["classes"]
        indices = [c["index"] for c in ours]
        assert indices[0] == order[0], path.name
        # every class clearly in the reference's top 5 is in ours; the rest are near-ties
        # (within 0.005) that an antialiasing filter a pixel wider can swap
        clear = [i for i in order[:5] if reference[i] > reference[order[5]] + 0.005]
        assert set(clear) <= set(indices), path.name
        assert set(indices) <= set(order[:8]), path.name


# custom ops -----------------------------------------------------------------------------------
CUSTOM = [
    ("rockchip/pp_human_segv2_custom_argmax_RK3566_RK3568_tk2.3.1.rknn", ("ArgMax",)),
    ("rockchip/dual_residual_custom_RK3566_RK3568_tk1.6.1.rknn", ("cstDualResidual",)),
    ("built/mobilenet_v2_1.0_224_rk3568_i8_tk2.3.2.rknn", ()),  # exSoftmax13: the runtime's
    ("built/deeplabv3_257_voc_rk3568_i8_tk2.3.2.rknn", ()),
    ("rockchip/multiple_input_demo_RK3566_RK3568_tk1.6.2.rknn", ()),
    ("thirdparty/yolov5n-640-640-rk3568_tk2.3.2_thirdparty.rknn", ()),
]


@pytest.mark.parametrize("name,expected", CUSTOM)
def test_custom_ops_found_in_real_files(name, expected):
    assert custom_ops(shared("rknn", *name.split("/"))) == expected


def test_custom_op_plugin_presence(tmp_path):
    assert plugins(tmp_path) == [] and "ArgMax (no plugin)" in describe_custom(
        ("ArgMax",), tmp_path
    )
    folder = tmp_path / "usr/lib/rknpu/op_plugins"
    folder.mkdir(parents=True)
    (folder / "librkcst_argmax.so").write_bytes(b"")
    assert describe_custom(("ArgMax",), tmp_path) == "ArgMax (plugin librkcst_argmax.so)"


@pytest.mark.process
def test_inspect_shows_two_inputs_and_custom_ops():
    names = [
        ("built", "multiple_input_demo_rk3568_i8_tk2.3.2.rknn"),
        ("rockchip", "multiple_input_demo_RK3566_RK3568_tk1.6.2.rknn"),
        ("rockchip", "multiple_input_demo_RK3566_RK3568_tk1.3.4.rknn"),
        ("rockchip", "multiple_input_demo_RK356X_tk1.1.0.rknn"),
    ]
    paths = [str(shared("rknn", *n)) for n in names]
    done = run_rkserve("inspect", "--json", *paths)
    assert done.returncode == 0, done.stderr
    for item in json.loads(done.stdout):
        assert [i["name"] for i in item["inputs"]] == ["input.1", "input"]
        assert [i["shape"] for i in item["inputs"]] == [[1, 1, 128, 128], [1, 3, 128, 128]]
        assert item["custom_ops"] == []
    human = str(
        shared("rknn", "rockchip", "pp_human_segv2_custom_argmax_RK3566_RK3568_tk2.3.1.rknn")
    )
    done = run_rkserve("inspect", paths[0], human)
    assert "inputs (2):" in done.stdout and "custom ops       none" in done.stdout
    assert "custom ops       ArgMax (no plugin); the runtime cannot run it without" in done.stdout


def test_doctor_names_custom_ops_and_their_plugin(tmp_path):
    from rkserve.board.doctor import render_table, run_doctor
    from tests.boards import AFTER_UPDATE, make_board

    root = make_board(tmp_path, soc="rk3568", **AFTER_UPDATE)
    rknn = shared("rknn", "rockchip", "pp_human_segv2_custom_argmax_RK3566_RK3568_tk2.3.1.rknn")
    spec = {"task": "segmentation", "input": {"size": 192}, "output": {"kind": "class_map"}}
    write_model(tmp_path / "models" / "human", spec, rknn=rknn)
    write_model(
        tmp_path / "models" / "plain",
        {"task": "tensor"},
        rknn=shared("rknn", "built", "multiple_input_demo_rk3568_i8_tk2.3.2.rknn"),
    )

    def custom_check(report, scope):
        found = [c for s, items in report.sections if s == scope for c in items]
        return [c for c in found if c.name == "custom ops"]

    report = run_doctor(root, tmp_path / "models")
    (check,) = custom_check(report, "human")
    assert check.status == "WARN" and check.detail.startswith("ArgMax (no plugin)")
    assert "/usr/lib/rknpu/op_plugins" in check.fix and custom_check(report, "plain") == []
    assert "human: custom ops" in render_table(report)
    plugin = root / "usr/lib/rknpu/op_plugins/librkcst_argmax.so"
    plugin.parent.mkdir(parents=True)
    plugin.write_bytes(b"\x7fELF")
    (check,) = custom_check(run_doctor(root, tmp_path / "models"), "human")
    assert (check.status, check.detail) == ("OK", "ArgMax (plugin librkcst_argmax.so)")


@pytest.mark.parametrize("model,without", [("seg", {"mask": "raw"}), ("det", {})])
def test_an_overlay_jpeg_cannot_hold_refuses_too_large_not_internal(tmp_path, model, without):
    """Before: cv2 could not encode the JPEG and the request was answered `internal`."""
    models = fake_models(tmp_path / "models")
    write_model(
        models / "det",
        {"task": "detection", "input": {"size": 64}, "output": {"format": "yolov5", "classes": 2}},
        onnx=models / "seg" / "model.onnx",  # a placeholder: the fake backend never reads it
    )
    engine = open_engine(models, model, "fake")
    thin = np.full((70_000, 8, 3), 90, np.uint8)
    with pytest.raises(TooLarge, match="8x70000: an overlay is a JPEG"):
        engine.infer(thin, {"overlay": True, **without})
    assert engine.infer(thin, without).result["height"] == 70_000
