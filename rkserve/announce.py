"""The daemon announces itself on the LAN as a DNS-SD service (``_rkserve._tcp``) over mDNS.

With python-zeroconf (the optional ``discovery`` extra): the board appears once its first
loading pass is done, its TXT record follows every reload, and it sends goodbye packets
(records with TTL 0) when it starts to drain, so browsers drop it at once. Announcing,
updating and withdrawing each take about a second of mDNS probing and repeats: they run on
one thread of their own, never on the frontend. A daemon bound only to loopback or ipc://
announces nothing (nobody on the LAN could connect); ``announce: false`` turns it off.
Why from the daemon and not an Avahi service file: docs/FLEET.md.
"""

from __future__ import annotations

import ipaddress
import logging
import queue
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Mapping, Optional, Tuple

from . import dnssd
from .board import probes
from .config import Settings
from .modelhost import ModelHost
from .version import __version__

log = logging.getLogger("rkserve.announce")
HOST_TTL = 120  # seconds: python-zeroconf's default for address and SRV records
OTHER_TTL = 120  # PTR and TXT: a board that loses power is forgotten after this (not 75 min)
STOP_WAIT_S = 3.0  # the goodbye packets go out within this on stop
_WILDCARDS = ("*", "0.0.0.0", "::", "[::]")


@dataclass(frozen=True)
class Plan:
    """Where a board can be reached: a port and its addresses (None: every interface's)."""

    port: int
    addresses: Optional[Tuple[str, ...]]


def plan(bound: List[str]) -> Tuple[Optional[Plan], str]:
    """The first non-loopback TCP endpoint → what to announce, or None and why not."""
    for endpoint in bound:
        if not endpoint.startswith("tcp://"):
            continue
        host, _, port = endpoint[len("tcp://") :].rpartition(":")
        if host in _WILDCARDS:
            return Plan(int(port), None), ""
        address = _ipv4(host)
        if address is not None and not ipaddress.ip_address(address).is_loopback:
            return Plan(int(port), (address,)), ""
    return None, f"no LAN address among {', '.join(bound)} (loopback, IPv6 or ipc:// only)"


def _ipv4(host: str) -> Optional[str]:
    """An IPv4 address for a bound host: a literal, an IPv4-mapped IPv6 literal (ZeroMQ
    with IPv6 on reports ``[::ffff:10.0.0.5]``), or a name it resolves to; else None."""
    if host.startswith("["):
        try:
            mapped = ipaddress.IPv6Address(host.strip("[]")).ipv4_mapped
        except ValueError:
            return None
        return str(mapped) if mapped is not None else None
    try:
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        pass
    try:
        return socket.gethostbyname(host)
    except OSError:
        return None


def facts(
    settings: Settings,
    metrics_port: Optional[int],
    curve_public: Optional[bytes],
    hosts: Mapping[str, ModelHost],
) -> dnssd.Facts:
    """This daemon's TXT facts from its settings and the current model table."""
    ready = sorted(name for name, host in hosts.items() if host.ready)
    digest = dnssd.models_digest(
        [(name, repr(host.entry.fingerprint)) for name, host in hosts.items()]
    )
    return dnssd.Facts(
        name=settings.announce_name or dnssd.host_label(socket.gethostname()),
        version=__version__,
        soc=probes.soc(Path(settings.sysroot)) or "unknown",
        metrics_port=metrics_port or 0,
        curve=curve_public is not None,
        curve_key=dnssd.key_fingerprint(curve_public) if curve_public is not None else "",
        models=tuple(ready),
        models_digest=digest,
    )


class Announcer:
    """One board's service record; :meth:`publish` and :meth:`close` never block long."""

    def __init__(self, where: Plan) -> None:
        self.where = where
        self.name = ""  # the instance name in use, once registered
        self._commands: queue.Queue[Optional[dnssd.Facts]] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="announce", daemon=True)
        self._thread.start()

    def publish(self, board: dnssd.Facts) -> None:
        self._commands.put(board)

    def close(self, timeout: float = STOP_WAIT_S) -> None:
        """Withdraw the record (goodbye packets) and stop; waits up to ``timeout``."""
        if self._thread.is_alive():
            self._commands.put(None)
            self._thread.join(timeout)

    def _run(self) -> None:
        zc: Any = None
        info: Any = None
        while True:
            board = self._latest(self._commands.get())
            try:
                if board is None:
                    break
                if zc is None:
                    zc, info = self._register(board)
                else:
                    info = self._update(zc, info, board)
            except Exception as exc:  # mDNS trouble must never take the daemon down
                log.warning("announce: %s: %s", type(exc).__name__, exc)
        self._withdraw(zc, info)

    def _latest(self, board: Optional[dnssd.Facts]) -> Optional[dnssd.Facts]:
        """Several updates waiting make one; a stop wins."""
        while True:
            try:
                newer = self._commands.get_nowait()
            except queue.Empty:
                return board
            if newer is None:
                return None
            board = newer

    def _register(self, board: dnssd.Facts) -> Tuple[Any, Any]:
        import zeroconf  # the optional dependency: checked by :func:`create`

        addresses = self.where.addresses
        interfaces = list(addresses) if addresses else zeroconf.InterfaceChoice.All
        zc = zeroconf.Zeroconf(interfaces=interfaces, ip_version=zeroconf.IPVersion.V4Only)
        found = addresses or tuple(_lan_addresses())
        if not found:
            zc.close()
            raise RuntimeError("no LAN address on this host yet; announcing at the next reload")
        info = self._info(board, found)
        zc.register_service(info, allow_name_change=True)
        self.name = info.name
        log.info(
            "announced %s on %s port %d",
            info.name,
            ", ".join(info.parsed_addresses()),
            self.where.port,
        )
        return zc, info

    def _update(self, zc: Any, old: Any, board: dnssd.Facts) -> Any:
        info = self._info(board, tuple(old.parsed_addresses()), old.name)
        zc.update_service(info)
        return info

    def _info(self, board: dnssd.Facts, addresses: Tuple[str, ...], name: str = "") -> Any:
        import zeroconf

        instance = name or dnssd.instance_name(board.name)
        return zeroconf.ServiceInfo(
            dnssd.SERVICE_TYPE,
            instance,
            port=self.where.port,
            properties=dnssd.encode_txt(board),
            server=dnssd.server_name(instance.split(".")[0]),
            host_ttl=HOST_TTL,
            other_ttl=OTHER_TTL,
            parsed_addresses=list(addresses),
        )

    def _withdraw(self, zc: Any, info: Any) -> None:
        if zc is None:
            return
        try:
            if info is not None:
                zc.unregister_service(info)
                log.info("withdrew %s", info.name)
        except Exception as exc:
            log.warning("announce: withdrawing failed: %s", exc)
        finally:
            zc.close()


def _lan_addresses() -> List[str]:
    import zeroconf

    found = [a for a in zeroconf.get_all_addresses() if not ipaddress.ip_address(a).is_loopback]
    return sorted(set(found))


def create(settings: Settings, bound: List[str]) -> Optional[Announcer]:
    """An announcer for a daemon bound to ``bound``, or None (and why, in the log)."""
    if not settings.announce:
        return None
    where, why = plan(bound)
    if where is None:
        log.info("not announcing on the LAN: %s", why)
        return None
    try:
        import zeroconf  # noqa: F401
    except ImportError:
        log.warning(
            "not announcing on the LAN: python-zeroconf is not installed "
            "(pip install 'rkserve[discovery]', or set announce: false)"
        )
        return None
    return Announcer(where)
