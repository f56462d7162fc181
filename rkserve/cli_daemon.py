"""``rkserve serve`` and the commands that talk to a running daemon: infer, models, health."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

# No numpy/zmq at import time: `rkserve --version`, `doctor` and `convert` must start without them.
CLIENT_ENDPOINT = os.environ.get("RKSERVE_CLIENT_ENDPOINT", "tcp://127.0.0.1:5555")
CONNECT_TIMEOUT_S = 3.0


def add_serve(sub: argparse._SubParsersAction) -> None:
    from .config import FIELDS

    p = sub.add_parser(
        "serve",
        help="run the daemon",
        description="Serve the models of a repository over ZeroMQ. Settings come from --config, "
        "then RKSERVE_* environment variables, then these flags.",
    )
    p.add_argument("--config", metavar="FILE", help="YAML settings file (see docs/CONFIG.md)")
    for name, f in FIELDS.items():
        kind = type(f.default)
        flags = ["--" + name.replace("_", "-")] + ["--frigate"] * (name == "frigate_endpoint")
        if kind is bool:
            p.add_argument(
                *flags,
                dest=name,
                action="store_const",
                const=True,
                default=None,
                help=f.metadata["doc"],
            )
        else:
            p.add_argument(
                *flags,
                dest=name,
                type=kind,
                default=None,
                metavar=name.upper(),
                help=f"{f.metadata['doc']} (default {f.default!r})",
            )
    p.set_defaults(func=cmd_serve)


def setup_logging(level: str) -> None:
    # journald stamps each line itself; elsewhere add the time
    fmt = (
        "%(levelname)s %(message)s"
        if os.environ.get("JOURNAL_STREAM")
        else "%(asctime)s %(levelname)s %(message)s"
    )
    logging.basicConfig(level=getattr(logging, level.upper()), format=fmt, stream=sys.stderr)


def cmd_serve(args: argparse.Namespace) -> int:
    from .config import FIELDS, load_settings
    from .server import Server

    overrides = {name: getattr(args, name) for name in FIELDS}
    settings = load_settings(args.config, overrides=overrides)
    setup_logging(settings.log_level)
    return Server(settings).run()


def add_client_commands(sub: argparse._SubParsersAction) -> None:
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
    _client_options(p)
    p.set_defaults(func=cmd_infer)
    for name, text in (
        ("models", "list the daemon's models and their state"),
        ("health", "is the daemon live, and which models are ready"),
    ):
        q = sub.add_parser(name, help=text)
        _client_options(q)
        q.set_defaults(func=cmd_status)


def _client_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--endpoint",
        "-e",
        action="append",
        metavar="ADDR",
        help=f"daemon address; repeat for several boards (default {CLIENT_ENDPOINT}, env RKSERVE_CLIENT_ENDPOINT)",
    )
    p.add_argument(
        "--timeout", type=float, default=10.0, help="seconds to wait for each reply (default 10)"
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument(
        "--curve-client-key",
        metavar="FILE",
        help="CURVE: this client's secret key file (from 'rkserve keys'); with --curve-server-key",
    )
    p.add_argument(
        "--curve-server-key", metavar="FILE", help="CURVE: the daemon's public key file (.key)"
    )


def _client(args: argparse.Namespace) -> Any:
    from .client import Client
    from .errors import ConfigError

    curve = None
    if args.curve_client_key or args.curve_server_key:
        if not (args.curve_client_key and args.curve_server_key):
            raise ConfigError("--curve-client-key and --curve-server-key go together")
        from .security import curve_keys

        curve = curve_keys(args.curve_client_key, args.curve_server_key)
    # no connection within a few seconds means no daemon there: say so, do not wait it out
    return Client(
        args.endpoint or [CLIENT_ENDPOINT],
        timeout=args.timeout,
        curve=curve,
        connect_timeout=min(args.timeout, CONNECT_TIMEOUT_S),
    )


def cmd_status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        data: Any = client.models() if args.command == "models" else client.health()
    if args.json:
        print(json.dumps(data, indent=2))
    elif args.command == "models":
        print(_models_table(data))
    else:
        print(_health_text(data))
    return 0 if args.command == "models" or data.get("ready") else 1


def _models_table(models: List[Dict[str, Any]]) -> str:
    rows = [("MODEL", "TASK", "INPUT", "LABELS", "BACKEND", "STATE")]
    notes = []
    for m in models:
        shape = "x".join(str(d) for d in m.get("input_shape", [])) or "-"
        if m.get("inputs"):  # a tensor model: each input's shape
            shape = ", ".join("x".join(str(d) for d in i["shape"]) for i in m["inputs"])
        rows.append(
            (
                m["name"],
                m.get("task", "-"),
                shape,
                str(m.get("labels", "-")),
                m.get("backend", "-"),
                m["state"],
            )
        )
        if m.get("error"):
            notes.append(f"  {m['name']}: {m['error']}")
    return _table(rows) + ("\n" + "\n".join(notes) if notes else "")


def _health_text(health: Dict[str, Any]) -> str:
    lines = [f"live: {health['live']}  ready: {health['ready']}  status: {health['status']}"]
    for name, m in health["models"].items():
        lines.append(f"  {name}: {m['state']}" + (f" ({m['error']})" if m.get("error") else ""))
    return "\n".join(lines)


def _table(rows: List[Any]) -> str:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def cmd_infer(args: argparse.Namespace) -> int:
    """Each image in turn; a bad one is named on stderr and the others still print."""
    from .errors import BadRequest, RkserveError, Unavailable, UnknownModel

    if bool(args.images) == bool(args.tensor):
        raise BadRequest("give image files, or --tensor inputs for a tensor model (not both)")
    if args.tensor:
        return _infer_tensors(args)
    params: Dict[str, Any] = {}
    if args.top_k is not None:
        params["top_k"] = args.top_k
    results, failed = [], 0
    with _client(args) as client:
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
    from .errors import BadImage

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
    import numpy as np

    with _client(args) as client:
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
        print(f"{reply.model} ({reply.task}), {total:.1f} ms\n" + _table(rows))
    return 0


def read_tensor_args(values: List[str]) -> Any:
    """``["a=x.npy", "b=y.npy"]`` → a name → array map; ``["x.npy", "y.npy"]`` → a list."""

    from .errors import BadRequest

    pairs = [value.rpartition("=") for value in values]
    if len({bool(sep) for _, sep, _ in pairs}) > 1:
        raise BadRequest("--tensor: name every input (NAME=FILE.npy) or none")
    arrays = [(name, _read_npy(path)) for name, _, path in pairs]
    if pairs[0][1]:
        return dict(arrays)
    return [array for _, array in arrays]


def _read_npy(path: str) -> Any:
    import numpy as np

    from .errors import BadRequest

    try:
        return np.load(path)  # refuses object arrays by default: a file cannot run code here
    except (OSError, ValueError) as exc:
        raise BadRequest(f"--tensor {path}: not a readable .npy array: {exc}") from None


def _file_name(name: str) -> str:
    """An output name as a file name: no path separators, never hidden or empty."""
    cleaned = "".join(c if c.isalnum() or c in "._-" else "_" for c in name).lstrip(".")
    return cleaned or "output"


def _detection_params(args: argparse.Namespace) -> Dict[str, Any]:
    from .errors import BadRequest

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
    from .errors import BadRequest

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
    else:
        head += f", {reply.result['width']}x{reply.result['height']}"
        rows = [("INDEX", "PIXELS", "RATIO", "LABEL")]
        rows += [
            (str(c["index"]), str(c["pixels"]), f"{c['ratio']:.3f}", c["label"])
            for c in reply.classes
        ]
    return head + "\n" + _table(rows)


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
