"""Candidates: what may become one publish. The frames of one sequence (same root, template and
fields except the frame key, same padding) share ONE candidate key; any other file is a
candidate of one. The settle stage groups files under their key; a settled candidate becomes a
``Publish`` here."""
from __future__ import annotations

import json
from json.encoder import encode_basestring as _encode_str
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from .completion import Signals
from .match.keys import printf_token
from .model import Entity, Publish, format_ranges, frame_file

log = logging.getLogger("watcher")

# A frame further than this from every other frame of its sequence is a stray (a typo'd frame
# number, a test render): reported and left out, so that it neither turns the sequence's range
# into millions of holes nor holds the rest back. No shot has a hole this long.
MAX_FRAME_GAP = 10_000


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
    left_out: set[str] = field(default_factory=set)  # files kept out of its publish, already reported

    @property
    def born(self) -> float:
        """Wall time of its oldest file (max_wait counts from it, across restarts)."""
        return min(f.mtime_ns for f in self.files.values()) / 1e9 if self.files else 0.0

    @property
    def is_sequence(self) -> bool:
        return self.match.frame_key is not None and self.match.frame is not None


def candidate_key(root: str, match: Any) -> str:
    """The idempotency key: root, template, typed fields without the frame (version included;
    text in NFC, whatever the spelling on disk), and, for sequences, the padding (``%04d`` and
    ``%d`` are different sequences)."""
    fields = {k: v for k, v in match.fields.items() if k != match.frame_key}
    key = f"{root}:{match.template}:{fields_json(fields)}"
    if match.frame_key is not None and match.frame is not None:
        key += ":" + printf_token(seq_padding(match))
    return key


def fields_json(fields: dict[str, Any]) -> str:
    """``json.dumps(fields, sort_keys=True, default=str, ensure_ascii=False)``, character for
    character (keys are stored in journals: they must never change), built directly for the
    str and int values templates produce: a burst of single files makes one key per file."""
    parts = []
    for k in sorted(fields):
        v = fields[k]
        t = type(v)
        if t is str:
            text = _encode_str(v)
        elif t is int:
            text = int.__repr__(v)
        else:  # anything else (dates, floats, None, bools) the way json writes it
            return json.dumps(fields, sort_keys=True, default=str, ensure_ascii=False)
        parts.append(f"{_encode_str(k)}: {text}")
    return "{" + ", ".join(parts) + "}"


def seq_padding(match: Any) -> int:
    """The padding of a match's sequence (``Match.seq_padding``; a record with only the fields
    grouping reads has ``padding`` alone)."""
    return getattr(match, "seq_padding", match.padding)


def publish_path(root_path: str, match: Any) -> str:
    """The path a match publishes under, as spelled on disk: the file, or for a frame of a
    sequence the sequence's printf pattern (at the sequence's padding, whichever frame it is)."""
    if match.frame_key is None or match.frame is None:
        return os.path.join(root_path, match.relpath)
    pattern = match.pattern if seq_padding(match) == match.padding else match.sequence_pattern()
    return os.path.join(root_path, pattern)


def split_strays(frames: Iterable[int]) -> tuple[list[int], list[int]]:
    """(kept, strays), both sorted and distinct: the frames cut apart by gaps wider than
    ``MAX_FRAME_GAP`` form runs; the run with the most frames (the first of equals) is kept.
    O(n log n) in the frames, whatever their span."""
    nums = sorted(set(frames))
    if not nums:
        return [], []
    runs: list[tuple[int, int]] = []  # (start, end) indexes into nums
    start = 0
    for i in range(1, len(nums)):
        if nums[i] - nums[i - 1] > MAX_FRAME_GAP:
            runs.append((start, i))
            start = i
    runs.append((start, len(nums)))
    if len(runs) == 1:
        return nums, []
    a, b = max(runs, key=lambda r: (r[1] - r[0], -r[0]))
    return nums[a:b], nums[:a] + nums[b:]


def frame_ranges(frames: Iterable[int]) -> tuple[str, str | None]:
    """(range, holes): ``[1001, 1002, 1004]`` -> ``("1001-1004", "1003")``, in fileseq's
    notation. Built from the sorted frames in the time of the frames, not of their span."""
    nums = sorted(set(frames))
    lo, hi = nums[0], nums[-1]
    full = str(lo) if lo == hi else f"{lo}-{hi}"
    if len(nums) == hi - lo + 1:
        return full, None
    return full, format_ranges((a + 1, b - 1) for a, b in zip(nums, nums[1:]) if b - a > 1)


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
    frames = missing = None
    count = 1
    negative_digits = False
    if cand.is_sequence:
        path = publish_path(cand.scope.path, m)
        _drop_strays(cand, members)
        negative_digits = _negative_digits(m, members)
        pad = seq_padding(m)
        _drop_misfits(cand, members, lambda p, frame: frame is not None and p == frame_file(
            path, frame, pad, negative_digits))
        nums = [v[0] for v in members.values() if v[0] is not None]
        frames, missing = frame_ranges(nums)
        count = len(nums)
    else:
        rel = getattr(m, "relpath", None)
        path = os.path.join(cand.scope.path, rel) if rel else next(iter(members))
        if path not in members:  # its first file went away: another of the same key stands for it
            path = next(iter(members))
        _drop_misfits(cand, members, lambda p, _frame: p == path)
    size = sum(v[1] for v in members.values())
    mtime = max(v[2] for v in members.values()) / 1e9
    return Publish(
        key=key or cand.key, root=cand.scope.name, root_path=cand.scope.path, template=m.template, path=path,
        name=spec.name, publish_type=spec.publish_type,
        version=version if version is not None else spec.version,
        entity=cand.scope.entity_for(spec), task=spec.task, project=cand.scope.project_for(spec),
        frames=frames, missing_frames=missing, frame_count=count,
        padding=seq_padding(m) if cand.is_sequence else 0, size=size, mtime=mtime,
        fields=fields, review=spec.review,
        arrived=_arrived(members) if cand.scope.existing == "baseline" else None,
        negative_digits=negative_digits,
    )


def _drop_strays(cand: Candidate, members: dict[str, tuple[int | None, int, int]]) -> None:
    """Leave a sequence's stray frames out of its publish (see ``MAX_FRAME_GAP``), each
    reported once. They stay among the candidate's files: journaled as seen with it, so a rescan
    does not bring them back as a sequence of their own."""
    kept, strays = split_strays(v[0] for v in members.values() if v[0] is not None)
    if not strays:
        return
    gone = set(strays)
    span = f"{kept[0]}-{kept[-1]}" if len(kept) > 1 else str(kept[0])
    for p in [p for p, v in members.items() if v[0] in gone]:
        frame = members.pop(p)[0]
        if p not in cand.left_out:
            cand.left_out.add(p)
            log.warning("%s: frame %d is more than %d frames away from the rest of its sequence (%s); it is left "
                        "out of that publish: rename or move it if it belongs elsewhere",
                        p, frame, MAX_FRAME_GAP, span)


def _drop_misfits(cand: Candidate, members: dict[str, tuple[int | None, int, int]],
                  fits: Callable[[str, int | None], bool]) -> None:
    """Leave out, reported once, the members the publish would not name: a file whose frame
    is another file's under another spelling (``-001`` beside ``-0001``, ``-0`` beside ``0``),
    or, of a single file, a second file of the same key (an int written ``1`` and ``01``). A
    publish names each of its files exactly once and sums only their sizes. When none fits
    (the files the match came from went away), all stay, as they are."""
    misfits = [p for p, (frame, _size, _mtime) in members.items() if not fits(p, frame)]
    if not misfits or len(misfits) == len(members):
        return
    for p in misfits:
        frame = members.pop(p)[0]
        if p not in cand.left_out:
            cand.left_out.add(p)
            log.warning("%s: %s is written otherwise in this publish (another file of the same name once typed "
                        "values are compared); it is left out of it: rename or remove one of them", p,
                        f"frame {frame}" if frame is not None else "the same file")


def _negative_digits(match: Any, members: dict[str, tuple[int | None, int, int]]) -> bool:
    """Whether the sequence's negative frames are written with the padding's digits after the
    sign (``-0003``), not as printf writes them (``-003``)."""
    pad = seq_padding(match)
    if not pad or getattr(match, "frame_span", None) is None:
        return False
    suffix = match.relpath[match.frame_span[1]:]
    for p, (frame, _size, _mtime) in members.items():
        if frame is not None and frame < 0 and len(str(-frame)) < pad:
            return p.endswith(f"-{-frame:0{pad}d}{suffix}")
    return False


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
