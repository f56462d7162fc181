"""CURVE for the daemon's socket: key files, and who may connect.

With ``curve_secret_key`` set, every connection is encrypted and the daemon proves who it is
(CurveZMQ). With ``curve_clients_dir`` too, only clients whose public key file (``*.key``)
is in that folder complete the handshake; the folder is read again on SIGHUP. A client that
is not allowed gets nothing at all: no reply, no error, its requests time out::

    rkserve keys /etc/rkserve/curve --name server      # on the board
    rkserve keys ~/.config/rkserve --name laptop       # on a client; copy laptop.key to
                                                       # the board's curve_clients_dir
    client = Client("tcp://board:5555",
                    curve=curve_keys("laptop.key_secret", "server.key"))

Key files are zmq.auth certificates (``NAME.key`` public, ``NAME.key_secret`` both halves).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from .errors import ConfigError

log = logging.getLogger("rkserve")
PathLike = Union[str, Path]
PUBLIC_SUFFIX, SECRET_SUFFIX = ".key", ".key_secret"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def load_key_file(path: PathLike, need_secret: bool = False) -> Tuple[bytes, Optional[bytes]]:
    """``(public, secret)`` z85 keys from a key file; ``secret`` is None in a public file."""
    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not a readable CURVE key file ({exc})") from None
    keys = [public] + ([secret] if secret is not None else [])
    if any(len(key) != 40 for key in keys):
        raise ConfigError(f"{path}: a CURVE key must be 40 z85 characters")
    if need_secret and secret is None:
        raise ConfigError(
            f"{path} holds only a public key; give the {SECRET_SUFFIX} file made by 'rkserve keys'"
        )
    return public, secret


def curve_keys(client_secret_file: PathLike, server_public_file: PathLike) -> Dict[str, bytes]:
    """The ``curve=`` argument of :class:`rkserve.Client`, from two key files."""
    public, secret = load_key_file(client_secret_file, need_secret=True)
    server, _ = load_key_file(server_public_file)
    assert secret is not None
    return {"public": public, "secret": secret, "server": server}


def create_keys(directory: PathLike, name: str = "server") -> Tuple[Path, Path]:
    """Write ``NAME.key`` (public, 0644) and ``NAME.key_secret`` (0600) into ``directory``.

    The pair is made in a private (0700) folder inside ``directory`` and renamed into place,
    so the secret is never readable by others, whatever the umask. Existing files are kept.
    """
    if not NAME.match(name):
        raise ConfigError(f"key name {name!r}: use letters, digits, '.', '_' and '-'")
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    public, secret = folder / (name + PUBLIC_SUFFIX), folder / (name + SECRET_SUFFIX)
    for path in (public, secret):
        if path.exists():
            raise ConfigError(f"{path} exists; remove it first or choose another --name")
    staging = Path(tempfile.mkdtemp(prefix=".keys-", dir=str(folder)))
    try:
        made_public, made_secret = zmq.auth.create_certificates(str(staging), name)
        os.chmod(made_secret, 0o600)
        os.chmod(made_public, 0o644)
        os.rename(made_secret, secret)
        os.rename(made_public, public)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return public, secret


def read_allowed(folder: Path) -> Dict[bytes, bool]:
    """The public keys of every ``*.key`` file in ``folder``."""
    if not folder.is_dir():
        raise ConfigError(f"curve_clients_dir {folder} is not a directory")
    try:
        return dict(zmq.auth.load_certificates(str(folder)))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"curve_clients_dir {folder}: {exc}") from None


class CurveServer:
    """The frontend's key pair and the ZAP handler that checks clients' public keys."""

    def __init__(self, secret_key_file: PathLike, clients_dir: Optional[PathLike] = None) -> None:
        public, secret = load_key_file(secret_key_file, need_secret=True)
        assert secret is not None
        self.public, self.secret = public, secret
        if os.stat(secret_key_file).st_mode & stat.S_IROTH:
            log.warning("%s is readable by every user; chmod o-r it", secret_key_file)
        self.clients_dir = Path(clients_dir) if clients_dir else None
        self.allowed = read_allowed(self.clients_dir) if self.clients_dir else None
        self._auth: Optional[ThreadAuthenticator] = None

    def start(self, ctx: zmq.Context) -> None:
        """Start the authenticator on ``ctx``; call before binding the socket."""
        self._auth = ThreadAuthenticator(ctx, log=logging.getLogger("rkserve.auth"))
        self._auth.start()
        self._configure()

    def apply(self, sock: zmq.Socket) -> None:
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_server = True

    def reload(self) -> None:
        """Read the allow-list again (SIGHUP); a broken folder keeps the previous list."""
        if self.clients_dir is None:
            return
        try:
            self.allowed = read_allowed(self.clients_dir)
        except ConfigError as exc:
            log.error("%s; still allowing the previous %d clients", exc, len(self.allowed or ()))
            return
        self._configure()

    def _configure(self) -> None:
        assert self._auth is not None
        if self.clients_dir is None or self.allowed is None:
            self._auth.configure_curve(domain="*", location=zmq.auth.CURVE_ALLOW_ANY)
            log.info("CURVE on: connections encrypted, any client key accepted")
            return
        self._auth.configure_curve(domain="*", location=str(self.clients_dir))
        log.info("CURVE on: %d allowed client keys in %s", len(self.allowed), self.clients_dir)
        if not self.allowed:
            log.warning("no client keys in %s: every client is refused", self.clients_dir)

    def stop(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None


def curve_server(secret_key_file: str, clients_dir: str) -> Optional[CurveServer]:
    """From the settings: None when CURVE is off."""
    if not secret_key_file:
        if clients_dir:
            raise ConfigError("curve_clients_dir needs curve_secret_key (the server's key pair)")
        return None
    return CurveServer(secret_key_file, clients_dir or None)
