"""The supervisor: root health. It starts each root's observer (native or polling), notices a
root that vanishes (unmount) or comes back, restarts an observer whose thread died, turns every
lost-event signal into "rescan this root", runs the periodic rescans, and writes the status
file. It owns the roots' health fields and their observers; nothing else starts or stops one."""
from __future__ import annotations

import json
import logging
import os
import queue
import random
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from .events import Event
from .observe import DirPoller, Translator, native_observer
from .roots import RootRuntime
from .scan import Scanner

log = logging.getLogger("watcher")

CHECK_INTERVAL = 2.0


class Supervisor(threading.Thread):
    def __init__(self, roots: dict[str, RootRuntime], events: "queue.Queue[Event]", scanner: Scanner, *,
                 rescan_interval: float, status_file: Path, status: Callable[[], dict[str, Any]]) -> None:
        super().__init__(name="supervisor", daemon=True)
        self.roots = roots
        self.events = events
        self.scanner = scanner
        self.rescan_interval = rescan_interval
        self.status_file = status_file
        self.status = status
        self._halt = threading.Event()
        self._lock = threading.Lock()  # observers start and stop under it: stop() never races a check
        self._stopped = False
        self.rescan_reasons: Counter[tuple[str, str]] = Counter()  # (root, reason) -> rescans (metrics)
        self.last_check = time.monotonic()  # the watchdog's proof that this thread still works
        self._next_full: dict[str, float] = {}
        self._status_error: str | None = None

    # -- roots come and go (SIGHUP reload) ---------------------------------------------------
    def add_root(self, r: RootRuntime) -> None:
        """Watch a root added (or changed) by a reload; the caller has put it in ``roots``."""
        with self._lock:
            if self.is_alive() or self._started_observers:
                self._start_observer(r)

    def remove_root(self, name: str) -> RootRuntime | None:
        """Stop watching a root and forget it (the caller's ``roots`` entry goes too)."""
        with self._lock:
            r = self.roots.pop(name, None)
            if r is not None:
                self._stop_observer(r)
            self._next_full.pop(name, None)
            return r

    # -- observers ---------------------------------------------------------------------------
    _started_observers = False

    def start_observers(self) -> None:
        with self._lock:
            self._started_observers = True
            for r in self.roots.values():
                self._start_observer(r)

    def request_rescan(self, root: str, reason: str) -> None:
        """Events of ``root`` were lost (overflow, full queue, observer trouble): rescan it."""
        r = self.roots.get(root)
        if r is None:
            return
        r.rescans += 1
        r.last_rescan_reason = reason
        self.rescan_reasons[(root, reason)] += 1
        log.warning("root %s: %s; rescanning it (rescan #%d)", root, reason, r.rescans)
        self.scanner.request(root, lost_events=True)

    def _start_observer(self, r: RootRuntime) -> None:
        if self._stopped:
            return
        if not os.path.isdir(r.path):
            r.up = False
            log.error("root %s: %s is missing; waiting for it to come back", r.name, r.path)
            return
        try:
            if r.cfg.observer == "polling":
                obs: Any = DirPoller(r.name, r.path, r.cfg.poll_interval, self.events, r.ignorer.ignored_dir)
            else:
                obs = native_observer(r.name, r.path, Translator(r.name, self.events, self.request_rescan),
                                      self.request_rescan)
            obs.start()
        except OSError as exc:
            r.up = False
            hint = " (raise fs.inotify.max_user_watches, or use observer: polling)" if exc.errno == 28 else ""
            log.error("root %s: cannot watch %s: %s%s; retrying", r.name, r.path, exc.strerror or exc, hint)
            return
        r.observer = obs
        r.up = True

    def _stop_observer(self, r: RootRuntime) -> None:
        obs, r.observer = r.observer, None
        if obs is None:
            return
        try:
            obs.stop()
            obs.join(3.0)
        except Exception:
            log.debug("root %s: observer stop failed", r.name, exc_info=True)
        if obs.is_alive():
            log.error("root %s: its observer did not stop within 3 s", r.name)

    # -- the thread --------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop checking, then stop every observer. Once this returns no check is running and
        none will start an observer again."""
        self._halt.set()
        with self._lock:
            self._stopped = True
            for r in self.roots.values():
                self._stop_observer(r)

    def run(self) -> None:
        next_full = self._next_full
        while not self._halt.wait(CHECK_INTERVAL):
            interval = self.rescan_interval  # a reload may change it
            with self._lock:
                if self._stopped:
                    return
                for r in list(self.roots.values()):
                    next_full.setdefault(r.name, time.monotonic() + interval * random.uniform(0.75, 1.25))
                    try:
                        self._check_root(r, next_full, interval)
                    except Exception:
                        log.exception("root %s: supervisor check failed", r.name)
            self.write_status()
            self.last_check = time.monotonic()

    def _check_root(self, r: RootRuntime, next_full: dict[str, float], interval: float) -> None:
        present = os.path.isdir(r.path)
        if not present:
            if r.up:
                log.error("root %s: %s vanished (unmounted?); waiting for it to come back", r.name, r.path)
                self._stop_observer(r)
                r.up = False
            return
        if not r.up or r.observer is None or not r.observer.is_alive():
            # back after an unmount or a failed watch, or its observer thread died: a new
            # observer, then a rescan for whatever happened while nobody watched
            reason = "observer restarted" if r.up and r.observer is not None else "root came back"
            self._stop_observer(r)
            self._start_observer(r)  # logs why when it cannot, and is tried again in 2 s
            if r.up:
                self.request_rescan(r.name, reason)
            return
        if interval and time.monotonic() >= next_full[r.name]:
            next_full[r.name] = time.monotonic() + interval * random.uniform(0.75, 1.25)
            log.info("root %s: periodic rescan (stats known files too: finds files rewritten in place)", r.name)
            self.scanner.request(r.name, verify=True)

    def write_status(self, extra: dict[str, Any] | None = None) -> None:
        """Write the status file; a failure is logged once (then again when it changes)."""
        path = self.status_file
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps({**self.status(), **(extra or {})}, indent=1, default=str))
            os.replace(tmp, path)
            self._status_error = None
        except OSError as exc:
            err = f"{exc.strerror or exc}"
            if err != self._status_error:
                log.error("cannot write the status file %s: %s; `watcher status` will report this agent as not "
                          "running (fix the permissions of state_dir)", path, err)
            self._status_error = err
