"""The supervisor: root health. It starts each root's observer (native, or polling when asked
or when no native observer loads or starts here), notices a root that vanishes (unmount) or
comes back, or whose directory was replaced under the same path (device and inode changed:
``rm -rf root && mkdir root``, a swap by ``mv``), restarts an observer whose thread or event
source died, turns every lost-event signal into "rescan this root", runs the periodic rescans,
and writes the status file. It owns the roots' health fields and their observers; nothing else
starts or stops one."""
from __future__ import annotations

import errno
import json
import logging
import os
import queue
import random
import stat
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .events import Event
from .observe import DirPoller, ObserverUnavailable, Translator, discard, native_observer, observer_running
from .paths import check_mount
from .roots import RootRuntime
from .scan import Scanner

log = logging.getLogger("watcher")

CHECK_INTERVAL = 2.0
POLLING = "polling"
_GONE = (errno.ENOENT, errno.ENOTDIR)


@dataclass
class Watching:
    """What watches one root now (the supervisor's; `watcher status` shows it)."""

    kind: str = ""  # "inotify", "fsevents", "windows" or "polling"; "" while nothing does
    fallback: str | None = None  # why a native root is polled (a failed import or start)
    identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the directory being watched
    replaced: int = 0  # times another directory took the root's path
    translator: Translator | None = None  # the native observer's: it sees the root's own deletion
    down: str | None = None  # why the root is down though its folder is there (marker missing, stale mount)
    standby: str | None = None  # the other agent that watches this root (`watched_by: one`); we stand by


def identity(path: str) -> tuple[int, int] | None:
    """The device and inode of the directory at ``path`` (through symlinks), None when none is."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None


class Supervisor(threading.Thread):
    def __init__(self, roots: dict[str, RootRuntime], events: "queue.Queue[Event]", scanner: Scanner, *,
                 rescan_interval: float, status_file: Path, status: Callable[[], dict[str, Any]],
                 holder: Callable[[str], str | None] = lambda _root: None) -> None:
        super().__init__(name="supervisor", daemon=True)
        self.roots = roots
        self.events = events
        self.scanner = scanner
        self.rescan_interval = rescan_interval
        self.status_file = status_file
        self.status = status
        self.holder = holder  # the other agent watching a root, if one does (the heartbeat's word)
        self._halt = threading.Event()
        self._lock = threading.Lock()  # observers start and stop under it: stop() never races a check
        self._stopped = False
        self.rescan_reasons: Counter[tuple[str, str]] = Counter()  # (root, reason) -> rescans (metrics)
        self.last_check = time.monotonic()  # the watchdog's proof that this thread still works
        self._next_full: dict[str, float] = {}
        self._status_error: str | None = None
        self.watching: dict[str, Watching] = {}  # root -> what watches it (read by status, any thread)

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
            self.watching.pop(name, None)
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
        """Watch ``r``: natively unless it is configured for polling or no native observer can
        be loaded or started here (then polled, said once in a WARNING naming the root). Never
        raises: a root it cannot watch now is left down and tried again at the next check."""
        if self._stopped:
            return
        w = self.watching.setdefault(r.name, Watching())
        w.standby = self.holder(r.name)
        if w.standby is not None:  # another agent watches it: nothing to start here
            r.up = True
            return
        if self._mount_down(r, w):
            return
        ident = identity(r.path)
        if ident is None:
            r.up = False
            log.error("root %s: %s is missing; waiting for it to come back", r.name, r.path)
            return
        obs: Any = None
        kind = POLLING
        translator: Translator | None = None
        if r.cfg.observer != POLLING and w.fallback is None:
            try:
                native = native_observer(r.name, r.path, self.events, self.request_rescan)
                obs, kind, translator = native.observer, native.kind, native.translator
                obs.start()
            except OSError as exc:
                discard(obs)
                obs = None
                if exc.errno in _GONE:  # gone between the check and the watch
                    r.up = False
                    log.error("root %s: %s is missing; waiting for it to come back", r.name, r.path)
                    return
                hint = " (raise fs.inotify.max_user_watches and restart)" if exc.errno == errno.ENOSPC else ""
                self._fall_back(r, w, f"it cannot be watched natively: {exc.strerror or exc}{hint}")
            except ObserverUnavailable as exc:
                self._fall_back(r, w, str(exc))
            except Exception as exc:  # any other start failure: never a crash
                discard(obs)
                obs = None
                self._fall_back(r, w, f"its native observer failed to start ({type(exc).__name__}: {exc})")
        if obs is None:
            kind, translator = POLLING, None
            obs = DirPoller(r.name, r.path, r.cfg.poll_interval, self.events, r.ignorer.ignored_dir)
            try:
                obs.start()
            except RuntimeError as exc:  # no thread to be had: try again at the next check
                r.up = False
                log.error("root %s: cannot start its poller: %s; retrying", r.name, exc)
                return
        r.observer = obs
        w.kind, w.identity, w.translator = kind, ident, translator
        r.up = True

    def _fall_back(self, r: RootRuntime, w: Watching, why: str) -> None:
        w.fallback = why
        log.warning("root %s: %s; watching %s by polling every %.1f s instead (set `observer: polling` on this root "
                    "to make that the rule)", r.name, why, r.path, r.cfg.poll_interval)

    def _stop_observer(self, r: RootRuntime) -> None:
        obs, r.observer = r.observer, None
        w = self.watching.get(r.name)
        if w is not None:
            w.kind, w.translator = "", None
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
        while not self._halt.wait(CHECK_INTERVAL):
            with self._lock:
                if self._stopped:
                    return
                self._check_all()
            self.write_status()
            self.last_check = time.monotonic()

    def _mount_down(self, r: RootRuntime, w: Watching) -> bool:
        """A root with a ``marker`` is up only while the marker is there and its mount answers:
        an unmounted share leaves an empty mount point that looks like an empty tree, and a
        stale NFS/SMB mount fails every read. Down: its observer stops, `watcher status` shows
        why (said once at ERROR); back: the caller restarts it and rescans."""
        marker = r.cfg.marker
        if not marker:
            w.down = None
            return False
        found = check_mount(r.name, r.root, marker)
        problem = None if found.ok else found.message
        if problem is None:
            if w.down is not None:
                log.warning("%s; watching it again", found.message)
            w.down = None
            return False
        if r.up or w.down != problem:
            log.error("%s; not watching it until it is back", problem)
        self._stop_observer(r)
        r.up, w.down = False, problem
        return True

    def check_now(self) -> None:
        """Look at every root at once (the heartbeat found that who watches what changed)."""
        with self._lock:
            if not self._stopped and (self.is_alive() or self._started_observers):
                self._check_all()

    def _check_all(self) -> None:
        """One check of every root (under ``_lock``)."""
        interval = self.rescan_interval  # a reload may change it
        for r in list(self.roots.values()):
            self._next_full.setdefault(r.name, time.monotonic() + interval * random.uniform(0.75, 1.25))
            try:
                self._check_root(r, self._next_full, interval)
            except Exception:
                log.exception("root %s: supervisor check failed", r.name)

    def _check_root(self, r: RootRuntime, next_full: dict[str, float], interval: float) -> None:
        w = self.watching.setdefault(r.name, Watching())
        holder = self.holder(r.name)
        if holder is not None:
            if w.standby is None:  # another agent took the root: its events and scans are that agent's
                log.warning("root %s: agent %s watches it now; this agent stops watching it and stands by", r.name,
                            holder)
                self._stop_observer(r)
            w.standby, r.up = holder, True
            return
        if w.standby is not None:  # ours now: whatever happened while we stood by is found by a rescan
            was, w.standby = w.standby, None
            log.warning("root %s: taking it over from agent %s", r.name, was)
            self._restart(r, f"taken over from agent {was}")
            return
        if self._mount_down(r, w):
            return
        ident = identity(r.path)
        if ident is None:
            if r.up:
                log.error("root %s: %s vanished (unmounted?); waiting for it to come back", r.name, r.path)
                self._stop_observer(r)
                r.up = False
            return
        w = self.watching.setdefault(r.name, Watching())
        if not r.up or r.observer is None:
            # back after an unmount or a failed watch: a new observer, then a rescan for
            # whatever happened while nobody watched
            self._restart(r, "root came back")
        elif ident != w.identity or (w.translator is not None and w.translator.root_deleted):
            # Another directory under the same path, within one check (`rm -rf root && mkdir
            # root`, a swap by `mv`): the old observer watches the old directory, or nothing.
            # A deleted root's inode may be reused at once by its successor (ext4 does), so its
            # observer's word that it saw the root deleted counts as much as a new inode.
            w.replaced += 1
            how = ("deleted and made again" if ident == w.identity
                   else f"replaced by another directory (device/inode {_ident_text(w.identity)} -> {_ident_text(ident)})")
            log.warning("root %s: %s was %s; watching the new one and rescanning it", r.name, r.path, how)
            r.real = os.path.realpath(r.path)  # containment follows the new directory
            self._restart(r, "root replaced")
        elif not observer_running(r.observer):
            # its observer thread died, or its event source stopped (a deleted or unmounted
            # root stops watchdog's emitter while the observer thread lives on)
            self._restart(r, "observer restarted")
        elif interval and time.monotonic() >= next_full[r.name]:
            next_full[r.name] = time.monotonic() + interval * random.uniform(0.75, 1.25)
            log.info("root %s: periodic rescan (stats known files too: finds files rewritten in place)", r.name)
            self.scanner.request(r.name, verify=True)

    def _restart(self, r: RootRuntime, reason: str) -> None:
        self._stop_observer(r)
        self._start_observer(r)  # logs why when it cannot, and is tried again at the next check
        if r.up:
            self.request_rescan(r.name, reason)

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


def _ident_text(ident: tuple[int, int] | None) -> str:
    return "unknown" if ident is None else f"{ident[0]}:{ident[1]}"
