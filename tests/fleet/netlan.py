"""A virtual LAN on this machine: network namespaces the test creates and removes itself.

One "switch" namespace holds a bridge; every host (a board, the client) is a namespace of
its own with one veth whose other end is on the bridge. Nothing is connected to the
machine's own namespace: no address outside 10.77.<n>.0/24 exists on this LAN and no
route leads anywhere else, so the mDNS multicast and the ZeroMQ/HTTP traffic of the test
cannot leave it. Needs root and ``ip`` (iproute2).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from typing import Dict, List, Optional

SUBNET_PREFIX = "10.77"


def why_not() -> Optional[str]:
    """None when namespaces can be made here, else the reason."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "ip (iproute2) is not installed"
    probe = f"rkprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def sweep_stale() -> None:
    """Remove the namespaces of earlier runs whose test process is gone (killed before its
    clean-up): ``rkf<pid>-<host>`` with no process ``<pid>``. Others' are left alone."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
    for line in listed.stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        match = re.fullmatch(r"rkf(\d+)-[a-z0-9]+", name)
        if match and not os.path.exists(f"/proc/{match.group(1)}"):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)


class Lan:
    """Namespaces ``<tag>-<host>`` on the bridge of ``<tag>-sw``; host i has 10.77.n.(10+i)."""

    def __init__(self, hosts: List[str], tag: str = "", net: int = 0) -> None:
        self.tag = tag or f"rkf{os.getpid()}"
        self.net = net or (os.getpid() % 200) + 20
        self.hosts = list(hosts)
        self.addresses: Dict[str, str] = {
            host: f"{SUBNET_PREFIX}.{self.net}.{10 + i}" for i, host in enumerate(hosts)
        }
        self.made: List[str] = []

    def namespace(self, host: str) -> str:
        return f"{self.tag}-{host}"

    def up(self) -> Lan:
        sweep_stale()
        switch = self.namespace("sw")
        self._add(switch)
        ip("-n", switch, "link", "add", "br0", "type", "bridge")
        ip("-n", switch, "link", "set", "br0", "up")
        for i, host in enumerate(self.hosts):
            self._plug(host, f"v{i}")
        return self

    def _add(self, name: str) -> None:
        ip("netns", "add", name)
        self.made.append(name)
        ip("-n", name, "link", "set", "lo", "up")

    def _plug(self, host: str, port: str) -> None:
        switch, ns = self.namespace("sw"), self.namespace(host)
        self._add(ns)
        ip(
            "link",
            "add",
            port,
            "netns",
            switch,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns,
        )
        ip("-n", switch, "link", "set", port, "master", "br0", "up")
        ip("-n", ns, "addr", "add", f"{self.addresses[host]}/24", "dev", "eth0")
        ip("-n", ns, "link", "set", "eth0", "up")
        # multicast (mDNS) goes out of eth0; there is no default route at all
        ip("-n", ns, "route", "add", "224.0.0.0/4", "dev", "eth0")

    def down(self) -> None:
        for name in reversed(self.made):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
        self.made.clear()

    def run_in(self, host: str, argv: List[str]) -> List[str]:
        """``argv`` run inside ``host``'s namespace."""
        return ["ip", "netns", "exec", self.namespace(host), *argv]
