"""The pipeline thread: match → group → settle → journal. It is the one owner of candidate
state: it takes events off the queue, admits and matches files, offers them to the settler, and
commits what settles to the journal (before anything is sent), applying the root's republish
policy to publishes that already exist. Publisher workers take it from there.

``dry_run`` answers the same question without a journal write: what would a scan publish."""
from __future__ import annotations

import json
import logging
import os
import queue
import re
import threading
import time
from dataclasses import replace
from functools import partial
from typing import Any, Callable, Iterator

from .candidate import Candidate, build_publish, candidate_key, publish_path, seq_padding
from .completion import READY, Answer, Decision, TrackerLookup, Verdict, decide, marker_path
from .events import DirListed, Event, FsEvent, Kind, ScanDone
from .agent import Fence
from .host import WriterProbe, WriterProbes
from .ignore import COOKIE_PREFIX
from .journal.base import FileRecord, JournalUnavailable, Row, Status, TransitionError
from .journal.ledger import Journal
from .model import Publish
from .names import respelled, shown
from .observe import DirPoller
from .roots import Refusal, RootRuntime, spellings
from .scan import Scanner, ScanStats, walk
from .settle import Settler
from .unmatched import UnmatchedLog

log = logging.getLogger("watcher")

# watchdog reports the files it finds when it walks a brand-new directory as plain "created"
# events, indistinguishable from real ones; creates this soon after their directory appeared
# are treated as synthetic: no close event may ever follow them.
NEW_DIR_WINDOW = 2.0
BATCH = 2000  # events handled before the settler is asked what is due
# Group commit: the pipeline journals at most once per GROUP_WINDOW seconds (or at once when
# GROUP_SIZE candidates have gathered); a candidate that settles sooner after the last commit
# waits for the next one. A quiet root pays nothing: its candidates find the window long past.
# Committed as they came due, a steady burst went to the journal a few candidates per
# transaction (on PostgreSQL, once: 0.7 transactions per publish and 0.6x the throughput).
GROUP_WINDOW = 0.02
GROUP_SIZE = 500
# One candidate that fails on its own (building its publish, deciding, journaling it) is tried
# again alone after FAULT_BASE, 2x, 4x... (capped at FAULT_CAP) seconds, and parked after MAX_TRIES
# attempts; the journal's own faults (locked, full, read-only) follow the journal's backoff.
FAULT_BASE = 1.0
FAULT_CAP = 60.0
MAX_TRIES = 5
PARKED_SHOWN = 100  # parked candidates listed in the status file (the newest)


class KeyCache:
    """``candidate_key`` costs a json.dumps per file; the frames of one sequence share it."""

    def __init__(self, size: int = 10_000) -> None:
        self._keys: dict[tuple, str] = {}
        self._size = size

    def key(self, root: str, m: Any) -> str:
        if m.frame is None:  # a single file: nobody shares its key
            return candidate_key(root, m)
        fk = (root, m.template, seq_padding(m),
              tuple(sorted((k, v) for k, v in m.fields.items() if k != m.frame_key)))
        key = self._keys.get(fk)
        if key is None:
            if len(self._keys) > self._size:
                self._keys.clear()
            key = self._keys[fk] = candidate_key(root, m)
        return key


class Pipeline(threading.Thread):
    def __init__(self, roots: dict[str, RootRuntime], events: "queue.Queue[Event]", settler: Settler,
                 scanner: Scanner, journal: Journal, on_journaled: Callable[[], None], *,
                 max_settling: int = 500_000, unmatched: UnmatchedLog | None = None,
                 ranges: TrackerLookup | None = None, versions: TrackerLookup | None = None,
                 probes: WriterProbes | None = None, fence: Callable[[str], Fence] = lambda _root: Fence.FREE) -> None:
        super().__init__(name="pipeline", daemon=True)
        self.roots = roots
        self.events = events
        self.settler = settler
        self.scanner = scanner
        self.journal = journal
        self.on_journaled = on_journaled
        self.committed = 0
        self.max_settling = max_settling
        self.ranges = ranges  # the tracker's frame ranges (expect_frames: tracker)
        self.versions = versions  # the versions the tracker holds per publish stream (new_version)
        # whether a writer still holds a file, where no close event says it (macOS, Windows,
        # polled roots); the settler asks at each deadline, this thread again as it journals
        self.probes = probes or WriterProbes()
        self.fence = fence  # may this agent journal a root's candidates now (agents sharing a journal)
        settler.probe_for = self._writer_probe
        self._held: dict[str, dict[str, Any]] = {}  # candidate key -> what it waits for
        self._markers: set[str] = set()  # done markers held candidates wait for: never candidates
        self.held_view: tuple[dict[str, Any], ...] = ()  # a snapshot for the status file (other threads)
        # Folders whose new files were left on disk while the settler was full (Syncthing's
        # aggregator does the same): rescanned once the backlog has drained to half.
        self._deferred: dict[str, set[str]] = {}
        self.deferred_files = 0
        # files that matched no template or were ignored, with the reason (`watcher unmatched`)
        self.unmatched_log = unmatched or UnmatchedLog(journal.db, roots=list(roots))
        self._halt = threading.Event()
        self._flowing = threading.Event()
        self._flowing.set()
        self._keys = KeyCache()
        self._new_dirs: dict[str, float] = {}
        self._listing: set[str] = set()  # directories whose scan listing is still streaming in
        self._cookies: dict[str, threading.Event] = {}
        self._cookie_n = 0
        self._lock = threading.Lock()  # guards _cookies (sync() runs on other threads)
        self.fault_base, self.fault_cap, self.max_tries = FAULT_BASE, FAULT_CAP, MAX_TRIES
        self._tries: dict[str, int] = {}  # candidate key -> its own failed attempts so far
        self._waiting: set[str] = set()  # keys kept in memory while the journal takes no writes
        self._parked: dict[str, dict[str, Any]] = {}  # key -> why it was parked (status), oldest first
        self.parked_total = 0
        self.journal_waiting = 0  # len(_waiting) for other threads (status, `scan`)
        self.parked_view: tuple[dict[str, Any], ...] = ()
        self._unmatched_error: str | None = None
        self._group: list[Candidate] = []  # settled, waiting (at most GROUP_WINDOW) to be journaled together
        self._group_keys: set[str] = set()
        self._last_commit = 0.0  # monotonic
        self.group_window = GROUP_WINDOW

    @property
    def unmatched(self) -> dict[str, int]:
        """Root name -> files listed as unmatched or ignored now (per file, not per event)."""
        return {name: self.unmatched_log.count(name) for name in self.roots}

    # -- control (any thread) ----------------------------------------------------------------
    def stop(self) -> None:
        self._halt.set()
        self._flowing.set()
        self.journal.db.stop_waiting()  # a journal locked by another process must not hold up the stop

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
            except Exception as exc:  # noqa: BLE001 - the pipeline outlives any one failure
                log.error("pipeline: unexpected error: %s: %s; continuing", type(exc).__name__, shown(str(exc)))
                log.debug("pipeline failure", exc_info=True)
        group = self._gather([])  # stopping: what settled is journaled now, not rescanned at the next start
        if group:
            try:
                self.commit(group)
            except Exception as exc:  # noqa: BLE001 - not journaled: the next start's scan finds these files
                log.warning("pipeline: %d settled candidate(s) not journaled at shutdown (%s); the next start finds "
                            "them", len(group), shown(str(exc)))

    @property
    def grouped(self) -> int:
        """Candidates settled and about to be journaled (``Service.idle``)."""
        return len(self._group)

    def step(self) -> None:
        nxt = self.settler.next_deadline()
        if self._group:
            flush_at = self._last_commit + self.group_window
            nxt = flush_at if nxt is None else min(nxt, flush_at)
        timeout = 0.5 if nxt is None else min(0.5, max(0.0, nxt - time.monotonic()))
        try:
            ev: Event | None = self.events.get(timeout=timeout)
        except queue.Empty:
            ev = None
        n = 0
        while ev is not None:
            try:
                self.handle(ev)
            except Exception as exc:  # noqa: BLE001 - one event's trouble is that file's alone
                log.error("pipeline: cannot handle the event for %s: %s: %s (the file is looked at again at its next "
                          "event or scan)", shown(str(getattr(ev, "path", ev.root))), type(exc).__name__, shown(str(exc)))
                log.debug("event failure", exc_info=True)
            finally:
                self.events.task_done()
            n += 1
            if n >= BATCH or not self._flowing.is_set():
                break
            try:
                ev = self.events.get_nowait()
            except queue.Empty:
                break
        due = self._gather(self.settler.due())
        if due:
            try:
                self.commit(due)
            except Exception as exc:  # noqa: BLE001 - a bug in commit: nothing due is dropped
                log.error("pipeline: unexpected error while journaling %d candidate(s): %s: %s; they stay in memory and "
                          "are tried again", len(due), type(exc).__name__, shown(str(exc)))
                log.debug("commit failure", exc_info=True)
                for cand in due:
                    if not self.settler.settling(cand.key):
                        self.settler.hold(cand, self.fault_cap)
        if self._tries or self._waiting:  # journaled, or their files went away
            self._tries = {k: n for k, n in self._tries.items() if self._pending(k)}
            self._waiting = {k for k in self._waiting if self._pending(k)}
        self.journal_waiting = len(self._waiting)
        if self._held:
            for key in [k for k in self._held if not self._pending(k)]:  # its files went away
                self._markers.discard(self._held.pop(key)["marker"])
            self.held_view = tuple({k: v for k, v in h.items() if k != "marker"} for h in self._held.values())
        else:
            self.held_view = ()
        if self.journal.health.retry_in() == 0:  # not while this thread waits for the journal
            try:
                self.unmatched_log.flush()  # what it cannot write is kept for the next flush
            except JournalUnavailable:
                pass  # said once by the journal
            except Exception as exc:  # noqa: BLE001
                if str(exc) != self._unmatched_error:
                    log.warning("journal: cannot record unmatched files: %s", shown(str(exc)))
                self._unmatched_error = str(exc)
            else:
                self._unmatched_error = None
        if self._deferred and self.settler.pending_files <= self.max_settling // 2:
            self._release_deferred()

    def _gather(self, due: list[Candidate]) -> list[Candidate]:
        """Group commit: what to journal now. Candidates that just settled join the group; the
        group goes once GROUP_WINDOW has passed since the last commit, once it is GROUP_SIZE
        strong, or when the pipeline is stopping or paused."""
        now = time.monotonic()
        if due:
            self._group.extend(due)
            self._group_keys.update(c.key for c in due)
        if not self._group:
            return []
        if (len(self._group) < GROUP_SIZE and now - self._last_commit < self.group_window
                and self._flowing.is_set() and not self._halt.is_set()):
            return []
        out, self._group, self._group_keys = self._group, [], set()
        self._last_commit = now
        return out

    def _ungroup(self, key: str) -> None:
        """Give a grouped candidate back to the settler: news of one of its files arrived before
        the group was journaled, so it settles again with that file."""
        for i, cand in enumerate(self._group):
            if cand.key == key:
                del self._group[i]
                self._group_keys.discard(key)
                self.settler.hold(cand, 0.0)
                return

    def _pending(self, key: str) -> bool:
        """The candidate is still ours to journal: settling, or settled and in the group."""
        return self.settler.settling(key) or key in self._group_keys

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
        if k in (Kind.CREATED, Kind.CLOSED, Kind.SEEN, Kind.ARRIVED, Kind.MODIFIED):
            if k is Kind.SEEN:
                self._listing.add(os.path.dirname(ev.path))
                if self.settler.knows(ev.path) and not self.scanner.pending_for(r.name, r.path):
                    # A scan re-finding a file whose events we get (the scan of a new folder):
                    # nothing new, and a writer may still hold it. After lost events it counts,
                    # since the file's close may have been among them.
                    return
            self._file(r, ev.path, k, ev.synthetic)
        elif k is Kind.MOVED:
            self.settler.remove(ev.path)
            self.unmatched_log.forget(ev.path)
            if ev.dest and r.relative(ev.dest) is not None:
                self._file(r, ev.dest, Kind.MOVED, False)
        elif k is Kind.DELETED:
            self.unmatched_log.forget(ev.path)
            if self.settler.remove(ev.path) is not None:
                log.debug("%s deleted before it settled", ev.path)
        elif k is Kind.DIR_CREATED:
            self.scanner.request(r.name, ev.path)
        elif k is Kind.DIR_MOVED:
            self.settler.remove_under(ev.path)
            self.unmatched_log.forget_under(ev.path)
            if ev.dest and r.relative(ev.dest) is not None:
                self.scanner.request(r.name, ev.dest)
        elif k is Kind.DIR_DELETED:
            self.settler.remove_under(ev.path)
            self.unmatched_log.forget_under(ev.path)

    def _note_new_dir(self, path: str) -> None:
        now = time.monotonic()
        if len(self._new_dirs) > 10_000:
            self._new_dirs = {d: t for d, t in self._new_dirs.items() if now - t < NEW_DIR_WINDOW}
        self._new_dirs[path] = now

    def _file(self, r: RootRuntime, path: str, kind: Kind, synthetic: bool) -> None:
        st: os.stat_result | Refusal
        if kind is Kind.CLOSED and self.settler.knows(path):
            # The close of a file admitted and matched at its create: only its stat is news (a
            # file turned into a link or a FIFO since is dropped by the settler).
            try:
                st = os.lstat(path)
            except OSError:
                self.settler.remove(path)
                return
            self.settler.update(path, kind, st=st)
            return
        rel = r.relative(path)
        if rel is None:
            return
        if path in self._markers:  # a done marker: a signal, never a publish of its own
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
            if st.listed:  # said once per file: the note works its reason out once
                self.unmatched_log.note(r.name, path, lambda: r.refused(path, st))
            else:
                self.unmatched_log.forget(path)
            return
        if kind is Kind.CREATED and not synthetic and st.st_nlink > 1:
            kind = Kind.ARRIVED  # a new hard link: written through another name, no close will come
        if self.settler.update(path, kind, synthetic=synthetic, st=st):
            return
        m = r.templates.match(rel)
        if not m:
            # worked out once per file; a decomposed (NFD) name failing a key is said, not only listed
            self.unmatched_log.note(r.name, path,
                                    lambda: r.unmatched_nfd(path, m) if respelled(rel) else (m.closest, str(m)))
            return
        if m.placeholder:  # `beauty.####.exr`: a pattern, never a frame of the sequence beside it
            self.unmatched_log.note(r.name, path, lambda: r.refused(path, Refusal.PLACEHOLDER))
            return
        key = self._keys.key(r.name, m) if m.publish is not None else None
        if key is not None and not rel.isascii():  # the same name spelled NFC and NFD: one publish only
            other = r.other_spelling(key, publish_path(r.path, m), self.journal.by_key, sequence=m.frame is not None)
            if other is not None:
                self.unmatched_log.note(r.name, path, lambda: r.refused(path, Refusal.SPELLING, spellings(other, path)))
                return
        self.unmatched_log.forget(path)
        if key is None:
            return
        # Past the cap no new candidate starts; frames of a settling sequence still join it, so a
        # sequence is never split between memory and disk (a candidate's frames are what it needs).
        if self.settler.pending_files >= self.max_settling and not self.settler.settling(key):
            self._defer(r, path)
            return
        if key in self._group_keys:  # settled and about to be journaled: it takes this file instead of a second
            self._ungroup(key)        # candidate starting beside it (a sequence is never split)
        windows, signals = r.completion_for(m.template)
        self.settler.offer(key, r.scope, m, windows, path, kind, synthetic=synthetic, st=st, signals=signals)

    # -- commit ------------------------------------------------------------------------------
    def commit(self, cands: list[Candidate]) -> None:
        """Settled candidates go into the journal (before anything is sent): the new ones in one
        transaction (group commit), those whose key is journaled already through the amend
        window and the root's republish policy. A candidate still missing a completion signal
        (expected frames, a done marker, holes) is held, up to its max_wait.

        One bad candidate never costs another: each step is guarded per candidate, and one that
        fails is tried again alone with backoff, then parked (``_failed``). While the journal
        itself takes no writes (locked, full, read-only), every candidate stays in memory and is
        tried again with the journal's backoff (``_journal_down``)."""
        ready: list[Candidate] = []
        for cand in cands:
            fence = self.fence(cand.scope.name)
            if fence is Fence.TAKEN:  # another agent watches the root now: its rescan finds these files
                log.debug("%s: root %s is another agent's now; left to it", cand.key, cand.scope.name)
                continue
            if fence is Fence.EXPIRED:  # frozen or cut off past our watch: wait for the heartbeat's word
                self.settler.hold(cand, 1.0)
                continue
            try:
                if cand.is_sequence and self._incomplete_view(cand):
                    self.settler.hold(cand, 0.05)
                elif self._restat(cand):
                    ready.append(cand)
            except Exception as exc:  # noqa: BLE001
                self._failed(cand, None, exc)
        if not ready:
            return
        wait = self.journal.health.retry_in()
        if wait > 0:  # this thread found the journal unavailable: not before its backoff
            self._journal_down(ready, wait)
            return
        rows = self._rows_of(ready)
        if rows is None:
            return
        new: list[tuple[Candidate, Publish, str | None]] = []
        for cand in ready:
            if cand.key not in rows or rows[cand.key] is not None:
                continue
            try:
                pub = build_publish(cand)
                verdict = self._decide(cand, pub)
                if verdict.decision is Decision.HOLD:
                    self._hold(cand, pub, verdict)
                    continue
            except Exception as exc:  # noqa: BLE001
                self._failed(cand, None, exc)
                continue
            new.append((cand, pub, verdict.reason if verdict.decision is Decision.REFUSE else None))
        known = [(c, r) for c in ready if (r := rows.get(c.key)) is not None]
        if new and not self._add(new):
            self._journal_down([c for c, _ in known])
            return
        for cand, row in known:
            self._commit_known(cand, row)

    def _rows_of(self, ready: list[Candidate]) -> dict[str, Row | None] | None:
        """Key -> the journal's row (None: new) for each candidate whose key could be looked up;
        None when the journal is unavailable (every candidate is then kept for later)."""
        try:
            found = self.journal.by_keys([c.key for c in ready])
        except JournalUnavailable:
            self._journal_down(ready)
            return None
        except Exception as exc:  # noqa: BLE001 - one key the journal cannot take: asked one by one
            if len(ready) == 1:
                self._failed(ready[0], None, exc)
                return {}
            rows: dict[str, Row | None] = {}
            for i, cand in enumerate(ready):
                one = self._rows_of([cand])
                if one is None:  # the journal went away meanwhile
                    self._journal_down(ready[i + 1:])
                    return rows
                rows.update(one)
            return rows
        return {c.key: found.get(c.key) for c in ready}

    def _add(self, new: list[tuple[Candidate, Publish, str | None]]) -> bool:
        """Journal new candidates in one transaction (a refusal reason parks its row as failed in
        it). A failure that is the journal's keeps them all in memory (False); any other splits
        the batch, so that the candidate at fault is found and retried alone while the rest is
        journaled."""
        try:
            added = self.journal.add_many([(pub, _records(c)) for c, pub, _ in new],
                                          refuse={pub.key: why for _, pub, why in new if why is not None})
        except JournalUnavailable:
            self._journal_down([c for c, _, _ in new])
            return False
        except Exception as exc:  # noqa: BLE001 - one candidate's data (or a bug): found by splitting
            if len(new) == 1:
                self._failed(new[0][0], new[0][1], exc)
                return True
            for i, item in enumerate(new):
                if not self._add([item]):
                    self._journal_down([c for c, _, _ in new[i + 1:]])
                    return False
            return True
        self.committed += sum(created for _, created in added)
        for (cand, pub, why), (row_id, created) in zip(new, added):
            if why is not None and created:
                log.error("%s%s: refused: %s (parked as failed; `watcher retry %d` once fixed)", shown(pub.path),
                          f" [{pub.frames}]" if pub.frames else "", why, row_id)
            self._unhold(cand)
        self.on_journaled()
        return True

    def _journal_down(self, cands: list[Candidate], wait: float | None = None) -> None:
        """The journal takes no writes now (it has said why, once): the candidates stay in memory
        and come back together after this thread's backoff, files arriving meanwhile joining them."""
        delay = wait if wait is not None else (self.journal.health.retry_in() or self.fault_base)
        for cand in cands:
            self._waiting.add(cand.key)
            self.settler.hold(cand, delay)
        self.journal_waiting = len(self._waiting)

    def _failed(self, cand: Candidate, pub: Publish | None, exc: BaseException) -> None:
        """One candidate failed on its own: it alone is tried again with backoff, and parked once
        it has failed ``max_tries`` times. Nothing else of its batch is touched."""
        n = self._tries[cand.key] = self._tries.get(cand.key, 0) + 1
        where = shown(pub.path if pub is not None else _where(cand))
        why = shown(f"{type(exc).__name__}: {exc}")
        log.debug("candidate %s failed", where, exc_info=exc)
        if n < self.max_tries:
            delay = min(self.fault_cap, self.fault_base * 2 ** (n - 1))
            log.error("%s: cannot be journaled: %s; this candidate alone is tried again in %.0f s (attempt %d of %d)",
                      where, why, delay, n, self.max_tries)
            self.settler.hold(cand, delay)
            return
        self._park(cand, pub, where, f"not journaled after {n} attempts: {why}")

    def _park(self, cand: Candidate, pub: Publish | None, where: str, reason: str) -> None:
        """Give up on a candidate until its files change (or the next start): parked as a failed
        row when the journal takes it (`watcher publishes --status failed`, `watcher retry`),
        else listed with its reason in `watcher unmatched` and the status file."""
        self._tries.pop(cand.key, None)
        self._waiting.discard(cand.key)
        self._unhold(cand)
        self.parked_total += 1
        if pub is not None:
            try:
                [(row_id, created)] = self.journal.add_many([(pub, _records(cand))], refuse={pub.key: reason})
            except Exception:  # noqa: BLE001 - then it is listed below
                pass
            else:
                log.error("%s: parked as failed: %s (`watcher retry %d` once fixed)", where, reason, row_id)
                return
        for path in cand.files:
            self.unmatched_log.note(cand.scope.name, path, lambda: (cand.match.template, f"parked: {reason}"))
        self._parked.pop(cand.key, None)
        self._parked[cand.key] = {"path": where, "root": cand.scope.name, "files": len(cand.files),
                                  "reason": reason, "at": time.time()}
        while len(self._parked) > PARKED_SHOWN:
            self._parked.pop(next(iter(self._parked)))
        self.parked_view = tuple(self._parked.values())
        log.error("%s: parked, not journaled: %s; listed in `watcher unmatched` and `watcher status`; tried anew "
                  "when its files change or at the next start", where, reason)

    def _restat(self, cand: Candidate) -> bool:
        """Stat every file once more as it is journaled, so the journal never keeps a size that
        changed after the settle check; a file that moved sends the candidate back to settle."""
        now = time.monotonic()
        moved = False
        for path, f in list(cand.files.items()):
            if now - f.checked_at < 0.05:
                continue  # the settle check stat'd it a moment ago
            try:
                st = os.stat(path)
            except OSError:
                cand.files.pop(path)
                moved = True
                continue
            if (st.st_size, st.st_mtime_ns) != (f.size, f.mtime_ns):
                f.size, f.mtime_ns, f.changed_at, f.checked_at = st.st_size, st.st_mtime_ns, now, now
                moved = True
        if not cand.files:
            return False
        if moved:
            self.settler.hold(cand, 0.0)  # its deadline is worked out again from the new changes
            return False
        return self.settler.writers_gone(cand)  # else held: a writer took it up again

    def _writer_probe(self, cand: Candidate) -> WriterProbe | None:
        """The probe for a candidate's root: none on a Linux root watched by inotify (its close
        events answer), one on polled roots and on macOS and Windows (``WriterProbes``)."""
        r = self.roots.get(cand.scope.name)
        if r is None:
            return None
        return self.probes.for_root(polled=isinstance(r.observer, DirPoller))

    def _decide(self, cand: Candidate, pub: Publish) -> Verdict:
        if not cand.signals.any:
            return READY
        ranges = self.ranges
        try:
            return decide(cand.signals, pub, born=cand.born, now=time.time(),
                          tracker_range=ranges.get if ranges is not None else _no_tracker_range)
        except ValueError as exc:
            return Verdict(Decision.REFUSE, str(exc))

    def _hold(self, cand: Candidate, pub: Publish, verdict: Verdict) -> None:
        first = cand.key not in self._held
        marker = marker_path(cand.signals, pub)
        if marker:
            self._markers.add(marker)
            self.unmatched_log.forget(marker)
        self._held[cand.key] = {"path": pub.path, "root": cand.scope.name, "frames": pub.frames,
                                "missing_frames": pub.missing_frames, "waiting_for": verdict.reason,
                                "since": cand.born, "decided_by": cand.born + cand.signals.max_wait,
                                "marker": marker}
        if first:
            log.info("%s%s: held, %s (decided at the latest %.0f s from now)", pub.path,
                     f" [{pub.frames}]" if pub.frames else "", verdict.reason,
                     max(0.0, cand.born + cand.signals.max_wait - time.time()))
        self.settler.hold(cand, verdict.delay)

    def _unhold(self, cand: Candidate) -> None:
        held = self._held.pop(cand.key, None)
        if held is not None:
            self._markers.discard(held["marker"])

    def _commit_known(self, cand: Candidate, row: Row) -> None:
        """A candidate whose key the journal holds: seen again, or changed since."""
        files = _records(cand)
        try:
            known = {os.path.join(self.roots[root].path, rel): v for (root, rel), v in
                     self.journal.files_of(row.id).items() if root in self.roots}
            changed = [p for p, f in cand.files.items() if known.get(p) != (f.size, f.mtime_ns)]
            if not changed:
                return  # seen again (rescan, duplicate event): already journaled as it is
            if row.status == Status.PUBLISHING:
                self.settler.hold(cand, 1.0)  # decide once the running publish has ended
                return
            extra = {p: v for p, v in known.items() if p not in cand.files and os.path.exists(p)}
            pub = build_publish(cand, extra_files=extra)
            if all(p in cand.left_out for p in changed):  # only strays or misspelled frames are new
                self.journal.remember_files(row.id, files, "stray or misspelled frame(s) left out of the publish")
                return
            if row.status in (Status.PENDING, Status.FAILED):  # not made yet: it is made as it is now
                verdict = self._decide(cand, pub)
                if verdict.decision is Decision.HOLD:
                    self._hold(cand, pub, verdict)
                    return
                self._unhold(cand)
                self.journal.replace(row.id, pub, files,
                                     refuse=verdict.reason if verdict.decision is Decision.REFUSE else None)
                self.on_journaled()
                return
            window = cand.signals.amend_window
            # a single file rewritten soon after its publish (a writer that reopens its file per
            # chunk, a save right after a save): the same publish, amended; sequences that grow
            # after their publish follow the republish policy (pace-awareness keeps that rare)
            if not cand.is_sequence and row.published_at is not None and time.time() - row.published_at <= window:
                log.info("%s: rewritten %.0f s after it was published; amending that publish (amend_window %.0f s)",
                         row.publish.path, time.time() - row.published_at, window)
                self.journal.replace(row.id, pub, files)
                self.on_journaled()
                return
            self._republish(row, cand, files, extra, changed)
        except TransitionError:
            self.settler.hold(cand, 1.0)
        except JournalUnavailable:
            self._journal_down([cand])
        except Exception as exc:  # noqa: BLE001 - this candidate's trouble alone
            self._failed(cand, None, exc)

    def _defer(self, r: RootRuntime, path: str) -> None:
        if not self._deferred:
            log.warning("settling %d files (max_settling_files); new files are left on disk and their folders "
                        "rescanned once the backlog drains", self.settler.pending_files)
        self._deferred.setdefault(r.name, set()).add(os.path.dirname(path))
        self.deferred_files += 1

    def _release_deferred(self) -> None:
        dirs = sum(len(d) for d in self._deferred.values())
        log.info("settling backlog drained; rescanning %d folder(s) whose %d new file(s) were left on disk",
                 dirs, self.deferred_files)
        for root, folders in self._deferred.items():
            if len(folders) > 10_000:
                self.scanner.request(root)  # cheaper as one walk than as thousands of requests
                continue
            for d in folders:
                self.scanner.request(root, d)
        self._deferred.clear()
        self.deferred_files = 0

    def _incomplete_view(self, cand: Candidate) -> bool:
        """More frames of this sequence may be on their way: a scan is still listing its
        directory, a rescan is queued because events were lost, or some of its frames were left
        on disk while the settler was full. Publishing now could publish half of it."""
        dirs = {os.path.dirname(p) for p in cand.files}
        if self._listing and dirs & self._listing:
            return True
        deferred = self._deferred.get(cand.scope.name)
        if deferred and dirs & deferred:
            if self.events.empty():  # nothing else will drain the settler: fetch its frames now
                self._release_deferred()
            return True
        return any(self.scanner.pending_for(cand.scope.name, d) for d in dirs)

    def _republish(self, row: Row, cand: Candidate, files: list[FileRecord], extra: dict[str, tuple[int, int]],
                   changed: list[str]) -> None:
        policy = self.roots[cand.scope.name].cfg.republish
        what = (f"{len(changed)} new or changed frame(s)" if cand.is_sequence else "the file changed")
        if row.status == Status.BASELINE:  # on disk before watcher: known, never published, whatever the policy
            log.info("%s: %s; it is baseline (on disk before watcher), so not published", row.publish.path, what)
            self.journal.remember_files(row.id, files, f"{what}; baseline, not published")
            return
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
            version = self._next_version(row, cand, revisions)
            pub = build_publish(cand, version=version, extra_files=extra)
            if self.versions is not None:  # and none the tracker holds (a peer tool's later version)
                ans = self.versions.get(pub)
                if ans.pending:
                    self.settler.hold(cand, 0.5)  # asked; decided when the tracker has answered
                    return
                if ans.error:
                    log.warning("%s: the tracker's versions are unknown (%s); numbering from the journal and the "
                                "disk alone", row.publish.path, ans.error)
                elif ans.value and version in ans.value:
                    version = max(version, max(ans.value) + 1)
                self.versions.forget(pub)  # the next new version asks again
            key = f"{cand.key}#r{len(revisions) + 2}"
            log.warning("%s: %s after it was published; publishing it as version %d (republish: new_version)",
                        row.publish.path, what, version)
            self.journal.add(replace(pub, key=key, version=version), files)
            self.on_journaled()


    def _next_version(self, row: Row, cand: Candidate, revisions: list[Row]) -> int:
        """The next version number nobody uses (``republish: new_version``): above this publish's
        own and its revisions', every journaled publish of the same template and fields but another
        version (the artist's real v002, published as 2), and every sibling version of the same
        template on disk, published or not (a v002 folder beside v001). The tracker's own versions
        of the stream are asked by ``_republish`` through the versions lookup."""
        used = {row.publish.version or 0, *(x.publish.version or 0 for x in revisions)}
        r = self.roots[cand.scope.name]
        m = cand.match
        vfield = _version_field(r, m)
        if vfield is not None:
            fields = {k: v for k, v in m.fields.items() if k != m.frame_key}
            head = json.dumps({k: fields[k] for k in sorted(fields) if k < vfield}, sort_keys=True, default=str,
                              ensure_ascii=False)
            prefix = f"{r.name}:{m.template}:" + (head[:-1] + ", " if len(head) > 2 else "{") + json.dumps(vfield) + ": "
            if cand.key.startswith(prefix):  # the key as candidate_key writes it: its siblings share this prefix
                same = _comparable(fields, vfield)
                used |= {x.publish.version for x in self.journal.keys_like(prefix)
                         if x.publish.version is not None and x.publish.template == m.template
                         and x.publish.root == r.name and _comparable(x.publish.fields, vfield) == same}
            used |= _versions_on_disk(r, m, vfield)
        return max(used) + 1


def _version_field(r: RootRuntime, m: Any) -> str | None:
    """The field that holds a match's version (the rule's ``version``, else ``version``), when
    it is an int that is the publish's version."""
    rule = r.templates.publish_rule(m.template)
    name = (rule.version if rule is not None and rule.version else None) or "version"
    value = m.fields.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or m.publish is None or m.publish.version != value:
        return None
    return name


def _comparable(fields: dict[str, Any], vfield: str) -> str:
    return json.dumps({k: v for k, v in fields.items() if k != vfield}, sort_keys=True, default=str, ensure_ascii=False)


def _versions_on_disk(r: RootRuntime, m: Any, vfield: str) -> set[int]:
    """Versions of the same template and fields found beside this one on disk: the path level
    where the version first appears (a ``v001`` folder, or the file ``sh010_main_v001.nk``) is
    listed, and each sibling that differs only by its version number (and, in the same level,
    its frame) counts."""
    template = r.templates.templates.get(m.template)
    rel = m.relpath
    if template is None or not rel:
        return set()
    for variant in template.variants:
        for vals in variant.parses(rel):
            if {f: v[1] for f, v in vals.items()} != m.fields:
                continue
            spans, pos = [], 0
            for tok in variant.tokens:
                n = len(tok) if isinstance(tok, str) else len(vals[tok.field][0])
                if not isinstance(tok, str):
                    spans.append((tok.field, pos, pos + n))
                pos += n
            first = next(((s, e) for f, s, e in spans if f == vfield), None)
            if pos != len(rel) or first is None:
                continue
            lo = rel.rfind("/", 0, first[0]) + 1
            hi = rel.find("/", first[1])
            hi = len(rel) if hi < 0 else hi
            pattern, at, named = "", lo, False
            for f, s, e in spans:
                if s < lo or e > hi or f not in (vfield, m.frame_key):
                    continue
                pattern += re.escape(rel[at:s])
                if f == vfield:
                    pattern += "(?P=v)" if named else "(?P<v>[0-9]+)"
                    named = True
                else:
                    pattern += "-?[0-9]+"
                at = e
            rx = re.compile(pattern + re.escape(rel[at:hi]))
            found = set()
            try:
                with os.scandir(os.path.join(r.path, rel[:lo])) as it:
                    for entry in it:
                        hit = rx.fullmatch(entry.name)
                        if hit:
                            found.add(int(hit.group("v")))
            except OSError:
                pass
            return found
    return set()


def _where(cand: Candidate) -> str:
    """A candidate's path for messages when its publish could not be built."""
    try:
        return publish_path(cand.scope.path, cand.match)
    except Exception:  # noqa: BLE001 - whatever failed may fail here too
        return min(cand.files) if cand.files else cand.key


def _no_tracker_range(publish: Publish) -> Answer:
    return Answer(error="no tracker to ask (expect_frames: tracker needs a tracker backend)")


def _records(cand: Candidate) -> list[FileRecord]:
    """The journal's records of a candidate's files: root name + root-relative path."""
    base = len(cand.scope.path.rstrip("/\\" if os.sep == "\\" else "/")) + 1  # a root at `/` or `P:\`
    out = []
    for p, f in cand.files.items():
        d, _, name = p[base:].replace(os.sep, "/").rpartition("/")
        out.append(FileRecord(cand.scope.name, d, name, f.size, f.mtime_ns))
    return out


def on_disk(roots: list[RootRuntime], journal: Any, stats: ScanStats, *, known_keys: bool = False,
            progress: Callable[[RootRuntime, ScanStats], None] | None = None) -> Iterator[tuple[Candidate, Row | None]]:
    """The candidates on disk now, one root at a time: the start-up scan's walk (files the
    journal knows are skipped without a stat), the pipeline's admission, matching and grouping.
    Candidates whose key the journal holds are left out, or yielded with their row when
    ``known_keys``. ``progress(root, stats)`` is called about every 10 s of the walk. Nothing
    is written (`scan --dry-run`, `check`, `watcher baseline`)."""
    last = [time.monotonic()]

    def tick(r: RootRuntime) -> bool:  # walk's per-directory "stopped?" question, used as a clock
        if progress is not None and time.monotonic() - last[0] >= 10:
            last[0] = time.monotonic()
            progress(r, stats)
        return False

    for r in roots:
        settler = Settler()
        keys = KeyCache()
        rows: dict[str, Row | None] = {}
        for ev in walk(r.name, r.path, r.ignorer, partial(journal.known_files, r.name), stats,
                       stopped=partial(tick, r)):
            if not isinstance(ev, FsEvent):
                continue
            rel = r.relative(ev.path)
            st = r.admit(rel, ev.path) if rel is not None else Refusal.NOT_A_FILE
            if isinstance(st, Refusal):
                continue
            assert rel is not None  # a path outside the root was refused just above
            m = r.templates.match(rel)
            if not m or m.publish is None:
                continue
            key = keys.key(r.name, m)
            if key not in rows:
                rows[key] = journal.by_key(key)
            if rows[key] is None or known_keys:
                windows, signals = r.completion_for(m.template)
                settler.offer(key, r.scope, m, windows, ev.path, Kind.SEEN, st=st, signals=signals)
        for cand in settler.drain():
            yield cand, rows.get(cand.key)


def dry_run(roots: list[RootRuntime], journal: Journal) -> tuple[list[Publish], ScanStats]:
    """What a scan would publish now: the same walk, admission, matching and grouping as the
    pipeline, minus what the journal already holds; nothing is written."""
    stats = ScanStats()
    return [build_publish(c) for c, _row in on_disk(roots, journal, stats)], stats
