"""Walk a root fast: ``os.scandir`` with no stat for what the journal already knows (a stat per
file costs 6-7x the walk itself on a million files). Yields what the pipeline must look at."""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator

from .events import DirListed, Event, FsEvent, Kind, ScanDone
from .ignore import Ignorer
from .journal.base import JournalUnavailable
from .names import decodable

log = logging.getLogger(__name__)


@dataclass
class ScanStats:
    dirs: int = 0
    files: int = 0
    known: int = 0  # skipped: already in the journal
    changed: int = 0  # known, but rewritten since (verifying scans only)
    errors: int = 0


def walk(name: str, root: str, ignorer: Ignorer, known: Callable[[str], dict[str, tuple[int, int, int]]],
         stats: ScanStats, *, start: str | None = None, verify: bool = False,
         stopped: Callable[[], bool] = lambda: False) -> Iterator[FsEvent | DirListed]:
    """Yield a ``SEEN`` event for each file below ``start`` (default: the root ``name`` at
    ``root``) that the journal does not know, and ``DirListed`` once a directory that yielded
    files is fully listed (the settle stage must not publish half a sequence while its frames still stream
    in). Unreadable directories are reported and skipped; the rest goes on. Symlinked
    directories are never followed (their targets may be outside the root).

    ``verify`` also stats the files the journal knows and yields those whose size or mtime
    moved (rewritten in place): periodic and lost-event rescans pay that, start-up does not."""
    stack = [start or root]
    base = len(root.rstrip("/\\" if os.sep == "\\" else "/")) + 1  # `P:\` and `/` keep their separator
    while stack:
        if stopped():
            return
        d = stack.pop()
        try:
            it = os.scandir(d)
        except FileNotFoundError:
            continue
        except OSError as exc:
            stats.errors += 1
            log.warning("scan: cannot read %s: %s (skipped; fix its permissions to have it published)",
                        d, exc.strerror or exc)
            continue
        stats.dirs += 1
        rel_dir = d[base:].replace(os.sep, "/")
        # the journal's records of this directory (root-relative); it holds none under a name that
        # is not UTF-8 (it cannot store one: such files are refused at admission, the rest below
        # still walked and published)
        seen = known(rel_dir) if decodable(rel_dir) else {}
        found = False
        try:
            with it:
                for entry in it:
                    rel = entry.path[base:].replace(os.sep, "/")
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            if not ignorer.ignored_dir(rel):
                                stack.append(entry.path)
                            continue
                    except OSError:
                        continue
                    if ignorer.ignored(rel):
                        continue
                    stats.files += 1
                    if entry.name in seen:
                        stats.known += 1
                        if not verify or not _changed(entry, seen[entry.name]):
                            continue
                        stats.changed += 1
                    found = True
                    yield FsEvent(name, Kind.SEEN, entry.path)
        except OSError as exc:  # the listing broke off (a stale NFS handle...): report, go on
            stats.errors += 1
            log.warning("scan: listing %s broke off: %s (the rest is found by the next rescan)", d,
                        exc.strerror or exc)
        if found:
            yield DirListed(name, d)


def _changed(entry: os.DirEntry, known: tuple[int, int, int]) -> bool:
    """A file the journal knows was rewritten since (its size or mtime moved)."""
    try:
        st = entry.stat(follow_symlinks=False)
    except OSError:
        return False
    return (st.st_size, st.st_mtime_ns) != known[:2]


class Scanner(threading.Thread):
    """Owns every walk: start-up scans, rescans after an overflow or observer trouble, new
    directories. Requests are deduplicated: a pending whole-root scan makes pending directory
    scans of that root redundant. Paths go to the pipeline queue with a blocking put, so a huge
    tree never floods memory."""

    def __init__(self, out: "queue.Queue[Event]", known: Callable[[str, str], dict[str, tuple[int, int, int]]]) -> None:
        super().__init__(name="scanner", daemon=True)
        self.out = out
        self.known = known
        self._roots: dict[str, tuple[str, Ignorer]] = {}
        self._pending: dict[str, set[str] | None] = {}  # root -> dirs to scan, None = whole root
        self._cv = threading.Condition()
        self._halt = False
        self.busy = False
        self.stats: dict[str, ScanStats] = {}
        self.scans: dict[str, int] = {}
        self._losses: dict[str, int] = {}  # root -> loss count; present while desynced
        self._verify: set[str] = set()  # roots whose next whole scan also stats known files

    def add_root(self, name: str, path: str, ignorer: Ignorer) -> None:
        with self._cv:
            self._roots[name] = (path.rstrip("/"), ignorer)

    def remove_root(self, name: str) -> None:
        """Forget a root (SIGHUP reload): its queued scans are dropped."""
        with self._cv:
            self._roots.pop(name, None)
            self._pending.pop(name, None)
            self._losses.pop(name, None)
            self._verify.discard(name)

    def request(self, root: str, directory: str | None = None, *, lost_events: bool = False,
                verify: bool = False) -> None:
        """Queue a scan of a root (or one directory of it). ``lost_events`` marks the root
        desynced: events were dropped, so nothing of it is known complete until a whole scan
        that started after the loss has finished."""
        with self._cv:
            if lost_events:
                self._losses[root] = self._losses.get(root, 0) + 1
                directory = None
                verify = True  # the lost events may have been writes to known files
            if verify:
                self._verify.add(root)
            if directory is None:
                self._pending[root] = None
            elif root not in self._pending:
                self._pending[root] = {directory}
            elif self._pending[root] is not None:
                self._pending[root].add(directory)  # type: ignore[union-attr]
            self._cv.notify()

    def pending_for(self, root: str, directory: str) -> bool:
        """The root is desynced (events were lost and the rescan has not finished) or a scan
        that has not started yet covers ``directory``. Candidates there wait for it."""
        with self._cv:
            if root in self._losses:
                return True
            dirs = self._pending.get(root, False)
            if dirs is False:
                return False
            if dirs is None:
                return True
            return any(directory == d or directory.startswith(d.rstrip("/") + "/") for d in dirs)  # type: ignore[union-attr]

    def idle(self) -> bool:
        with self._cv:
            return not self._pending and not self.busy

    def stop(self) -> None:
        with self._cv:
            self._halt = True
            self._cv.notify()

    def run(self) -> None:
        while True:
            with self._cv:
                while not self._pending and not self._halt:
                    self._cv.wait()
                if self._halt:
                    return
                root, dirs = self._pending.popitem()
                self.busy = True
                losses = self._losses.get(root)
                verify = dirs is None and root in self._verify
                if verify:
                    self._verify.discard(root)
            try:
                if self._scan(root, dirs, verify) and dirs is None and losses is not None:
                    # Behind every path this scan queued: the pipeline calls synced() when it
                    # gets here, so the root counts as in sync only once all of them are handled.
                    self._put(ScanDone(root, losses))
            except JournalUnavailable as exc:
                log.warning("scan %s: the journal cannot be read now (%s); retried at the next rescan", root, exc.reason)
            except Exception as exc:  # noqa: BLE001 - a scan must never end the scanner thread
                log.error("scan %s: failed (%s: %s); it will be retried at the next rescan", root,
                          type(exc).__name__, exc)
                log.debug("scan failure", exc_info=True)
            finally:
                with self._cv:
                    self.busy = False

    def synced(self, root: str, losses: int) -> None:
        """The pipeline has handled every path of a whole-root scan that began at loss count
        ``losses``: if nothing was lost since, the root is in sync again."""
        with self._cv:
            if self._losses.get(root) == losses:
                del self._losses[root]

    def _put(self, ev: Event) -> bool:
        while True:
            try:
                self.out.put(ev, timeout=0.5)
                return True
            except queue.Full:
                if self._halt:
                    return False

    def _scan(self, root: str, dirs: set[str] | None, verify: bool = False) -> bool:
        with self._cv:
            if root not in self._roots:
                return True  # removed by a reload while queued
            path, ignorer = self._roots[root]
        stats = ScanStats()
        starts = [path] if dirs is None else sorted(_outermost(dirs))
        t0 = time.monotonic()
        last_report = t0
        for start in starts:
            for ev in walk(root, path, ignorer, lambda rel: self.known(root, rel), stats, start=start, verify=verify,
                           stopped=lambda: self._halt):
                if not self._put(ev):
                    return False
                now = time.monotonic()
                if now - last_report > 10:
                    last_report = now
                    log.info("scan %s: %d files in %d dirs so far (%d already journaled)",
                             root, stats.files, stats.dirs, stats.known)
        self.stats[root] = stats
        if dirs is None:
            self.scans[root] = self.scans.get(root, 0) + 1
            log.info("scan %s: %d files in %d dirs (%d already journaled%s, %d unreadable) in %.1f s", root,
                     stats.files, stats.dirs, stats.known,
                     f", {stats.changed} of them changed since" if verify else "", stats.errors,
                     time.monotonic() - t0)
        return not self._halt


def _outermost(dirs: set[str]) -> list[str]:
    """Drop directories already covered by a parent in the same request."""
    out: list[str] = []
    for d in sorted(dirs):
        if not any(d == o or d.startswith(o.rstrip("/") + "/") for o in out):
            out.append(d)
    return out
