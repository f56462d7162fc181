"""The DNS-SD record of a board: service type, instance names and the TXT keys.

One place for what the daemon announces (:mod:`rkserve.announce`) and what discovery reads
(:mod:`rkserve.discovery`), so the two cannot drift apart. A TXT record is a list of
``key=value`` strings of at most 255 bytes each; keys stay short (DNS-SD advises <= 9
characters) and the whole record small (one packet)::

    txtvers=1  version=0.1.0  soc=rk3568  metrics=9464  curve=1  curvekey=3f2a...
    models=shapes,shapes-det  nmodels=2  mdigest=91c0...
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Sequence, Tuple

from zmq.utils import z85

from .errors import ConfigError

SERVICE_TYPE = "_rkserve._tcp.local."
TXT_VERSION = "1"
MODELS_MAX_BYTES = 200  # past this the TXT lists no names, only the count and the digest
# An instance name is one DNS label (<= 63 bytes); keep it plain so it is also a host label.
_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


@dataclass(frozen=True)
class Facts:
    """What a board tells the LAN about itself."""

    name: str  # the instance name, e.g. "board1" (default: the host name)
    version: str  # rkserve's version
    soc: str  # "rk3568", or "unknown"
    metrics_port: int  # 0: no exporter
    curve: bool  # CURVE required to talk to it
    curve_key: str  # fingerprint of the server's public key ("" without CURVE)
    models: Tuple[str, ...]  # ready models, sorted
    models_digest: str  # changes whenever a served model changes


def valid_name(name: str) -> bool:
    """An instance name: letters, digits and inner '-', 1-63 characters (one DNS label)."""
    return bool(_NAME.fullmatch(name))


def host_label(hostname: str) -> str:
    """The host name made into an instance name (dots and other characters dropped)."""
    label = re.sub(r"[^A-Za-z0-9-]", "-", hostname.split(".")[0]).strip("-")[:63].strip("-")
    return label or "rkserve"


def instance_name(name: str) -> str:
    return f"{name}.{SERVICE_TYPE}"


def server_name(name: str) -> str:
    """The host name the SRV record points at; its own, so it never collides with the A
    records the board's Avahi announces for the machine itself."""
    return f"{name}-rkserve.local."


def key_fingerprint(public_key: bytes) -> str:
    """A CURVE public key (32 raw bytes or its 40-character Z85 text) → 16 hex digits of
    the SHA-256 of the raw key; ``rkserve keys`` files hold the Z85 text."""
    raw = public_key
    if len(public_key) == 40:
        raw = z85.decode(public_key)
    if len(raw) != 32:
        raise ConfigError(f"a CURVE public key is 32 bytes (or 40 Z85 characters), not {len(raw)}")
    return hashlib.sha256(raw).hexdigest()[:16]


def models_digest(entries: Sequence[Tuple[str, str]]) -> str:
    """16 hex digits over ``(name, fingerprint text)`` pairs, whatever their order."""
    text = "\n".join(f"{name}\t{fp}" for name, fp in sorted(entries))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def encode_txt(facts: Facts) -> Dict[str, str]:
    txt = {
        "txtvers": TXT_VERSION,
        "version": facts.version,
        "soc": facts.soc,
        "metrics": str(facts.metrics_port),
        "curve": "1" if facts.curve else "0",
        "nmodels": str(len(facts.models)),
        "mdigest": facts.models_digest,
    }
    if facts.curve:
        txt["curvekey"] = facts.curve_key
    names = ",".join(facts.models)
    if len(names.encode()) <= MODELS_MAX_BYTES:
        txt["models"] = names
    return txt


def decode_txt(properties: Mapping[bytes, Optional[bytes]]) -> Dict[str, str]:
    """zeroconf's ``ServiceInfo.properties`` (bytes → bytes or None) → str → str."""
    out = {}
    for key, value in properties.items():
        out[key.decode("utf-8", "replace")] = (value or b"").decode("utf-8", "replace")
    return out
