"""Every example of README.md and docs/*.md runs as written, on the PC backends.

One daemon (onnx backend) serves a copy of the repository's models in a sandbox: a folder
laid out like the repository (``models/`` copied, the rest linked), where commands run from
as a new user would run them from the repository root, with ``rkserve`` on ``PATH`` running
this checkout. The docs' address (``tcp://127.0.0.1:5555``, metrics on ``localhost:9464``)
is the sandbox daemon's. Console blocks' outputs are compared with what the commands print,
timings left out and numbers to the digits shown (within two units of the last one). What
the marks in the docs mean: ``tests/docs/examples.py``. An example that needs a board is
skipped, saying so; an unmarked one that fails fails here.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import pytest
import yaml

from rkserve import __version__
from rkserve.cli import build_parser
from rkserve.convert.recipe import GATES, load_recipe
from rkserve.repository import build_engine
from rkserve.tasks import load_spec
from tests.docs.examples import Example, commands, read_examples
from tests.helpers import DATA
from tools.harness import ROOT, Daemon

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
EXAMPLES = [e for path in DOCS for e in read_examples(path)]
DOC_ENDPOINT, DOC_METRICS = "tcp://127.0.0.1:5555", "localhost:9464"
LINKED = (
    ".venv",
    "deploy",
    "docs",
    "rkserve",
    "tests",
    "tools",
    "benchmarks",
    "systemd",
    "Makefile",
    "pyproject.toml",
)
TIMEOUT_S = 120
SUBCOMMANDS = (
    "serve",
    "infer",
    "models",
    "health",
    "inspect",
    "doctor",
    "convert",
    "bench",
    "keys",
)


def need_shared(*parts: str) -> Path:
    """A file of ../shared/data: missing, it skips the example here and fails it in CI."""
    path = DATA.joinpath(*parts)
    if not path.exists():
        message = f"shared test data not found: {path} (set RKSERVE_SHARED_DATA)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


class Sandbox:
    """The repository as a user has it, with the daemon running; ``run`` runs one command."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        for name in LINKED:
            (folder / name).symlink_to(ROOT / name)
        shutil.copytree(ROOT / "models", folder / "models")
        (folder / "tmp").mkdir()
        (folder / "dist").mkdir()
        (folder / "dist" / f"rkserve-{__version__}-py3-none-any.whl").write_bytes(b"")
        bin_dir = folder / "bin"
        bin_dir.mkdir()
        shim = bin_dir / "rkserve"
        shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m rkserve "$@"\n')
        shim.chmod(0o755)
        self.served = folder / "served"  # what the daemon serves: the repository's models
        shutil.copytree(ROOT / "models", self.served)
        self.daemon = Daemon(folder, self.served, "--backend", "onnx", "--workers", "2")
        self.env: Dict[str, str] = {}
        self.has_multi = False

    def start(self) -> None:
        self.daemon.start(timeout=90)
        self.env = {
            **os.environ,
            "PATH": f"{self.folder / 'bin'}{os.pathsep}{os.environ['PATH']}",
            "PYTHONPATH": str(ROOT),
            "RKSERVE_CLIENT_ENDPOINT": self.daemon.endpoint,
        }

    def add_multi(self) -> None:
        """Rockchip's multiple_input_demo as ``multi`` (MODELS.md's model.yaml), by SIGHUP."""
        if self.has_multi:
            return
        onnx = need_shared("onnx", "multiple_input_demo_test.onnx")
        folder = self.served / "multi"
        folder.mkdir()
        shutil.copy(onnx, folder / "model.onnx")
        (folder / "model.yaml").write_text(
            "task: tensor\ninputs:\n  - {name: input.1, dtype: uint8}\n"
            "  - {name: input, dtype: uint8}\n"
        )
        self.daemon.signal(signal.SIGHUP)
        self.daemon.wait(lambda h: h["models"].get("multi", {}).get("state") == "ready", 60)
        self.has_multi = True

    def localise(self, text: str) -> str:
        """The docs' addresses and /tmp made the sandbox's."""
        return (
            text.replace(DOC_ENDPOINT, self.daemon.endpoint)
            .replace(DOC_METRICS, f"localhost:{self.daemon.metrics_port}")
            .replace(".venv/bin/rkserve", "rkserve")
            .replace(" /tmp/", f" {self.folder}/tmp/")
        )

    def run(self, command: str, python: Optional[Path] = None) -> subprocess.CompletedProcess:
        """A shell command, or with ``python`` a script, from the sandbox's root."""
        argv = [str(python), "-c", command] if python else ["sh", "-c", command]
        return subprocess.run(
            argv,
            cwd=self.folder,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=TIMEOUT_S,
        )


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> Iterator[Sandbox]:
    box = Sandbox(tmp_path_factory.mktemp("docs"))
    box.start()
    yield box
    assert box.daemon.stop() == 0, box.daemon.log()


def test_every_mark_is_on_a_runnable_block():
    """A mark on a text block, or a board command left unmarked, is a mistake in the doc."""
    for example in EXAMPLES:
        assert example.runnable or not example.marks, f"{example.id}: marked but not run"
        if example.info in ("sh", "console") and example.mark("board") is None:
            prompts = {c.prompt for c in commands(example)}
            assert "board$" not in prompts, f"{example.id}: board$ commands: mark it board"


def _inline_commands() -> List[str]:
    """`rkserve SUBCOMMAND ARGS` in the docs' running text (not the bare command names)."""
    found = set()
    for path in DOCS:
        for span in re.findall(r"`(rkserve [^`|]*)`", path.read_text(encoding="utf-8")):
            words = span.split()
            if len(words) > 2 and words[1] in SUBCOMMANDS:  # not a quoted message
                found.add(span)
    return sorted(found)


@pytest.mark.parametrize("command", _inline_commands())
def test_inline_commands_parse(command):
    """Commands quoted in the text use options the command line has (argparse's check)."""
    try:
        build_parser().parse_args(shlex.split(command)[1:])
    except SystemExit as exc:  # --help exits 0; a bad option exits 2
        assert exc.code == 0, f"{command!r} does not parse"


@pytest.mark.slow
@pytest.mark.process
def test_queue_depth_is_exported_before_any_request(sandbox):
    """METRICS.md: a model's rkserve_queue_depth series is there, at 0, once it is loaded
    (this runs before the examples send anything)."""
    url = f"http://127.0.0.1:{sandbox.daemon.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    assert "rkserve_requests_total{" not in text  # nothing asked yet
    for model in ("shapes", "shapes-det", "shapes-seg"):
        assert f'rkserve_queue_depth{{model="{model}"}} 0.0' in text


def _params() -> list:
    """The runnable examples; those marked ``convert`` carry the pytest mark too."""
    return [
        pytest.param(
            e, id=e.id, marks=[pytest.mark.convert] if e.mark("convert") is not None else []
        )
        for e in EXAMPLES
        if e.runnable
    ]


@pytest.mark.slow
@pytest.mark.process
@pytest.mark.parametrize("example", _params())
def test_example(example: Example, request) -> None:
    if example.mark("board") is not None:
        pytest.skip(f"{example.id}: needs a Rockchip board (marked board in the doc)")
    if example.mark("skip") is not None:
        pytest.skip(f"{example.id}: {example.mark('skip')}")
    python = request.getfixturevalue("converter") if example.mark("convert") is not None else None
    if example.info == "yaml":
        check_yaml(example, request)
        return
    box: Sandbox = request.getfixturevalue("sandbox")
    if re.search(r"""-m multi\b|["']multi["']""", example.text):
        box.add_multi()
    if example.info == "python":
        run_python(box, example, python)
    else:
        run_commands(box, example)


# -- python -----------------------------------------------------------------------------


def run_python(box: Sandbox, example: Example, python: Optional[Path]) -> None:
    code = example.text
    if example.mark("continues") is not None:
        code = _previous_python(example).text + code
    setup = example.mark("setup")
    code = box.localise((setup + "\n" if setup else "") + code)
    done = box.run(code, python=python or Path(sys.executable))
    assert done.returncode == 0, f"{example.id} failed:\n{code}\n--- output:\n{done.stdout}"


def _previous_python(example: Example) -> Example:
    before = [e for e in EXAMPLES if e.path == example.path and e.line < example.line]
    return next(e for e in reversed(before) if e.info == "python")


# -- console and sh ---------------------------------------------------------------------


def run_commands(box: Sandbox, example: Example) -> None:
    for command in commands(example):
        text = box.localise(_as_run(example, command.text))
        done = box.run(text)
        where = f"{example.id}: `{command.text}`"
        assert done.returncode == 0, f"{where} exited {done.returncode}:\n{done.stdout}"
        if example.info == "console":
            expected = box.localise("\n".join(command.output))
            assert_same_output(expected, done.stdout, where)


def _as_run(example: Example, command: str) -> str:
    """``make X`` is checked with ``make -n X``; marked blocks get their flag."""
    if command.startswith("make "):
        return "make -n " + command[len("make ") :]
    if example.mark("dry-run") is not None and command.startswith("deploy/push "):
        return "deploy/push --dry-run " + command[len("deploy/push ") :]
    if example.mark("collect") is not None:
        return command.replace(" -s ", " --collect-only -q ")
    return command


_TIMING = re.compile(r"\d+(\.\d+)? ms( \[[^\]]*\])?")
_NUMBER = re.compile(r"^[-+]?\d+(\.\d+)?$")


def assert_same_output(expected: str, actual: str, where: str) -> None:
    """Line by line; timings (``4.0 ms [queue ...]``) masked; numbers within two units of
    their last shown digit (scores and boxes from onnxruntime may differ by a rounding)."""
    want = [_TIMING.sub("<ms>", line).rstrip() for line in expected.strip("\n").splitlines()]
    got = [_TIMING.sub("<ms>", line).rstrip() for line in actual.strip("\n").splitlines()]
    message = f"{where}: the doc shows\n" + "\n".join(want) + "\n--- it printed\n" + "\n".join(got)
    assert len(want) == len(got), message
    for a, b in zip(want, got):
        assert _same_line(a, b), message


def _same_line(want: str, got: str) -> bool:
    a, b = want.replace(",", " , ").split(), got.replace(",", " , ").split()
    return len(a) == len(b) and all(_same_token(x, y) for x, y in zip(a, b))


def _same_token(want: str, got: str) -> bool:
    if want == got:
        return True
    if not (_NUMBER.match(want) and _NUMBER.match(got)):
        return False
    decimals = len(want.partition(".")[2])
    return abs(float(want) - float(got)) <= 2 * 10**-decimals + 1e-9


# -- yaml -------------------------------------------------------------------------------


def check_yaml(example: Example, request) -> None:
    data = yaml.safe_load(example.text)
    target = example.mark("model.yaml")
    if target is None:
        assert data is not None, f"{example.id}: empty YAML"
        return
    folder = request.getfixturevalue("model_folders")(target)
    path = folder / "model.yaml"
    if "task" not in data:  # a fragment of that folder's model.yaml
        data = _merged(yaml.safe_load(path.read_text()), data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    has_model = (folder / "model.onnx").exists()
    spec = load_spec(folder, need_model=has_model)
    if spec.convert and spec.task in GATES:
        load_recipe(spec)
    if not has_model:
        return  # the model itself is not in ../shared/data: its model.yaml is what is checked
    engine = build_engine(spec, "onnx", 10**8)
    try:
        assert engine.warm_up().warnings == [], f"{example.id}: {engine.warm_up().warnings}"
        if spec.task == "classification":
            images = sorted((folder / "samples").iterdir())
            sample = next(p for p in images if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
            classes = engine.infer(sample.read_bytes()).result["classes"]
            assert all(0.0 <= c["score"] <= 1.0 and c["index"] >= 0 for c in classes), classes
    finally:
        engine.backend.close()


def _merged(base: Dict, fragment: Dict) -> Dict:
    out = dict(base)
    for key, value in fragment.items():
        out[key] = (
            _merged(base[key], value)
            if isinstance(value, dict) and isinstance(base.get(key), dict)
            else value
        )
    return out


@pytest.fixture
def model_folders(tmp_path):
    """A model folder a doc's model.yaml is written into: a copy of a demo model, or one
    made of ../shared/data's files."""

    def make(name: str) -> Path:
        folder = tmp_path / Path(name).name
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, folder)
            return folder
        maker = _MADE.get(name)
        assert maker is not None, f"no model folder {name!r} for a doc's model.yaml"
        folder.mkdir()
        maker(folder)
        return folder

    return make


def _imagenet(folder: Path) -> None:
    shutil.copy(
        need_shared("onnx", "mobilenet_v2_1.0_224_dequant_fp32.onnx"), folder / "model.onnx"
    )
    shutil.copy(need_shared("labels", "synset.txt"), folder / "labels.txt")
    for sub, images in (("calib", "imagenet_val"), ("samples", "imagenet_val")):
        shutil.copytree(need_shared("images", images), folder / sub)
    (folder / "model.yaml").write_text("task: classification\ninput: {size: 224}\n")


def _yolov5(folder: Path) -> None:
    shutil.copy(need_shared("labels", "coco_80_labels_list.txt"), folder / "labels.txt")
    (folder / "model.yaml").write_text("task: detection\ninput: {size: 640}\n")


def _multi(folder: Path) -> None:
    shutil.copy(need_shared("onnx", "multiple_input_demo_test.onnx"), folder / "model.onnx")
    (folder / "model.yaml").write_text("task: tensor\n")


_MADE = {"models/imagenet": _imagenet, "models/yolov5": _yolov5, "models/multi": _multi}
