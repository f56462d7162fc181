"""Find the boards on the LAN: a DNS-SD browser of ``_rkserve._tcp`` over mDNS.

:class:`Browser` keeps the current set of boards up to date in the background (boards that
announce themselves appear, boards that withdraw or whose records expire disappear) and
counts changes, so that a client or the file_sd writer can wait for the next one::

    with Browser() as browser:
        browser.wait_for(lambda boards: len(boards) >= 3, timeout=5.0)
        for board in browser.boards().values():
            print(board.name, board.endpoint, board.models)

Needs python-zeroconf (the optional ``discovery`` extra); without it :class:`Browser`
raises :class:`~rkserve.errors.ConfigError` saying so.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from . import dnssd
from .errors import ConfigError

log = logging.getLogger("rkserve.discovery")
RESOLVE_MS = 3000  # how long one board's SRV/TXT/A records may take to arrive


@dataclass(frozen=True)
class Board:
    """One announced daemon, as its DNS-SD records describe it."""

    name: str
    address: str
    port: int
    soc: str
    version: str
    metrics_port: int
    curve: bool
    curve_key: str
    models: Tuple[str, ...]
    model_count: int
    models_digest: str

    @property
    def endpoint(self) -> str:
        return f"tcp://{self.address}:{self.port}"

    @property
    def metrics_target(self) -> Optional[str]:
        return f"{self.address}:{self.metrics_port}" if self.metrics_port else None

    def to_dict(self) -> Dict[str, Any]:
        return {**asdict(self), "models": list(self.models), "endpoint": self.endpoint}


def board_from(name: str, addresses: Sequence[str], port: int, txt: Mapping[str, str]) -> Board:
    """A board from its resolved records; missing TXT keys read as unknown/0."""
    if not addresses:
        raise ValueError(f"{name}: no address in its records")
    models = tuple(m for m in txt.get("models", "").split(",") if m)
    return Board(
        name=name,
        address=sorted(addresses)[0],
        port=port,
        soc=txt.get("soc", "unknown"),
        version=txt.get("version", "unknown"),
        metrics_port=_int(txt.get("metrics", "0")),
        curve=txt.get("curve") == "1",
        curve_key=txt.get("curvekey", ""),
        models=models,
        model_count=_int(txt.get("nmodels", str(len(models)))),
        models_digest=txt.get("mdigest", ""),
    )


def _int(text: str) -> int:
    return int(text) if text.isdigit() else 0


def short_name(instance: str) -> str:
    """``board1._rkserve._tcp.local.`` → ``board1``."""
    suffix = "." + dnssd.SERVICE_TYPE
    return instance[: -len(suffix)] if instance.endswith(suffix) else instance


def _zeroconf() -> Any:
    try:
        import zeroconf
    except ImportError:
        raise ConfigError(
            "discovery needs python-zeroconf: pip install 'rkserve[discovery]'"
        ) from None
    return zeroconf


class Browser:
    """The boards on the LAN, kept current by a background mDNS browser."""

    def __init__(self, interfaces: Optional[List[str]] = None) -> None:
        self._zc_module = _zeroconf()
        self._interfaces = interfaces
        self._boards: Dict[str, Board] = {}
        self._changed = threading.Condition()
        self.generation = 0  # +1 on every change of the set or of a board's records
        self._resolving = 0  # boards announced whose records are still being asked for
        self._zc: Any = None
        self._browser: Any = None

    def start(self) -> Browser:
        if self._zc is None:
            zc = self._zc_module
            interfaces = self._interfaces or zc.InterfaceChoice.All
            self._zc = zc.Zeroconf(interfaces=interfaces, ip_version=zc.IPVersion.V4Only)
            self._browser = zc.ServiceBrowser(
                self._zc, dnssd.SERVICE_TYPE, handlers=[self._on_change]
            )
        return self

    def close(self) -> None:
        if self._zc is not None:
            self._browser.cancel()
            self._zc.close()
            self._zc = None

    def __enter__(self) -> Browser:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def boards(self) -> Dict[str, Board]:
        with self._changed:
            return dict(self._boards)

    def wait_for(
        self, condition: Callable[[Dict[str, Board]], bool], timeout: float
    ) -> Dict[str, Board]:
        """Wait until ``condition(boards)`` holds or ``timeout`` passes; the boards then."""
        until = time.monotonic() + timeout
        with self._changed:
            while not condition(dict(self._boards)):
                left = until - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)
            return dict(self._boards)

    def settle(self, timeout: float = RESOLVE_MS / 1000) -> Dict[str, Board]:
        """Wait (up to ``timeout``) for the boards already heard of to be resolved."""
        with self._changed:
            self._changed.wait_for(lambda: self._resolving == 0, timeout)
            return dict(self._boards)

    def wait_change(self, seen: int, timeout: float) -> int:
        """Wait until :attr:`generation` differs from ``seen`` (or ``timeout``); return it."""
        with self._changed:
            self._changed.wait_for(lambda: self.generation != seen, timeout)
            return self.generation

    # zeroconf's browser thread ----------------------------------------------------------
    def _on_change(self, zeroconf: Any, service_type: str, name: str, state_change: Any) -> None:
        removed = state_change is self._zc_module.ServiceStateChange.Removed
        board = None
        if not removed:
            with self._changed:
                self._resolving += 1
            try:
                board = self._resolve(zeroconf, service_type, name)
            finally:
                with self._changed:
                    self._resolving -= 1
                    self._changed.notify_all()
        with self._changed:
            old = self._boards.pop(name, None)
            if board is None and not removed:
                board = old  # an update that did not resolve: keep what was known
            if board is not None:
                self._boards[name] = board
            if board != old:
                self.generation += 1
                self._changed.notify_all()

    def _resolve(self, zeroconf: Any, service_type: str, name: str) -> Optional[Board]:
        info = zeroconf.get_service_info(service_type, name, timeout=RESOLVE_MS)
        if info is None or info.port is None:
            log.info("%s did not answer with its records within %d ms", name, RESOLVE_MS)
            return None
        addresses = info.parsed_addresses(self._zc_module.IPVersion.V4Only)
        try:
            return board_from(
                short_name(name), addresses, info.port, dnssd.decode_txt(info.properties)
            )
        except ValueError as exc:
            log.info("ignoring %s", exc)
            return None


class Following:
    """The endpoints a client should be connected to: every board a :class:`Browser` knows
    that it can talk to (CURVE boards whose key is the client's server key; plain boards
    when the client has no CURVE keys)."""

    def __init__(self, browser: Browser, owned: bool, server_key: Optional[bytes]) -> None:
        self.browser = browser
        self.owned = owned  # started here: closed with the client
        self._fingerprint = dnssd.key_fingerprint(server_key) if server_key else None
        self.seen = -1  # the browser generation last applied

    def usable(self, board: Board) -> bool:
        if self._fingerprint is None:
            return not board.curve
        return board.curve and board.curve_key == self._fingerprint

    def endpoints(self) -> List[str]:
        self.seen = self.browser.generation
        boards = self.browser.boards().values()
        return sorted({b.endpoint for b in boards if self.usable(b)})

    def changed(self) -> bool:
        return self.browser.generation != self.seen

    def wait_any(self, timeout: float) -> None:
        """Wait up to ``timeout`` for a first usable board."""
        self.browser.wait_for(lambda found: any(map(self.usable, found.values())), timeout)

    def close(self) -> None:
        if self.owned:
            self.browser.close()
