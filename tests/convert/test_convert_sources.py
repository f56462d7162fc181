"""rkserve convert from a TorchScript ``model.pt`` as well as from ``model.onnx``.

What a ``.pt`` file holds is read without torch (zip names, pickle opcodes); everything else
runs the real converter environment (``convert`` marker): torch files written by torch
itself, the demo classifier converted from both sources, and the ONNX twin written from the
``.pt`` served by the real daemon next to the committed ONNX model.
"""

from __future__ import annotations

import collections
import json
import pickle
import shutil
import subprocess
import zipfile
from pathlib import Path
from typing import Any, Dict, Tuple

import cv2
import numpy as np
import pytest
import yaml

from rkserve.convert import load_recipe
from rkserve.convert.source import torch_file_kind
from rkserve.errors import ConfigError
from rkserve.tasks import load_spec
from tests.helpers import MODELS, convert_cli, write_model
from tools.demo import shapes as demo
from tools.harness import Daemon

TINY = {"task": "classification", "input": {"size": 32}, "onnx": {"mean": 127.5, "std": 127.5}}


def _folder(tmp_path: Path, convert: Dict[str, Any], size: int = 32) -> Path:
    folder = write_model(tmp_path / "m", {**TINY, "input": {"size": size}, "convert": convert})
    for sub in ("calib", "samples"):
        (folder / sub).mkdir()
        cv2.imwrite(str(folder / sub / "a.png"), np.full((40, 40, 3), 90, np.uint8))
    return folder


# -- what a .pt file holds, read without unpickling ---------------------------------------


class Net:  # stands for a user's nn.Module class in a pickle
    pass


def _archive(path: Path, files: Dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path


def test_torch_file_kind_reads_zip_names_and_pickle_opcodes(tmp_path):
    weights = pickle.dumps(collections.OrderedDict(w=1), protocol=2)
    script = _archive(
        tmp_path / "s.pt", {"s/data.pkl": weights, "s/constants.pkl": b"", "s/code/x.py": b""}
    )
    state = _archive(tmp_path / "d.pt", {"d/data.pkl": weights, "d/version": b"3"})
    module = _archive(tmp_path / "m.pt", {"m/data.pkl": pickle.dumps(Net(), protocol=2)})
    legacy = tmp_path / "l.pt"
    legacy.write_bytes(pickle.dumps({"w": 1}, protocol=2))
    other = tmp_path / "o.pt"
    other.write_bytes(b"\x08\x07\x12\x07pytorch")  # an ONNX protobuf under the wrong name
    assert torch_file_kind(script) == ("torchscript", "")
    assert torch_file_kind(state) == ("state_dict", "")
    assert torch_file_kind(module) == ("module", f"{__name__}.Net")
    assert torch_file_kind(legacy) == ("legacy", "")
    assert torch_file_kind(other) == ("unknown", "")


# -- the recipe names its source ----------------------------------------------------------


def test_source_defaults_to_the_onnx_file_and_can_be_a_pt(tmp_path):
    folder = _folder(tmp_path, {})
    (folder / "model.onnx").write_bytes(b"onnx")
    assert load_recipe(load_spec(folder)).source == folder / "model.onnx"
    (folder / "model.pt").write_bytes(b"pt")
    spec = load_spec(folder)
    assert load_recipe(spec, source=folder / "model.pt").source == folder / "model.pt"
    (folder / "model.yaml").write_text(yaml.safe_dump({**TINY, "convert": {"source": "model.pt"}}))
    recipe = load_recipe(load_spec(folder))
    assert recipe.source == folder / "model.pt" and recipe.to_dict(folder)["source"] == "model.pt"


def test_a_folder_with_only_model_pt_is_convertible_not_servable(tmp_path):
    folder = _folder(tmp_path, {"source": "model.pt"})
    (folder / "model.pt").write_bytes(b"pt")
    with pytest.raises(ConfigError, match="rkserve convert makes them from a TorchScript"):
        load_spec(folder)
    assert load_recipe(load_spec(folder, need_model=False)).source == folder / "model.pt"


@pytest.mark.parametrize(
    "convert,words",
    [
        ({}, "model.onnx does not exist (or name the model: convert.source: model.pt)"),
        ({"source": "model.pt"}, "model.pt does not exist"),
        ({"source": "model.tflite"}, "cannot tell the model's kind from its name"),
        ({"source": 3}, "expected a file name in the model folder"),
    ],
)
def test_source_errors_name_the_field(tmp_path, convert, words):
    folder = _folder(tmp_path, convert)
    with pytest.raises(ConfigError) as caught:
        load_recipe(load_spec(folder, need_model=False))
    assert str(caught.value).startswith(f"{folder / 'model.yaml'}: convert.source: ")
    assert words in str(caught.value)


# -- the ONNX twin's check ----------------------------------------------------------------


def test_twin_agrees_only_within_float_noise_and_the_same_top_output():
    from rkserve.convert.twin import compare_outputs, place_twin

    ref = [[np.array([[1.0, 5.0, 2.0]], np.float32)], [np.array([[3.0, 1.0, 0.0]], np.float32)]]
    close = [[r[0] + 2e-5] for r in ref]
    assert compare_outputs(ref, close) == {
        "agrees": True,
        "max_abs_diff": pytest.approx(2e-5, rel=1e-2),
        "same_top": 2,
        "images": 2,
    }
    off = [[ref[0][0]], [np.array([[3.0, 1.0, 0.2]], np.float32)]]
    assert compare_outputs(ref, off)["agrees"] is False  # 0.2 of a range of 5
    assert compare_outputs(ref, [[r[0][:, :2]] for r in ref])["agrees"] is False  # shapes
    entry = {"file": "model.onnx", "agrees": False, "reason": "torch.onnx.export failed: x"}
    spec = load_spec(MODELS / "shapes")  # nothing is written without a staged file
    assert place_twin(entry, spec, True) == ["no ONNX twin written: torch.onnx.export failed: x"]
    staged = {"file": "model.onnx", "agrees": True, "staged": "/nonexistent/twin.onnx"}
    assert place_twin(staged, spec, False) == ["no ONNX twin written: the conversion was refused"]
    assert staged == {"file": "model.onnx", "agrees": True, "reason": "the conversion was refused"}


# -- the mistakes people make with torch files (real torch, converter environment) --------

TORCH_FILES = """
import sys, torch
from torch import nn

class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4 * 32 * 32, 2)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).flatten(1))

class ChannelsLast(TinyNet):
    def forward(self, x):
        return super().forward(x.permute(0, 3, 1, 2))

out = sys.argv[1]
torch.manual_seed(0)
net = TinyNet().eval()
torch.save(net.state_dict(), out + "/state_dict.pt")
torch.save(net, out + "/module.pt")
torch.jit.trace(net, torch.zeros(1, 3, 32, 32)).save(out + "/traced.pt")
torch.jit.trace(ChannelsLast().eval(), torch.zeros(1, 32, 32, 3)).save(out + "/nhwc.pt")
"""


@pytest.fixture(scope="module")
def torch_files(converter, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("torch-files")
    subprocess.run([str(converter), "-c", TORCH_FILES, str(folder)], check=True, timeout=120)
    return folder


@pytest.mark.process
@pytest.mark.convert
@pytest.mark.parametrize(
    "name,size,words",
    [
        (
            "state_dict.pt",
            32,
            "a state_dict (weights only, from torch.save(model.state_dict())), not TorchScript: "
            "rknn-toolkit2 needs the network too. Fix: in the code that defines the network, "
            "model = YourNet(); model.load_state_dict(torch.load('model.pt')); model.eval(); "
            "torch.jit.trace(model, torch.zeros(1, 3, 32, 32)).save('model.pt')",
        ),
        (
            "module.pt",
            32,
            "a pickled nn.Module (__main__.TinyNet, from torch.save(model)), not TorchScript: "
            "it only loads where its class is importable. Fix: where TinyNet is importable, "
            "model = torch.load('model.pt', weights_only=False); model.eval(); "
            "torch.jit.trace(model, torch.zeros(1, 3, 32, 32)).save('model.pt')",
        ),
        (
            "traced.pt",
            48,
            "does not run on input.size [48, 48] of",
        ),
        (
            "nhwc.pt",
            32,
            "takes NHWC input [1, 32, 32, 3] (channels last); rknn-toolkit2 converts NCHW "
            "models. Fix: remove the permute from the model's forward and trace it with "
            "torch.zeros(1, 3, 32, 32) (channels first)",
        ),
    ],
)
def test_torch_mistakes_get_one_message_with_the_fix(tmp_path, torch_files, name, size, words):
    folder = _folder(tmp_path, {"source": "model.pt"}, size)
    shutil.copyfile(torch_files / name, folder / "model.pt")
    done = convert_cli(str(folder), env={})
    assert done.returncode == 1, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and words in errors[0], done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    if name == "traced.pt":  # torch's reason, and the size it does take
        assert "mat1 and mat2 shapes cannot be multiplied" in errors[0]
        assert (
            "It runs on [1, 3, 32, 32]: if it was traced or trained at that size, set " in errors[0]
        )
        assert "input.size: [32, 32] in model.yaml" in errors[0]
    assert not (folder / "model.rknn").exists() and not (folder / "model.onnx").exists()


# -- the demo classifier from each source -------------------------------------------------


def _convert_demo(base: Path, source: str) -> Tuple[Path, Dict[str, Any]]:
    """A copy of models/shapes with only ``source`` as its model, converted."""
    folder = base / "models" / f"shapes-{source.split('.')[1]}"
    shutil.copytree(
        MODELS / "shapes",
        folder,
        ignore=shutil.ignore_patterns("model.*", "conversion_report*"),
    )
    shutil.copyfile(MODELS / "shapes" / source, folder / source)
    spec = yaml.safe_load((MODELS / "shapes" / "model.yaml").read_text())
    spec["convert"]["source"] = source
    (folder / "model.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    done = convert_cli(str(folder), "--report", str(base / f"{source}.json"), env={})
    assert done.returncode == 0, done.stderr[-3000:]
    return folder, json.loads((base / f"{source}.json").read_text())


@pytest.fixture(scope="module")
def from_onnx(converter, tmp_path_factory) -> Tuple[Path, Dict[str, Any]]:
    return _convert_demo(tmp_path_factory.mktemp("onnx"), "model.onnx")


@pytest.fixture(scope="module")
def from_pt(converter, tmp_path_factory) -> Tuple[Path, Dict[str, Any]]:
    if not (MODELS / "shapes" / "model.pt").is_file():
        pytest.skip("models/shapes/model.pt not found (tools/demo/train_models.py writes it)")
    return _convert_demo(tmp_path_factory.mktemp("pt"), "model.pt")


@pytest.mark.process
@pytest.mark.convert
@pytest.mark.slow
def test_demo_classifier_converts_alike_from_pt_and_onnx(from_onnx, from_pt):
    from rkserve.board.rknnfile import read_rknn

    (onnx_folder, onnx), (pt_folder, pt) = from_onnx, from_pt
    for folder in (onnx_folder, pt_folder):
        info = read_rknn(folder / "model.rknn")
        assert info.target_platforms == ("rk3568",) and info.inputs[0].shape == (1, 3, 96, 96)
    assert (onnx["verdict"], pt["verdict"]) == ("accepted", "accepted")
    assert onnx["reference"].startswith("onnxruntime ") and "model.onnx (ONNX)" in onnx["reference"]
    assert pt["reference"].startswith("torch ") and "model.pt (TorchScript)" in pt["reference"]
    assert (onnx["source"], pt["source"]) == ("model.onnx", "model.pt")
    assert pt["metrics"]["top1_agreement"] == onnx["metrics"]["top1_agreement"] == 1.0
    assert pt["metrics"]["cosine"] == pytest.approx(onnx["metrics"]["cosine"], abs=0.005)
    for a, b in zip(onnx["images"], pt["images"]):
        assert a["image"] == b["image"]
        assert a["float_top1"] == b["float_top1"] == a["quant_top1"] == b["quant_top1"]
        assert a["float_score"] == pytest.approx(b["float_score"], rel=1e-4)
    markdown = (pt_folder / "conversion_report.md").read_text()
    assert (
        "Converted from `model.pt` (rknn-toolkit2 `load_pytorch`); float reference: torch "
        in markdown
    )
    assert "onnx_twin" not in onnx  # an ONNX source is its own twin


@pytest.mark.process
@pytest.mark.convert
@pytest.mark.slow
def test_onnx_twin_from_pt_serves_like_the_committed_model(from_pt, tmp_path):
    folder, report = from_pt
    twin = report["onnx_twin"]
    assert twin["written"] and twin["agrees"] and twin["same_top"] == twin["images"] == 6
    assert twin["max_abs_diff"] < 1e-3
    assert "## ONNX twin (for serving on a PC)" in (folder / "conversion_report.md").read_text()
    models = folder.parent
    (models / "shapes").symlink_to(MODELS / "shapes")
    images = [p.read_bytes() for p in sorted((folder / "samples").glob("*.jpg"))]
    for index in range(20):  # and images neither model saw
        image, _ = demo.classification_sample(demo.sample_rng(990, index))
        images.append(cv2.imencode(".png", image[:, :, ::-1])[1].tobytes())
    daemon = Daemon(tmp_path, models, "--backend", "onnx").start()
    try:
        with daemon.client() as client:
            for data in images:
                ours = client.classify(folder.name, data, top_k=5).result["classes"]
                theirs = client.classify("shapes", data, top_k=5).result["classes"]
                assert [c["index"] for c in ours] == [c["index"] for c in theirs]
                for a, b in zip(ours, theirs):
                    assert a["score"] == pytest.approx(b["score"], abs=1e-5)
    finally:
        daemon.stop()
