"""Settle logic driven with explicit clocks (no threads, no sleeps) over real files."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import pytest

from watcher.candidate import RootScope, build_publish, candidate_key
from watcher.events import Kind
from watcher.candidate import Windows
from watcher.settle import Settler


@dataclass(frozen=True)
class Spec:
    entity_type: str = "Shot"
    entity_name: str = "sh010"
    task: str = "comp"
    name: str = "beauty"
    version: int = 3
    publish_type: str = "Rendered Image"
    project: str | None = None
    review: bool = False


@dataclass(frozen=True)
class M:
    """The fields of watcher.match.Match that group/settle read (defaults: a single file)."""
    template: str
    fields: dict[str, Any]
    frame_key: str | None = None
    frame: int | None = None
    padding: int = 0
    pattern: str = "a.nk"
    publish: Spec = field(default_factory=Spec)


class Clock:
    def __init__(self):
        self.mono = 1000.0
        self.wall = 1_700_000_000.0

    def advance(self, s):
        self.mono += s
        self.wall += s


W = Windows(settle=5, sequence=10, open_timeout=60)


@pytest.fixture
def env(tmp_path):
    clock = Clock()
    s = Settler(monotonic=lambda: clock.mono, wall=lambda: clock.wall)
    scope = RootScope("shows", str(tmp_path))
    return s, clock, scope, tmp_path


def frame_match(frame: int) -> M:
    return M("render", {"Shot": "sh010", "version": 3, "SEQ": frame}, "SEQ", frame, 4, "beauty.%04d.exr")


def write(path, data=b"x", mtime=None):
    with open(path, "wb") as f:
        f.write(data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def test_file_settles_after_quiet_window_and_not_before(env):
    s, clock, scope, tmp = env
    p = tmp / "a.nk"
    write(p, mtime=clock.wall)
    m = M("nk", {"Shot": "sh010", "version": 1}, None, None, 0, "a.nk")
    s.offer(candidate_key("shows", m), scope, m, W, str(p), Kind.CLOSED)
    clock.advance(4.9)
    assert s.due() == []
    clock.advance(0.2)
    [c] = s.due()
    assert list(c.files) == [str(p)] and len(s) == 0


def test_write_during_window_resets_it(env):
    s, clock, scope, tmp = env
    p = tmp / "a.nk"
    write(p, mtime=clock.wall)
    m = M("nk", {"version": 1}, None, None, 0, "a.nk")
    s.offer(candidate_key("shows", m), scope, m, W, str(p), Kind.CLOSED)
    clock.advance(4)
    write(p, b"xx", mtime=clock.wall)  # grew, with no event seen (e.g. NFS)
    clock.advance(1.1)
    assert s.due() == []  # the stat at the deadline saw the change
    clock.advance(5)
    assert len(s.due()) == 1


def test_created_without_close_waits_for_close_or_open_timeout(env):
    s, clock, scope, tmp = env
    p = tmp / "a.nk"
    write(p, mtime=clock.wall)
    m = M("nk", {"version": 1}, None, None, 0, "a.nk")
    key = candidate_key("shows", m)
    s.offer(key, scope, m, W, str(p), Kind.CREATED)
    clock.advance(10)
    assert s.due() == []  # a writer still holds it
    s.offer(key, scope, m, W, str(p), Kind.CLOSED)
    clock.advance(5.1)
    assert len(s.due()) == 1


def test_synthetic_create_settles_on_stat_alone(env):
    s, clock, scope, tmp = env
    p = tmp / "a.nk"
    write(p, mtime=clock.wall)
    m = M("nk", {"version": 1}, None, None, 0, "a.nk")
    s.offer(candidate_key("shows", m), scope, m, W, str(p), Kind.CREATED, synthetic=True)
    clock.advance(5.1)
    assert len(s.due()) == 1


def test_scan_found_old_file_is_due_at_once(env):
    s, clock, scope, tmp = env
    p = tmp / "a.nk"
    write(p, mtime=clock.wall - 3600)
    os.utime(p, (clock.wall - 3600, clock.wall - 3600))
    m = M("nk", {"version": 1}, None, None, 0, "a.nk")
    # ctime is the real "now" of this machine; make the settler's wall clock agree with it
    clock.wall = os.stat(p).st_ctime + 3600
    s.offer(candidate_key("shows", m), scope, m, W, str(p), Kind.SEEN)
    assert len(s.due()) == 1


def test_sequence_waits_for_the_sequence_window_and_groups_frames(env):
    s, clock, scope, tmp = env
    for f in (1001, 1002, 1004):
        p = tmp / f"beauty.{f:04d}.exr"
        write(p, mtime=clock.wall)
        m = frame_match(f)
        key = candidate_key("shows", m)
        s.offer(key, scope, m, W, str(p), Kind.CLOSED)
        clock.advance(3)
    assert len(s) == 1 and s.pending_files == 3
    clock.advance(4)  # every file quiet for >= 5 s, but last frame arrived only 7 s ago
    assert s.due() == []
    clock.advance(3.1)
    [c] = s.due()
    pub = build_publish(c)
    assert pub.path == str(tmp / "beauty.%04d.exr")
    assert (pub.frames, pub.missing_frames, pub.frame_count, pub.padding) == ("1001-1004", "1003", 3, 4)
    assert pub.size == 3 and "SEQ" not in pub.fields and pub.entity.name == "sh010"


def test_delete_before_settle_cancels_and_truncation_resets(env):
    s, clock, scope, tmp = env
    a, b = tmp / "beauty.1001.exr", tmp / "beauty.1002.exr"
    for f, p in ((1001, a), (1002, b)):
        write(p, b"data", mtime=clock.wall)
        m = frame_match(f)
        key = candidate_key("shows", m)
        s.offer(key, scope, m, W, str(p), Kind.CLOSED)
    os.unlink(a)
    s.remove(str(a))
    assert s.pending_files == 1
    clock.advance(8)
    write(b, b"", mtime=clock.wall)  # truncated: not complete any more
    clock.advance(2.1)
    assert s.due() == []
    os.unlink(b)
    s.remove(str(b))
    assert len(s) == 0 and s.next_deadline() is None


def test_padding_is_part_of_identity():
    a = M("render", {"Shot": "s", "SEQ": 1}, "SEQ", 1, 4, "b.%04d.exr")
    b = M("render", {"Shot": "s", "SEQ": 1}, "SEQ", 1, 0, "b.%d.exr")
    assert candidate_key("r", a) != candidate_key("r", b)
    assert candidate_key("r", a) == candidate_key("r", M("render", {"Shot": "s", "SEQ": 9}, "SEQ", 9, 4, "b.%04d.exr"))


def test_later_event_extends_the_deadline_scheduled_earlier(env):
    """Deadlines are scheduled as cheap lower bounds; a pop recomputes the exact one."""
    s, clock, scope, tmp = env
    p = tmp / "a.nk"
    write(p, mtime=clock.wall)
    m = M("nk", {"version": 1}, None, None, 0, "a.nk")
    key = candidate_key("shows", m)
    s.offer(key, scope, m, W, str(p), Kind.CLOSED)
    clock.advance(3)
    s.offer(key, scope, m, W, str(p), Kind.CLOSED)  # closed again: quiet window restarts
    clock.advance(2.1)
    assert s.due() == []  # the first lower bound popped, the exact deadline is 3 s later
    assert s.next_deadline() == pytest.approx(clock.mono + 2.9)
    clock.advance(3)
    assert len(s.due()) == 1

