"""`republish: new_version` never reuses a version number: not one the journal holds (the
artist's real v002 published as 2, earlier revisions), not one on disk (a v002 folder beside
v001, published or not). A real agent, real files, the local registry."""
from __future__ import annotations

import shutil
import time

from watcher.journal.base import Status

from .agent import registry, rows, running, settings, wait_for, write_frames

V1 = "seq/sq01/sh010/comp/render/beauty/v001"
V2 = "seq/sq01/sh010/comp/render/beauty/v002"


def published(s, n: int):
    return wait_for(lambda: (lambda got: len(got) == n and got)(
        [r for r in rows(s) if r.status is Status.PUBLISHED]), 30)


def versions(s) -> list[tuple[str, int]]:
    return sorted((r.publish.path.split("/")[-2], r.publish.version) for r in rows(s))


def cfg(tmp_path):
    return settings(tmp_path, root_opts={"republish": "new_version"}, amend_window=0, first_frame_wait=0)


def test_frames_added_to_v001_while_a_real_v002_exists_publish_as_v3_then_v4(tmp_path):
    s = cfg(tmp_path)
    root = s.roots[0].path
    with running(s):
        write_frames(root / V1, "beauty", range(1001, 1004))
        published(s, 1)
        write_frames(root / V2, "beauty", range(1001, 1004))  # the artist's own v002
        published(s, 2)
        write_frames(root / V1, "beauty", [1004])  # a late frame of v001, after its publish
        published(s, 3)
        assert versions(s) == [("v001", 1), ("v001", 3), ("v002", 2)]
        late = max(rows(s), key=lambda r: r.id)
        assert (late.publish.path.endswith(f"{V1}/beauty.%04d.exr"), late.publish.frames) == (True, "1001-1004")
        # v002 goes away on disk; the journal still says 2 and 3 are taken
        shutil.rmtree(root / V2)
        time.sleep(0.3)
        write_frames(root / V1, "beauty", [1005])
        published(s, 4)
    assert versions(s) == [("v001", 1), ("v001", 3), ("v001", 4), ("v002", 2)]
    reg = registry(s)
    assert len(reg) == 4 and len({k for _, k, _, _ in reg}) == 4


def test_a_later_version_folder_on_disk_counts_even_unpublished(tmp_path):
    s = cfg(tmp_path)
    root = s.roots[0].path
    with running(s):
        write_frames(root / V1, "beauty", range(1001, 1004))
        published(s, 1)
        (root / "seq/sq01/sh010/comp/render/beauty/v003").mkdir()  # nothing in it yet: no publish of its own
        (root / "seq/sq01/sh010/comp/render/beauty/v0x4").mkdir()  # not a version of this template
        (root / "seq/sq01/sh010/comp/render/other/v009").mkdir(parents=True)  # another name: not a sibling
        write_frames(root / V1, "beauty", [1004])
        published(s, 2)
    assert versions(s) == [("v001", 1), ("v001", 4)]


def test_a_single_file_rewritten_after_its_publish_skips_the_next_files_version(tmp_path):
    s = cfg(tmp_path)
    work = s.roots[0].path / "seq/sq01/sh010/comp/work"
    work.mkdir(parents=True)
    with running(s):
        (work / "sh010_main_v001.nk").write_text("Root {}\n")
        published(s, 1)
        (work / "sh010_main_v002.nk").write_text("Root {}\n")
        (work / "sh010_other_v005.nk").write_text("Root {}\n")  # another name: its versions are its own
        published(s, 3)
        time.sleep(0.05)
        (work / "sh010_main_v001.nk").write_text("Root {}\nchanged\n")
        published(s, 4)
    got = sorted((r.publish.path.rsplit("/", 1)[1], r.publish.version) for r in rows(s))
    assert got == [("sh010_main_v001.nk", 1), ("sh010_main_v001.nk", 3), ("sh010_main_v002.nk", 2),
                   ("sh010_other_v005.nk", 5)]
