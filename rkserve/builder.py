"""Building a served model: the one place where a model folder becomes a :class:`ModelHost`.

The loader owns the model table and decides *when* a model is (re)loaded; it is handed a
builder (this :class:`HostBuilder`, or anything with the same two methods: tests inject
their own) that decides *how*: which backend, whether the board's versions let the model be
served (the board policy of :mod:`rkserve.board.checks`, for rknn-toolkit-lite2 only), how
many runtime instances and on which NPU cores, and the warm-up that makes a broken model
fail at load rather than on a user's request. A builder never raises: a model that cannot
be served becomes a host that says why (``failed`` or ``refused``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, List, Optional, Protocol

from .backends import choose_backend
from .board import checks, probes
from .board.rknnfile import read_rknn
from .config import Settings
from .engine import Engine
from .errors import BackendError, ConfigError, RknnFileError, RkserveError
from .metrics import Metrics
from .modelhost import ModelHost
from .repository import Entry, build_engine

log = logging.getLogger("rkserve")
# Board checks that decide whether a model is served (rknn-toolkit-lite2's own absence
# already fails the backend import with a clear message).
POLICY = ("soc", "driver", "librknnrt", "rknn_server", "device")


class Builder(Protocol):
    """What the loader needs to turn model folders into hosts."""

    def begin_pass(self) -> None:
        """Called before each loading pass."""

    def __call__(self, entry: Entry) -> ModelHost:
        """The host of ``entry``: serving, or failed/refused with the reason; never raises."""


class HostBuilder:
    """Backends, board policy, instances and warm-up, from the daemon's settings."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.board: Optional[checks.Board] = None

    def begin_pass(self) -> None:
        """Read the board again (a loading pass may follow a runtime upgrade)."""
        if self.settings.backend in ("auto", "rknnlite"):
            self.board = checks.probe_board(Path(self.settings.sysroot))
            self.metrics.set_runtime(self.board.runtime_info())

    def __call__(self, entry: Entry) -> ModelHost:
        """Load one model; never raises: failures become a host that says why."""
        size = self.settings.queue_size
        if entry.spec is None:
            log.error("model %s failed to load: %s", entry.name, entry.error)
            return ModelHost.unserved(entry, "failed", entry.error or "unreadable", size)
        try:
            kind = self.settings.backend
            if kind == "auto":
                kind = choose_backend(entry.spec, Path(self.settings.sysroot))
            refused = self._refusal(entry, kind)
            if refused:
                log.error("model %s refused: %s", entry.name, refused)
                return ModelHost.unserved(entry, "refused", refused, size)
            engines = self._open_instances(entry, kind)
        except RkserveError as exc:
            return self._failed(entry, exc)
        except Exception as exc:  # a runtime or library error at load: this model fails, alone
            log.error("model %s: loading crashed", entry.name, exc_info=exc)
            return self._failed(
                entry, BackendError(f"loading crashed: {type(exc).__name__}: {exc}")
            )
        engine = engines[0]
        log.info(
            "model %s ready (%s, %s backend%s)",
            entry.name,
            entry.spec.task,
            engine.backend.name,
            f", {len(engines)} instances" if len(engines) > 1 else "",
        )
        info = self._info(entry, engine.backend.name)
        return ModelHost.serving(entry, engines, info, size)

    def _open_instances(self, entry: Entry, kind: str) -> List[Engine]:
        """The model's engines, each warmed up (a broken model fails now, not on a user);
        on a multi-core NPU each is pinned to its own core."""
        assert entry.spec is not None
        cores = probes.npu_cores(self.board.soc) if self.board and kind == "rknnlite" else 1
        count = entry.spec.instances or cores
        engines: List[Engine] = []
        try:
            for mask in core_masks(cores, count):
                options: Dict[str, object] = {}
                if kind == "fake":
                    options["latency_ms"] = self.settings.fake_latency_ms
                if mask is not None:
                    options["core_mask"] = mask
                engine = build_engine(entry.spec, kind, self.settings.max_pixels, **options)
                engines.append(engine)
                warnings = engine.warm_up().warnings  # fail now, not on a user
                for warning in warnings if len(engines) == 1 else ():
                    log.warning("model %s: %s", entry.name, warning)
        except BaseException:
            for engine in engines:
                engine.backend.close()
            raise
        return engines

    def _failed(self, entry: Entry, exc: RkserveError) -> ModelHost:
        # a model that does not fit its model.yaml or its task is refused, not failed
        state = "refused" if isinstance(exc, ConfigError) else "failed"
        log.error("model %s %s: %s", entry.name, state, _one_line(str(exc)))
        return ModelHost.unserved(entry, state, str(exc), self.settings.queue_size)

    def _refusal(self, entry: Entry, kind: str) -> Optional[str]:
        if kind != "rknnlite" or self.board is None or entry.spec is None:
            return None
        try:
            info = read_rknn(entry.spec.rknn_path)
        except RknnFileError as exc:
            return str(exc)
        board = [
            c for c in checks.board_checks(self.board, self.settings.strict) if c.name in POLICY
        ]
        return checks.refusal(board + checks.model_checks(self.board, info, self.settings.strict))

    def _info(self, entry: Entry, backend: str) -> Dict[str, str]:
        toolkit, target = "", ""
        if entry.spec is not None and entry.spec.rknn_path.is_file():
            try:
                rknn = read_rknn(entry.spec.rknn_path)
                toolkit, target = rknn.toolkit_version, ",".join(rknn.target_platforms)
            except RknnFileError:
                pass
        task = entry.spec.task if entry.spec else ""
        return {
            "task": task,
            "toolkit_version": toolkit,
            "target_platform": target,
            "backend": backend,
        }


def _one_line(text: str) -> str:
    """A reason as one log line: a runtime's multi-line message must not split it."""
    return " | ".join(line.strip() for line in text.splitlines() if line.strip())


def core_masks(cores: int, instances: int) -> List[Optional[int]]:
    """The ``core_mask`` of each instance: its own core on a multi-core NPU (RKNNLite's
    ``NPU_CORE_0/1/2`` are 1, 2 and 4; more instances than cores share them in turn), and
    None on a single-core NPU, whose runtime refuses the argument (error -13)."""
    if cores <= 1:
        return [None] * instances
    return [1 << (n % cores) for n in range(instances)]
