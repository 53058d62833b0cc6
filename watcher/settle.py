"""Decide when a candidate is complete. One owner (the pipeline thread) and one wake-up: a
deadline heap, not a timer per file. Pure logic with explicit times, so tests drive it without
threads or sleeps.

A file is complete when it has been unchanged (size and mtime) for the settle window and no
writer is known to hold it (a real "created" without its "closed"). A sequence is complete when
every frame is and no new frame arrived for the sequence window. Close events are hints that
start the quiet window; the stat at the deadline is the proof.

Where no close event can tell (macOS, Windows, polled roots), the deadline also asks the OS
whether a writer still holds each file (``probe_for``, a ``watcher.host.WriterProbe``): a busy
file waits another settle window, one the OS cannot tell about waits twice the settle window in
all, and a file held open but untouched for ``max_wait`` is taken as it is."""
from __future__ import annotations

import heapq
import itertools
import logging
import os
import stat as stat_mod
import time
from dataclasses import dataclass
from typing import Any, Callable

from .candidate import Candidate, FileState, RootScope, Windows
from .completion import Signals
from .events import Kind
from .host import WriterProbe
from .names import shown

log = logging.getLogger(__name__)

# A candidate whose writers were found gone this recently is not asked again as it is
# journaled (the pipeline's restat), as a file stat'd this recently is not stat'd again.
PROBED_FRESH = 0.05
# A file a writer holds is asked again after its settle window, and never sooner than this
# (``settle_seconds: 0`` must not turn the wait into a busy loop).
BUSY_RECHECK = 1.0


class Settler:
    """Owns every candidate that has not settled yet: ``offer`` creates or joins one, ``update``
    records news of a file it holds, ``due`` hands over the complete ones. Nobody else reads or
    writes its state."""

    def __init__(self, *, monotonic: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
                 stat: Callable[[str], os.stat_result] = os.stat,
                 probe_for: Callable[[Candidate], WriterProbe | None] | None = None) -> None:
        self._cands: dict[str, Candidate] = {}
        self._by_path: dict[str, str] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        self._mono = monotonic
        self._wall = wall
        self._stat = stat
        self.holds = 0  # settled candidates put back by hold() (metrics)
        # the probe asked whether a writer holds a candidate's files (None: none for its root,
        # nothing asked); the pipeline sets it, since it knows how each root is watched
        self.probe_for = probe_for
        self._cleared: dict[str, float] = {}  # key -> when its writers were last found gone
        self.writer_waits = 0  # times a file was found held by a writer at its deadline (metrics)

    def __len__(self) -> int:
        return len(self._cands)

    @property
    def pending_files(self) -> int:
        return len(self._by_path)

    def knows(self, path: str) -> bool:
        return path in self._by_path

    def settling(self, key: str) -> bool:
        """A candidate of this key is settling (a frame arriving now would join it)."""
        return key in self._cands

    def drain(self) -> list[Candidate]:
        """Hand over every candidate as it is, settled or not (``scan --dry-run``)."""
        out = list(self._cands.values())
        self._cands.clear()
        self._by_path.clear()
        self._heap.clear()
        self._cleared.clear()
        return out

    # -- input -------------------------------------------------------------------------------
    def offer(self, key: str, scope: RootScope, match: Any, windows: Windows, path: str, kind: Kind, *,
              synthetic: bool = False, st: os.stat_result | None = None, signals: Signals | None = None) -> None:
        """A file matched ``match``: it joins the candidate of ``key`` (made on first sight)."""
        cand = self._cands.get(key)
        if cand is None:
            cand = self._cands[key] = Candidate(key, scope, match, windows, signals or Signals())
        frame = match.frame if cand.is_sequence else None
        self._touch(cand, path, frame, kind, synthetic=synthetic, st=st)

    def update(self, path: str, kind: Kind, *, synthetic: bool = False, st: os.stat_result | None = None) -> bool:
        """News of a file a candidate already holds; False when no candidate holds it."""
        key = self._by_path.get(path)
        cand = self._cands.get(key) if key else None
        if cand is None:
            return False
        self._touch(cand, path, cand.files[path].frame, kind, synthetic=synthetic, st=st)
        return True

    def _touch(self, known: Candidate, path: str, frame: int | None, kind: Kind, *,
               synthetic: bool = False, st: os.stat_result | None = None) -> None:
        """Record what happened to one file of a candidate: ``CREATED`` (real or synthetic),
        ``CLOSED`` (close-write), ``MOVED``/``ARRIVED`` (renamed or linked into place: complete),
        ``MODIFIED`` (written, where no close will tell), ``SEEN`` (found by a scan: its mtime
        tells its age)."""
        now = self._mono()
        f = known.files.get(path)
        if f is None:
            f = known.files[path] = FileState(path, frame)
            self._by_path[path] = known.key
            is_new = True
        else:
            is_new = False
        if st is None:
            try:
                st = self._stat(path)
            except OSError:
                self.remove(path)
                return
        if not stat_mod.S_ISREG(st.st_mode):
            self.remove(path)
            return
        if kind is Kind.SEEN:
            # No event evidence: the file is as old as its last modification (or inode change).
            age = max(0.0, self._wall() - max(st.st_mtime, st.st_ctime))
            changed_at = now - age
            if is_new or (st.st_size, st.st_mtime_ns) != (f.size, f.mtime_ns):
                f.changed_at = changed_at if is_new else now
            # A rescan found it: events for it may have been lost (its close among them), so
            # from now on only the stat-quiet window decides, as for a synthetic create.
            f.open = False
        else:
            same = (st.st_size, st.st_mtime_ns) == (f.size, f.mtime_ns)
            if not is_new and same and (synthetic or kind is Kind.MODIFIED):
                # nothing changed: watchdog's walk of a new directory reporting a file again, or
                # a write event that wrote nothing. A real create after one is a writer at work.
                return
            f.changed_at = now
            if kind is Kind.CREATED and not synthetic:
                f.open = True
            elif kind in (Kind.CLOSED, Kind.MOVED, Kind.ARRIVED):
                f.open = False  # closed, or renamed or linked into place: complete
        f.size, f.mtime_ns, f.checked_at = st.st_size, st.st_mtime_ns, now
        if is_new:
            # The pace of a sequence arriving: the longest gap between a frame and the one before
            # it (by event time, or by mtime for frames a scan found, so old renders pace nothing).
            if len(known.files) > 1 and f.changed_at > known.last_arrival:
                known.max_gap = max(known.max_gap, f.changed_at - known.last_arrival)
            known.last_arrival = max(known.last_arrival, f.changed_at)
        self._nudge(known, f)

    def remove(self, path: str) -> Candidate | None:
        """A file was deleted (or became unreadable): it leaves its candidate; an emptied
        candidate is cancelled."""
        key = self._by_path.pop(path, None)
        if key is None:
            return None
        cand = self._cands.get(key)
        if cand is None:
            return None
        cand.files.pop(path, None)
        if not cand.files:
            self._cands.pop(key, None)
            self._cleared.pop(key, None)
            return cand
        # No reschedule (O(n)): losing a file can only bring the deadline forward, and due()
        # recomputes it when the scheduled entry pops.
        return cand

    def remove_under(self, directory: str) -> int:
        prefix = directory.rstrip("/") + "/"
        gone = [p for p in self._by_path if p.startswith(prefix)]
        for p in gone:
            self.remove(p)
        return len(gone)

    # -- time --------------------------------------------------------------------------------
    def _deadline(self, cand: Candidate) -> float:
        w = cand.windows
        latest = max((f.changed_at + (w.open_timeout if f.open else w.settle)) for f in cand.files.values())
        if cand.is_sequence:
            latest = max(latest, cand.last_arrival + w.sequence_window(len(cand.files), cand.max_gap))
        return latest

    def _nudge(self, cand: Candidate, f: FileState) -> None:
        """O(1) per touch: the exact deadline is a max over every file (O(n), so O(n^2) per
        sequence). A touch can only lower it by closing an open file, so push a lower bound
        when it is earlier than the scheduled entry; due() recomputes the exact one on pop."""
        w = cand.windows
        lb = f.changed_at + (w.open_timeout if f.open else w.settle)
        if cand.is_sequence:
            lb = max(lb, cand.last_arrival + w.sequence_window(len(cand.files), cand.max_gap))
        if cand.deadline == 0.0 or lb < cand.deadline:
            cand.deadline = lb
            heapq.heappush(self._heap, (lb, next(self._seq), cand.key))

    def _schedule(self, cand: Candidate, not_before: float = float("-inf")) -> None:
        cand.deadline = max(self._deadline(cand), not_before)
        heapq.heappush(self._heap, (cand.deadline, next(self._seq), cand.key))

    def hold(self, cand: Candidate, delay: float) -> None:
        """Put a candidate that ``due()`` returned back, to be tried again after ``delay``
        seconds: files that arrive meanwhile join it instead of starting a second candidate."""
        self.holds += 1
        known = self._cands.get(cand.key)
        if known is not None and known is not cand:  # merge with one started since (never split)
            for p, f in cand.files.items():
                known.files.setdefault(p, f)
            known.last_arrival = max(known.last_arrival, cand.last_arrival)
            known.max_gap = max(known.max_gap, cand.max_gap)
            cand = known
        self._cands[cand.key] = cand
        for p in cand.files:
            self._by_path[p] = cand.key
        self._schedule(cand, self._mono() + delay)

    def next_deadline(self) -> float | None:
        while self._heap:
            deadline, _, key = self._heap[0]
            cand = self._cands.get(key)
            if cand is None or cand.deadline != deadline:
                heapq.heappop(self._heap)  # stale entry
                continue
            return deadline
        return None

    def due(self) -> list[Candidate]:
        """Pop every candidate whose deadline has passed and that proves complete on a fresh
        stat; the others are rescheduled."""
        now = self._mono()
        ready: list[Candidate] = []
        while self._heap and self._heap[0][0] <= now:
            deadline, _, key = heapq.heappop(self._heap)
            cand = self._cands.get(key)
            if cand is None or cand.deadline != deadline:
                continue
            if self._deadline(cand) > now:  # popped at a lower bound: not yet
                self._schedule(cand)
                continue
            if self._verify(cand, now):
                later = self._writers(cand, now)
                if later > now:  # a writer holds a file, or the OS cannot tell: not yet
                    self._schedule(cand, later)
                    continue
                self._cands.pop(key, None)
                for p in cand.files:
                    self._by_path.pop(p, None)
                ready.append(cand)
            elif cand.key in self._cands:
                self._schedule(cand)
        return ready

    def writers_gone(self, cand: Candidate) -> bool:
        """Asked again just before ``cand`` (handed over by ``due``) is journaled: True when no
        writer holds its files; else it is put back (``hold``) to wait for them. A candidate
        whose writers ``due`` found gone a moment ago is not asked twice."""
        now = self._mono()
        if now - self._cleared.pop(cand.key, float("-inf")) < PROBED_FRESH:
            return True
        later = self._writers(cand, now)
        if later <= now:
            return True
        self.hold(cand, later - now)
        return False

    def _writers(self, cand: Candidate, now: float) -> float:
        """When ``cand`` may be taken as complete as far as its writers go: ``now`` (or earlier)
        when nothing holds its files or its root has no probe (close events answer there),
        else the end of another settle window. Each file is asked: busy, it is quiet from now on
        (the stat-quiet window starts again), unless it has been untouched for ``max_wait``;
        unknown, it must have been quiet for twice the settle window."""
        probe = self.probe_for(cand) if self.probe_for is not None else None
        if probe is None:
            return now
        w = cand.windows
        later = now
        for f in cand.files.values():
            try:
                busy = probe.busy(f.path)
            except Exception as exc:  # noqa: BLE001 - a probe failing is a probe that cannot tell
                log.debug("%s: the writer probe failed: %s: %s", shown(f.path), type(exc).__name__, shown(str(exc)))
                busy = None
            if busy:
                untouched = self._wall() - f.mtime_ns / 1e9
                if untouched >= w.max_wait:
                    log.info("%s: still held open by a writer, but untouched for %.0f s (max_wait); taken as it is",
                             shown(f.path), untouched)
                    continue
                wait = max(w.settle, BUSY_RECHECK)
                log.debug("%s: a writer still holds it; waiting another %.1f s", shown(f.path), wait)
                self.writer_waits += 1
                f.changed_at = now  # its quiet window starts again
                later = max(later, now + wait)
            elif busy is None and now < f.changed_at + 2 * w.settle:
                log.debug("%s: cannot tell whether a writer holds it; waiting until it has been quiet for %.1f s",
                          shown(f.path), 2 * w.settle)
                later = max(later, f.changed_at + 2 * w.settle)
        if later <= now:
            if len(self._cleared) > 10_000:  # handed over but never journaled (tests, a failed commit)
                self._cleared.clear()
            self._cleared[cand.key] = now
        return later

    def _verify(self, cand: Candidate, now: float) -> bool:
        w = cand.windows
        changed = False
        for f in list(cand.files.values()):
            if f.checked_at >= f.changed_at + w.settle and not f.open:
                continue  # our last stat already saw it quiet for the whole window
            try:
                st = self._stat(f.path)
            except OSError:
                self.remove(f.path)
                changed = True
                continue
            f.checked_at = now
            if (st.st_size, st.st_mtime_ns) != (f.size, f.mtime_ns):
                f.size, f.mtime_ns, f.changed_at = st.st_size, st.st_mtime_ns, now
                changed = True
            elif f.open and now >= f.changed_at + w.open_timeout:
                log.debug("%s: no close event after %.0f s quiet; treating it as closed", f.path, w.open_timeout)
                f.open = False
        if cand.key not in self._cands:
            return False  # every file vanished
        return not changed and self._deadline(cand) <= now
