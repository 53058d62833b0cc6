"""Observers per platform (#17 item 3), testable on Linux.

- A native observer that cannot be imported (watchdog's inotify module raises
  ``UnsupportedLibcError`` on macOS, ``TypeError`` on Windows, ``OSError`` on a broken libc) or
  started falls back to polling with one WARNING naming the root; ``Service.start()`` never
  crashes. kqueue is refused for trees.
- macOS and Windows: the real watchdog emitters (``watchdog.observers.fsevents``,
  ``watchdog.observers.read_directory_changes``) run here on top of a scripted kernel: a stand-in
  for watchdog's compiled ``_watchdog_fsevents`` module, and for ``watchdog.observers.winapi``
  (ctypes on kernel32) with the same reader protocol. The tests do real file operations and
  replay what FSEvents and ReadDirectoryChangesW send for them: no close events, directories
  deleted as files, a root deleted then the emitter stopped, an overflow as silence, must-scan
  flags, a failed read. Through the real supervisor, pipeline, journal and local registry.
- A dead emitter (stopped while its observer thread lives) is restarted.
"""
from __future__ import annotations

import errno
import functools
import importlib.abc
import importlib.util
import itertools
import json
import logging
import os
import queue
import shutil
import sys
import threading
import time
import types
from pathlib import Path

import pytest
import watchdog.observers
from watchdog.utils import UnsupportedLibcError

import watcher.supervise
from watcher.journal.base import Status
from watcher.observe import ObserverUnavailable, native_observer

from .agent import rows, running, settings, wait_for, write_frames

WORK = "seq/sq01/sh010/comp/work"
RENDER = "seq/sq01/sh010/comp/render/beauty/v003"


def published(s):
    return [r for r in rows(s) if r.status == Status.PUBLISHED]


def warnings_about(caplog, root: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and f"root {root}:" in r.getMessage()
            and "polling" in r.getMessage()]


# -- import and start failures ----------------------------------------------------------------
class _FailingImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Makes ``import watchdog.observers.inotify_c`` raise what it raises on another OS."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def find_spec(self, name, path, target=None):
        return importlib.util.spec_from_loader(name, self) if name == "watchdog.observers.inotify_c" else None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        raise self.exc


@pytest.mark.parametrize("exc", [UnsupportedLibcError("Unsupported libc version found: /usr/lib/libc.dylib"),
                                 TypeError("'NoneType' object is not callable"),  # ctypes.CDLL(None) on Windows
                                 OSError(errno.ENOEXEC, "Exec format error")],
                         ids=["UnsupportedLibcError", "TypeError", "OSError"])
@pytest.mark.linux_only  # the native observer that fails to import is inotify
def test_an_inotify_import_failure_falls_back_to_polling_with_one_warning(tmp_path, monkeypatch, caplog, exc):
    for mod in ("watchdog.observers.inotify", "watchdog.observers.inotify_c"):
        monkeypatch.delitem(sys.modules, mod, raising=False)
    monkeypatch.delattr(watchdog.observers, "inotify", raising=False)
    monkeypatch.delattr(watchdog.observers, "inotify_c", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_FailingImport(exc), *sys.meta_path])
    s = settings(tmp_path, root_opts={"poll_interval": 0.2})
    caplog.set_level(logging.WARNING)
    with running(s) as svc:  # Service.start() must not raise
        status = svc.status()["roots"]["shows"]
        assert status["up"] and status["watching"] == "polling"
        assert type(exc).__name__ in status["observer_fallback"]
        time.sleep(0.3)  # the poller's first snapshot
        write_frames(s.roots[0].path / RENDER, "beauty", range(1001, 1004))
        wait_for(lambda: published(s), 15)
    [warning] = warnings_about(caplog, "shows")
    assert "inotify observer cannot be loaded" in warning and str(s.roots[0].path) in warning


@pytest.mark.linux_only  # inotify's emitter is made to fail
def test_a_native_observer_that_fails_to_start_falls_back_to_polling_and_leaves_no_thread(tmp_path, monkeypatch,
                                                                                       caplog):
    from watchdog.observers import inotify

    def no_watches(self):
        raise OSError(errno.ENOSPC, "No space left on device")  # fs.inotify.max_user_watches reached

    monkeypatch.setattr(inotify.InotifyEmitter, "on_thread_start", no_watches)
    s = settings(tmp_path, root_opts={"poll_interval": 0.2})
    caplog.set_level(logging.WARNING)
    before = set(threading.enumerate())
    with running(s) as svc:
        assert svc.status()["roots"]["shows"]["watching"] == "polling"
        time.sleep(0.3)
        write_frames(s.roots[0].path / RENDER, "beauty", range(1001, 1003))
        wait_for(lambda: published(s), 15)
    [warning] = warnings_about(caplog, "shows")
    assert "max_user_watches" in warning
    wait_for(lambda: not [t for t in set(threading.enumerate()) - before if t.is_alive()], 5)


def test_kqueue_is_refused_for_trees_and_the_root_is_polled(tmp_path, monkeypatch, caplog):
    s = settings(tmp_path, root_opts={"poll_interval": 0.2})
    with pytest.raises(ObserverUnavailable, match="kqueue"):
        native_observer("shows", str(s.roots[0].path), queue.Queue(), lambda root, why: None, platform="freebsd14")
    # macOS without watchdog's compiled FSEvents module would get kqueue from watchdog: refused too
    with pytest.raises(ObserverUnavailable, match="fsevents observer cannot be loaded.*kqueue"):
        native_observer("shows", str(s.roots[0].path), queue.Queue(), lambda root, why: None, platform="darwin")
    monkeypatch.setattr(watcher.supervise, "native_observer", functools.partial(native_observer, platform="freebsd14"))
    caplog.set_level(logging.WARNING)
    with running(s) as svc:
        assert svc.status()["roots"]["shows"]["watching"] == "polling"
        time.sleep(0.3)
        write_frames(s.roots[0].path / RENDER, "beauty", range(1001, 1003))
        wait_for(lambda: published(s), 15)
    [warning] = warnings_about(caplog, "shows")
    assert "kqueue" in warning


# -- a dead emitter (Linux) -----------------------------------------------------------------------
@pytest.mark.linux_only  # inotify's emitter
def test_an_emitter_that_stopped_while_its_observer_lives_is_restarted_and_the_root_rescanned(tmp_path):
    s = settings(tmp_path)
    root = s.roots[0].path
    with running(s) as svc:
        assert svc.wait_idle(10)
        old = svc.roots["shows"].observer
        [emitter] = list(old.emitters)
        emitter.stop()  # what an unmount or an IN_DELETE_SELF does to it; the observer thread lives on
        emitter.join(5)
        assert old.is_alive()
        write_frames(root / RENDER, "beauty", range(1001, 1004))  # nobody sees these events
        wait_for(lambda: published(s), 15)
        assert svc.roots["shows"].observer is not old
        assert svc.supervisor.rescan_reasons[("shows", "observer restarted")] == 1


# -- a scripted FSEvents kernel ---------------------------------------------------------------------
FS = {"must_scan_subdirs": 0x1, "is_user_dropped": 0x2, "is_kernel_dropped": 0x4, "is_event_ids_wrapped": 0x8,
      "is_history_done": 0x10, "is_root_changed": 0x20, "is_mount": 0x40, "is_unmount": 0x80, "is_created": 0x100,
      "is_removed": 0x200, "is_inode_meta_mod": 0x400, "is_renamed": 0x800, "is_modified": 0x1000,
      "is_item_finder_info_modified": 0x2000, "is_owner_change": 0x4000, "is_xattr_mod": 0x8000, "is_file": 0x10000,
      "is_directory": 0x20000, "is_symlink": 0x40000, "is_own_event": 0x80000, "is_hardlink": 0x100000,
      "is_last_hardlink": 0x200000, "is_cloned": 0x400000}  # kFSEventStreamEventFlag* (FSEvents.h)


class FakeFSEvents:
    """Stands in for ``_watchdog_fsevents``: ``Stream(paths, latency)`` runs on the emitter thread
    and hands each batch ``send`` gives it to watchdog's callback as (paths, inodes, flags, ids);
    ``NativeEvent`` exposes the flags as watchdog's C type does."""

    def __init__(self) -> None:
        self.streams: list = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def module(self) -> types.ModuleType:
        kernel = self

        class NativeEvent:
            def __init__(self, path, inode, flags, event_id):
                self.path, self.inode, self.flags, self.event_id = path, inode, flags, event_id

            def __repr__(self):
                return f"NativeEvent({self.path!r}, {self.flags:#x})"

        for name, bit in FS.items():
            setattr(NativeEvent, name, property(lambda self, bit=bit: bool(self.flags & bit)))

        class Stream:
            def __init__(self, paths, latency):
                self.paths = [os.fsdecode(p) for p in paths]
                self._batches: queue.Queue = queue.Queue()

            def run(self, callback, started):
                with kernel._lock:
                    kernel.streams.append(self)
                started()
                while (batch := self._batches.get()) is not None:
                    callback(*batch)

            def stop(self):
                with kernel._lock:
                    if self in kernel.streams:
                        kernel.streams.remove(self)
                self._batches.put(None)

        mod = types.ModuleType("_watchdog_fsevents")
        mod.NativeEvent, mod.Stream = NativeEvent, Stream
        return mod

    def send(self, *events: tuple[Path, int]) -> None:
        """One batch of (path, flags); the inode is the path's now (0 once it is gone)."""
        batch: tuple[list, list, list, list] = ([], [], [], [])
        for path, flags in events:
            try:
                ino = os.lstat(path).st_ino
            except OSError:
                ino = 0
            for lst, v in zip(batch, (str(path), ino, flags, next(self._ids))):
                lst.append(v)
        with self._lock:
            streams = [st for st in self.streams if any(str(events[0][0]).startswith(p) for p in st.paths)]
        for st in streams:
            st._batches.put(batch)

    def watching(self) -> bool:
        with self._lock:
            return bool(self.streams)


def _fresh(monkeypatch, *names: str) -> None:
    for name in names:
        monkeypatch.delitem(sys.modules, f"watchdog.observers.{name}", raising=False)
        monkeypatch.delattr(watchdog.observers, name, raising=False)


def _forget(*names: str) -> None:
    """The modules imported on top of a stand-in must not outlive the test."""
    for name in names:
        sys.modules.pop(f"watchdog.observers.{name}", None)
        if hasattr(watchdog.observers, name):
            delattr(watchdog.observers, name)


@pytest.fixture
def macos(monkeypatch):
    kernel = FakeFSEvents()
    _fresh(monkeypatch, "fsevents")
    monkeypatch.setitem(sys.modules, "_watchdog_fsevents", kernel.module())
    monkeypatch.setattr(watcher.supervise, "native_observer", functools.partial(native_observer, platform="darwin"))
    yield kernel
    _forget("fsevents")


F, D = FS["is_file"], FS["is_directory"]
CREATED, MODIFIED, REMOVED = FS["is_created"], FS["is_modified"], FS["is_removed"]


def test_fsevents_creates_settle_without_close_events_and_each_write_restarts_the_window(tmp_path, macos):
    s = settings(tmp_path, settle_seconds=0.6)
    work = s.roots[0].path / WORK
    work.mkdir(parents=True)
    path = work / "sh010_mac_v001.nk"
    with running(s) as svc:
        assert svc.status()["roots"]["shows"]["watching"] == "fsevents"
        assert svc.wait_idle(10)
        with open(path, "wb") as f:  # a writer writing every 0.3 s (under the settle window)
            for i in range(6):
                f.write(b"x" * 1000)
                f.flush()
                macos.send((path, (CREATED if i == 0 else 0) | MODIFIED | F))
                time.sleep(0.3)
                assert rows(s) == [], "published while it was still being written"
        t_done = time.monotonic()
        [row] = wait_for(lambda: published(s), 10)
        took = time.monotonic() - t_done
    assert row.publish.size == 6000  # no partial publish
    assert took < 5, f"a file with no close event waited {took:.0f} s (the open-file timeout is 60 s)"


def test_fsevents_must_scan_subdirs_is_a_rescan(tmp_path, macos):
    s = settings(tmp_path)
    root = s.roots[0].path
    with running(s) as svc:
        assert svc.wait_idle(10)
        write_frames(root / RENDER, "beauty", range(1001, 1004))  # the events for these were coalesced away
        macos.send((root / "seq", FS["must_scan_subdirs"] | D))
        [row] = wait_for(lambda: published(s), 15)
        assert svc.roots["shows"].last_rescan_reason == "FSEvents: must scan subdirectories"
    assert row.publish.frames == "1001-1003"


def test_fsevents_root_deleted_stops_the_emitter_and_the_root_is_watched_again_when_back(tmp_path, macos):
    s = settings(tmp_path)
    root = s.roots[0].path
    with running(s) as svc:
        assert svc.wait_idle(10)
        shutil.rmtree(root)
        macos.send((root, FS["is_root_changed"] | D))  # watchdog queues the root's deletion, stops the emitter
        wait_for(lambda: not svc.roots["shows"].up, 10)
        write_frames(root / RENDER, "beauty", range(1001, 1003))  # the root is back, with a render in it
        wait_for(lambda: published(s), 15)
        assert svc.roots["shows"].up and macos.watching()
        assert svc.roots["shows"].last_rescan_reason == "root came back"


# -- a scripted ReadDirectoryChangesW kernel ----------------------------------------------------------
ADDED, REMOVED_W, MODIFIED_W, RENAMED_OLD, RENAMED_NEW, REMOVED_SELF = 1, 2, 3, 4, 5, 0xFFFE
_STOP = object()


class FakeReadDirectoryChanges:
    """Stands in for ``watchdog.observers.winapi`` with its reader protocol: the reader thread
    queues one empty buffer when it has started, then one buffer per ReadDirectoryChangesW
    return (empty on an overflow: success with no bytes); a failed read raises out of it; a
    deleted root makes it queue a deleted-self record and stop. ``get_events`` skips empty
    buffers, as watchdog's does. Buffers here are JSON lists of (action, relative name)."""

    def __init__(self) -> None:
        self.readers: list = []
        self._lock = threading.Lock()

    def module(self) -> types.ModuleType:
        kernel = self

        class WinAPINativeEvent:
            def __init__(self, action, src_path, is_attrib=False):
                self.action, self.src_path, self.is_attrib = action, src_path, is_attrib

            is_added = property(lambda self: self.action == ADDED)
            is_removed = property(lambda self: self.action == REMOVED_W)
            is_modified = property(lambda self: self.action == MODIFIED_W and not self.is_attrib)
            is_renamed_old = property(lambda self: self.action == RENAMED_OLD)
            is_renamed_new = property(lambda self: self.action == RENAMED_NEW)
            is_removed_self = property(lambda self: self.action == REMOVED_SELF)

        class DirectoryChangeReader:
            def __init__(self, path, *, recursive):
                self._path, self._recursive = path, recursive
                self._buf_queue: queue.Queue = queue.Queue()
                self._should_stop = False
                self._reader_thread = None
                self._extended = False
                self._returns: queue.Queue = queue.Queue()  # what the next ReadDirectoryChangesW returns

            def _run(self):
                with kernel._lock:
                    kernel.readers.append(self)
                try:
                    self._buf_queue.put((b"", self._extended))  # started
                    while not self._should_stop:
                        item = self._returns.get()
                        if item is _STOP:
                            return
                        if isinstance(item, BaseException):
                            raise item
                        if item and json.loads(item)[0][0] == REMOVED_SELF:
                            self._should_stop = True
                        self._buf_queue.put((item, self._extended))
                finally:
                    with kernel._lock:
                        kernel.readers.remove(self)

            def start(self):
                self._reader_thread = threading.Thread(target=self._run, name="fake-rdcw", daemon=True)
                self._reader_thread.start()
                self._buf_queue.get(timeout=2)

            def stop(self):
                self._should_stop = True
                self._returns.put(_STOP)
                if self._reader_thread is not None and self._reader_thread is not threading.current_thread():
                    self._reader_thread.join(2)

            def get_events(self, timeout):
                events = []
                while True:
                    try:
                        buf, _extended = self._buf_queue.get(timeout=timeout)
                    except queue.Empty:
                        break
                    if not buf:
                        continue
                    events.extend(WinAPINativeEvent(a, name) for a, name in json.loads(buf))
                return events

        mod = types.ModuleType("watchdog.observers.winapi")
        mod.DirectoryChangeReader, mod.WinAPINativeEvent = DirectoryChangeReader, WinAPINativeEvent
        return mod

    def _put(self, root: Path, item) -> None:
        with self._lock:
            readers = [r for r in self.readers if r._path == str(root)]
        for r in readers:
            r._returns.put(item)

    def send(self, root: Path, *records: tuple[int, Path]) -> None:
        self._put(root, json.dumps([[a, os.path.relpath(p, root)] for a, p in records]).encode())

    def overflow(self, root: Path) -> None:
        self._put(root, b"")

    def fail(self, root: Path, exc: BaseException) -> None:
        self._put(root, exc)

    def watching(self) -> bool:
        with self._lock:
            return bool(self.readers)


@pytest.fixture
def windows(monkeypatch):
    kernel = FakeReadDirectoryChanges()
    _fresh(monkeypatch, "read_directory_changes", "winapi")
    monkeypatch.setitem(sys.modules, "watchdog.observers.winapi", kernel.module())
    monkeypatch.setattr(watcher.supervise, "native_observer", functools.partial(native_observer, platform="win32"))
    yield kernel
    _forget("read_directory_changes", "winapi")


def test_windows_creates_settle_without_close_events_and_each_write_restarts_the_window(tmp_path, windows):
    s = settings(tmp_path, settle_seconds=0.6)
    root = s.roots[0].path
    work = root / WORK
    work.mkdir(parents=True)
    path = work / "sh010_win_v001.nk"
    with running(s) as svc:
        assert svc.status()["roots"]["shows"]["watching"] == "windows"
        assert svc.wait_idle(10)
        with open(path, "wb") as f:  # CopyFileEx-like: the size first, then the data, in writes
            f.truncate(4000)
            windows.send(root, (ADDED, path))
            for i in range(4):
                time.sleep(0.3)
                f.seek(i * 1000)
                f.write(b"y" * 1000)
                f.flush()
                windows.send(root, (MODIFIED_W, path))
            t_done = time.monotonic()
        [row] = wait_for(lambda: published(s), 10)
        took = time.monotonic() - t_done
    assert row.publish.size == 4000 and path.read_bytes() == b"y" * 4000
    assert took < 6, f"a file with no close event waited {took:.0f} s (the open-file timeout is 60 s)"


def test_windows_a_directory_deleted_as_a_file_drops_what_settled_below_it(tmp_path, windows):
    s = settings(tmp_path, settle_seconds=5.0)
    root = s.roots[0].path
    shot = root / "seq/sq01/sh010"
    (shot / "comp").mkdir(parents=True)
    with running(s) as svc:
        assert svc.wait_idle(10)
        files = write_frames(shot / "comp/render/beauty/v003", "beauty", range(1001, 1003))
        windows.send(root, *[(ADDED, p) for p in [shot / "comp/render", shot / "comp/render/beauty",
                                                    shot / "comp/render/beauty/v003", *files]])
        wait_for(lambda: all(svc.settler.knows(str(p)) for p in files), 10)
        gone = tmp_path / "recycle-bin"
        shutil.move(str(shot), gone)  # out of the watched tree: one record, for a path that is gone
        windows.send(root, (REMOVED_W, shot))
        wait_for(lambda: len(svc.settler) == 0, 3)  # well before their 5 s settle deadline
        assert svc.wait_idle(10)
    assert rows(s) == []


def test_windows_a_buffer_overflow_is_a_rescan_not_silence(tmp_path, windows):
    s = settings(tmp_path)
    root = s.roots[0].path
    with running(s) as svc:
        assert svc.wait_idle(10)
        write_frames(root / RENDER, "beauty", range(1001, 1004))  # too many changes: the buffer overflowed
        windows.overflow(root)
        [row] = wait_for(lambda: published(s), 15)
        assert svc.roots["shows"].last_rescan_reason == "ReadDirectoryChangesW buffer overflow"
    assert row.publish.frames == "1001-1003"


def test_windows_root_deleted_stops_the_emitter_and_the_root_is_watched_again_when_back(tmp_path, windows):
    s = settings(tmp_path)
    root = s.roots[0].path
    with running(s) as svc:
        assert svc.wait_idle(10)
        shutil.rmtree(root)
        windows.send(root, (REMOVED_SELF, root))
        wait_for(lambda: not svc.roots["shows"].up, 10)
        write_frames(root / RENDER, "beauty", range(1001, 1003))
        wait_for(lambda: published(s), 15)
        assert svc.roots["shows"].up and windows.watching()


def test_windows_a_failed_read_restarts_the_observer_and_rescans(tmp_path, windows):
    s = settings(tmp_path)
    root = s.roots[0].path
    with running(s) as svc:
        assert svc.wait_idle(10)
        write_frames(root / RENDER, "beauty", range(1001, 1003))  # written while the share was away
        windows.fail(root, OSError(errno.EIO, "The specified network name is no longer available"))
        wait_for(lambda: published(s), 15)
        reasons = svc.supervisor.rescan_reasons
        assert any(why.startswith("ReadDirectoryChangesW failed") for (_root, why) in reasons)
        wait_for(lambda: reasons[("shows", "observer restarted")] == 1, 10)  # its dead emitter is replaced
        wait_for(windows.watching, 5)
