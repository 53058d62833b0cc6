"""The pipeline thread: match → group → settle → journal. It is the one owner of candidate
state: it takes events off the queue, admits and matches files, offers them to the settler, and
commits what settles to the journal (before anything is sent), applying the root's republish
policy to publishes that already exist. Publisher workers take it from there.

``dry_run`` answers the same question without a journal write: what would a scan publish."""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import Counter
from typing import Any, Callable

from .candidate import Candidate, build_publish, candidate_key
from .events import DirListed, Event, FsEvent, Kind, ScanDone
from .ignore import COOKIE_PREFIX
from .errors import JournalError
from .journal.base import FileRecord, Row, Status, TransitionError
from .journal.ledger import Journal
from .model import Publish
from .roots import Refusal, RootRuntime
from .scan import Scanner, ScanStats, walk
from .settle import Settler

log = logging.getLogger("watcher")

# watchdog reports the files it finds when it walks a brand-new directory as plain "created"
# events, indistinguishable from real ones; creates this soon after their directory appeared
# are treated as synthetic: no close event may ever follow them.
NEW_DIR_WINDOW = 2.0
BATCH = 2000  # events handled before the settler is asked what is due


class KeyCache:
    """``candidate_key`` costs a json.dumps per file; the frames of one sequence share it."""

    def __init__(self, size: int = 10_000) -> None:
        self._keys: dict[tuple, str] = {}
        self._size = size

    def key(self, root: str, m: Any) -> str:
        fk = (root, m.template, m.padding, m.frame is None,
              tuple(sorted((k, v) for k, v in m.fields.items() if k != m.frame_key)))
        key = self._keys.get(fk)
        if key is None:
            if len(self._keys) > self._size:
                self._keys.clear()
            key = self._keys[fk] = candidate_key(root, m)
        return key


class Pipeline(threading.Thread):
    def __init__(self, roots: dict[str, RootRuntime], events: "queue.Queue[Event]", settler: Settler,
                 scanner: Scanner, journal: Journal, on_journaled: Callable[[], None]) -> None:
        super().__init__(name="pipeline", daemon=True)
        self.roots = roots
        self.events = events
        self.settler = settler
        self.scanner = scanner
        self.journal = journal
        self.on_journaled = on_journaled
        self.committed = 0
        self.unmatched: Counter[str] = Counter()  # root name -> files that matched no template
        self._halt = threading.Event()
        self._flowing = threading.Event()
        self._flowing.set()
        self._keys = KeyCache()
        self._new_dirs: dict[str, float] = {}
        self._listing: set[str] = set()  # directories whose scan listing is still streaming in
        self._cookies: dict[str, threading.Event] = {}
        self._cookie_n = 0
        self._lock = threading.Lock()  # guards _cookies (sync() runs on other threads)

    # -- control (any thread) ----------------------------------------------------------------
    def stop(self) -> None:
        self._halt.set()
        self._flowing.set()

    def pause(self) -> None:
        """Stop taking events until ``resume()`` (the queue fills, as behind a slow disk)."""
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def sync(self, root: RootRuntime, timeout: float = 10.0) -> bool:
        """Cookie barrier: write a cookie file in the root and wait until this thread has seen
        it, so that every event before it has been handled (tests, `scan --wait`)."""
        with self._lock:
            self._cookie_n += 1
            name = f"{COOKIE_PREFIX}{os.getpid()}-{self._cookie_n}"
            ev = self._cookies[name] = threading.Event()
        path = os.path.join(root.path, name)
        with open(path, "w"):
            pass
        try:
            return ev.wait(timeout)
        finally:
            with self._lock:
                self._cookies.pop(name, None)
            try:
                os.unlink(path)
            except OSError:
                pass

    # -- the thread --------------------------------------------------------------------------
    def run(self) -> None:
        while not self._halt.is_set():
            self._flowing.wait()
            try:
                self.step()
            except Exception:
                log.exception("pipeline: unexpected error; continuing")

    def step(self) -> None:
        nxt = self.settler.next_deadline()
        timeout = 0.5 if nxt is None else min(0.5, max(0.0, nxt - time.monotonic()))
        try:
            ev: Event | None = self.events.get(timeout=timeout)
        except queue.Empty:
            ev = None
        n = 0
        while ev is not None:
            try:
                self.handle(ev)
            finally:
                self.events.task_done()
            n += 1
            if n >= BATCH or not self._flowing.is_set():
                break
            try:
                ev = self.events.get_nowait()
            except queue.Empty:
                break
        due = self.settler.due()
        if due:
            self.commit(due)

    def handle(self, ev: Event) -> None:
        r = self.roots.get(ev.root)
        if r is None:
            return
        if isinstance(ev, DirListed):
            self._listing.discard(ev.path)
            return
        if isinstance(ev, ScanDone):
            self.scanner.synced(r.name, ev.losses)
            return
        k = ev.kind
        if k in (Kind.CREATED, Kind.CLOSED, Kind.SEEN):
            if k is Kind.SEEN:
                self._listing.add(os.path.dirname(ev.path))
            self._file(r, ev.path, k, ev.synthetic)
        elif k is Kind.MOVED:
            self.settler.remove(ev.path)
            if ev.dest and r.relative(ev.dest) is not None:
                self._file(r, ev.dest, Kind.MOVED, False)
        elif k is Kind.DELETED:
            if self.settler.remove(ev.path) is not None:
                log.debug("%s deleted before it settled", ev.path)
        elif k is Kind.DIR_CREATED:
            self._note_new_dir(ev.path)
            self.scanner.request(r.name, ev.path)
        elif k is Kind.DIR_MOVED:
            self.settler.remove_under(ev.path)
            if ev.dest and r.relative(ev.dest) is not None:
                self._note_new_dir(ev.dest)
                self.scanner.request(r.name, ev.dest)
        elif k is Kind.DIR_DELETED:
            self.settler.remove_under(ev.path)

    def _note_new_dir(self, path: str) -> None:
        now = time.monotonic()
        if len(self._new_dirs) > 10_000:
            self._new_dirs = {d: t for d, t in self._new_dirs.items() if now - t < NEW_DIR_WINDOW}
        self._new_dirs[path] = now

    def _in_new_dir(self, r: RootRuntime, path: str) -> bool:
        if not self._new_dirs:
            return False
        now = time.monotonic()
        d = os.path.dirname(path)
        while len(d) > len(r.path):
            t = self._new_dirs.get(d)
            if t is not None and now - t < NEW_DIR_WINDOW:
                return True
            d = os.path.dirname(d)
        return False

    def _file(self, r: RootRuntime, path: str, kind: Kind, synthetic: bool) -> None:
        rel = r.relative(path)
        if rel is None:
            return
        if rel.startswith(COOKIE_PREFIX):
            with self._lock:
                cookie = self._cookies.get(rel)
            if cookie is not None:
                cookie.set()
            return
        st = r.admit(rel, path)
        if isinstance(st, Refusal):
            self.settler.remove(path)  # gone, or no longer a file we may publish
            return
        if kind is Kind.CREATED and not synthetic:
            synthetic = self._in_new_dir(r, path)
        if self.settler.update(path, kind, synthetic=synthetic, st=st):
            return
        m = r.templates.match(rel)
        if not m:
            self.unmatched[r.name] += 1
            log.debug("%s: no template: %s", path, m)  # the reason is worked out only if logged
            return
        if m.publish is None:
            return
        self.settler.offer(self._keys.key(r.name, m), r.scope, m, r.windows, path, kind, synthetic=synthetic, st=st)

    # -- commit ------------------------------------------------------------------------------
    def commit(self, cands: list[Candidate]) -> None:
        """Settled candidates go into the journal (before anything is sent): the new ones in one
        transaction (group commit), those whose key is journaled already through the root's
        republish policy."""
        ready = []
        for cand in cands:
            if cand.is_sequence and self._incomplete_view(cand):
                self.settler.hold(cand, 0.05)
            else:
                ready.append(cand)
        if not ready:
            return
        try:
            rows = self.journal.by_keys([c.key for c in ready])
            new = [c for c in ready if c.key not in rows]
            if new:
                added = self.journal.add_many([(build_publish(c), _records(c)) for c in new])
                self.committed += sum(created for _, created in added)
                self.on_journaled()
        except JournalError:
            log.exception("journal: cannot record %d settled candidate(s); trying again in 5 s", len(ready))
            for cand in ready:
                self.settler.hold(cand, 5.0)
            return
        for cand in ready:
            row = rows.get(cand.key)
            if row is not None:
                self._commit_known(cand, row)

    def _commit_known(self, cand: Candidate, row: Row) -> None:
        """A candidate whose key the journal holds: seen again, or changed since."""
        files = _records(cand)
        try:
            known = self.journal.files_of(row.id)
            changed = [p for p, f in cand.files.items() if known.get(p) != (f.size, f.mtime_ns)]
            if not changed:
                return  # seen again (rescan, duplicate event): already journaled as it is
            if row.status == Status.PUBLISHING:
                self.settler.hold(cand, 1.0)  # decide once the running publish has ended
                return
            extra = {p: v for p, v in known.items() if p not in cand.files and os.path.exists(p)}
            if row.status == Status.PENDING:
                self.journal.replace(row.id, build_publish(cand, extra_files=extra), files)
                self.on_journaled()
                return
            self._republish(row, cand, files, extra, changed)
        except TransitionError:
            self.settler.hold(cand, 1.0)
        except JournalError as exc:
            log.error("journal: cannot record %s: %s; trying again in 5 s", row.publish.path, exc)
            self.settler.hold(cand, 5.0)

    def _incomplete_view(self, cand: Candidate) -> bool:
        """More frames of this sequence may be on their way: a scan is still listing its
        directory, or a rescan is queued because events were lost. Publishing now could
        publish half of it."""
        dirs = {os.path.dirname(p) for p in cand.files}
        if self._listing and dirs & self._listing:
            return True
        return any(self.scanner.pending_for(cand.scope.name, d) for d in dirs)

    def _republish(self, row: Row, cand: Candidate, files: list[FileRecord], extra: dict[str, tuple[int, int]],
                   changed: list[str]) -> None:
        policy = self.roots[cand.scope.name].cfg.republish
        what = (f"{len(changed)} new or changed frame(s)" if cand.is_sequence else "the file changed")
        if policy == "never":
            log.warning("%s: %s after it was published (%s %s); republish: never, so not published again",
                        row.publish.path, what, row.tracker or "", row.tracker_id or "")
            self.journal.remember_files(row.id, files, f"{what} after publish; not republished (republish: never)")
        elif policy == "update":
            log.warning("%s: %s after it was published; republishing it (republish: update)", row.publish.path, what)
            self.journal.replace(row.id, build_publish(cand, extra_files=extra), files)
            self.on_journaled()
        else:
            revisions = self.journal.keys_like(cand.key + "#r")
            version = max([row.publish.version or 0] + [x.publish.version or 0 for x in revisions]) + 1
            key = f"{cand.key}#r{len(revisions) + 2}"
            log.warning("%s: %s after it was published; publishing it as version %d (republish: new_version)",
                        row.publish.path, what, version)
            self.journal.add(build_publish(cand, key=key, version=version, extra_files=extra), files)
            self.on_journaled()


def _records(cand: Candidate) -> list[FileRecord]:
    return [FileRecord(os.path.dirname(p), os.path.basename(p), f.size, f.mtime_ns) for p, f in cand.files.items()]


def dry_run(roots: list[RootRuntime], journal: Journal) -> tuple[list[Publish], ScanStats]:
    """What a scan would publish now: the same walk, admission, matching and grouping as the
    pipeline, minus what the journal already holds; nothing is written."""
    settler = Settler()
    keys = KeyCache()
    stats = ScanStats()
    for r in roots:
        for ev in walk(r.name, r.path, r.ignorer, journal.known_files, stats):
            if not isinstance(ev, FsEvent):
                continue
            rel = r.relative(ev.path)
            st = r.admit(rel, ev.path) if rel is not None else Refusal.NOT_A_FILE
            if isinstance(st, Refusal):
                continue
            m = r.templates.match(rel)
            if not m or m.publish is None:
                continue
            key = keys.key(r.name, m)
            if journal.by_key(key) is None:
                settler.offer(key, r.scope, m, r.windows, ev.path, Kind.SEEN, st=st)
    return [build_publish(c) for c in settler.drain()], stats
