"""What a container on the board sees, built from the documented container examples.

``mappings(example)`` reads the devices and files that ``deploy/container/compose.yaml``,
``deploy/container/daemonset.yaml`` or the ``docker run`` line of ``docs/CONTAINERS.md``
pass in; ``container_root(board, image, mappings, out)`` builds the filesystem a container
started that way would see on ``board``: the image, the host's ``/sys`` as Docker mounts it
(no ``/sys/firmware``, no debugfs), a marker file of the engine, and only the mapped paths.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "deploy" / "container" / "compose.yaml"
DAEMONSET = ROOT / "deploy" / "container" / "daemonset.yaml"
GUIDE = ROOT / "docs" / "CONTAINERS.md"
NPU_NODE = "/dev/dri/renderD129"
COMPATIBLE = "/proc/device-tree/compatible"
MARKERS = {
    "docker": ".dockerenv",
    "kubernetes": "var/run/secrets/kubernetes.io/serviceaccount/token",
}

Mapping = Tuple[str, str]  # (path on the host, path in the container)


def _pair(spec: str) -> Mapping:
    parts = spec.split(":")
    return parts[0], parts[1] if len(parts) > 1 else parts[0]


def compose_mappings(path: Path = COMPOSE) -> List[Mapping]:
    service = yaml.safe_load(path.read_text())["services"]["rkserve"]
    return [_pair(s) for s in service.get("devices", []) + service.get("volumes", [])]


def daemonset_mappings(path: Path = DAEMONSET) -> List[Mapping]:
    pod = yaml.safe_load(path.read_text())["spec"]["template"]["spec"]
    host = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"]}
    mounts = pod["containers"][0]["volumeMounts"]
    return [(host[m["name"]], m["mountPath"]) for m in mounts]


def docker_run_mappings(path: Path = GUIDE) -> List[Mapping]:
    """The ``--device`` and ``-v`` options of the first ``docker run`` block of the guide."""
    text = path.read_text()
    block = re.search(r"```sh\n(docker run .*?)```", text, re.S)
    assert block, f"no ```sh docker run block in {path}"
    words = shlex.split(block.group(1).replace("\\\n", " "))
    pairs = []
    for option, value in zip(words, words[1:]):
        if option in ("--device", "-v", "--volume"):
            pairs.append(_pair(value))
    return pairs


def without(pairs: Sequence[Mapping], container_path: str) -> List[Mapping]:
    """The mappings but the one to ``container_path`` (what a user forgot)."""
    left = [p for p in pairs if p[1] != container_path]
    assert len(left) == len(pairs) - 1, f"{container_path} is not mapped in {pairs}"
    return left


def container_root(
    board: Path,
    pairs: Sequence[Mapping],
    out: Path,
    image: Optional[Path] = None,
    engine: str = "docker",
) -> Path:
    """The container's root under ``out``: ``image`` (hard-linked), ``board``'s /sys as a
    container has it, ``engine``'s marker, and every mapped path of ``board`` that exists."""
    if image is not None:  # hard links, as build.sh makes the boards
        subprocess.run(["cp", "-al", str(image), str(out)], check=True)
    out.mkdir(parents=True, exist_ok=True)
    if (board / "sys").is_dir():
        skip = shutil.ignore_patterns("debug", "firmware")
        shutil.copytree(board / "sys", out / "sys", symlinks=True, ignore=skip, dirs_exist_ok=True)
    marker = out / MARKERS[engine]
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_bytes(b"")
    for host, inside in pairs:
        _copy(board / host.lstrip("/"), out / inside.lstrip("/"))
    return out


def _copy(source: Path, target: Path) -> None:
    if not (source.exists() or source.is_symlink()):
        return  # not on this board (the models folder, debugfs on a board without it)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() or target.is_symlink():
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink()
    if source.is_dir():
        shutil.copytree(source, target, symlinks=True)
    else:
        shutil.copy2(source, target)
