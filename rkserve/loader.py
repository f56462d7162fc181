"""The model table and its one owner: the loader thread.

Only the loader thread changes the table. Other threads send it commands through a queue
(``reload``, ``stop``: gunicorn's arbiter and its signal queue are the model) and read
``loader.table``, an immutable :class:`Table` replaced as a whole on every change. Reload
commands that arrive while a pass runs make one more pass, so no SIGHUP is ever lost;
several that wait together make one.

A model is in the table from the moment its folder is seen, in state ``loading``, and
each model is published as soon as it is loaded. On reload, unchanged models keep serving
untouched; a changed model serves its previous version until the new one is ready, and
keeps it (with the failure reported) if the new one fails. Between passes, and between
the models of a pass, the owner watches the runners: one wedged in the runtime for
``runner_timeout_s`` has its jobs answered and is replaced.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Callable, Dict, List, Mapping, Optional

from . import repository
from .builder import Builder
from .config import Settings
from .errors import BackendError, ConfigError, ModelUnavailable, RkserveError
from .modelhost import ModelHost

log = logging.getLogger("rkserve")
RELOAD, STOP = "reload", "stop"
WATCH_S = 0.25  # how often the owner looks for wedged runners when idle
Start = Callable[[ModelHost], None]  # starts a loaded host's runner
Abandon = Callable[[ModelHost, RkserveError], None]  # answers a wedged host's jobs


@dataclass(frozen=True)
class Table:
    """One snapshot of the served models; never changed, only replaced."""

    hosts: Mapping[str, ModelHost] = field(default_factory=lambda: MappingProxyType({}))
    loading: bool = True  # a pass is under way
    scanned: bool = False  # the repository was read at least once


class Loader:
    def __init__(self, settings: Settings, build: Builder, start: Start, abandon: Abandon) -> None:
        self.settings = settings
        self.build = build  # model folder → host (serving, or the reason it is not)
        self.table = Table()
        self.passes = 0  # loading passes started
        self._start = start
        self._abandon = abandon
        self._commands: queue.Queue[str] = queue.Queue()
        self._events: queue.Queue[str] = queue.Queue()
        self._thread: Optional[threading.Thread] = None
        self._retiring: List[threading.Thread] = []

    # any thread ---------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._own, name="loader", daemon=True)
        self._thread.start()
        self.reload()

    def reload(self) -> None:
        """Ask for a loading pass; it starts after this call, whatever the owner is doing."""
        self._commands.put(RELOAD)

    def take_event(self) -> Optional[str]:
        """The next thing to tell systemd and the log ("serving 2/2 models"), if any."""
        try:
            return self._events.get_nowait()
        except queue.Empty:
            return None

    @property
    def loading(self) -> bool:
        return self.table.loading

    def healthy(self) -> bool:
        return not any(h.state == "stuck" for h in self.table.hosts.values())

    def stop(self, timeout: float) -> None:
        """Stop the owner, then every runner (waiting up to ``timeout`` for each)."""
        self._commands.put(STOP)
        if self._thread is not None:
            self._thread.join(timeout + 5.0)
        for host in self.table.hosts.values():
            host.stop(timeout)
        for thread in self._retiring:
            thread.join(timeout)

    # the owner thread ----------------------------------------------------------------------
    def _own(self) -> None:
        while True:
            try:
                command = self._commands.get(timeout=WATCH_S)
            except queue.Empty:
                self._watch()
                continue
            if command == STOP or self._coalesce():
                return
            try:
                self._pass()
            except Exception:  # the owner must survive anything and report it
                log.exception("model loading failed")
                self._events.put("model loading failed; see the log")
                self._swap({}, loading=False)

    def _coalesce(self) -> bool:
        """Take the reloads already waiting (one pass serves them all); True on a stop."""
        while True:
            try:
                if self._commands.get_nowait() == STOP:
                    return True
            except queue.Empty:
                return False

    def _swap(
        self,
        changes: Mapping[str, Optional[ModelHost]],
        loading: Optional[bool] = None,
        scanned: bool = True,
    ) -> None:
        """Publish a new table: ``changes`` put (a host) or remove (None) models."""
        hosts: Dict[str, ModelHost] = dict(self.table.hosts)
        for name, host in changes.items():
            if host is None:
                hosts.pop(name, None)
            else:
                hosts[name] = host
        hosts = dict(sorted(hosts.items()))
        self.table = Table(
            MappingProxyType(hosts),
            self.table.loading if loading is None else loading,
            scanned,
        )

    def _pass(self) -> None:
        self.passes += 1
        self._swap({}, loading=True, scanned=self.table.scanned)
        try:
            entries = repository.scan(Path(self.settings.models_dir))
        except ConfigError as exc:
            log.error("%s", exc)
            entries = {}
        self.build.begin_pass()
        old = self.table.hosts
        todo = [
            e
            for n, e in entries.items()
            if not (n in old and old[n].entry.fingerprint == e.fingerprint and old[n].ready)
        ]
        size = self.settings.queue_size
        seen: Dict[str, Optional[ModelHost]] = {
            e.name: ModelHost.loading(e, size)
            for e in todo
            if e.name not in old or not old[e.name].ready
        }
        seen.update({name: None for name in old if name not in entries})
        self._swap(seen)  # every model is listed from now on, new ones as loading
        for name, host in old.items():
            if name not in entries:
                self._retire(host)
        for entry in todo:
            self._watch()
            self._install(entry)
        self._swap({}, loading=False)
        self._events.put(self._summary())

    def _install(self, entry: repository.Entry) -> None:
        """Load one model and put it in the table, or keep its previous version serving."""
        host = self.build(entry)
        previous = self.table.hosts.get(entry.name)
        if host.ready or previous is None or not previous.ready:
            if host.ready:
                self._start(host)
            self._swap({entry.name: host})
            if previous is not None:
                self._retire(previous)
            return
        previous.error = f"reload failed, still serving the previous version: {host.error}"
        log.error("model %s: %s", entry.name, previous.error)
        self._swap({})

    def _retire(self, host: ModelHost) -> None:
        """Let the work admitted to a replaced version through, then close it (off the owner
        thread: a retiring version must not hold up loading or watching)."""
        if host.engine is None:
            return

        def retire() -> None:
            until = time.monotonic() + self.settings.drain_timeout_s
            while host.pending > 0 and time.monotonic() < until:
                time.sleep(0.01)
            if not host.stop(timeout=self.settings.drain_timeout_s):
                # wedged: what still waits behind it (admitted as it was found stuck) is
                # answered now, not when (if ever) the runtime returns
                self._abandon(host, ModelUnavailable(f"model {host.name!r} was replaced; retry"))

        thread = threading.Thread(target=retire, name=f"retire-{host.name}", daemon=True)
        self._retiring = [t for t in self._retiring if t.is_alive()] + [thread]
        thread.start()

    def _watch(self) -> None:
        """Answer the jobs of runners wedged in the runtime, and replace those runners."""
        timeout = self.settings.runner_timeout_s
        for host in list(self.table.hosts.values()):
            if host.state == "ready" and host.stuck_for() > timeout:
                log.error(
                    "model %s: inference stuck for %.0f s; answering its queue and reloading it",
                    host.name,
                    host.stuck_for(),
                )
                host.state = "stuck"
                host.error = (
                    f"inference has not returned for {timeout:.0f} s; the runtime is wedged"
                )
                self._abandon(host, BackendError(f"model {host.name!r}: {host.error}"))
                self._swap({host.name: host})
                self._replace(host)

    def _replace(self, host: ModelHost) -> None:
        fresh = self.build(repository.load_entry(host.entry.folder))
        if not fresh.ready:
            host.error = f"{host.error}; replacement failed: {fresh.error}"
            self._swap({host.name: host})
            return
        self._start(fresh)
        self._swap({host.name: fresh})
        self._events.put(self._summary())
        log.info("model %s: runner replaced", host.name)
        self._retire(host)  # the old runner closes once (if ever) the runtime returns

    def _summary(self) -> str:
        hosts = self.table.hosts
        ready = [n for n, h in hosts.items() if h.ready]
        problems = [f"{n}: {h.state}" for n, h in hosts.items() if not h.ready]
        return f"serving {len(ready)}/{len(hosts)} models" + (
            f" ({'; '.join(problems)})" if problems else ""
        )
