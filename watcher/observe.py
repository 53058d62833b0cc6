"""Observe: turn filesystem activity into small immutable ``FsEvent`` records on one queue.

Observer threads only translate; they never match, stat or touch shared state (a slow or
failing handler in watchdog blocks or kills dispatch for every watch). Every overflow, observer
death or full queue becomes "rescan this root": the events lost are found by our scan.

Native observers, one per platform, each wrapped where watchdog hides what it lost:

- Linux, inotify, with a narrow event mask (created, closed, moved, deleted): the default mask
  overflows the kernel queue on bursts and, on many directories, loops forever. watchdog
  rebuilds its watches after an overflow but never rescans. Our emitter also sees the raw
  events watchdog flattens into "created": a rename in from outside the root (an IN_MOVED_TO
  without its IN_MOVED_FROM) is ``ARRIVED``, complete, since no close follows it; the creates
  watchdog makes up while walking a new directory come marked synthetic, so a real IN_CREATE
  in a new folder is a writer that is waited for.
- macOS, FSEvents: its must-scan-subdirs, dropped and (un)mount flags, which watchdog ignores,
  are rescans.
- Windows, ReadDirectoryChangesW: a buffer overflow (success with no bytes, which watchdog skips
  silently) is a rescan; a failed read stops the emitter, so the supervisor restarts it.

FSEvents and ReadDirectoryChangesW send no close events: their creates settle on the stat-quiet
window, which each write (``MODIFIED``) starts again; Windows reports a deleted directory as a
deleted file (it is gone, nothing can tell), so such a delete also drops what was below it.
kqueue (BSD, macOS without FSEvents) is refused: it holds a file descriptor per file, which a
tree exhausts. No native observer to be had raises ``ObserverUnavailable``; the supervisor
polls a root whose native observer cannot be loaded or started.

Polling roots (NFS/SMB, where the kernel sees no remote writes) use ``DirPoller``: one ``stat``
per directory per cycle and a listing only of directories whose mtime moved, instead of
watchdog's stat of every file."""
from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from watchdog.events import (DirCreatedEvent, DirDeletedEvent, DirMovedEvent, FileClosedEvent, FileCreatedEvent,
                             FileDeletedEvent, FileModifiedEvent, FileMovedEvent, FileSystemEvent,
                             FileSystemEventHandler)
from watchdog.observers.api import BaseObserver

from .events import DirListed, Event, FsEvent, Kind
from .names import nfc

log = logging.getLogger(__name__)

# watchdog warns when a new directory's watch is added twice (its own create handling and the
# walk of the new tree both add it); the second add is harmless.
warnings.filterwarnings("ignore", message="Callback with id .* already exists", category=RuntimeWarning)

EVENT_FILTER = [FileCreatedEvent, DirCreatedEvent, FileClosedEvent, FileMovedEvent, DirMovedEvent,
                FileDeletedEvent, DirDeletedEvent]
# Observers without close events: a write is the only sign that a writer is still at work.
EVENT_FILTER_NO_CLOSE = [*EVENT_FILTER, FileModifiedEvent]

# watchdog versions whose inotify emitter cannot be hooked report the creates of a new
# directory's walk like real ones; creates this soon after their directory appeared are then
# taken as synthetic (the old rule: a writer pausing there may be published early).
NEW_DIR_WINDOW = 2.0

# FSEvents flags that mean events were coalesced or lost below the root (watchdog ignores them).
FSEVENTS_LOSSES = (("must_scan_subdirs", "FSEvents: must scan subdirectories"),
                   ("is_user_dropped", "FSEvents: events dropped (user buffer full)"),
                   ("is_kernel_dropped", "FSEvents: events dropped by the kernel"),
                   ("is_event_ids_wrapped", "FSEvents: event ids wrapped"),
                   ("is_mount", "FSEvents: a volume was mounted below the root"),
                   ("is_unmount", "FSEvents: a volume was unmounted below the root"))

OnLost = Callable[[str, str], None]  # (root, reason): events of that root were lost, rescan it


class ObserverUnavailable(Exception):
    """No native observer can watch a root on this host; the message says why."""


class FileArrivedEvent(FileCreatedEvent):
    """A file renamed into the watch from outside it (an IN_MOVED_TO without its IN_MOVED_FROM):
    complete, no close will follow. A ``FileCreatedEvent`` to watchdog's event filter."""


@dataclass(frozen=True)
class Reports:
    """What an observer reports, so that its silences are read right."""

    closes: bool  # close-write events: without them no create is known to be held open
    marks_walk: bool  # creates made up by walking a new directory come marked ``is_synthetic``
    typed_deletes: bool  # a deleted directory comes as a directory, not as a file


INOTIFY = Reports(closes=True, marks_walk=True, typed_deletes=True)
INOTIFY_UNHOOKED = Reports(closes=True, marks_walk=False, typed_deletes=True)
FSEVENTS = Reports(closes=False, marks_walk=True, typed_deletes=True)
WINDOWS = Reports(closes=False, marks_walk=True, typed_deletes=False)


_KINDS: dict[type, Kind] = {FileClosedEvent: Kind.CLOSED, FileMovedEvent: Kind.MOVED, FileDeletedEvent: Kind.DELETED,
                            DirCreatedEvent: Kind.DIR_CREATED, DirMovedEvent: Kind.DIR_MOVED,
                            DirDeletedEvent: Kind.DIR_DELETED}


def _s(p: str | bytes) -> str:
    return os.fsdecode(p)


class Translator(FileSystemEventHandler):
    """watchdog handler for one root: copy each event into ``FsEvent`` records inside a ``try``.
    A full queue never blocks the observer: it asks for a rescan of the root instead. It runs
    on one thread (the inotify emitter's, or the observer's dispatch thread), which alone
    touches its new-directory times."""

    def __init__(self, root: str, out: "queue.Queue[Event]", on_overflow: OnLost, reports: Reports = INOTIFY,
                 path: str | None = None) -> None:
        self.root = root
        self.out = out
        self.on_overflow = on_overflow
        self.reports = reports
        self.path = nfc(path) if path is not None else None  # the directory watched
        # Its own directory was deleted: every native emitter reports that (inotify's
        # IN_DELETE_SELF, FSEvents' root-changed flag, Windows' deleted-self record), then stops.
        # A directory at the same path later is another one, even when it got the same inode.
        self.root_deleted = False
        self._new_dirs: dict[str, float] = {}  # only for observers that do not mark their walks

    def dispatch(self, event: FileSystemEvent) -> None:
        try:
            for ev in self.translate(event):
                self.out.put_nowait(ev)
        except queue.Full:
            self.on_overflow(self.root, "event queue full")
        except Exception:  # never let one bad event kill dispatch for every watch
            log.exception("observe %s: could not translate %r; rescanning", self.root, event)
            self.on_overflow(self.root, "translation error")

    def translate(self, e: FileSystemEvent) -> tuple[FsEvent, ...]:
        t = type(e)
        path = _s(e.src_path)
        rep = self.reports
        if t is FileArrivedEvent:
            return (FsEvent(self.root, Kind.ARRIVED, path),)
        if t is FileCreatedEvent:
            synthetic = bool(e.is_synthetic) or not rep.closes or (not rep.marks_walk and self._in_new_dir(path))
            return (FsEvent(self.root, Kind.CREATED, path, synthetic=synthetic),)
        if t is FileModifiedEvent:
            return () if rep.closes else (FsEvent(self.root, Kind.MODIFIED, path),)
        if t is FileDeletedEvent and not rep.typed_deletes:  # maybe a directory: what was below it goes too
            return FsEvent(self.root, Kind.DELETED, path), FsEvent(self.root, Kind.DIR_DELETED, path)
        if t is DirCreatedEvent and not rep.marks_walk:
            self._note_new_dir(path)
        elif t is DirDeletedEvent and self.path is not None and nfc(path) == self.path:
            self.root_deleted = True
        kind = _KINDS.get(t)
        if kind is None:
            return ()
        moved = kind in (Kind.MOVED, Kind.DIR_MOVED)
        return (FsEvent(self.root, kind, path, _s(e.dest_path) if moved else None),)

    def _note_new_dir(self, path: str) -> None:
        now = time.monotonic()
        if len(self._new_dirs) > 10_000:
            self._new_dirs = {d: t for d, t in self._new_dirs.items() if now - t < NEW_DIR_WINDOW}
        self._new_dirs[path] = now

    def _in_new_dir(self, path: str) -> bool:
        if not self._new_dirs:
            return False
        now = time.monotonic()
        d = os.path.dirname(path)
        while d and d != os.path.dirname(d):
            t = self._new_dirs.get(d)
            if t is not None and now - t < NEW_DIR_WINDOW:
                return True
            d = os.path.dirname(d)
        return False


@dataclass(frozen=True)
class Native:
    """A native observer for one root, not started yet."""

    observer: BaseObserver
    kind: str  # "inotify", "fsevents", "windows": what `watcher status` shows
    translator: Translator


def native_observer(root: str, path: str, out: "queue.Queue[Event]", on_lost: OnLost, *,
                    platform: str | None = None) -> Native:
    """The platform's native observer for one root, with its losses hooked to ``on_lost``.
    Raises ``ObserverUnavailable`` (saying why) when there is none that can watch a tree here:
    importing a platform module raises ``UnsupportedLibcError``, ``TypeError``, ``OSError``...
    on the wrong OS or libc, not only ``ImportError``."""
    system = platform or sys.platform
    if system.startswith("linux"):
        kind, build = "inotify", _inotify
    elif system == "darwin":
        kind, build = "fsevents", _fsevents
    elif system in ("win32", "cygwin"):
        kind, build = "windows", _windows
    else:
        raise ObserverUnavailable(f"no native observer for trees on {system}: watchdog would use kqueue, which "
                                  "holds a file descriptor per file and runs out of them on a tree")
    try:
        observer_cls, reports = build(root, on_lost)
    except Exception as exc:
        hint = (" and kqueue, the fallback there, holds a file descriptor per file (a tree runs out of them)"
                if kind == "fsevents" else "")
        raise ObserverUnavailable(f"the {kind} observer cannot be loaded ({type(exc).__name__}: {exc}){hint}") from exc
    translator = Translator(root, out, on_lost, reports, path)
    obs = observer_cls()
    try:
        obs.schedule(translator, path, recursive=True,
                     event_filter=EVENT_FILTER if reports.closes else EVENT_FILTER_NO_CLOSE)
        for emitter in obs.emitters:  # before they start: they hand events to the translator themselves
            if hasattr(type(emitter), "direct"):
                setattr(emitter, "direct", translator)  # noqa: B010 - our Emitter subclass's, not watchdog's type
    except BaseException:
        discard(obs)
        raise
    return Native(obs, kind, translator)


def discard(obs: Any) -> None:
    """Stop an observer that failed to start (or was never started) and its helper threads."""
    if obs is None:
        return
    try:
        obs.stop()
        if obs.is_alive():
            obs.join(3.0)
    except Exception:
        log.debug("could not stop a failed observer", exc_info=True)


def observer_running(obs: Any) -> bool:
    """The observer thread and every emitter thread of it are alive. An emitter stops on its own
    when its root is deleted or unmounted (watchdog's IN_DELETE_SELF, FSEvents' root-changed
    flag, Windows' deleted-self record) while the observer thread lives on, watching nothing."""
    if not obs.is_alive():
        return False
    try:
        emitters = list(getattr(obs, "emitters", ()))
    except RuntimeError:  # changed while copied: look again at the next check
        return True
    return all(e.is_alive() for e in emitters)


# -- Linux -------------------------------------------------------------------------------------
def _inotify(root: str, on_lost: OnLost) -> tuple[Callable[[], BaseObserver], Reports]:
    from watchdog.observers import inotify as wd  # raises UnsupportedLibcError/TypeError/OSError off Linux

    grouped: Any = getattr(wd, "PathedInotifyEvent", None)
    raw: Any = getattr(wd, "InotifyEvent", None)
    hooked = (grouped is not None and raw is not None and hasattr(wd.InotifyEmitter, "build_and_queue_event")
              and hasattr(getattr(wd, "InotifyWatchGroup", None), "_recursive_simulate"))
    if not hooked:
        log.warning("observe %s: this watchdog version hides which inotify creates are real; creates in a folder "
                    "made less than %.0f s before are taken as complete when quiet", root, NEW_DIR_WINDOW)

    class Walked(raw if hooked else object):  # type: ignore[misc]
        """An IN_CREATE that watchdog made up while walking a new directory."""

    class Emitter(wd.InotifyEmitter):
        # Events go straight to the root's Translator on this thread (set by native_observer):
        # through watchdog's observer queue and dispatch thread, each event cost two more thread
        # hand-offs, a fifth of the agent's CPU in a burst. One emitter per observer keeps the
        # order, and the Translator still sees every event on one thread.
        direct: "Translator | None" = None

        _types: tuple[type, ...] = ()  # the event filter as isinstance() takes it (set as the thread starts)

        def queue_event(self, event: Any) -> None:
            direct = self.direct
            if direct is None:
                super().queue_event(event)
            elif self._event_filter is None or isinstance(event, self._types):
                direct.dispatch(event)

        def on_thread_start(self) -> None:
            self._types = tuple(self._event_filter or ())
            super().on_thread_start()
            group = getattr(self, "_inotify", None)
            if hooked and group is not None:
                walk = group._recursive_simulate
                group._recursive_simulate = lambda src: [Walked(e.wd, e.mask, e.cookie, e.name) for e in walk(src)]
            _hook_overflow(root, group, on_lost)

        def build_and_queue_event(self, event: Any, *, full_events: bool = False) -> None:
            if hooked and isinstance(event, grouped) and not event.ev.is_directory:
                if isinstance(event.ev, Walked) and event.ev.is_create:
                    self.queue_event(FileCreatedEvent(self._decode_path(event.path), is_synthetic=True))
                    return
                if event.ev.is_moved_to and not full_events:  # no IN_MOVED_FROM paired with it
                    self.queue_event(FileArrivedEvent(self._decode_path(event.path)))
                    return
            # watchdog 6 has no build_and_queue_event (nor calls it); `unused-ignore`: watchdog 7 has it
            super().build_and_queue_event(event, full_events=full_events)  # type: ignore[misc, unused-ignore]

    def make() -> BaseObserver:
        obs = wd.InotifyObserver()
        obs._emitter_class = Emitter  # InotifyObserver hard-codes its emitter; ours only adds hooks
        return obs

    return make, INOTIFY if hooked else INOTIFY_UNHOOKED


def _hook_overflow(root: str, group: Any, on_lost: OnLost) -> None:
    original = getattr(group, "on_queue_overflow", None)
    if group is None or original is None:
        log.warning("observe %s: this watchdog version hides queue overflows; relying on periodic rescans", root)
        return
    in_place = all(hasattr(group, a) for a in ("_lock", "_add_all_callbacks", "path", "is_active",
                                               "_move_event_grouper"))

    def overflowed() -> None:
        # watchdog's own handling removes every watch and adds it again; each removal queues an
        # IN_IGNORED, so a tree with more directories than the kernel queue has slots overflows
        # again, forever (measured: 70 overflows/s, nothing ever published). Watches survive an
        # overflow: only add the ones for directories created while events were lost, and let
        # the rescan find their files.
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
        on_lost(root, "inotify queue overflow")

    group.on_queue_overflow = overflowed  # the fd reader calls the callback object's method


# -- macOS -------------------------------------------------------------------------------------
def fsevents_losses(events: Iterable[Any]) -> list[str]:
    """Why a batch of FSEvents native events means events were lost (empty: none were)."""
    batch = list(events)
    return [why for flag, why in FSEVENTS_LOSSES if any(getattr(e, flag, False) for e in batch)]


def _fsevents(root: str, on_lost: OnLost) -> tuple[Callable[[], BaseObserver], Reports]:
    from watchdog.observers import fsevents as wd  # needs watchdog's compiled _watchdog_fsevents (macOS)

    class Emitter(wd.FSEventsEmitter):
        def queue_events(self, timeout: Any, events: list[Any]) -> None:  # type: ignore[override]
            lost = fsevents_losses(events)  # before watchdog's handling, which consumes the list
            super().queue_events(timeout, events)
            if lost:
                on_lost(root, "; ".join(lost))

    def make() -> BaseObserver:
        obs = wd.FSEventsObserver()
        obs._emitter_class = Emitter
        return obs

    return make, FSEVENTS


# -- Windows -----------------------------------------------------------------------------------
class _OverflowQueue(queue.Queue):
    """The buffer queue of watchdog's ReadDirectoryChangesW reader. The reader queues one empty
    buffer when its thread has started; after that an empty buffer is the API's overflow answer
    (success with no bytes: every change since the last read is lost), which watchdog skips."""

    def __init__(self, on_overflow: Callable[[], None]) -> None:
        super().__init__()
        self.on_overflow = on_overflow
        self._started = False

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        buf = item[0] if isinstance(item, tuple) else item
        if not buf:
            if self._started:
                self.on_overflow()
            self._started = True
        super().put(item, block, timeout)


def _windows(root: str, on_lost: OnLost) -> tuple[Callable[[], BaseObserver], Reports]:
    from watchdog.observers import read_directory_changes as wd  # imports winapi: ctypes.windll, Windows only
    from watchdog.observers import winapi

    if not hasattr(winapi, "DirectoryChangeReader"):  # watchdog < 7 reads in the emitter itself
        log.warning("observe %s: this watchdog version hides ReadDirectoryChangesW overflows; relying on periodic "
                    "rescans", root)
        return wd.WindowsApiObserver, WINDOWS

    # watchdog 6 has no DirectoryChangeReader (returned above); `unused-ignore`: watchdog 7 has it
    class Reader(winapi.DirectoryChangeReader):  # type: ignore[name-defined, unused-ignore]
        def __init__(self, path: str, *, recursive: bool) -> None:
            super().__init__(path, recursive=recursive)
            self._buf_queue = _OverflowQueue(lambda: on_lost(root, "ReadDirectoryChangesW buffer overflow"))
            self.failure: BaseException | None = None

        def _run(self) -> None:
            try:
                super()._run()
            except BaseException as exc:  # a share that went away, a handle lost: it reads nothing again
                self.failure = exc
                on_lost(root, f"ReadDirectoryChangesW failed: {exc}")

    class Emitter(wd.WindowsApiEmitter):
        def on_thread_start(self) -> None:  # watchdog's, with our reader
            with self._lock:
                reader = self._reader = Reader(self.watch.path, recursive=self.watch.is_recursive)
            reader.start()

        def queue_events(self, timeout: Any) -> None:
            super().queue_events(timeout)
            reader = self._reader
            if reader is not None and getattr(reader, "failure", None) is not None:
                self.stop()  # a dead emitter: the supervisor restarts the observer once the root is there

    def make() -> BaseObserver:
        obs = wd.WindowsApiObserver()
        obs._emitter_class = Emitter
        return obs

    return make, WINDOWS


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
            files: list[str] = []
            dirs: list[str] = []
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
