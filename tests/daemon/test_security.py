"""CURVE on the real daemon, key files, and what the package must never do."""

from __future__ import annotations

import io
import os
import shutil
import signal
import stat
import subprocess
import time
import tokenize
from typing import Any, Dict, List

import msgpack
import numpy as np
import pytest
import zmq

from rkserve.client import Client
from rkserve.errors import ConfigError, Unavailable
from rkserve.security import create_keys, curve_keys, load_key_file
from tests.helpers import run_rkserve
from tools.harness import ROOT, Daemon, fake_models

PACKAGE = ROOT / "rkserve"
FORBIDDEN_MODULES = {"pickle", "_pickle", "cPickle", "marshal", "shelve", "dill", "cloudpickle"}


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return run_rkserve(*args, timeout=timeout)


@pytest.mark.process
def test_keys_writes_a_0600_secret_whatever_the_umask(tmp_path):
    folder = tmp_path / "keys"
    old = os.umask(0)  # the child inherits it: the worst case
    try:
        result = run_cli("keys", str(folder), "--name", "laptop")
    finally:
        os.umask(old)
    assert result.returncode == 0, result.stderr
    public, secret = folder / "laptop.key", folder / "laptop.key_secret"
    assert sorted(p.name for p in folder.iterdir()) == ["laptop.key", "laptop.key_secret"]
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    pair = load_key_file(secret, need_secret=True)
    assert load_key_file(public) == (pair[0], None) and pair[1] is not None
    assert str(secret) in result.stdout

    before = secret.read_bytes()
    again = run_cli("keys", str(folder), "--name", "laptop")
    assert again.returncode == 1 and again.stderr.count("\n") == 1, again.stderr
    assert "exists" in again.stderr and secret.read_bytes() == before


@pytest.mark.parametrize("name", ["../escape", "a/b", ".hidden", ""])
def test_key_names_stay_inside_the_folder(tmp_path, name):
    with pytest.raises(ConfigError, match="key name"):
        create_keys(tmp_path, name)


def test_key_files_are_checked(tmp_path):
    public, secret = create_keys(tmp_path, "server")
    with pytest.raises(ConfigError, match="only a public key"):
        curve_keys(public, public)
    (tmp_path / "junk.key").write_text("not a key\n")
    with pytest.raises(ConfigError, match="not a readable CURVE key file"):
        load_key_file(tmp_path / "junk.key")
    with pytest.raises(ConfigError, match="not a readable CURVE key file"):
        load_key_file(tmp_path / "missing.key")
    keys = curve_keys(secret, public)
    assert keys["public"] == keys["server"] and len(keys["secret"]) == 40


class CurveDaemon(Daemon):
    """The daemon helper, talking CURVE with one client key pair."""

    def __init__(self, *args: Any, keys: Dict[str, bytes], **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.keys = keys

    def client(self, **kw: Any) -> Client:
        return Client(self.endpoint, **{"timeout": 10.0, "curve": self.keys, **kw})


@pytest.fixture
def pki(tmp_path):
    keys, clients = tmp_path / "keys", tmp_path / "clients"
    clients.mkdir()
    made = {name: create_keys(keys, name) for name in ("server", "alice", "bob")}
    shutil.copy(made["alice"][0], clients)
    return {
        "dir": keys,
        "clients": clients,
        "server": made["server"],
        "alice": curve_keys(made["alice"][1], made["server"][0]),
        "bob": curve_keys(made["bob"][1], made["server"][0]),
    }


@pytest.fixture
def curve_daemon(tmp_path, pki):
    flags = ["--backend", "fake", "--curve-secret-key", str(pki["server"][1])]
    flags += ["--curve-clients-dir", str(pki["clients"])]
    d = CurveDaemon(tmp_path, fake_models(tmp_path / "models"), *flags, keys=pki["alice"])
    d.start()
    yield d
    assert d.stop() == 0, d.log()


def refused(endpoint: str, curve: Any, seconds: float = 1.5) -> bool:
    """True when a fresh client gets no reply at all within ``seconds``."""
    with Client(endpoint, timeout=seconds, retries=0, curve=curve) as client:
        try:
            client.health()
        except Unavailable:
            return True
    return False


@pytest.mark.process
def test_an_allowed_client_is_served_and_unknown_ones_get_nothing(curve_daemon, pki):
    with curve_daemon.client() as alice:
        assert alice.health()["ready"]
        assert alice.infer("cls", np.zeros((32, 32, 3), np.uint8)).task == "classification"
    server_public = load_key_file(pki["server"][0])[0]
    wrong_server = {**pki["alice"], "server": pki["bob"]["public"]}
    assert refused(curve_daemon.endpoint, pki["bob"])  # a key pair nobody allowed
    assert refused(curve_daemon.endpoint, None)  # no CURVE at all
    assert refused(curve_daemon.endpoint, wrong_server)  # talks to the wrong server key
    assert pki["bob"]["server"] == server_public
    assert raw_dealer_gets_nothing(curve_daemon.endpoint, pki["bob"])
    assert "CURVE on: 1 allowed client keys" in curve_daemon.log()


def raw_dealer_gets_nothing(endpoint: str, keys: Dict[str, bytes]) -> bool:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.curve_secretkey, sock.curve_publickey = keys["secret"], keys["public"]
    sock.curve_serverkey = keys["server"]
    sock.connect(endpoint)
    try:
        sock.send_multipart([b"", msgpack.packb({"v": 1, "id": 1, "op": "health"})])
        return not sock.poll(1500)
    finally:
        sock.close()


def wait_until(condition: Any, timeout: float = 10.0) -> bool:
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        if condition():
            return True
        time.sleep(0.1)
    return False


@pytest.mark.process
def test_sighup_reloads_the_allow_list(curve_daemon, pki):
    shutil.copy(pki["dir"] / "bob.key", pki["clients"])
    curve_daemon.signal(signal.SIGHUP)
    assert wait_until(lambda: not refused(curve_daemon.endpoint, pki["bob"], 1.0))

    connected = curve_daemon.client()  # alice, authenticated before her key goes
    assert connected.health()["live"]
    (pki["clients"] / "alice.key").unlink()
    curve_daemon.signal(signal.SIGHUP)
    assert wait_until(lambda: refused(curve_daemon.endpoint, pki["alice"], 1.0))
    # ZAP checks a key at the handshake: a connection made before the removal stays open
    assert connected.health()["live"]
    connected.close()
    assert "CURVE on: 2 allowed client keys" in curve_daemon.log()


@pytest.mark.process
def test_a_broken_allow_list_on_reload_keeps_the_previous_one(curve_daemon, pki):
    (pki["clients"] / "broken.key").write_text("metadata\ncurve\n")  # no public-key line
    curve_daemon.signal(signal.SIGHUP)
    assert wait_until(lambda: "still allowing the previous 1 clients" in curve_daemon.log())
    with curve_daemon.client(timeout=3.0) as alice:
        assert alice.health()["live"]


@pytest.mark.process
def test_the_client_cli_takes_key_files(curve_daemon, pki):
    keys = pki["dir"]
    common = ["health", "--endpoint", curve_daemon.endpoint, "--timeout", "2"]
    server = str(keys / "server.key")
    ok = run_cli(
        *common, "--curve-client-key", str(keys / "alice.key_secret"), "--curve-server-key", server
    )
    assert ok.returncode == 0 and "live: True" in ok.stdout, ok.stderr
    unknown = run_cli(
        *common, "--curve-client-key", str(keys / "bob.key_secret"), "--curve-server-key", server
    )
    assert unknown.returncode == 1 and "could not connect" in unknown.stderr
    assert "does the daemon allow this client's key" in unknown.stderr
    half = run_cli(*common, "--curve-client-key", str(keys / "alice.key_secret"))
    assert half.returncode == 1 and "go together" in half.stderr


@pytest.mark.process
@pytest.mark.parametrize(
    "flags,words",
    [
        (["--curve-clients-dir", "{tmp}/clients"], "curve_clients_dir needs curve_secret_key"),
        (["--curve-secret-key", "{tmp}/missing.key_secret"], "not a readable CURVE key file"),
        (["--curve-secret-key", "{tmp}/keys/server.key"], "holds only a public key"),
        (
            [
                "--curve-secret-key",
                "{tmp}/keys/server.key_secret",
                "--curve-clients-dir",
                "{tmp}/no",
            ],
            "is not a directory",
        ),
    ],
)
def test_bad_curve_settings_stop_the_daemon_with_one_line(tmp_path, pki, flags, words):
    flags = [f.format(tmp=tmp_path) for f in flags]
    d = Daemon(tmp_path, fake_models(tmp_path / "models"), "--backend", "fake", *flags)
    d.start(wait_ready=False)
    assert d.proc is not None
    code = d.proc.wait(30)
    d.stop()
    lines = d.log().strip().splitlines()
    assert code == 1 and len(lines) == 1 and words in lines[0], lines


def forbidden_uses(source: str) -> List[str]:
    """Names in ``source``'s code (not its comments or strings) that deserialize unsafely."""
    tokens = [
        t
        for t in tokenize.generate_tokens(io.StringIO(source).readline)
        if t.type in (tokenize.NAME, tokenize.OP)
    ]
    found = []
    for i, tok in enumerate(tokens):
        before = tokens[i - 1].string if i else ""
        after = tokens[i + 1].string if i + 1 < len(tokens) else ""
        call = tok.string in ("eval", "exec") and before != "." and after == "("
        unsafe_yaml = (
            tok.string in ("load", "unsafe_load", "full_load")
            and before == "."
            and i > 1
            and tokens[i - 2].string == "yaml"
        )
        if tok.string in FORBIDDEN_MODULES or tok.string == "allow_pickle" or call:
            found.append(tok.string)
        elif unsafe_yaml:
            found.append(f"yaml.{tok.string}")
    return found


def test_the_scanner_finds_what_it_looks_for():
    assert forbidden_uses(
        "import pickle\nx = eval('1')\nyaml.load(s)\nnp.load(f, allow_pickle=True)"
    ) == [
        "pickle",
        "eval",
        "yaml.load",
        "allow_pickle",
    ]
    assert forbidden_uses("# pickle\ns = 'eval(x)'\nast.literal_eval(t)\nyaml.safe_load(s)") == []


def test_no_pickle_marshal_eval_or_unsafe_yaml_in_the_package():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 20
    found = {str(p.relative_to(ROOT)): forbidden_uses(p.read_text()) for p in files}
    assert {p: uses for p, uses in found.items() if uses} == {}
