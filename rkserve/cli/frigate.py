"""``rkserve frigate-labelmap``: the labelmap file Frigate reads, written from a model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import ConfigError, UnknownModel
from ..frigate import find_entry, labelmap


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "frigate-labelmap",
        help="print the labelmap Frigate's model.labelmap_path reads for a model (docs/FRIGATE.md)",
        description="Write the model's labels as Frigate's labelmap ('<class id> <label>' per "
        "line), so that the class ids rkserve answers Frigate with name the right objects.",
    )
    p.add_argument("model", help="the model's name, or the file name Frigate's model.path has")
    p.add_argument("--models-dir", default="models", help="the model repository (default: models)")
    p.add_argument("-o", "--output", metavar="FILE", help="write FILE instead of standard output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    entry = find_entry(args.model, Path(args.models_dir))
    if entry is None:
        raise UnknownModel(f"no model named {args.model!r} in {args.models_dir}")
    if entry.spec is None:
        raise ConfigError(entry.error or f"model {entry.name!r} is invalid")
    if entry.spec.task != "detection":
        raise ConfigError(
            f"model {entry.name!r} is a {entry.spec.task} model; Frigate needs a detector"
        )
    text = labelmap(entry.spec.labels, entry.spec.task_config.classes)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0
