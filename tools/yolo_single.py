"""The demo detector as YOLO's single-output export: a test and demo model, made, not downloaded.

``models/shapes-det/model.onnx`` ends in the model zoo's split layout (per stride a DFL box
tensor and class scores). This tool appends the decoding the default ONNX export of
YOLOv8/v9/YOLO11 has inside its graph, with the ``onnx`` package: per stride the DFL
expectation (softmax over 16 bins, times the bin index), the cell centres and the stride,
giving ``cx, cy, w, h`` in input pixels; the class scores beside them; everything
concatenated into one ``[1, 4 + 5, 525]`` output (20x20 + 10x10 + 5x5 cells at 160x160).
Its input is what Frigate feeds a ``yolo-generic`` ONNX model with ``input_dtype: float``:
``[1, 3, 160, 160]`` RGB scaled to 0..1 (the demo's ``(x - 127.5) / 127.5`` is prepended).

    python -m tools.yolo_single OUT_FOLDER       # OUT_FOLDER/model.onnx, model.yaml, labels.txt

Same weights, same boxes: a test decodes both and compares.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "models" / "shapes-det"
SIDE = 160
STRIDES = (8, 16, 32)
BINS = 16
CLASSES = 5
INPUT, OUTPUT = "images", "output0"
# l, t, r, b (cells from the centre) → cx, cy (from the cell centre), w, h
SIDES_TO_BOX = np.array(
    [[-0.5, 0, 0.5, 0], [0, -0.5, 0, 0.5], [1, 0, 1, 0], [0, 1, 0, 1]], np.float32
)
MODEL_YAML = """\
task: detection
description: The demo detector as YOLO's single-output export (made by tools/yolo_single.py)
labels: labels.txt
aliases: [{aliases}]
input: {{size: [{side}, {side}], color: rgb, resize: letterbox, pad: 0}}
onnx: {{file: model.onnx, layout: nchw, dtype: float32, mean: 0, std: 255}}
output: {{format: yolo, nms: {nms}, conf: 0.25, iou: 0.45, max_det: 100}}
"""


def _const(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def _stride_nodes(index: int, stride: int) -> Tuple[List[onnx.NodeProto], List[onnx.TensorProto]]:
    """Nodes turning ``dfl<stride>`` and ``cls<stride>`` into ``out<stride>`` ``[1, 9, H*W]``."""
    rows = cols = SIDE // stride
    cells = rows * cols
    row, col = np.divmod(np.arange(cells), cols)
    offset = np.zeros((1, 4, cells), np.float32)
    offset[0, 0], offset[0, 1] = col + 0.5, row + 0.5
    s = str(stride)
    inits = [
        _const(f"shape_bins{s}", np.array([1, 4, BINS, cells], np.int64)),
        _const(f"shape_sides{s}", np.array([1, 4, cells], np.int64)),
        _const(f"shape_cls{s}", np.array([1, CLASSES, cells], np.int64)),
        _const(f"offset{s}", offset),
        _const(f"stride{s}", np.array(stride, np.float32)),
    ]
    nodes = [
        helper.make_node("Reshape", [f"dfl{s}", f"shape_bins{s}"], [f"bins{s}"]),
        helper.make_node("Softmax", [f"bins{s}"], [f"soft{s}"], axis=2),
        helper.make_node("Transpose", [f"soft{s}"], [f"softT{s}"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", [f"softT{s}", "bin_index"], [f"dist{s}"]),
        helper.make_node("Reshape", [f"dist{s}", f"shape_sides{s}"], [f"sides{s}"]),
        helper.make_node("MatMul", ["sides_to_box", f"sides{s}"], [f"rel{s}"]),
        helper.make_node("Add", [f"rel{s}", f"offset{s}"], [f"cells{s}"]),
        helper.make_node("Mul", [f"cells{s}", f"stride{s}"], [f"box{s}"]),
        helper.make_node("Reshape", [f"cls{s}", f"shape_cls{s}"], [f"scores{s}"]),
        helper.make_node("Concat", [f"box{s}", f"scores{s}"], [f"out{s}"], axis=1),
    ]
    return nodes, inits


def single_output(source: onnx.ModelProto, strides: Sequence[int] = STRIDES) -> onnx.ModelProto:
    """``source`` (the demo detector: input ``input``, outputs ``dfl<s>``, ``cls<s>``) with
    the decode appended and a 0..1 input prepended."""
    graph = source.graph
    nodes: List[onnx.NodeProto] = [
        helper.make_node("Mul", [INPUT, "two"], ["input_x2"]),
        helper.make_node("Sub", ["input_x2", "one"], ["input"]),
    ]
    inits = [
        _const("two", np.array(2.0, np.float32)),
        _const("one", np.array(1.0, np.float32)),
        _const("bin_index", np.arange(BINS, dtype=np.float32).reshape(BINS, 1)),
        _const("sides_to_box", SIDES_TO_BOX),
    ]
    nodes += list(graph.node)
    for index, stride in enumerate(strides):
        more, consts = _stride_nodes(index, stride)
        nodes += more
        inits += consts
    nodes.append(helper.make_node("Concat", [f"out{s}" for s in strides], [OUTPUT], axis=2))
    cells = sum((SIDE // s) ** 2 for s in strides)
    new_graph = helper.make_graph(
        nodes,
        "shapes_det_single",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, [1, 3, SIDE, SIDE])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, [1, 4 + CLASSES, cells])],
        initializer=list(graph.initializer) + inits,
    )
    model = helper.make_model(new_graph, opset_imports=list(source.opset_import))
    model.ir_version = source.ir_version
    onnx.checker.check_model(model)
    return model


def write_folder(
    folder: Path, aliases: Sequence[str] = (), nms: str = "agnostic", source: Path = SOURCE
) -> Path:
    """A model folder serving the single-output demo detector: model.onnx, model.yaml
    (``output.format: yolo``), labels.txt."""
    folder.mkdir(parents=True, exist_ok=True)
    model = single_output(onnx.load(str(source / "model.onnx")))
    onnx.save(model, str(folder / "model.onnx"))
    shutil.copyfile(source / "labels.txt", folder / "labels.txt")
    text = MODEL_YAML.format(aliases=", ".join(aliases), side=SIDE, nms=nms)
    (folder / "model.yaml").write_text(text, encoding="utf-8")
    return folder


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="model folder to write")
    parser.add_argument("--alias", action="append", default=[], help="a name Frigate may use")
    parser.add_argument("--nms", choices=("agnostic", "classwise"), default="agnostic")
    args = parser.parse_args(list(argv) or None)
    print(write_folder(args.folder, args.alias, args.nms))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
