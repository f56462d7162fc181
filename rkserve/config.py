"""Daemon settings: the YAML file, then ``RKSERVE_*`` environment variables, then flags.

Every setting is one field of :class:`Settings` with a one-line doc; ``docs/CONFIG.md``
and ``rkserve serve --help`` are generated from the same place. A section of the file
(``frigate:``) holds the fields of that prefix (``frigate: {endpoint: ...}`` is
``frigate_endpoint``).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

import yaml

from . import dnssd
from .errors import ConfigError
from .kernels.image import OVERLAY_BYTES_PER_PIXEL

MIN_PIXELS = 8 * 8  # the smallest image decoded (kernels/image.py MIN_SIDE)


def _setting(default: Any, doc: str) -> Any:
    return dataclasses.field(default=default, metadata={"doc": doc})


@dataclasses.dataclass(frozen=True)
class Settings:
    models_dir: str = _setting("models", "folder of model folders (each with a model.yaml)")
    endpoint: str = _setting(
        "tcp://*:5555", "ZeroMQ address(es) to bind, comma-separated (tcp://HOST:PORT, ipc:///path)"
    )
    metrics_host: str = _setting("0.0.0.0", "address the Prometheus exporter binds")
    metrics_port: int = _setting(9464, "Prometheus exporter port; 0 turns the exporter off")
    backend: str = _setting(
        "auto", "auto | rknnlite | onnx | fake (auto: the NPU where present, else onnxruntime)"
    )
    queue_size: int = _setting(
        8, "requests a model may hold before the NPU; more are answered 'overloaded' at once"
    )
    deadline_ms: int = _setting(
        5000, "default request deadline; work still queued past it is answered 'deadline_exceeded'"
    )
    drain_timeout_s: float = _setting(
        10.0, "on SIGTERM/SIGINT, how long in-flight requests may take to finish"
    )
    workers: int = _setting(0, "CPU threads for decode/pre/post-processing; 0 = one per core")
    opencv_threads: int = _setting(
        1,
        "OpenCV's own threads per call; 1: none (the workers already run requests side by side); 0: one per core",
    )
    strict: bool = _setting(False, "refuse models on version warnings too, not only on failures")
    log_level: str = _setting("info", "debug | info | warning | error")
    max_message_mb: float = _setting(
        8.0, "largest request answered; larger ones get 'too_large' (4x this is dropped unread)"
    )
    max_pixels: int = _setting(
        16_000_000,
        "largest image (width x height) decoded, checked before decoding; a decode needs 6-15 bytes a pixel",
    )
    memory_budget_mb: float = _setting(
        256.0,
        "working memory of the requests in flight, estimated from their image headers at admission "
        "(6.5 bytes a pixel, 11.5 with an overlay, +2 a component sample for a progressive JPEG); "
        "past it, requests are answered 'overloaded'",
    )
    peer_reply_mb: float = _setting(
        32.0,
        "reply bytes one client may leave unread in the daemon; past it, its replies become "
        "'overloaded' errors",
    )
    total_reply_mb: float = _setting(
        128.0, "reply bytes all clients together may leave unread in the daemon"
    )
    heartbeat_s: float = _setting(
        10.0,
        "ZeroMQ heartbeat interval: a peer that answers no ping for 3x this, or does not finish "
        "its handshake within it, is disconnected; 0 = off",
    )
    runner_timeout_s: float = _setting(
        30.0, "an inference running longer marks the model unhealthy and replaces its runner"
    )
    sysroot: str = _setting(
        "/", "root for board probes (/proc, /sys, /dev, /usr/lib); tests point it at a fixture tree"
    )
    fake_latency_ms: float = _setting(0.0, "fake backend only: simulated NPU time per inference")
    gc_every: int = _setting(
        16,
        "NPU runners: collect garbage every N inferences (the runtime's per-call cycles); 0 = off",
    )
    curve_secret_key: str = _setting(
        "", "CURVE: the server's secret key file (from 'rkserve keys'); empty = no encryption"
    )
    curve_clients_dir: str = _setting(
        "", "CURVE: folder of allowed clients' public key files, reloaded on SIGHUP"
    )
    frigate_endpoint: str = _setting(
        "",
        "Frigate's zmq detector: address(es) to bind for it, comma-separated "
        "(ipc:///tmp/cache/zmq_detector, tcp://*:5556); empty = off (docs/FRIGATE.md)",
    )
    frigate_input_dtype: str = _setting(
        "float",
        "Frigate: how its float32 tensors are scaled, as its model.input_dtype: float "
        "(pixels / 255) or float_denorm (pixels 0..255); uint8 tensors need nothing",
    )
    frigate_pixel_format: str = _setting(
        "rgb",
        "Frigate: its model.input_pixel_format: rgb | bgr (the model's own order is model.yaml's)",
    )
    frigate_deadline_ms: int = _setting(
        200,
        "Frigate: a request not on the NPU after this long is dropped unanswered "
        "(Frigate has given up: its request_timeout_ms, default 200)",
    )
    frigate_uploads: bool = _setting(
        False,
        "Frigate: save a model it sends (model_data, for a name no model has) into models_dir "
        "and serve it; off: refused",
    )
    frigate_max_upload_mb: float = _setting(64.0, "Frigate: the largest model file it may send")
    announce: bool = _setting(
        True,
        "announce the daemon on the LAN as DNS-SD service _rkserve._tcp (mDNS; needs the "
        "zeroconf package); never when bound to loopback or ipc:// only",
    )
    announce_name: str = _setting(
        "", "the DNS-SD instance name, one DNS label (default: the host name)"
    )

    @property
    def endpoints(self) -> list:
        return [e.strip() for e in self.endpoint.split(",") if e.strip()]

    @property
    def frigate_endpoints(self) -> List[str]:
        return [e.strip() for e in self.frigate_endpoint.split(",") if e.strip()]


FIELDS = {f.name: f for f in dataclasses.fields(Settings)}
SECTIONS = ("frigate",)  # file sections whose keys are fields named <section>_<key>
FRIGATE_DTYPES = ("float", "float_denorm")
FRIGATE_PIXELS = ("rgb", "bgr")
LOG_LEVELS = ("debug", "info", "warning", "error")
BACKENDS = ("auto", "rknnlite", "onnx", "fake")


def _convert(name: str, value: Any, where: str) -> Any:
    kind: Any = type(FIELDS[name].default)
    try:
        if kind is bool:
            if isinstance(value, str):
                if value.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                    raise ValueError(value)
                return value.lower() in ("1", "true", "yes", "on")
            if not isinstance(value, bool):
                raise ValueError(value)
            return value
        if kind in (int, float) and isinstance(value, bool):
            raise ValueError(value)
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {name}: expected {kind.__name__}, got {value!r}") from None


def _from_file(path: Path) -> Dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings")
    data = _flatten(data, path)
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise ConfigError(f"{path}: unknown settings {unknown}; see docs/CONFIG.md")
    return {k: _convert(k, v, str(path)) for k, v in data.items()}


def _flatten(data: Dict[str, Any], path: Path) -> Dict[str, Any]:
    """``{frigate: {endpoint: X}}`` → ``{frigate_endpoint: X}``."""
    flat = {k: v for k, v in data.items() if k not in SECTIONS}
    for section in SECTIONS:
        values = data.get(section)
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: {section}: expected a mapping of settings")
        flat.update({f"{section}_{k}": v for k, v in values.items()})
    return flat


def _from_env(environ: Mapping[str, str]) -> Dict[str, Any]:
    found = {}
    for name in FIELDS:
        key = f"RKSERVE_{name.upper()}"
        if key in environ:
            found[name] = _convert(name, environ[key], f"environment {key}")
    return found


def load_settings(
    path: Union[str, Path, None] = None,
    environ: Optional[Mapping[str, str]] = None,
    overrides: Optional[Mapping[str, Any]] = None,
) -> Settings:
    """File < environment < ``overrides`` (the CLI's flags; None values are ignored)."""
    values: Dict[str, Any] = {}
    if path is not None:
        values.update(_from_file(Path(path)))
    values.update(_from_env(os.environ if environ is None else environ))
    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = _convert(name, value, "command line")
    settings = Settings(**values)
    _validate(settings)
    return settings


def _validate(settings: Settings) -> None:
    problems = []
    if settings.backend not in BACKENDS:
        problems.append(f"backend must be one of {', '.join(BACKENDS)}, got {settings.backend!r}")
    if settings.log_level not in LOG_LEVELS:
        problems.append(f"log_level must be one of {', '.join(LOG_LEVELS)}")
    if settings.gc_every < 0:
        problems.append("gc_every must be 0 (off) or more")
    if settings.queue_size < 1:
        problems.append("queue_size must be at least 1")
    if settings.workers < 0:
        problems.append("workers must be 0 (one per core) or more")
    if settings.opencv_threads < 0:
        problems.append("opencv_threads must be 0 (one per core) or more")
    if settings.max_message_mb <= 0:
        problems.append("max_message_mb must be positive")
    if settings.max_pixels < MIN_PIXELS:
        problems.append(f"max_pixels must be at least {MIN_PIXELS} (the smallest image decoded)")
    if settings.deadline_ms < 1 or settings.drain_timeout_s < 0 or settings.runner_timeout_s <= 0:
        problems.append("deadline_ms, drain_timeout_s and runner_timeout_s must be positive")
    if settings.memory_budget_mb * 2**20 < settings.max_pixels * OVERLAY_BYTES_PER_PIXEL:
        problems.append(
            f"memory_budget_mb ({settings.memory_budget_mb:g}) must hold one request of "
            f"max_pixels ({settings.max_pixels} x {OVERLAY_BYTES_PER_PIXEL:g} bytes = "
            f"{settings.max_pixels * OVERLAY_BYTES_PER_PIXEL / 2**20:.0f} MB)"
        )
    if settings.peer_reply_mb <= 0 or settings.total_reply_mb < settings.peer_reply_mb:
        problems.append("peer_reply_mb must be positive and total_reply_mb at least as large")
    if settings.heartbeat_s < 0:
        problems.append("heartbeat_s must be 0 (off) or more")
    if not 0 <= settings.metrics_port <= 65535:
        problems.append("metrics_port must be 0..65535")
    if not settings.endpoints:
        problems.append("endpoint must name at least one address")
    problems += _frigate_problems(settings)
    if settings.announce_name and not dnssd.valid_name(settings.announce_name):
        problems.append("announce_name must be 1-63 letters, digits or inner '-' (a DNS label)")
    if problems:
        raise ConfigError("invalid settings: " + "; ".join(problems))


def _frigate_problems(settings: Settings) -> List[str]:
    problems = []
    if settings.frigate_input_dtype not in FRIGATE_DTYPES:
        problems.append(f"frigate_input_dtype must be one of {', '.join(FRIGATE_DTYPES)}")
    if settings.frigate_pixel_format not in FRIGATE_PIXELS:
        problems.append(f"frigate_pixel_format must be one of {', '.join(FRIGATE_PIXELS)}")
    if settings.frigate_deadline_ms < 1 or settings.frigate_max_upload_mb <= 0:
        problems.append("frigate_deadline_ms and frigate_max_upload_mb must be positive")
    return problems


def describe_settings() -> str:
    """The settings table for docs and ``--help``."""
    lines = ["| setting | env | default | meaning |", "|---|---|---|---|"]
    for name, f in FIELDS.items():
        lines.append(
            f"| `{name}` | `RKSERVE_{name.upper()}` | `{f.default!r}` | {f.metadata['doc']} |"
        )
    return "\n".join(lines)
