"""rkserve convert: recipe validation, metrics, reports, the re-exec, and real conversions.

Tests marked ``convert`` run the real rknn-toolkit2 through the CLI in a subprocess: the
daemon's Python re-executes ``rkserve convert`` in ``.venv-convert`` (deploy/convert-env.sh).
They are skipped, with the reason, when that environment or the shared data is absent.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict

import numpy as np
import pytest
import yaml

from rkserve.cli import build_parser
from rkserve.cli.convert import command_line
from rkserve.convert import list_images, load_recipe, parse_thresholds
from rkserve.convert.gate import (
    check_gate,
    class_map,
    compare_classification,
    compare_segmentation,
    cosine,
)
from rkserve.convert.report import parse_error_analysis, render_markdown
from rkserve.errors import ConfigError
from rkserve.tasks import load_spec
from tests.helpers import ROOT, convert_cli, shared, write_model

CLASSIFIER = {"task": "classification", "input": {"size": 8}, "onnx": {"mean": [1, 2, 3], "std": 4}}


def _model(
    tmp_path: Path, convert: Any, base: Dict[str, Any] = CLASSIFIER, calib: bool = True
) -> Path:
    folder = write_model(tmp_path / "m", {**base, "convert": convert}, onnx=Path(__file__))
    for name in ("calib", "samples") if calib else ():
        (folder / name).mkdir()
        (folder / name / "a.png").write_bytes(b"png")
    return folder


def _recipe(tmp_path: Path, convert: Any, **kwargs: Any):
    return load_recipe(load_spec(_model(tmp_path, convert)), **kwargs)


# -- the recipe ---------------------------------------------------------------------------


def test_recipe_defaults_come_from_model_yaml(tmp_path):
    recipe = _recipe(tmp_path, None)
    folder = tmp_path / "m"
    assert recipe.target_platforms == ("rk3568",)
    assert recipe.mean == (1.0, 2.0, 3.0) and recipe.std == (4.0, 4.0, 4.0)  # the onnx: section
    assert (recipe.quantize, recipe.quantized_dtype) == (True, "w8a8")
    assert (recipe.quantized_algorithm, recipe.quantized_method) == ("normal", "channel")
    assert recipe.dataset == (folder / "calib").resolve()
    assert recipe.validation == (folder / "samples").resolve()
    assert recipe.gate == {"min_top1_agreement": 0.9, "min_cosine": 0.98}
    assert recipe.hybrid_fp16_layers == ()
    shown = recipe.to_dict(folder)
    assert (shown["dataset"], shown["validation"]) == ("calib", "samples")
    assert recipe.to_dict()["dataset"] == str(folder.resolve() / "calib")


def test_segmentation_gate_defaults(tmp_path):
    spec = load_spec(_model(tmp_path, {}, {**CLASSIFIER, "task": "segmentation"}))
    assert load_recipe(spec).gate == {"min_pixel_agreement": 0.95, "min_miou": 0.8}


def test_recipe_fields_and_overrides(tmp_path):
    convert = {
        "target_platform": ["rk3566", "rk3568"],
        "mean": 127.5,
        "std": [58, 57, 57.5],
        "quantized_algorithm": "mmse",
        "quantized_method": "layer",
        "hybrid_fp16_layers": ["Relu6__107:0"],
        "gate": {"min_top5_agreement": 0.8, "min_cosine": None},
    }
    recipe = _recipe(tmp_path, convert, target="rk3588", thresholds={"min_top1_agreement": 0.5})
    assert recipe.target_platforms == ("rk3588",)
    assert recipe.mean == (127.5,) * 3 and recipe.std == (58.0, 57.0, 57.5)
    assert (recipe.quantized_algorithm, recipe.quantized_method) == ("mmse", "layer")
    assert recipe.hybrid_fp16_layers == ("Relu6__107:0",)
    assert recipe.gate == {"min_top1_agreement": 0.5, "min_top5_agreement": 0.8}
    assert recipe.to_dict()["target_platform"] == ["rk3588"]


def test_no_quantization_needs_no_dataset(tmp_path):
    spec = load_spec(_model(tmp_path, {"quantize": False, "validation": "v"}, calib=False))
    (spec.folder / "v").mkdir()
    (spec.folder / "v" / "x.jpg").write_bytes(b"jpg")
    recipe = load_recipe(spec)
    assert recipe.quantize is False and recipe.dataset is None


def test_validation_falls_back_to_the_dataset(tmp_path):
    folder = _model(tmp_path, {"dataset": "calib"})
    shutil.rmtree(folder / "samples")
    assert load_recipe(load_spec(folder)).validation == (folder / "calib").resolve()


def test_ground_truth_masks_are_not_inputs(tmp_path):
    folder = tmp_path / "samples"
    folder.mkdir()
    for name in ("000.jpg", "000.mask.png", "001.PNG", "notes.txt"):
        (folder / name).write_bytes(b"x")
    assert [p.name for p in list_images(folder)] == ["000.jpg", "001.PNG"]


def test_dataset_as_a_txt_list(tmp_path):
    folder = _model(tmp_path, {"dataset": "list.txt"})
    (folder / "list.txt").write_text("calib/a.png\n\n", encoding="utf-8")
    recipe = load_recipe(load_spec(folder))
    assert list_images(recipe.dataset) == [(folder / "calib" / "a.png").resolve()]


@pytest.mark.parametrize(
    "convert,field,words",
    [
        ({"target_platform": "rk3399"}, "convert.target_platform", "rk3566, rk3568"),
        ({"target_platform": []}, "convert.target_platform", "or a list"),
        ({"quantise": True}, "convert.quantise", "unknown field"),
        ({"quantize": "yes"}, "convert.quantize", "true or false"),
        (
            {"quantized_algorithm": "minmax"},
            "convert.quantized_algorithm",
            "normal, kl_divergence, mmse",
        ),
        ({"quantized_method": "group"}, "convert.quantized_method", "layer, channel"),
        ({"quantized_dtype": "int8"}, "convert.quantized_dtype", "w8a8"),
        ({"std": 0}, "convert.std", "positive numbers"),
        ({"mean": [1, 2]}, "convert.mean", "3 numbers in the model's colour order"),
        ({"dataset": "nowhere"}, "convert.dataset", "does not exist"),
        ({"dataset": 5}, "convert.dataset", "relative to the model folder"),
        ({"validation": "nowhere"}, "convert.validation", "does not exist"),
        (
            {"hybrid_fp16_layers": "conv1"},
            "convert.hybrid_fp16_layers",
            "list of layer output names",
        ),
        (
            {"quantize": False, "hybrid_fp16_layers": ["a"]},
            "convert.hybrid_fp16_layers",
            "quantize: true",
        ),
        ({"gate": {"min_miou": 0.5}}, "convert.gate.min_miou", "unknown for classification"),
        ({"gate": {"min_cosine": 1.5}}, "convert.gate.min_cosine", "0..1"),
        ({"gate": [0.9]}, "convert.gate", "mapping of thresholds"),
    ],
)
def test_recipe_errors_name_file_and_field(tmp_path, convert, field, words):
    with pytest.raises(ConfigError) as caught:
        _recipe(tmp_path, convert)
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'm' / 'model.yaml'}: {field}: "), message
    assert words in message


def test_quantizing_without_a_dataset_is_refused(tmp_path):
    spec = load_spec(_model(tmp_path, {}, calib=False))
    with pytest.raises(ConfigError, match=r"convert\.dataset: required to quantize"):
        load_recipe(spec)


def test_empty_dataset_folder_is_refused(tmp_path):
    folder = _model(tmp_path, {"dataset": "empty"})
    (folder / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"convert\.dataset: no images"):
        load_recipe(load_spec(folder))


def test_nhwc_or_uint8_onnx_is_refused(tmp_path):
    base = {**CLASSIFIER, "onnx": {"layout": "nhwc"}}
    with pytest.raises(
        ConfigError, match=r"model\.yaml: onnx: rknn-toolkit2 converts float32 NCHW"
    ):
        load_recipe(load_spec(_model(tmp_path, {}, base)))


def test_threshold_overrides(tmp_path):
    assert parse_thresholds(["min_cosine=0.99", "min_top1_agreement=off"]) == {
        "min_cosine": 0.99,
        "min_top1_agreement": None,
    }
    for bad in ("min_cosine", "=0.5", "min_cosine=high"):
        with pytest.raises(ConfigError, match="--threshold"):
            parse_thresholds([bad])
    with pytest.raises(ConfigError, match="--threshold min_miou: unknown for classification"):
        _recipe(tmp_path, {}, thresholds={"min_miou": 0.5})


# -- metrics and the gate -----------------------------------------------------------------


def test_classification_metrics():
    a = np.array([[0.7, 0.2, 0.05, 0.03, 0.01, 0.01]], np.float32)
    b = np.array([[0.2, 0.7, 0.05, 0.03, 0.01, 0.01]], np.float32)  # top-1 flipped
    rows, metrics = compare_classification([("same", a, a.copy()), ("flip", a, b)])
    assert [r["top1_agree"] for r in rows] == [True, False]
    assert (rows[1]["float_top1"], rows[1]["quant_top1"]) == (0, 1)
    assert metrics["top1_agreement"] == 0.5
    assert metrics["top5_agreement"] == 1.0  # same five best, in another order
    assert metrics["cosine"] == pytest.approx((1.0 + cosine(a, b)) / 2)
    assert cosine(a, b) < 0.6


def test_segmentation_metrics_nchw_and_nhwc():
    ref = np.zeros((1, 3, 2, 4), np.float32)
    ref[0, 1, :, :2] = 1.0  # left half class 1, right half class 0
    out = ref.copy()
    out[0, 2, 0, 3] = 5.0  # one pixel becomes class 2
    rows, metrics = compare_segmentation([("x", ref, out)], "nchw")
    assert metrics["pixel_agreement"] == pytest.approx(7 / 8)
    # class 0: 3/4, class 1: 4/4, class 2: 0/1
    assert metrics["miou"] == pytest.approx((0.75 + 1.0 + 0.0) / 3)
    assert rows[0]["float_classes"] == [0, 1]
    nhwc = compare_segmentation(
        [("x", ref.transpose(0, 2, 3, 1), out.transpose(0, 2, 3, 1))], "nhwc"
    )[1]
    assert nhwc == metrics
    maps = compare_segmentation(
        [("x", class_map(ref, "nchw")[None], class_map(out, "nchw")[None])], "nchw", False
    )
    assert "cosine" not in maps[1] and maps[1]["pixel_agreement"] == metrics["pixel_agreement"]


def test_gate_names_the_metric_value_and_threshold():
    gate = {"min_top1_agreement": 0.9, "min_cosine": 0.98}
    assert check_gate({"top1_agreement": 0.95, "cosine": 0.99}, gate) == []
    failures = check_gate({"top1_agreement": 0.7, "cosine": 0.99}, gate)
    assert failures == ["top1_agreement 0.700 < min_top1_agreement 0.900"]
    assert "cosine was not measured" in check_gate({}, {"min_cosine": 0.5})[0]


# -- the report ---------------------------------------------------------------------------

# Lines as rknn-toolkit2 2.3.2 writes them into snapshot/error_analysis.txt (MobileNetV2).
ANALYSIS = """\
layer_name                                       simulator_error
                                                 entire              single
                                                 cos      euc        cos      euc
--------------------------------------------------------------------------------------
[Input] input                                    1.00000 | 0.0       1.00000 | 0.0
[Conv] model_1/Conv1_relu/Relu6;model_1/Conv1/BiasAdd;Conv1/kernel_1_prequant
[Clip] Relu6__5:0                                0.99999 | 5.0532    0.99999 | 5.0532
[Clip] Relu6__107:0                              0.94980 | 95.483    0.99981 | 5.8966
[Reshape] output                                 0.99999 | 0.0163    1.00000 | 0.0002
"""


def test_parse_error_analysis():
    rows = parse_error_analysis(ANALYSIS)
    assert [r["name"] for r in rows] == ["input", "Relu6__5:0", "Relu6__107:0", "output"]
    assert rows[2] == {
        "op": "Clip",
        "name": "Relu6__107:0",
        "entire_cosine": 0.9498,
        "entire_euclidean": 95.483,
        "single_cosine": 0.99981,
        "single_euclidean": 5.8966,
    }


def test_markdown_report_shows_verdict_metrics_and_images():
    a = np.array([[0.1, 0.9]], np.float32)
    rows, metrics = compare_classification([("bell.jpg", a, a[:, ::-1].copy())])
    gate = {"min_top1_agreement": 0.9}
    report = {
        "model": "m",
        "verdict": "refused",
        "failures": check_gate(metrics, gate),
        "metrics": metrics,
        "gate": gate,
        "images": rows,
        "analysis": parse_error_analysis(ANALYSIS),
        "recipe": {"validation": "samples"},
        "timings": {"build": 1.5},
        "versions": {"rknn-toolkit2": "2.3.2"},
    }
    text = render_markdown(report, labels=("cat", "dog"))
    assert (
        "Verdict: **REFUSED**" in text and "top1_agreement 0.000 < min_top1_agreement 0.900" in text
    )
    assert "| bell.jpg | 1 dog (0.900) | 0 cat (0.900) | **no** |" in text
    assert "`Relu6__107:0`" in text and "- rknn-toolkit2: `2.3.2`" in text


# -- the command line and the re-exec -----------------------------------------------------


def test_command_line_round_trip():
    argv = ["convert", "models/x", "--output", "o.rknn", "--target", "rk3566"]
    argv += ["--threshold", "min_cosine=0.9", "--threshold", "min_top1_agreement=off", "--analysis"]
    assert command_line(build_parser().parse_args(argv)) == argv


def _has_toolkit() -> bool:
    probe = [
        sys.executable,
        "-c",
        "import importlib.util as u; print(u.find_spec('rknn.api') is not None)",
    ]
    return subprocess.run(probe, capture_output=True, text=True).stdout.strip() == "True"


@pytest.mark.process
def test_reexec_runs_the_converter_python_with_the_same_arguments(tmp_path):
    if _has_toolkit():
        pytest.skip("rknn-toolkit2 is importable here: no re-exec to test")
    record = tmp_path / "argv.txt"
    fake = tmp_path / "python"
    fake.write_text(f'#!/bin/sh\necho "$@" > {record}\necho "$PYTHONPATH" >> {record}\nexit 3\n')
    fake.chmod(0o755)
    done = convert_cli(
        "models/x", "--target", "rk3566", "--analysis", env={"RKSERVE_CONVERT_PYTHON": str(fake)}
    )
    assert done.returncode == 3, done.stderr
    argv, pythonpath = record.read_text().splitlines()
    assert argv == "-m rkserve convert models/x --target rk3566 --analysis"
    assert pythonpath.split(os.pathsep)[0] == str(ROOT)
    assert f"running under {fake}" in done.stderr


@pytest.mark.process
def test_missing_converter_environment_says_how_to_make_it(tmp_path):
    if _has_toolkit():
        pytest.skip("rknn-toolkit2 is importable here: no re-exec to test")
    done = convert_cli(
        "models/x", env={"RKSERVE_CONVERT_PYTHON": str(tmp_path / "none" / "python")}
    )
    assert done.returncode == 1
    assert (
        "rknn-toolkit2 is not installed" in done.stderr and "deploy/convert-env.sh" in done.stderr
    )


# -- real conversions with rknn-toolkit2 (.venv-convert) ----------------------------------


def _mobilenet(tmp_path: Path, convert: Dict[str, Any]) -> Path:
    images = shared("images")
    calib = shared("images", "imagenet_val")
    tmp_path.mkdir(parents=True, exist_ok=True)
    listing = tmp_path / "validation.txt"
    named = [images / n for n in ("bell.jpg", "space_shuttle_224.jpg", "dog_224x224.jpg")]
    listing.write_text(
        "\n".join(str(p) for p in named + list_images(calib)) + "\n", encoding="utf-8"
    )
    spec = {
        "task": "classification",
        "input": {"size": 224, "color": "rgb"},
        "output": {"kind": "probabilities"},
        "onnx": {"mean": 127, "std": 127.5},
        "convert": {
            "target_platform": "rk3568",
            "dataset": str(calib),
            "validation": str(listing),
            **convert,
        },
    }
    onnx = shared("onnx", "mobilenet_v2_1.0_224_dequant_fp32.onnx")
    labels = shared("labels", "st_labels_imagenet_2012.txt")
    return write_model(tmp_path / "mobilenet_v2", spec, onnx=onnx, labels=labels)


@pytest.mark.process
@pytest.mark.convert
@pytest.mark.slow
def test_mobilenet_v2_converts_and_agrees_with_float(tmp_path, converter):
    from rkserve.board.rknnfile import read_rknn

    folder = _mobilenet(tmp_path, {"gate": {"min_top1_agreement": 0.8, "min_cosine": 0.9}})
    report_file = tmp_path / "report.json"
    done = convert_cli(str(folder), "--report", str(report_file), "--analysis", env={})
    assert done.returncode == 0, done.stderr[-3000:]
    info = read_rknn(folder / "model.rknn")
    assert info.target_platforms == ("rk3568",) and info.toolkit_version == "2.3.2"
    assert info.inputs[0].shape == (1, 3, 224, 224) and info.outputs[0].shape == (1, 1000)
    report = json.loads(report_file.read_text())
    assert report["verdict"] == "accepted" and report["versions"]["rknn-toolkit2"] == "2.3.2"
    assert report["metrics"]["top1_agreement"] >= 0.8 and len(report["images"]) == 13
    by_image = {r["image"]: r for r in report["images"]}
    assert (by_image["bell.jpg"]["float_top1"], by_image["bell.jpg"]["quant_top1"]) == (494, 494)
    assert by_image["space_shuttle_224.jpg"]["quant_top1"] == 812
    assert report["analysis"] and report["analysis"][-1]["name"] == "output"
    markdown = (folder / "conversion_report.md").read_text()
    assert "Verdict: accepted" in markdown and "| top1_agreement |" in markdown
    assert "| bell.jpg | 494 chime" in markdown


@pytest.mark.process
@pytest.mark.convert
@pytest.mark.slow
def test_a_wrong_std_is_refused_and_writes_no_model(tmp_path, converter):
    folder = _mobilenet(tmp_path, {"std": 1})  # model.yaml's onnx: section says 127.5
    done = convert_cli(str(folder), "--threshold", "min_top1_agreement=0.9", env={})
    assert done.returncode == 3, done.stderr[-3000:]
    assert "refused: top1_agreement" in done.stderr and "< min_top1_agreement 0.900" in done.stderr
    assert not (folder / "model.rknn").exists()
    assert not list(folder.glob(".model.rknn*"))
    assert "Verdict: **REFUSED**" in (folder / "conversion_report.refused.md").read_text()


@pytest.mark.process
@pytest.mark.convert
@pytest.mark.slow
def test_hybrid_fp16_layers_build_and_typos_are_named(tmp_path, converter):
    from rkserve.board.rknnfile import read_rknn

    gate = {"min_top1_agreement": 0.8, "min_cosine": 0.9}
    good = _mobilenet(tmp_path / "good", {"hybrid_fp16_layers": ["Relu6__107:0"], "gate": gate})
    plain = _mobilenet(tmp_path / "plain", {"gate": gate})
    assert convert_cli(str(good), env={}).returncode == 0
    assert convert_cli(str(plain), env={}).returncode == 0
    # the float16 layer makes the file bigger than the all-int8 one
    assert read_rknn(good / "model.rknn").size > read_rknn(plain / "model.rknn").size
    assert '- hybrid_fp16_layers: `["Relu6__107:0"]`' in (good / "conversion_report.md").read_text()
    typo = _mobilenet(tmp_path / "typo", {"hybrid_fp16_layers": ["Relu6__107"], "gate": gate})
    done = convert_cli(str(typo), env={})
    assert done.returncode == 1
    assert "convert.hybrid_fp16_layers: no layer output 'Relu6__107'" in done.stderr
    assert "did you mean Relu6__107:0" in done.stderr
    assert not (typo / "model.rknn").exists()


@pytest.mark.process
@pytest.mark.convert
@pytest.mark.slow
def test_deeplabv3_segmentation_converts_with_the_default_gate(tmp_path, converter):
    from rkserve.board.rknnfile import read_rknn

    spec = {
        "task": "segmentation",
        "input": {"size": 257},
        "output": {"kind": "logits", "layout": "nchw"},
        "onnx": {"mean": 127.5, "std": 127.5},
        "convert": {
            "dataset": str(shared("images", "imagenet_val")),
            "validation": str(shared("images")),
        },
    }
    onnx = shared("onnx", "deeplabv3_257_voc_fp32.onnx")
    labels = shared("labels", "st_labels_pascalvoc.txt")
    folder = write_model(tmp_path / "deeplabv3", spec, onnx=onnx, labels=labels)
    report_file = tmp_path / "report.json"
    done = convert_cli(str(folder), "--report", str(report_file), env={})
    assert done.returncode == 0, done.stderr[-3000:]
    assert read_rknn(folder / "model.rknn").outputs[0].shape == (1, 21, 257, 257)
    report = json.loads(report_file.read_text())
    assert report["gate"] == {"min_pixel_agreement": 0.95, "min_miou": 0.8}
    cyclist = next(r for r in report["images"] if r["image"] == "deeplabv3_test_image.jpg")
    assert cyclist["float_classes"] == [0, 2, 15]  # background, bicycle, person
    assert cyclist["pixel_agreement"] > 0.98
    assert "| deeplabv3_test_image.jpg |" in (folder / "conversion_report.md").read_text()


def _demo(name: str) -> Path:
    folder = ROOT / "models" / name
    if not (folder / "model.onnx").is_file():
        pytest.skip(f"demo model not found: {folder / 'model.onnx'}")
    return folder


@pytest.mark.process
@pytest.mark.convert
@pytest.mark.slow
@pytest.mark.parametrize("name", ["shapes-seg", "shapes-det"])  # shapes: test_convert_sources
def test_demo_models_convert_with_their_recipe(tmp_path, converter, name):
    from rkserve.board.rknnfile import read_rknn

    source = _demo(name)
    folder = tmp_path / name
    shutil.copytree(
        source, folder, ignore=shutil.ignore_patterns("model.rknn", "conversion_report*")
    )
    report_file = tmp_path / "report.json"
    done = convert_cli(str(folder), "--report", str(report_file), env={})
    assert done.returncode == 0, done.stderr[-3000:]
    spec = load_spec(folder)
    info = read_rknn(folder / "model.rknn")
    assert info.target_platforms == ("rk3568",)
    assert info.inputs[0].shape == (1, 3, *spec.input_size)
    report = json.loads(report_file.read_text())
    gate: Dict[str, float] = report["gate"]
    assert gate and all(report["metrics"][k[len("min_") :]] >= v for k, v in gate.items())


def _demo_copy(base: Path) -> Path:
    """A copy of models/shapes at ``base/models/shapes``, without its built files."""
    folder = base / "models" / "shapes"
    skip = shutil.ignore_patterns("model.rknn", "conversion_report*")
    shutil.copytree(ROOT / "models" / "shapes", folder, ignore=skip)
    return folder


@pytest.mark.process
@pytest.mark.convert
@pytest.mark.parametrize(
    "where, args",
    [
        ("", ["models/shapes"]),
        ("", ["models/shapes", "--source", "model.pt"]),  # in the model folder
        ("", ["models/shapes", "--source", "models/shapes/model.pt"]),  # from the cwd
        ("models/shapes", ["."]),
        ("models/shapes", [".", "--source", "model.pt"]),
        ("models", ["shapes", "--output", "out/shapes.rknn", "--report", "r.json"]),
    ],
)
def test_relative_paths_are_read_from_the_working_directory(tmp_path, converter, where, args):
    # the toolkit session runs in a temporary folder: every path from the command line (and
    # the recipe's) must be resolved before it starts, as a user types them
    folder = _demo_copy(tmp_path)
    done = convert_cli(*args, env={}, cwd=tmp_path / where)
    assert done.returncode == 0, done.stderr[-3000:]
    if "--output" in args:
        assert (tmp_path / "models" / "out" / "shapes.rknn").is_file()
        report = json.loads((tmp_path / "models" / "r.json").read_text())
        assert report["model"] == "shapes"
    else:
        assert (folder / "model.rknn").is_file()
    source = args[args.index("--source") + 1] if "--source" in args else "model.onnx"
    report_text = (folder.parent / "out" if "--output" in args else folder).joinpath(
        "conversion_report.md"
    )
    assert Path(source).name in report_text.read_text()


@pytest.mark.process
@pytest.mark.convert
def test_the_recipe_source_is_read_in_the_model_folder_from_a_relative_folder(tmp_path, converter):
    folder = _demo_copy(tmp_path)
    spec = yaml.safe_load((folder / "model.yaml").read_text())
    spec["convert"]["source"] = "model.pt"
    (folder / "model.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    done = convert_cli("models/shapes", env={}, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "model.pt (TorchScript)" in (folder / "conversion_report.md").read_text()


def test_a_relative_source_found_in_both_places_is_an_error(tmp_path, monkeypatch):
    folder = _demo_copy(tmp_path)
    (tmp_path / "model.onnx").write_bytes(b"another file")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="ambiguous: both .* and .* exist"):
        load_recipe(load_spec(folder.resolve(), need_model=False), source=Path("model.onnx"))
    # the same file reached both ways is not ambiguous
    monkeypatch.chdir(folder)
    recipe = load_recipe(load_spec(folder.resolve(), need_model=False), source=Path("model.pt"))
    assert recipe.source == folder.resolve() / "model.pt"


def test_a_recipe_holds_absolute_paths_only(tmp_path, monkeypatch):
    folder = _demo_copy(tmp_path)
    monkeypatch.chdir(tmp_path)
    recipe = load_recipe(load_spec(Path("models/shapes"), need_model=False))
    assert recipe.source.is_absolute() and recipe.validation.is_absolute()
    assert recipe.dataset is not None and recipe.dataset.is_absolute()
    assert recipe.source == folder.resolve() / "model.onnx"
