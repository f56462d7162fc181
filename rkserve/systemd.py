"""Tell systemd what the daemon is doing: the sd_notify(3) protocol, without libsystemd.

systemd passes ``NOTIFY_SOCKET`` (a unix datagram socket: a path, or ``@name`` in the
abstract namespace) to a ``Type=notify`` service, and ``WATCHDOG_USEC`` when the unit has
``WatchdogSec=``. A notification is one datagram of newline-separated ``KEY=value`` lines.
Outside systemd the variable is unset and every call here is a cheap no-op, so the daemon
calls the notifier unconditionally::

    notifier = Notifier.from_env()
    ...                                   # load models
    notifier.ready("serving 2 models")
    while running:                        # in the main loop, while healthy
        notifier.watchdog()               # at least every notifier.watchdog_interval s
    notifier.reloading()                  # on SIGHUP, then ready() again when done
    notifier.stopping()                   # on SIGTERM, before draining
    notifier.close()

Sending never raises: if systemd's socket went away (daemon-reexec, a test harness that
quit) the failure is logged once at debug level and the daemon carries on.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Dict, Mapping, Optional, Union

logger = logging.getLogger(__name__)

_Value = Union[str, int, bool]
_SEND_TIMEOUT_S = 2.0


class Notifier:
    """A sender of sd_notify datagrams; disabled (all no-ops) when ``address`` is None.

    ``address`` is the value of ``NOTIFY_SOCKET``; ``watchdog_usec`` the value of
    ``WATCHDOG_USEC`` when the watchdog is meant for this process.
    """

    def __init__(self, address: Optional[str], watchdog_usec: Optional[int] = None) -> None:
        self.address = address
        self._target = _socket_address(address) if address else None
        self._usec = watchdog_usec if self._target is not None else None
        self._sock: Optional[socket.socket] = None
        self._lock = threading.Lock()
        self._failed_before = False

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] = os.environ, pid: Optional[int] = None
    ) -> Notifier:
        """Build from ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID``.

        The watchdog is ignored when ``WATCHDOG_PID`` names another process (the variables
        were inherited from a parent), as sd_watchdog_enabled(3) does. ``pid`` defaults to
        ours.
        """
        address = environ.get("NOTIFY_SOCKET") or None
        usec = _positive_int(environ.get("WATCHDOG_USEC"))
        owner = environ.get("WATCHDOG_PID")
        if owner and _positive_int(owner) != (os.getpid() if pid is None else pid):
            usec = None
        return cls(address, usec)

    @property
    def enabled(self) -> bool:
        """True when notifications go somewhere."""
        return self._target is not None

    @property
    def watchdog_interval(self) -> Optional[float]:
        """Seconds between ``watchdog()`` calls (half of ``WatchdogSec``), or None."""
        return None if self._usec is None else self._usec / 2_000_000

    def notify(self, **fields: _Value) -> bool:
        """Send one datagram of ``KEY=value`` lines, in argument order.

        Booleans become ``1``/``0``; newlines inside values become spaces (a newline would
        start another assignment). Returns True when the datagram was sent.
        """
        if self._target is None or not fields:
            return False
        return self._send(_encode(fields))

    def ready(self, status: Optional[str] = None) -> bool:
        """Start-up (or a reload) is complete: the daemon serves requests."""
        return self.notify(**_with_status({"READY": True}, status))

    def status(self, text: str) -> bool:
        """Free-form one-line status shown by ``systemctl status``."""
        return self.notify(STATUS=text)

    def watchdog(self) -> bool:
        """Keep-alive ping; systemd restarts the service if pings stop for WatchdogSec."""
        return self.notify(WATCHDOG=True)

    def reloading(self, status: Optional[str] = None) -> bool:
        """A reload began; call ``ready()`` when it ends.

        ``MONOTONIC_USEC`` is required by ``Type=notify-reload`` (systemd >= 253) and
        ignored by older versions.
        """
        fields: Dict[str, _Value] = {
            "RELOADING": True,
            "MONOTONIC_USEC": time.monotonic_ns() // 1000,
        }
        return self.notify(**_with_status(fields, status))

    def stopping(self, status: Optional[str] = None) -> bool:
        """Shutdown began (draining in-flight work)."""
        return self.notify(**_with_status({"STOPPING": True}, status))

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for ``seconds`` more before the current start/stop/reload times out."""
        return self.notify(EXTEND_TIMEOUT_USEC=int(seconds * 1_000_000))

    def close(self) -> None:
        """Release the socket; later calls open a new one."""
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def _send(self, payload: bytes) -> bool:
        assert self._target is not None
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                    # A stuck service manager must not stall the daemon for long.
                    self._sock.settimeout(_SEND_TIMEOUT_S)
                self._sock.sendto(payload, self._target)
            except OSError as exc:
                if not self._failed_before:
                    logger.debug("sd_notify to %s failed: %s", self.address, exc)
                self._failed_before = True
                return False
        return True

    def __repr__(self) -> str:
        return f"Notifier(address={self.address!r}, watchdog_usec={self._usec!r})"


def _socket_address(address: str) -> Optional[str]:
    """``/path`` as is, ``@name`` → abstract ``\\0name``; other schemes (vsock:) unsupported."""
    if address.startswith("/"):
        return address
    if address.startswith("@") and len(address) > 1:
        return "\0" + address[1:]
    logger.debug("NOTIFY_SOCKET=%r is not a unix socket address; notifications disabled", address)
    return None


def _positive_int(text: Optional[str]) -> Optional[int]:
    try:
        value = int(text) if text else 0
    except ValueError:
        return None
    return value if value > 0 else None


def _with_status(fields: Dict[str, _Value], status: Optional[str]) -> Dict[str, _Value]:
    if status is not None:
        fields["STATUS"] = status
    return fields


def _encode(fields: Mapping[str, _Value]) -> bytes:
    lines = []
    for key, value in fields.items():
        if not (key.isascii() and key.replace("_", "A").isalnum() and key.isupper()):
            raise ValueError(f"not an sd_notify variable name: {key!r}")
        if isinstance(value, bool):
            value = int(value)
        text = str(value).replace("\r", " ").replace("\n", " ")
        lines.append(f"{key}={text}")
    return "\n".join(lines).encode("utf-8")
