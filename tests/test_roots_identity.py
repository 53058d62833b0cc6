"""A root's identity (#11): the supervisor watches the device and inode of each root's
directory. A root replaced faster than one check (`rm -rf root && mkdir root`, or a swap by
`mv`) used to go unnoticed: the observer kept watching the old directory (or, deleted, nothing),
nothing of the new tree was published, and status said "up". Real agent, real inotify, real
directories."""
from __future__ import annotations

import shutil

import pytest

from watcher.health import read_status
from watcher.journal.base import Status

from .agent import rows, running, settings, wait_for, write_frames

pytestmark = pytest.mark.linux_only  # needs inotify (the observer it checks is inotify)

RENDER = "seq/sq01/sh010/comp/render/beauty/v003"
LATER = "seq/sq01/sh020/comp/render/beauty/v001"


def published(s):
    return [r for r in rows(s) if r.status == Status.PUBLISHED]


@pytest.mark.parametrize("how", ["rm -rf && mkdir", "mv swap"])
def test_a_root_replaced_within_one_check_is_watched_again_and_rescanned(tmp_path, how):
    s = settings(tmp_path)
    root = s.roots[0].path
    write_frames(root / "seq/sq01/sh000/comp/render/beauty/v001", "beauty", range(1, 3))  # the old tree
    with running(s) as svc:
        wait_for(lambda: len(published(s)) == 1, 15)
        assert svc.wait_idle(10)
        if how == "rm -rf && mkdir":
            shutil.rmtree(root)
            root.mkdir()
            write_frames(root / RENDER, "beauty", range(1001, 1004))
        else:
            new = tmp_path / "new"
            write_frames(new / RENDER, "beauty", range(1001, 1004))
            root.rename(tmp_path / "old")
            new.rename(root)
        wait_for(lambda: len(published(s)) == 2, 15)
        r = svc.roots["shows"]
        assert r.up and r.last_rescan_reason == "root replaced"
        # the new directory is the one watched now: a render written into it is published
        write_frames(root / LATER, "beauty", range(1, 4))
        wait_for(lambda: len(published(s)) == 3, 15)
        status = wait_for(lambda: (st := read_status(s.state_dir)) and st["roots"]["shows"]["replaced"] == 1 and st,
                          10)
    shown = status["roots"]["shows"]
    assert shown["up"] and shown["watching"] == "inotify" and shown["last_rescan_reason"] == "root replaced"
    assert sorted(x.publish.frames for x in rows(s)) == ["1-2", "1-3", "1001-1003"]
