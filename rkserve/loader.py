"""Loading, reloading and watching the served models, off the frontend thread.

``hosts`` is replaced as a whole (one reference swap), so the frontend always sees a
consistent set. On reload, unchanged models keep serving untouched; a changed model whose
new version fails to load keeps its previous version serving, with the failure reported.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

from . import checks, repository
from .backends import choose_backend, open_backend
from .config import Settings
from .engine import Engine
from .errors import BackendError, ConfigError, RknnFileError, RkserveError
from .metrics import Metrics
from .modelhost import ModelHost
from .rknnfile import read_rknn

log = logging.getLogger("rkserve")
# Board checks that decide whether a model is served (rknn-toolkit-lite2's own absence
# already fails the backend import with a clear message).
POLICY = ("soc", "driver", "librknnrt", "rknn_server", "device")
Install = Callable[[Dict[str, ModelHost]], None]


def _one_line(text: str) -> str:
    """A reason as one log line: a runtime's multi-line message must not split it."""
    return " | ".join(line.strip() for line in text.splitlines() if line.strip())


class Loader:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.hosts: Dict[str, ModelHost] = {}
        self.loading = True
        self.board: Optional[checks.Board] = None
        self._event: Optional[str] = None
        self._thread: Optional[threading.Thread] = None
        self._again = False
        self._lock = threading.Lock()
        self._install: Install = lambda hosts: None

    # called from the frontend thread -------------------------------------------------
    def start(self, install: Install) -> None:
        self.reload(install)

    def reload(self, install: Install) -> None:
        self._install = install
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                self._again = True  # one more pass when the current one ends
                return
            self._thread = threading.Thread(
                target=self._loop, args=(install,), name="loader", daemon=True
            )
            self._thread.start()

    def take_event(self) -> Optional[str]:
        event, self._event = self._event, None
        return event

    def healthy(self) -> bool:
        return not any(h.state == "stuck" for h in self.hosts.values())

    def watch_runners(self) -> None:
        timeout = self.settings.runner_timeout_s
        for host in list(self.hosts.values()):
            if host.state == "ready" and host.stuck_for() > timeout:
                log.error(
                    "model %s: inference stuck for %.0f s; answering its queue and reloading it",
                    host.name,
                    host.stuck_for(),
                )
                host.abandon_current(timeout)
                host.drain_queue(BackendError(f"model {host.name!r}: {host.error}"))
                self.metrics.set_model(host.name, False)
                self._replace_later(host)

    def abort_all(self, error: RkserveError) -> None:
        for host in self.hosts.values():
            host.drain_queue(error)
            if host.current is not None:
                host.current.fail(error)

    def stop(self) -> None:
        for host in self.hosts.values():
            host.stop(timeout=1.0)

    # loader thread ----------------------------------------------------------------------
    def _loop(self, install: Install) -> None:
        while True:
            self._again = False
            self.loading = True
            try:
                self._load_all(install)
            except Exception:  # the loader must survive anything and report it
                log.exception("model loading failed")
                self._event = "model loading failed; see the log"
            self.loading = False
            with self._lock:
                if not self._again:
                    return

    def _load_all(self, install: Install) -> None:
        try:
            entries = repository.scan(Path(self.settings.models_dir))
        except ConfigError as exc:
            log.error("%s", exc)
            entries = {}
        self._probe_board()
        old = self.hosts
        new: Dict[str, ModelHost] = {}
        for name, entry in entries.items():
            previous = old.get(name)
            if (
                previous is not None
                and previous.entry.fingerprint == entry.fingerprint
                and previous.state == "ready"
            ):
                new[name] = previous
                continue
            host = self.load(entry)
            if host.ready or previous is None or not previous.ready:
                new[name] = host
            else:
                previous.error = f"reload failed, still serving the previous version: {host.error}"
                log.error("model %s: %s", name, previous.error)
                new[name] = previous
        install({n: h for n, h in new.items() if old.get(n) is not h})
        self.hosts = new
        for name, host in old.items():
            if new.get(name) is not host:
                self._retire(host)
        self._publish(new, removed=[n for n in old if n not in new])

    def _probe_board(self) -> None:
        if self.settings.backend in ("auto", "rknnlite"):
            self.board = checks.probe_board(Path(self.settings.sysroot))
            self.metrics.set_runtime(self.board.runtime_info())

    def load(self, entry: repository.Entry) -> ModelHost:
        """Load one model; never raises: failures become a host that says why."""
        size = self.settings.queue_size
        if entry.spec is None:
            log.error("model %s failed to load: %s", entry.name, entry.error)
            return ModelHost(entry, None, entry.error, "failed", size)
        try:
            kind = self.settings.backend
            if kind == "auto":
                kind = choose_backend(entry.spec, Path(self.settings.sysroot))
            refused = self._refusal(entry, kind)
            if refused:
                log.error("model %s refused: %s", entry.name, refused)
                return ModelHost(entry, None, refused, "refused", size)
            engine = self._open_engine(entry, kind)
            engine.warm_up()  # fail now, not on a user
        except RkserveError as exc:
            # a model that does not fit its model.yaml or its task is refused, not failed
            state = "refused" if isinstance(exc, ConfigError) else "failed"
            log.error("model %s %s: %s", entry.name, state, _one_line(str(exc)))
            return ModelHost(entry, None, str(exc), state, size)
        log.info(
            "model %s ready (%s, %s backend)", entry.name, entry.spec.task, engine.backend.name
        )
        return ModelHost(
            entry, engine, None, "ready", size, info=self._info(entry, engine.backend.name)
        )

    def _open_engine(self, entry: repository.Entry, kind: str) -> Engine:
        assert entry.spec is not None
        options = {"latency_ms": self.settings.fake_latency_ms} if kind == "fake" else {}
        backend = open_backend(kind, entry.spec, **options)
        try:
            return Engine(entry.spec, backend, max_pixels=self.settings.max_pixels)
        except RkserveError:
            backend.close()
            raise

    def _refusal(self, entry: repository.Entry, kind: str) -> Optional[str]:
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

    def _info(self, entry: repository.Entry, backend: str) -> Dict[str, str]:
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

    def _retire(self, host: ModelHost) -> None:
        """Let admitted work through the old version, then close it."""
        until = time.monotonic() + self.settings.drain_timeout_s
        while host.pending > 0 and time.monotonic() < until:
            time.sleep(0.01)
        host.stop(timeout=self.settings.drain_timeout_s)

    def _replace_later(self, host: ModelHost) -> None:
        def replace() -> None:
            fresh = self.load(repository.load_entry(host.entry.folder))
            if not fresh.ready:
                host.error = f"{host.error}; replacement failed: {fresh.error}"
                return
            self._install({host.name: fresh})
            hosts = dict(self.hosts)
            hosts[host.name] = fresh
            self.hosts = hosts
            self._publish(hosts, removed=[])
            log.info("model %s: runner replaced", host.name)
            host.stop(timeout=self.settings.drain_timeout_s)  # the old runner, once unwedged

        threading.Thread(target=replace, name=f"replace-{host.name}", daemon=True).start()

    def _publish(self, hosts: Dict[str, ModelHost], removed: List[str]) -> None:
        for name in removed:
            self.metrics.remove_model(name)
        for name, host in hosts.items():
            depth = (lambda h=host: float(h.pending)) if host.ready else None
            self.metrics.set_model(name, host.ready, host.info if host.ready else None, depth)
        ready = [n for n, h in hosts.items() if h.ready]
        problems = [f"{n}: {h.state}" for n, h in hosts.items() if not h.ready]
        self._event = f"serving {len(ready)}/{len(hosts)} models" + (
            f" ({'; '.join(problems)})" if problems else ""
        )
