"""The records that cross stage boundaries: what a settled candidate becomes, and the job a
backend receives. Backends see only these, never pipeline internals."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator


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
    ``negative_digits``: the sequence's negative frames keep ``padding`` digits after the minus
    sign (``beauty.-0003.exr`` beside ``beauty.0002.exr``), which printf does not write
    (``-003``); ``frame_path`` writes them back as they are on disk.
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
    negative_digits: bool = False

    @property
    def is_sequence(self) -> bool:
        return self.frames is not None

    @property
    def extension(self) -> str:
        """Extension without the dot, lower-case: ``exr``, ``nk``."""
        return os.path.splitext(self.path)[1].lstrip(".").lower()

    def frame_numbers(self) -> list[int]:
        """Frames present on disk (the range minus the holes), in the time of the frames present,
        not of the span between them (a stray frame far away costs nothing)."""
        if self.frames is None:
            return []
        holes = parse_frames(self.missing_frames) if self.missing_frames else []
        return [f for a, b in subtract(parse_frames(self.frames), holes) for f in range(a, b + 1)]

    def frame_path(self, frame: int) -> str:
        """The path of one frame of a sequence (the pattern filled in)."""
        if self.frames is None:
            return self.path
        return frame_file(self.path, frame, self.padding, self.negative_digits)

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


# -- frame ranges: fileseq's notation ("1001-1100", "1003,1005-1007", "1002-1010x2"), written
# and read in the time of the ranges, never of the frames they span --------------------------

_RANGE = re.compile(r"(-?[0-9]+)(?:-(-?[0-9]+)(?:x([0-9]+))?)?")


def format_frames(frames: Iterable[int]) -> str:
    """Sorted distinct frames as fileseq writes them: runs ``a-b``, three or more frames at one
    step ``a-bxN``, single frames alone. O(n) in the frames given."""
    return format_ranges(_merge([(f, f) for f in frames]))


def format_ranges(ranges: Iterable[tuple[int, int]]) -> str:
    """Sorted, disjoint, non-adjacent inclusive ranges in fileseq's notation, in O(ranges):
    ranges of one frame that follow each other at one step (holes every other frame of a
    render on twos) are written ``a-bxN``."""
    items = list(ranges)
    out: list[str] = []
    i = 0
    while i < len(items):
        a, b = items[i]
        if a != b:
            out.append(f"{a}-{b}")
            i += 1
            continue
        j = i + 1  # a run of single frames at one step?
        if j < len(items) and items[j][0] == items[j][1]:
            step = items[j][0] - a  # > 1: the ranges are not adjacent
            while j + 1 < len(items) and items[j + 1][0] == items[j + 1][1] and items[j + 1][0] - items[j][0] == step:
                j += 1
            if j - i >= 2:
                out.append(f"{a}-{items[j][0]}x{step}")
                i = j + 1
                continue
        out.append(str(a))
        i += 1
    return ",".join(out)


def parse_frames(text: str) -> list[tuple[int, int]]:
    """Inclusive ranges, sorted and merged, of a frame range in fileseq's notation. A stepped
    range is expanded (its frames are single ranges); notations this does not know are read by
    fileseq."""
    out: list[tuple[int, int]] = []
    for part in text.split(","):
        m = _RANGE.fullmatch(part.strip())
        if m is None:
            from fileseq import FrameSet

            return _merge([(int(f), int(f)) for f in FrameSet(text)])
        a = int(m.group(1))
        b = a if m.group(2) is None else int(m.group(2))
        step = int(m.group(3) or 1)
        lo, hi = min(a, b), max(a, b)
        if step <= 1:
            out.append((lo, hi))
        else:
            out.extend((f, f) for f in range(lo, hi + 1, step))
    return _merge(out)


def subtract(ranges: list[tuple[int, int]], holes: list[tuple[int, int]]) -> Iterator[tuple[int, int]]:
    """``ranges`` minus ``holes`` (both sorted and merged), range by range."""
    k = 0
    for a, b in ranges:
        while k < len(holes) and holes[k][1] < a:
            k += 1
        lo, h = a, k
        while h < len(holes) and holes[h][0] <= b:
            if holes[h][0] > lo:
                yield lo, holes[h][0] - 1
            lo = max(lo, holes[h][1] + 1)
            h += 1
        if lo <= b:
            yield lo, b


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1] + 1:
            if b > out[-1][1]:
                out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


def frame_file(pattern: str, frame: int, padding: int, negative_digits: bool = False) -> str:
    """The file of one frame of a sequence's printf pattern (see ``Publish.negative_digits``)."""
    if frame < 0 and negative_digits and padding:
        return fill_pattern(pattern, "-" + f"{-frame:0{padding}d}")
    return pattern % frame


def fill_pattern(pattern: str, text: str) -> str:
    """A printf pattern (one frame token, other ``%`` doubled) with ``text`` where the token is."""
    i = 0
    while i < len(pattern):
        if pattern[i] == "%":
            if pattern.startswith("%%", i):
                i += 2
                continue
            end = pattern.index("d", i) + 1
            return (pattern[:i] + "%s" + pattern[end:]) % text
        i += 1
    return pattern.replace("%%", "%")
