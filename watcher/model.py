"""The records that cross stage boundaries: what a settled candidate becomes, and the job a
backend receives. Backends see only these, never pipeline internals."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass(frozen=True)
class Entity:
    type: str  # tracker entity type: Shot, Asset, Sequence, ...
    name: str  # its code/name: "sh010", "hero"


@dataclass(frozen=True)
class Publish:
    """One publish: a single file, or a whole frame sequence.

    ``path`` is absolute; for a sequence it is the printf pattern (``/x/beauty.%04d.exr``) and
    ``frames`` the fileseq range (``"1001-1100"``), ``missing_frames`` the holes or None.
    ``fields`` are the typed template fields without the frame key.
    """

    key: str  # idempotency key: root, template, fields without frame, version
    root: str
    root_path: str
    template: str
    path: str
    name: str
    publish_type: str
    version: int | None = None
    entity: Entity | None = None
    task: str | None = None
    project: str | None = None
    frames: str | None = None
    missing_frames: str | None = None
    frame_count: int = 1
    padding: int = 0
    size: int = 0  # bytes, all files together
    mtime: float = 0.0  # newest mtime of its files
    fields: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    review: bool = False  # the template's publishes rule asks for a review item
    # when its newest file arrived on this disk (max of mtime and ctime: copies keep mtimes, not
    # ctimes); set only on roots with `existing: baseline`, for the journal to tell files that
    # were there before it first saw the root (recorded as baseline, never published)
    arrived: float | None = None

    @property
    def is_sequence(self) -> bool:
        return self.frames is not None

    @property
    def extension(self) -> str:
        """Extension without the dot, lower-case: ``exr``, ``nk``."""
        return os.path.splitext(self.path)[1].lstrip(".").lower()

    def frame_numbers(self) -> list[int]:
        """Frames present on disk (the range minus the holes)."""
        if self.frames is None:
            return []
        from fileseq import FrameSet

        present = FrameSet(self.frames)
        if self.missing_frames:
            return [f for f in present if f not in set(FrameSet(self.missing_frames))]
        return list(present)

    def frame_path(self, frame: int) -> str:
        """The path of one frame of a sequence (the pattern filled in)."""
        return self.path % frame if self.frames is not None else self.path

    def middle_frame_path(self) -> str | None:
        """The file that stands for the publish in a thumbnail or preview: the middle frame
        present on disk of a sequence (None when none is), the file itself otherwise."""
        if self.frames is None:
            return self.path
        frames = self.frame_numbers()
        return self.frame_path(frames[len(frames) // 2]) if frames else None

    def file_paths(self) -> list[str]:
        """Every file on disk this publish covers."""
        if self.frames is None:
            return [self.path]
        return [self.frame_path(f) for f in self.frame_numbers()]

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["entity"] = {"type": self.entity.type, "name": self.entity.name} if self.entity else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Publish":
        d = dict(d)
        ent = d.get("entity")
        d["entity"] = Entity(**ent) if ent else None
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass(frozen=True)
class TrackerRef:
    """What the tracker answered: its id for the publish, and a link when it has one.
    ``adopted``: the record already existed (a peer tool registered the same file) and was
    taken as this publish instead of creating a duplicate."""

    id: str
    url: str | None = None
    adopted: bool = False


@dataclass
class Job:
    """A publish as handed to a backend by a publisher worker.

    ``uncertain`` is True when an earlier attempt may have reached the tracker (crash while
    ``publishing``, timeout, dropped connection): the backend must look for what it may already
    have created before creating anything. ``state`` is the backend's own scratch data, persisted
    in the journal by ``save_state`` *before* the backend sends anything that depends on it
    (pre-generated ids, for example)."""

    id: int
    publish: Publish
    attempts: int = 0
    uncertain: bool = False
    state: dict[str, Any] = field(default_factory=dict)
    save_state: Callable[[dict[str, Any]], None] = lambda _state: None
    # This publish was made before and its files changed (a late write within the amend window,
    # or ``republish: update``): update the tracker record ``previous_id`` in place (size,
    # frames, checksum) instead of creating one. ``state`` still holds the first publish's ids.
    amend: bool = False
    previous_id: str | None = None

    def remember(self, **values: Any) -> None:
        """Merge values into ``state`` and persist them before continuing."""
        self.state.update(values)
        self.save_state(dict(self.state))
