"""The journal's records: what a row holds and what the CLI shows of it. The state machine
itself is in ``ledger.py``; connections per database in ``sqlite.py`` / ``postgres.py``."""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable

from ..errors import JournalError
from ..model import Publish

log = logging.getLogger("watcher")


class Status(str, Enum):
    PENDING = "pending"
    PUBLISHING = "publishing"
    PUBLISHED = "published"
    FAILED = "failed"
    BASELINE = "baseline"  # on disk before watcher (`watcher baseline`, `existing: baseline`): known, never published


@dataclass(frozen=True)
class FileRecord:
    """A file as the journal remembers it, so that a scan need not stat it again. Keyed by root
    name and root-relative directory: agents mounting the share at different paths agree."""

    root: str  # root name
    dir: str  # directory relative to the root, "" at its top
    name: str
    size: int
    mtime_ns: int


@dataclass
class Row:
    id: int
    key: str
    status: Status
    publish: Publish
    attempts: int = 0
    uncertain: bool = False
    last_error: str | None = None
    next_attempt_at: float | None = None
    tracker: str | None = None
    tracker_id: str | None = None
    tracker_url: str | None = None
    state: dict[str, Any] = field(default_factory=dict)
    created_at: float = 0.0
    updated_at: float = 0.0
    published_at: float | None = None
    revision: int = 1  # >1 when republished under `republish: new_version`
    adopted: bool = False  # the tracker already had a record of this file: taken, nothing created

    def to_json(self) -> dict[str, Any]:
        """The `watcher publishes --json` contract (see README): keep these names stable."""
        p = self.publish
        return {
            "id": self.id,
            "root": p.root,
            "template": p.template,
            "path": p.path,
            "frames": p.frames,
            "missing_frames": p.missing_frames,
            "name": p.name,
            "version": p.version,
            "entity": {"type": p.entity.type, "name": p.entity.name} if p.entity else None,
            "task": p.task,
            "publish_type": p.publish_type,
            "status": self.status.value,
            "tracker": self.tracker,
            "tracker_id": self.tracker_id,
            "error": self.last_error,
            "created_at": _iso(self.created_at),
            "published_at": _iso(self.published_at),
            "attempts": self.attempts,
            "project": p.project,
            "frame_count": p.frame_count,
            "size": p.size,
            "tracker_url": self.tracker_url,
            "adopted": self.adopted,
        }


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class TransitionError(JournalError):
    """A guarded update matched no row: someone else moved the publish first."""


class Fault(str, Enum):
    """Why the journal takes no writes now: the database's trouble, not a candidate's."""

    LOCKED = "locked"  # another process holds the write lock longer than the busy timeout
    FULL = "full"  # the disk (or a quota) is full
    READ_ONLY = "read-only"  # file, folder, filesystem or server refuses writes
    CANNOT_OPEN = "cannot-open"  # the file or its folder cannot be opened (gone, permissions)
    IO = "io-error"  # the disk reports I/O errors
    DAMAGED = "damaged"  # the file is not a database, or its pages are corrupt
    UNREACHABLE = "unreachable"  # the server is down or the connection was lost
    OTHER = "other"


class JournalUnavailable(JournalError):
    """The journal cannot be written (or read) now, whatever is asked of it: a locked, full,
    read-only, damaged or unreachable database. Callers keep what they meant to write and try
    again later (``JournalHealth`` says when); splitting a batch would not help."""

    def __init__(self, fault: Fault, reason: str) -> None:
        super().__init__(f"journal unavailable: {reason}")
        self.fault = fault
        self.reason = reason


@dataclass(frozen=True)
class Probe:
    """One line of the journal's own check (`watcher check`)."""

    ok: bool
    what: str
    detail: str


@dataclass
class _Trouble:
    fault: Fault
    reason: str
    since: float  # wall clock
    failures: int
    retry_at: float  # monotonic
    on_write: bool


class JournalHealth:
    """Whether the journal takes writes now, as every thread of an agent has found it.

    Each thread's last failure is kept until that thread succeeds again (a read clears only a
    failed read): threads have their own connections, and one of them may be refused (opened
    while the journal was read-only) while the others still write. A thread that failed waits
    ``retry_in()`` before trying again: exponential, capped. The first failure of an outage is
    logged once, as one line with what to do; so is the recovery."""

    def __init__(self, *, base: float = 1.0, cap: float = 30.0, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.base, self.cap = base, cap
        self._clock, self._wall = clock, wall
        self._lock = threading.Lock()
        self._by_thread: dict[int, tuple[threading.Thread, _Trouble]] = {}
        self._logged: tuple[Fault, str] | None = None  # what the log said last (None: that it works)
        self._down_since: float | None = None
        self.outages = 0
        # the last outage's reason until a write succeeds again (kept when the threads that saw it
        # have ended: a one-shot `scan` says why after its agent stopped)
        self.unresolved: str | None = None

    def configure(self, *, base: float, cap: float) -> None:
        self.base, self.cap = base, max(base, cap)

    def failed(self, exc: JournalUnavailable, *, on_write: bool = True) -> None:
        me = threading.current_thread()
        now = self._clock()
        with self._lock:
            old = self._by_thread.get(me.ident or 0)
            n = old[1].failures + 1 if old is not None else 1
            delay = min(self.cap, self.base * 2 ** (n - 1))
            since = old[1].since if old is not None else self._wall()
            self._by_thread[me.ident or 0] = (me, _Trouble(exc.fault, exc.reason, since, n,
                                                           now + delay, on_write or (old is not None and old[1].on_write)))
            said = (exc.fault, exc.reason)
            self.unresolved = exc.reason
            if self._down_since is None:
                self._down_since = since
                self.outages += 1
            news = self._logged is None or self._logged[0] is not exc.fault
            self._logged = said
        if news:
            log.error("journal unavailable: %s. Settled files stay in memory and are journaled, and publish "
                      "outcomes recorded, once it can be written again (retried with backoff, up to every %s s)",
                      exc.reason, f"{self.cap:g}")

    def succeeded(self, *, on_write: bool = True) -> None:
        key = threading.current_thread().ident or 0
        if key not in self._by_thread:  # the common case, without the lock
            return
        with self._lock:
            got = self._by_thread.get(key)
            if got is None or (got[1].on_write and not on_write):
                return
            del self._by_thread[key]
            lasted = self._wall() - (self._down_since or self._wall())
            self._prune()
            if on_write:
                self.unresolved = None
            if self._by_thread:
                return
            said, self._logged = self._logged, None
        if said is not None:
            log.warning("journal: writable again after %.0f s; journaling what waited", lasted)

    def retry_in(self) -> float:
        """Seconds this thread should wait before its next try (0: try now)."""
        got = self._by_thread.get(threading.current_thread().ident or 0)
        return 0.0 if got is None else max(0.0, got[1].retry_at - self._clock())

    def _prune(self) -> None:
        """Forget threads that have ended (an HTTP request's): they will not try again."""
        for k in [k for k, (t, _) in self._by_thread.items() if not t.is_alive()]:
            del self._by_thread[k]
        if not self._by_thread:
            self._down_since = None

    @property
    def down(self) -> bool:
        with self._lock:
            self._prune()
            return bool(self._by_thread)

    def snapshot(self) -> dict[str, Any]:
        """For ``status.json`` and ``/healthz``: ``ok``, and when not, the fault, the reason
        (with what to do), since when, and the threads that wait for it."""
        with self._lock:
            self._prune()
            troubles = [(t.name, tr) for t, tr in self._by_thread.values()]
        if not troubles:
            return {"ok": True, "fault": None, "reason": None, "since": None, "waiting_threads": []}
        _, worst = max(troubles, key=lambda x: (x[1].on_write, x[1].failures))
        return {"ok": False, "fault": worst.fault.value, "reason": worst.reason,
                "since": min(tr.since for _, tr in troubles), "failures": sum(tr.failures for _, tr in troubles),
                "retry_in": round(max(0.0, worst.retry_at - self._clock()), 1),
                "waiting_threads": sorted(n for n, _ in troubles)}
