"""Candidates: what may become one publish. The frames of one sequence (same root, template and
fields except the frame key, same padding) share ONE candidate key; any other file is a
candidate of one. The settle stage groups files under their key; a settled candidate becomes a
``Publish`` here."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from fileseq import FrameSet

from .completion import Signals
from .model import Entity, Publish


@dataclass(frozen=True)
class Windows:
    """How long a candidate must be quiet before it counts as complete."""

    settle: float  # file quiet window, seconds
    sequence: float  # sequence quiet window, seconds
    open_timeout: float  # a file created but never closed counts as closed after this quiet time
    first_frame_wait: float = 0.0  # a sequence seen as one frame waits this long for the next
    pace_factor: float = 1.0  # a sequence's window stretches to this x the longest gap between frames
    max_wait: float = 4 * 3600.0  # no window stretches beyond this

    def sequence_window(self, frames: int, max_gap: float) -> float:
        """Quiet time after the newest frame before a sequence counts as complete: a farm that
        writes a frame every 8 s is still arriving after 5 s of quiet."""
        w = max(self.sequence, self.pace_factor * max_gap)
        if frames == 1:
            w = max(w, self.first_frame_wait)
        return min(w, self.max_wait)


@dataclass(slots=True)
class FileState:
    path: str
    frame: int | None
    size: int = -1
    mtime_ns: int = 0
    changed_at: float = 0.0  # monotonic: last change we know of (event time or mtime age)
    checked_at: float = float("-inf")  # monotonic: last stat
    open: bool = False  # a real "created" with no "closed" yet: the writer may still hold it


@dataclass(frozen=True)
class RootScope:
    """What the pipeline knows of a root when building publishes."""

    name: str
    path: str
    project: str | None = None
    entity: Entity | None = None
    tracker_project: str | None = None  # `tracker.project`: the project when nothing nearer names one
    existing: str = "publish"  # `existing: baseline`: publishes carry when their files arrived (``arrived``)

    def entity_for(self, rule: Any) -> Entity | None:
        """The root's pinned entity (a vendor drop folder), else the publishes rule's."""
        if self.entity is not None:
            return self.entity
        if rule.entity_type and rule.entity_name is not None:
            return Entity(rule.entity_type, str(rule.entity_name))
        return None

    def project_for(self, rule: Any) -> str | None:
        """The root's pinned project, else the publishes rule's (or its ``Project`` field), else
        the tracker's: the project the publish goes to, so `publishes --json` can show it."""
        return self.project or rule.project or self.tracker_project


@dataclass
class Candidate:
    key: str
    scope: RootScope
    match: Any  # watcher.match.Match of the first file seen
    windows: Windows
    signals: Signals = field(default_factory=Signals)
    files: dict[str, FileState] = field(default_factory=dict)
    last_arrival: float = 0.0  # monotonic: when the newest member joined (sequence quiet window)
    max_gap: float = 0.0  # longest time between two frames arriving: the sequence's pace
    deadline: float = 0.0

    @property
    def born(self) -> float:
        """Wall time of its oldest file (max_wait counts from it, across restarts)."""
        return min(f.mtime_ns for f in self.files.values()) / 1e9 if self.files else 0.0

    @property
    def is_sequence(self) -> bool:
        return self.match.frame_key is not None and self.match.frame is not None


def candidate_key(root: str, match: Any) -> str:
    """The idempotency key: root, template, typed fields without the frame (version included),
    and, for sequences, the padding (``%04d`` and ``%d`` are different sequences)."""
    fields = {k: v for k, v in match.fields.items() if k != match.frame_key}
    key = f"{root}:{match.template}:{json.dumps(fields, sort_keys=True, default=str, ensure_ascii=False)}"
    if match.frame_key is not None and match.frame is not None:
        key += f":%0{match.padding}d" if match.padding else ":%d"
    return key


def frame_ranges(frames: list[int]) -> tuple[str, str | None]:
    """(range, holes): ``[1001, 1002, 1004]`` -> ``("1001-1004", "1003")``."""
    lo, hi = min(frames), max(frames)
    full = str(lo) if lo == hi else str(FrameSet.from_range(lo, hi).frange)
    if len(frames) == hi - lo + 1:
        return full, None
    holes = FrameSet.from_iterable(sorted(set(range(lo, hi + 1)) - set(frames)))
    return full, str(holes.frange)


def build_publish(cand: Candidate, *, key: str | None = None, version: int | None = None,
                  extra_files: dict[str, tuple[int, int]] | None = None) -> Publish:
    """The Publish for a settled candidate. ``extra_files`` (path -> (size, mtime_ns)) adds
    members published earlier (a sequence extended under ``republish: update``)."""
    m = cand.match
    spec = m.publish
    fields = {k: v for k, v in m.fields.items() if k != m.frame_key}
    members: dict[str, tuple[int | None, int, int]] = {
        p: (f.frame, f.size, f.mtime_ns) for p, f in cand.files.items()}
    for p, (size, mtime_ns) in (extra_files or {}).items():
        if p not in members:
            members[p] = (_frame_of(m, cand.scope.path, p), size, mtime_ns)
    size = sum(v[1] for v in members.values())
    mtime = max(v[2] for v in members.values()) / 1e9
    path = os.path.join(cand.scope.path, m.pattern)
    frames = missing = None
    count = 1
    if cand.is_sequence:
        nums = [v[0] for v in members.values() if v[0] is not None]
        frames, missing = frame_ranges(nums)
        count = len(nums)
    else:
        path = next(iter(members))
    return Publish(
        key=key or cand.key, root=cand.scope.name, root_path=cand.scope.path, template=m.template, path=path,
        name=spec.name, publish_type=spec.publish_type,
        version=version if version is not None else spec.version,
        entity=cand.scope.entity_for(spec), task=spec.task, project=cand.scope.project_for(spec),
        frames=frames, missing_frames=missing, frame_count=count,
        padding=m.padding if cand.is_sequence else 0, size=size, mtime=mtime,
        fields=fields, review=spec.review,
        arrived=_arrived(members) if cand.scope.existing == "baseline" else None,
    )


def _arrived(members: dict[str, tuple[int | None, int, int]]) -> float:
    """When the newest of these files arrived on this disk: the latest mtime or ctime (rsync,
    Aspera and ``cp -p`` keep a file's mtime but cannot keep its ctime; a file gone since counts
    by its mtime)."""
    out = 0.0
    for p, (_frame, _size, mtime_ns) in members.items():
        t = mtime_ns / 1e9
        try:
            t = max(t, os.stat(p).st_ctime)
        except OSError:
            pass
        out = max(out, t)
    return out


def _frame_of(match: Any, root_path: str, path: str) -> int | None:
    """Frame number of another member of the same sequence: the text where this match's frame
    stands, between the same fixed prefix and suffix."""
    if match.frame_span is None:
        return None
    start, end = match.frame_span
    prefix = os.path.join(root_path, match.relpath[:start])
    suffix = match.relpath[end:]
    if not (path.startswith(prefix) and path.endswith(suffix)):
        return None
    try:
        return int(path[len(prefix):len(path) - len(suffix)])
    except ValueError:
        return None
