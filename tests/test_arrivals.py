"""Arrivals (#11): a file renamed into a watched folder from outside the root, or a new hard link,
is complete (no close will ever come) and settles in the settle window, not the 60 s open-file
timeout; a real writer in a folder made a moment ago is still waited for. Real agent, real
inotify observer, real files."""
from __future__ import annotations

import os
import time

import pytest

from watcher.journal.base import Status

from .agent import rows, running, settings, wait_for

pytestmark = pytest.mark.linux_only  # needs inotify's events (IN_MOVED_TO, close-write)

WORK = "seq/sq01/sh010/comp/work"
QUICK = 8.0  # well under the 60 s open-file timeout, well over settle (0.4 s) + a loaded machine


def published(s):
    return [r for r in rows(s) if r.status == Status.PUBLISHED]


def test_a_file_renamed_in_from_outside_the_root_settles_in_the_settle_window(tmp_path):
    s = settings(tmp_path)
    work = s.roots[0].path / WORK
    work.mkdir(parents=True)
    outside = tmp_path / "outside"  # same filesystem, not watched: inotify sends IN_MOVED_TO alone
    outside.mkdir()
    src = outside / "sh010_moved_v001.nk"
    src.write_text("Root {}\n" * 20)
    with running(s) as svc:
        assert svc.wait_idle(10)  # the start-up scan is over: only the rename's event can tell
        t0 = time.monotonic()
        os.rename(src, work / "sh010_moved_v001.nk")
        [row] = wait_for(lambda: published(s), QUICK)
        took = time.monotonic() - t0
    assert row.publish.path == str(work / "sh010_moved_v001.nk") and row.publish.size == len("Root {}\n" * 20)
    assert took < QUICK


def test_a_new_hard_link_settles_in_the_settle_window(tmp_path):
    s = settings(tmp_path)
    work = s.roots[0].path / WORK
    work.mkdir(parents=True)
    src = tmp_path / "farm-output.nk"  # written elsewhere, linked into the show tree (IN_CREATE, no close)
    src.write_text("Root {}\n")
    with running(s) as svc:
        assert svc.wait_idle(10)
        os.link(src, work / "sh010_linked_v002.nk")
        [row] = wait_for(lambda: published(s), QUICK)
    assert row.publish.path == str(work / "sh010_linked_v002.nk") and row.publish.version == 2


def test_a_writer_pausing_in_a_just_created_folder_is_waited_for(tmp_path):
    """Before: any create within 2 s of its folder's creation was taken as watchdog's synthetic
    walk of the new folder (no close expected), so a writer pausing longer than the settle
    window there was published with half its data."""
    s = settings(tmp_path, settle_seconds=0.3)
    comp = s.roots[0].path / "seq/sq01/sh010/comp"
    comp.mkdir(parents=True)
    with running(s) as svc:
        assert svc.wait_idle(10)
        work = comp / "work"
        work.mkdir()
        assert svc.sync("shows")  # the new folder is watched now: the create below is a real one
        path = work / "sh010_slow_v001.nk"
        with open(path, "w") as f:
            f.write("a" * 100)
            f.flush()
            wait_for(lambda: svc.settler.knows(str(path)), 5)
            time.sleep(1.5)  # five settle windows, well under the open-file timeout
            assert rows(s) == [], "published while its writer still held it open"
            f.write("b" * 100)
        [row] = wait_for(lambda: published(s), QUICK)
    assert row.publish.size == 200


def test_a_file_found_by_watchdogs_walk_of_a_new_folder_settles_without_a_close(tmp_path):
    """The other side: a file written and closed before watchdog watched its new folder is only
    reported by watchdog's walk of that folder (marked synthetic by our emitter). No close will
    come for it; it must settle in the settle window."""
    s = settings(tmp_path)
    comp = s.roots[0].path / "seq/sq01/sh010/comp"
    comp.mkdir(parents=True)
    with running(s) as svc:
        assert svc.wait_idle(10)
        [emitter] = list(svc.roots["shows"].observer.emitters)
        with emitter._inotify._lock:  # stall watchdog's reader until the file is written and closed
            (comp / "work").mkdir()
            (comp / "work/sh010_walked_v003.nk").write_text("Root {}\n")
        [row] = wait_for(lambda: published(s), QUICK)
    assert row.publish.version == 3
