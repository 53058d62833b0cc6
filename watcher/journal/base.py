"""The journal: a durable ledger of every candidate publish, written before anything is sent.

States form a guarded state machine; every transition updates ``WHERE status IN (...)`` and
raises when no row moved, so two workers (or two agents) can never both own a publish::

    pending ──claim──► publishing ──► published
       ▲                   │
       └── retry later ────┤ (RetryableError, attempts < max)
                           └──► failed (parked: PermanentError or attempts exhausted)
                                   └── `watcher retry` ──► pending

The idempotency key (root, template, fields without frame, version) is unique over all states,
so a candidate seen again (rescan, restart, duplicate event) never becomes a second publish."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Iterable

from ..model import Publish, TrackerRef


class Status(str, Enum):
    PENDING = "pending"
    PUBLISHING = "publishing"
    PUBLISHED = "published"
    FAILED = "failed"


@dataclass(frozen=True)
class FileRecord:
    """A file as the journal remembers it, so that a scan need not stat it again."""

    dir: str  # absolute directory
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
        }


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class TransitionError(Exception):
    """A guarded update matched no row: someone else moved the publish first."""


class Journal(ABC):
    """One implementation per database; the pipeline and the CLI see only this."""

    url: str

    @abstractmethod
    def add(self, publish: Publish, files: Iterable[FileRecord]) -> tuple[Row, bool]:
        """Record a candidate as ``pending`` (or return the row that already holds its key).
        Returns (row, created)."""

    @abstractmethod
    def replace(self, row_id: int, publish: Publish, files: Iterable[FileRecord], *, revision: int | None = None) -> Row:
        """Put a published/failed row back to ``pending`` with a new payload (republish: update)."""

    @abstractmethod
    def claim(self, agent: str, now: float, lease_seconds: float, *, exclude_keys: set[str] = frozenset()) -> Row | None:  # type: ignore[assignment]
        """Take the next due ``pending`` row: ``pending → publishing`` under a lease."""

    @abstractmethod
    def renew(self, row_id: int, agent: str, until: float) -> None: ...

    @abstractmethod
    def published(self, row_id: int, agent: str, tracker: str, ref: TrackerRef) -> None: ...

    @abstractmethod
    def retry_later(self, row_id: int, agent: str, error: str, at: float) -> None:
        """``publishing → pending`` with the error and the next attempt time; outcome uncertain."""

    @abstractmethod
    def fail(self, row_id: int, agent: str, error: str) -> None:
        """``publishing → failed``: parked until ``watcher retry``."""

    @abstractmethod
    def release(self, row_id: int, agent: str) -> None:
        """``publishing → pending`` at shutdown, marked uncertain, attempt not counted."""

    @abstractmethod
    def save_state(self, row_id: int, state: dict[str, Any]) -> None: ...

    @abstractmethod
    def recover(self, agent: str, now: float, alive: "callable[[str], bool]") -> int:  # type: ignore[valid-type]
        """Return ``publishing`` rows of dead agents (or expired leases) to ``pending``, uncertain."""

    @abstractmethod
    def requeue(self, ids: Iterable[int] | None = None, *, failed: bool = False) -> list[int]:
        """``failed → pending`` for the given ids (or all failed); returns the ids moved."""

    @abstractmethod
    def rows(self, status: Status | None = None, *, ids: Iterable[int] | None = None, limit: int | None = None) -> list[Row]: ...

    @abstractmethod
    def by_key(self, key: str) -> Row | None: ...

    @abstractmethod
    def keys_like(self, prefix: str) -> list[Row]:
        """Rows whose key starts with ``prefix`` (the revisions of one publish)."""

    @abstractmethod
    def known_files(self, directory: str) -> dict[str, tuple[int, int, int]]:
        """name -> (size, mtime_ns, publish id) for files the journal holds in one directory."""

    @abstractmethod
    def files_of(self, publish_id: int) -> dict[str, tuple[int, int]]:
        """path -> (size, mtime_ns) of every file recorded for one publish."""

    @abstractmethod
    def remember_files(self, publish_id: int, files: Iterable[FileRecord], note: str | None = None) -> None:
        """Record files as belonging to a publish without republishing it (``republish: never``),
        so that scans skip them and the warning is logged once."""

    @abstractmethod
    def next_due(self) -> float | None:
        """Earliest ``next_attempt_at`` among pending rows (None: nothing pending)."""

    @abstractmethod
    def counts(self) -> dict[str, int]: ...

    @abstractmethod
    def close(self) -> None: ...

    # Local registry: publishes "registered" by the embedded backend, in the same database.
    @abstractmethod
    def registry_add(self, key: str, payload: dict[str, Any]) -> tuple[int, float]:
        """Insert once per key; returns (registry id, created_at) of the existing or new entry."""


def open_journal(url: str) -> Journal:
    if url.startswith("sqlite://"):
        from .sqlite import SqliteJournal

        return SqliteJournal(url)
    if url.startswith(("postgresql://", "postgres://")):
        from .postgres import PostgresJournal

        return PostgresJournal(url)
    from ..errors import ConfigError

    raise ConfigError(f"journal: unsupported URL {url!r}; use sqlite:////path/journal.db or postgresql://...")
