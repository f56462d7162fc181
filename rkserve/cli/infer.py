"""``rkserve infer``: send images (or a tensor model's inputs) to a daemon and show the answers."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import numpy as np

from ..errors import BadImage, BadRequest, RkserveError, Unavailable, UnknownModel
from .common import client_options, open_client, table


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "infer",
        help="send images (or a tensor model's inputs) to a running daemon and print the results",
    )
    p.add_argument("images", nargs="*", metavar="IMAGE", help="JPEG/PNG files")
    p.add_argument(
        "--tensor",
        action="append",
        metavar="[NAME=]FILE.npy",
        help="tensor models: one input per flag, by name or in the model's order; the outputs "
        "are written as NAME.npy into --out (default: the current folder)",
    )
    p.add_argument("--model", "-m", required=True, help="model name (see 'rkserve models')")
    p.add_argument(
        "--top-k",
        type=int,
        default=None,
        help="classification: how many classes (default: the model's)",
    )
    p.add_argument(
        "--out",
        metavar="PATH",
        help="segmentation: write the mask PNG here (a folder when several images); "
        "tensor: the folder for the output .npy files; detection: write the boxes drawn over "
        "the image (JPEG)",
    )
    p.add_argument(
        "--overlay",
        action="store_true",
        help="segmentation: write a JPEG of the classes over the image instead",
    )
    p.add_argument("--conf", type=float, help="detection: lowest score kept (default: the model's)")
    p.add_argument(
        "--iou", type=float, help="detection: NMS overlap threshold (default: the model's)"
    )
    p.add_argument("--max-det", type=int, help="detection: the most boxes (default: the model's)")
    p.add_argument("--classes", metavar="I,J", help="detection: only these class indices, e.g. 0,2")
    client_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Each image in turn; a bad one is named on stderr and the others still print."""

    if bool(args.images) == bool(args.tensor):
        raise BadRequest("give image files, or --tensor inputs for a tensor model (not both)")
    if args.tensor:
        return _infer_tensors(args)
    params: Dict[str, Any] = {}
    if args.top_k is not None:
        params["top_k"] = args.top_k
    results, failed = [], 0
    with open_client(args) as client:
        tasks = {m["name"]: m.get("task") for m in client.models()}
        task = tasks.get(args.model)
        if task == "segmentation":
            params.update(
                mask="png" if args.out and not args.overlay else "none", overlay=bool(args.overlay)
            )
        elif task == "detection":
            params.update(_detection_params(args))
        elif task is not None and (args.out or args.overlay):
            raise BadRequest(
                f"--out and --overlay write segmentation masks; {args.model} is a {task} model"
            )
        for image in args.images:
            try:
                reply = client.infer(args.model, _read_image(image), **params)
            except (Unavailable, UnknownModel):
                raise  # about the daemon or the model, not this image
            except RkserveError as exc:
                print(f"rkserve infer: {image}: {exc.code}: {exc}", file=sys.stderr)
                failed += 1
                continue
            results.append((image, reply))
            if args.out and reply.task in ("segmentation", "detection"):
                _write_mask(image, reply, args.out, several=len(args.images) > 1)
    _print_results(results, args.json)
    return 1 if failed else 0


def _read_image(path: str) -> bytes:

    try:
        return Path(path).read_bytes()
    except IsADirectoryError:
        raise BadImage("is a directory, not an image file") from None
    except OSError as exc:
        raise BadImage(f"cannot read: {exc.strerror or exc}") from None


def _print_results(results: List[Any], as_json: bool) -> None:
    if as_json:
        print(
            json.dumps(
                [
                    {
                        "image": i,
                        "model": r.model,
                        "task": r.task,
                        "result": _jsonable(r.result),
                        "timing_ms": r.timings,
                    }
                    for i, r in results
                ],
                indent=2,
            )
        )
    elif results:
        print("\n\n".join(_result_text(i, r) for i, r in results))


def _infer_tensors(args: argparse.Namespace) -> int:

    with open_client(args) as client:
        reply = client.infer_tensors(args.model, read_tensor_args(args.tensor))
    folder = Path(args.out or ".")
    with _writing(folder):
        folder.mkdir(parents=True, exist_ok=True)
    rows = [("OUTPUT", "DTYPE", "SHAPE", "FILE")]
    for name, array in reply.outputs.items():
        target = folder / (_file_name(name) + ".npy")
        with _writing(target):
            np.save(target, array)
        rows.append((name, array.dtype.name, "x".join(map(str, array.shape)), str(target)))
    if args.json:
        print(
            json.dumps(
                {
                    "model": reply.model,
                    "task": reply.task,
                    "outputs": rows[1:],
                    "timing_ms": reply.timings,
                },
                indent=2,
            )
        )
    else:
        total = reply.timings.get("total", 0.0)
        print(f"{reply.model} ({reply.task}), {total:.1f} ms\n" + table(rows))
    return 0


def read_tensor_args(values: List[str]) -> Any:
    """``["a=x.npy", "b=y.npy"]`` → a name → array map; ``["x.npy", "y.npy"]`` → a list."""

    pairs = [value.rpartition("=") for value in values]
    if len({bool(sep) for _, sep, _ in pairs}) > 1:
        raise BadRequest("--tensor: name every input (NAME=FILE.npy) or none")
    arrays = [(name, _read_npy(path)) for name, _, path in pairs]
    if pairs[0][1]:
        return dict(arrays)
    return [array for _, array in arrays]


def _read_npy(path: str) -> Any:

    try:
        return np.load(path)  # refuses object arrays by default: a file cannot run code here
    except (OSError, ValueError) as exc:
        raise BadRequest(f"--tensor {path}: not a readable .npy array: {exc}") from None


def _file_name(name: str) -> str:
    """An output name as a file name: no path separators, never hidden or empty."""
    cleaned = "".join(c if c.isalnum() or c in "._-" else "_" for c in name).lstrip(".")
    return cleaned or "output"


def _detection_params(args: argparse.Namespace) -> Dict[str, Any]:

    params: Dict[str, Any] = {"overlay": bool(args.out)}
    for key in ("conf", "iou", "max_det"):
        if getattr(args, key) is not None:
            params[key] = getattr(args, key)
    if args.classes:
        try:
            params["classes"] = [int(c) for c in args.classes.split(",")]
        except ValueError:
            raise BadRequest(
                f"--classes takes class indices like 0,2, not {args.classes!r}"
            ) from None
    return params


def _write_mask(image: str, reply: Any, out: str, several: bool) -> None:
    key, suffix = (
        ("overlay", ".overlay.jpg") if "overlay" in reply.result else ("mask", ".mask.png")
    )
    target = Path(out)
    with _writing(target):
        if several or target.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            target = target / (Path(image).stem + suffix)
        target.write_bytes(reply.result[key]["data"])
    print(f"wrote {target}", file=sys.stderr)


@contextlib.contextmanager
def _writing(target: Path) -> Iterator[None]:
    """A file or folder --out names that cannot be written: one line, not a traceback."""

    try:
        yield
    except OSError as exc:
        raise BadRequest(f"--out {target}: cannot write: {exc.strerror or exc}") from None


def _result_text(image: str, reply: Any) -> str:
    t = reply.timings
    stages = ", ".join(
        f"{s} {t[s]:.1f}"
        for s in ("queue", "decode", "preprocess", "inference", "postprocess")
        if s in t
    )
    head = f"{image}: {reply.model} ({reply.task}), {t.get('total', 0):.1f} ms [{stages}]"
    if reply.task == "classification":
        rows: List[Tuple[str, ...]] = [("RANK", "INDEX", "SCORE", "LABEL")]
        rows += [
            (str(n), str(c["index"]), f"{c['score']:.4f}", c["label"])
            for n, c in enumerate(reply.classes, 1)
        ]
    elif reply.task == "detection":
        head += f", {reply.result['width']}x{reply.result['height']}"
        rows = [("RANK", "INDEX", "SCORE", "LABEL", "BOX (x1, y1, x2, y2)")]
        rows += [
            (str(n), str(d["index"]), f"{d['score']:.4f}", d["label"], _box(d["box"]))
            for n, d in enumerate(reply.detections, 1)
        ]
        if len(rows) == 1:
            return head + "\nno detections"
    elif reply.task == "segmentation":
        head += f", {reply.result['width']}x{reply.result['height']}"
        rows = [("INDEX", "PIXELS", "RATIO", "LABEL")]
        rows += [
            (str(c["index"]), str(c["pixels"]), f"{c['ratio']:.3f}", c["label"])
            for c in reply.classes
        ]
    else:  # a task without a table of its own: its result as JSON
        return head + "\n" + json.dumps(_jsonable(reply.result), indent=2)
    return head + "\n" + table(rows)


def _box(box: List[float]) -> str:
    return ", ".join(f"{v:.1f}" for v in box)


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"bytes": len(value)}
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value
