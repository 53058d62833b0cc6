"""What flows on the pipeline's one queue: filesystem events from observers and pollers, and the
scanner's marks. Small immutable records; the pipeline dispatches on their type and ``Kind``."""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Kind(Enum):
    CREATED = "created"  # a file appeared (real, or synthetic: see ``FsEvent.synthetic``)
    CLOSED = "closed"  # a writer closed it (Linux close-write): a hint that it may be complete
    MOVED = "moved"  # renamed; ``dest`` is the new path (complete: no close will follow)
    ARRIVED = "arrived"  # renamed or hard-linked in from outside the watch: complete, no close will follow
    MODIFIED = "modified"  # written (observers without close events): restarts its quiet window
    DELETED = "deleted"
    SEEN = "seen"  # found by a scan or a poll: no event evidence, its mtime tells its age
    DIR_CREATED = "dir_created"
    DIR_MOVED = "dir_moved"
    DIR_DELETED = "dir_deleted"


@dataclass(frozen=True, slots=True)
class FsEvent:
    """``synthetic`` (``CREATED`` only): no close event will follow this create, so the
    stat-quiet window alone decides. True for files found by watchdog's walk of a new
    directory, and for every create of an observer that reports no closes (FSEvents,
    ReadDirectoryChangesW)."""

    root: str
    kind: Kind
    path: str
    dest: str | None = None
    synthetic: bool = False


@dataclass(frozen=True, slots=True)
class DirListed:
    """A scan has queued every file of ``path``: its sequences may be judged whole now."""

    root: str
    path: str


@dataclass(frozen=True, slots=True)
class ScanDone:
    """A whole-root scan that began at loss count ``losses`` has queued everything it found."""

    root: str
    losses: int


Event = FsEvent | DirListed | ScanDone
