"""``rkserve models`` and ``rkserve health`` with several ``--endpoint``: every board is asked
on its own and shown, and the exit status says whether all of them are ready.

Before: one DEALER connected to every endpoint, so whichever daemon ZeroMQ picked answered
for all of them, and a board that was down or not ready went unseen (exit 0).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator, Tuple

import pytest

from rkserve.client import ask_each
from rkserve.errors import Unavailable
from rkserve.security import create_keys
from tools.harness import ROOT, Daemon, fake_models

pytestmark = [pytest.mark.slow, pytest.mark.process]


def rkserve(*args: str) -> Tuple[int, str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "rkserve", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        cwd=ROOT,
    )
    return done.returncode, done.stdout, done.stderr


@pytest.fixture(scope="module")
def boards(tmp_path_factory) -> Iterator[Tuple[Daemon, Daemon, str]]:
    """A ready board, a board with a model that failed to load, and an address with none."""
    good_dir, bad_dir = tmp_path_factory.mktemp("good"), tmp_path_factory.mktemp("bad")
    bad_models = fake_models(bad_dir / "models")
    (bad_models / "broken").mkdir()
    (bad_models / "broken" / "model.yaml").write_text("task: classification\ninput: {size: 0}\n")
    good = Daemon(good_dir, fake_models(good_dir / "models"), "--backend", "fake").start()
    bad = Daemon(bad_dir, bad_models, "--backend", "fake").start()
    bad.wait(lambda h: h["models"]["broken"]["state"] in ("failed", "refused"))
    yield good, bad, f"ipc://{bad_dir}/nobody.sock"
    assert good.stop() == 0 and bad.stop() == 0


def test_health_asks_every_board_and_fails_when_one_is_not_ready(boards):
    good, bad, nobody = boards
    code, out, err = rkserve("health", "-e", good.endpoint, "-e", bad.endpoint)
    assert code == 1, err
    first, second = out.strip().split("\n\n")
    assert first.startswith(f"== {good.endpoint}\nlive: True  ready: True  status: serving")
    assert second.startswith(f"== {bad.endpoint}\nlive: True  ready: False  status: serving")
    assert "  broken: failed (" in second or "  broken: refused (" in second
    code, out, _ = rkserve("health", "-e", good.endpoint, "-e", nobody)
    assert code == 1
    assert f"== {nobody}\nerror: unavailable: could not connect to {nobody}" in out
    assert f"== {good.endpoint}\nlive: True  ready: True" in out


def test_models_lists_every_board_and_fails_when_one_is_not_ready(boards):
    good, bad, nobody = boards
    code, out, _ = rkserve("models", "-e", good.endpoint, "-e", bad.endpoint, "-e", nobody)
    assert code == 1
    blocks = out.strip().split("\n\n")
    assert [b.splitlines()[0] for b in blocks] == [
        f"== {e}" for e in (good.endpoint, bad.endpoint, nobody)
    ]
    assert "broken" not in blocks[0] and "broken" in blocks[1]
    assert blocks[2].startswith(f"== {nobody}\nerror: unavailable:")
    code, out, err = rkserve("models", "-e", good.endpoint, "-e", good.endpoint)
    assert code == 0, err  # every board ready: 0, each shown
    assert out.count(f"== {good.endpoint}\nMODEL") == 2


def test_json_has_one_entry_per_board(boards):
    good, bad, nobody = boards
    code, out, _ = rkserve(
        "health", "--json", "-e", good.endpoint, "-e", bad.endpoint, "-e", nobody
    )
    assert code == 1
    shown = json.loads(out)
    assert [s["endpoint"] for s in shown] == [good.endpoint, bad.endpoint, nobody]
    assert shown[0]["health"]["ready"] is True and shown[1]["health"]["ready"] is False
    assert shown[2]["error"]["code"] == "unavailable"
    code, out, _ = rkserve("health", "--json", "-e", good.endpoint)  # one board: as before
    assert code == 0 and json.loads(out)["ready"] is True


def test_ask_each_answers_in_the_order_given(boards):
    good, bad, nobody = boards
    answers = ask_each([nobody, bad.endpoint, good.endpoint], "health", connect_timeout=1.0)
    assert [e for e, _ in answers] == [nobody, bad.endpoint, good.endpoint]
    assert isinstance(answers[0][1], Unavailable)
    assert answers[1][1]["ready"] is False and answers[2][1]["ready"] is True  # type: ignore[index]


def test_a_curve_connection_error_ends_in_one_question_mark(tmp_path: Path):
    public, secret = create_keys(tmp_path, "me")
    code, _, err = rkserve(
        "health",
        "-e",
        f"ipc://{tmp_path}/nobody.sock",
        "--timeout",
        "1",
        "--curve-client-key",
        str(secret),
        "--curve-server-key",
        str(public),
    )
    assert code == 1
    assert err.rstrip().endswith("and is the server key its own?"), err
