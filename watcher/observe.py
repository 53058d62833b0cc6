"""Observe: turn filesystem activity into small immutable ``FsEvent`` records on one queue.

Observer threads only translate; they never match, stat or touch shared state (a slow or
failing handler in watchdog blocks or kills dispatch for every watch). Native roots use
watchdog's inotify observer with a narrow event mask (created, closed, moved, deleted): the
default mask overflows the kernel queue on bursts and, on many directories, loops forever.
Every overflow, observer death or full queue becomes "rescan this root": watchdog rebuilds its
watches after an overflow but never rescans, so the events it lost are found by our scan.

Polling roots (NFS/SMB, where the kernel sees no remote writes) use ``DirPoller``: one ``stat``
per directory per cycle and a listing only of directories whose mtime moved, instead of
watchdog's stat of every file."""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
import warnings
from typing import Callable

from watchdog.events import (DirCreatedEvent, DirDeletedEvent, DirMovedEvent, FileClosedEvent, FileCreatedEvent,
                             FileDeletedEvent, FileMovedEvent, FileSystemEvent, FileSystemEventHandler)
from watchdog.observers.api import BaseObserver

from .events import DirListed, Event, FsEvent, Kind

log = logging.getLogger(__name__)

# watchdog warns when a new directory's watch is added twice (its own create handling and the
# walk of the new tree both add it); the second add is harmless.
warnings.filterwarnings("ignore", message="Callback with id .* already exists", category=RuntimeWarning)

EVENT_FILTER = [FileCreatedEvent, DirCreatedEvent, FileClosedEvent, FileMovedEvent, DirMovedEvent,
                FileDeletedEvent, DirDeletedEvent]


_KINDS: dict[type, Kind] = {FileClosedEvent: Kind.CLOSED, FileMovedEvent: Kind.MOVED, FileDeletedEvent: Kind.DELETED,
                            DirCreatedEvent: Kind.DIR_CREATED, DirMovedEvent: Kind.DIR_MOVED,
                            DirDeletedEvent: Kind.DIR_DELETED}


def _s(p: str | bytes) -> str:
    return os.fsdecode(p)


class Translator(FileSystemEventHandler):
    """watchdog handler for one root: copy each event into an ``FsEvent`` inside a ``try``.
    A full queue never blocks the observer: it asks for a rescan of the root instead."""

    def __init__(self, root: str, out: "queue.Queue[Event]", on_overflow: Callable[[str, str], None]) -> None:
        self.root = root
        self.out = out
        self.on_overflow = on_overflow

    def dispatch(self, event: FileSystemEvent) -> None:
        try:
            ev = self.translate(event)
            if ev is not None:
                self.out.put_nowait(ev)
        except queue.Full:
            self.on_overflow(self.root, "event queue full")
        except Exception:  # never let one bad event kill dispatch for every watch
            log.exception("observe %s: could not translate %r; rescanning", self.root, event)
            self.on_overflow(self.root, "translation error")

    def translate(self, e: FileSystemEvent) -> FsEvent | None:
        t = type(e)
        path = _s(e.src_path)
        if t is FileCreatedEvent:
            return FsEvent(self.root, Kind.CREATED, path, synthetic=bool(getattr(e, "is_synthetic", False)))
        kind = _KINDS.get(t)
        if kind is None:
            return None
        moved = kind in (Kind.MOVED, Kind.DIR_MOVED)
        return FsEvent(self.root, kind, path, _s(e.dest_path) if moved else None)


def native_observer(root: str, path: str, handler: Translator, on_overflow: Callable[[str, str], None]) -> BaseObserver:
    """An inotify observer (or the platform's native one) for one root, with overflow hooked
    to ``on_overflow`` where watchdog exposes it."""
    try:
        from watchdog.observers.inotify import InotifyEmitter, InotifyObserver
    except ImportError:  # not Linux: the platform observer, rescans cover its losses
        from watchdog.observers import Observer

        obs = Observer()
        obs.schedule(handler, path, recursive=True, event_filter=EVENT_FILTER)
        return obs

    class Emitter(InotifyEmitter):
        def on_thread_start(self) -> None:
            super().on_thread_start()
            group = getattr(self, "_inotify", None)
            original = getattr(group, "on_queue_overflow", None)
            if group is None or original is None:
                log.warning("observe %s: this watchdog version hides queue overflows; relying on periodic rescans", root)
                return
            in_place = all(hasattr(group, a) for a in ("_lock", "_add_all_callbacks", "path", "is_active",
                                                       "_move_event_grouper"))

            def overflowed() -> None:
                # watchdog's own handling removes every watch and adds it again; each removal
                # queues an IN_IGNORED, so a tree with more directories than the kernel queue
                # has slots overflows again, forever (measured: 70 overflows/s, nothing ever
                # published). Watches survive an overflow: only add the ones for directories
                # created while events were lost, and let the rescan find their files.
                if in_place:
                    with group._lock:
                        if group.is_active:
                            group._move_event_grouper.discard_pending_events()
                            try:
                                group._add_all_callbacks(group.path)
                            except OSError as exc:
                                log.warning("observe %s: cannot re-walk watches after an overflow: %s", root, exc)
                else:
                    original()
                on_overflow(root, "inotify queue overflow")

            group.on_queue_overflow = overflowed  # the fd reader calls the callback object's method

    obs = InotifyObserver()
    obs._emitter_class = Emitter  # InotifyObserver hard-codes its emitter; ours only adds the hook
    obs.schedule(handler, path, recursive=True, event_filter=EVENT_FILTER)
    return obs


class DirPoller(threading.Thread):
    """Polling for network mounts. Keeps each directory's mtime and listing; a cycle stats every
    directory and lists only the ones whose mtime moved. New files come out as ``seen`` (the
    settle stage stats them until they are quiet); vanished ones as ``deleted``.

    A rewrite in place does not move its directory's mtime, so files that appeared recently stay
    "hot" for ``hot_seconds`` and are stat'd every cycle: a writer that paused longer than the
    settle window (published short) or a save right after a publish is seen within a cycle or
    two, not at the next periodic rescan."""

    MAX_HOT = 50_000  # files re-stat'd per cycle at most (the oldest leave first)

    def __init__(self, root: str, path: str, interval: float, out: "queue.Queue[Event]",
                 ignored_dir: Callable[[str], bool], *, hot_seconds: float = 600.0) -> None:
        super().__init__(name=f"poll-{root}", daemon=True)
        self.root, self.path, self.interval, self.out = root, path.rstrip("/"), interval, out
        self.ignored_dir = ignored_dir
        self.hot_seconds = hot_seconds
        self._halt = threading.Event()
        self._dirs: dict[str, tuple[int, frozenset[str], frozenset[str]]] = {}
        # path -> (hot until (monotonic), (size, mtime_ns) last seen or None before the first stat)
        self._hot: dict[str, tuple[float, tuple[int, int] | None]] = {}
        self.cycles = 0
        self.error: BaseException | None = None

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        try:
            self.prime()
            while not self._halt.wait(self.interval):
                self.cycle()
        except BaseException as exc:  # the supervisor sees a dead thread and restarts + rescans
            self.error = exc
            log.exception("poll %s: poller stopped", self.root)

    def _list(self, d: str) -> tuple[int, frozenset[str], frozenset[str]] | None:
        try:
            mtime = os.stat(d).st_mtime_ns
            files, dirs = [], []
            with os.scandir(d) as it:
                for e in it:
                    try:
                        is_dir = e.is_dir(follow_symlinks=False)
                    except OSError:
                        continue
                    (dirs if is_dir else files).append(e.name)
        except OSError:
            return None
        return mtime, frozenset(files), frozenset(dirs)

    def prime(self) -> None:
        """Take the first snapshot silently: the start-up scan already covers what is there."""
        stack = [self.path]
        while stack:
            d = stack.pop()
            snap = self._list(d)
            if snap is None:
                continue
            self._dirs[d] = snap
            stack.extend(os.path.join(d, n) for n in snap[2] if not self._skip(d, n))

    def _skip(self, d: str, name: str) -> bool:
        rel = os.path.join(d, name)[len(self.path) + 1:]
        return self.ignored_dir(rel)

    def cycle(self) -> None:
        self.cycles += 1
        for d in list(self._dirs):
            old = self._dirs.get(d)
            if old is None:
                continue
            try:
                mtime = os.stat(d).st_mtime_ns
            except OSError:
                self._drop(d)
                continue
            if mtime == old[0]:
                continue
            self._relist(d, old)
        self._restat_hot()

    def _restat_hot(self) -> None:
        now = time.monotonic()
        for path, (until, seen) in list(self._hot.items()):
            if now > until:
                del self._hot[path]
                continue
            try:
                st = os.stat(path)
            except OSError:
                del self._hot[path]  # gone: the directory listing reports it
                continue
            sig = (st.st_size, st.st_mtime_ns)
            if seen is not None and sig != seen:
                self.out.put(FsEvent(self.root, Kind.SEEN, path))  # rewritten in place
            self._hot[path] = (until, sig)

    def _heat(self, path: str) -> None:
        if len(self._hot) >= self.MAX_HOT:
            del self._hot[next(iter(self._hot))]
        self._hot[path] = (time.monotonic() + self.hot_seconds, None)

    def _relist(self, d: str, old: tuple[int, frozenset[str], frozenset[str]] | None) -> None:
        snap = self._list(d)
        if snap is None:
            self._drop(d)
            return
        self._dirs[d] = snap
        old_files, old_dirs = (old[1], old[2]) if old else (frozenset(), frozenset())
        new_files = snap[1] - old_files
        for name in new_files:
            path = os.path.join(d, name)
            self.out.put(FsEvent(self.root, Kind.SEEN, path))
            self._heat(path)
        if new_files:
            self.out.put(DirListed(self.root, d))
        for name in old_files - snap[1]:
            self.out.put(FsEvent(self.root, Kind.DELETED, os.path.join(d, name)))
        for name in snap[2] - old_dirs:
            if not self._skip(d, name):
                self._relist(os.path.join(d, name), None)
        for name in old_dirs - snap[2]:
            self._drop(os.path.join(d, name))

    def _drop(self, d: str) -> None:
        prefix = d + "/"
        for k in [k for k in self._dirs if k == d or k.startswith(prefix)]:
            del self._dirs[k]
        if d != self.path:
            self.out.put(FsEvent(self.root, Kind.DIR_DELETED, d))
