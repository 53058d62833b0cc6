"""The journal's records: what a row holds and what the CLI shows of it. The state machine
itself is in ``ledger.py``; connections per database in ``sqlite.py`` / ``postgres.py``."""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from ..errors import JournalError
from ..model import Publish


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
