"""A root configured through a symlinked studio mount (``/x/mnt -> /x/real``, as autofs or a
site-wide symlink gives it) keeps the path as the studio declares it: that is what ShotGrid's
LocalStorage says and what `path_cache` is relative to. Containment still follows the real
path. Real files, a real agent (inotify on the symlinked path), the ShotGrid fake on 127.0.0.1."""
from __future__ import annotations

import json
import os

import pytest

from watcher.config import load_settings
from watcher.journal.base import Status

from .agent import DATA, rows, running, wait_for, write_frames
from .fake_shotgrid import FakeShotGrid, standard_site
from .test_cli import cli

pytestmark = pytest.mark.linux_only  # needs inotify on a symlinked root


@pytest.fixture
def mount(tmp_path):
    """/tmp/.../real/demo holds the show; /tmp/.../mnt links to /tmp/.../real; the studio's
    LocalStorage `primary` is at the symlinked /tmp/.../mnt."""
    real = tmp_path / "real"
    (real / "demo").mkdir(parents=True)
    os.symlink(real, tmp_path / "mnt")
    fake = FakeShotGrid().start()
    fake.site = standard_site(fake, str(tmp_path / "mnt"))
    cfg = tmp_path / "watcher.yml"
    cfg.write_text(
        f"roots:\n  - {{name: projects, path: mnt/demo, templates: {DATA / 'pipeline.yml'}}}\n"
        f"settle_seconds: 0.3\nsequence_settle_seconds: 0.5\nfirst_frame_wait: 0\n"
        f"journal: sqlite:///{tmp_path}/journal.db\nstate_dir: state\nrescan_interval: 0\n"
        f"tracker:\n  backend: shotgrid\n  url: {fake.url}\n  script_name: watcher\n"
        f"  script_key: s3cret-key-value\n  project: Demo Project\n  retries: 0\n")
    yield tmp_path, cfg, fake
    fake.stop()


def test_a_root_under_a_symlinked_mount_publishes_relative_to_the_storage(mount):
    tmp, cfg, fake = mount
    s = load_settings(cfg)
    assert str(s.roots[0].path) == str(tmp / "mnt/demo")  # as configured: the link is kept
    outside = tmp / "elsewhere.nk"
    outside.write_text("Root {}\n")
    with running(s) as svc:
        assert svc.roots["projects"].real == str(tmp / "real/demo")
        root = tmp / "mnt/demo"
        write_frames(root / "seq/sq01/sh010/comp/render/beauty/v002", "beauty", range(1001, 1004), size=64)
        work = root / "seq/sq01/sh010/comp/work"
        work.mkdir(parents=True)
        os.symlink(outside, work / "sh010_escape_v001.nk")  # leads out of the real root: never published
        (tmp / "real/demo/seq/sq01/sh010/comp/work/sh010_main_v002.nk").write_text("Root {}\n")  # via the real path
        wait_for(lambda: len([r for r in rows(s) if r.status is Status.PUBLISHED]) == 2, 30)
    got = {r.publish.path: r for r in rows(s)}
    seq = str(root / "seq/sq01/sh010/comp/render/beauty/v002/beauty.%04d.exr")
    nk = str(root / "seq/sq01/sh010/comp/work/sh010_main_v002.nk")
    assert set(got) == {seq, nk}  # the configured spelling, whichever path the file was written by
    pubs = {p["code"]: p for p in fake.records("PublishedFile")}
    assert len(pubs) == 2
    assert pubs["beauty.%04d.exr"]["path_cache"] == "demo/seq/sq01/sh010/comp/render/beauty/v002/beauty.%04d.exr"
    assert pubs["sh010_main_v002.nk"]["path_cache"] == "demo/seq/sq01/sh010/comp/work/sh010_main_v002.nk"
    assert {p["path_cache_storage"]["id"] for p in pubs.values()} == {fake.site["storage"]["id"]}

    check = cli("-c", str(cfg), "check")
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"root projects: {tmp / 'mnt/demo'}" in check.stdout
    assert "local storage for root 'projects'" in check.stdout and "path_cache starts 'demo/...'" in check.stdout

    for asked in (nk, str(tmp / "real/demo/seq/sq01/sh010/comp/work/sh010_main_v002.nk")):
        ex = cli("-c", str(cfg), "explain", "--json", asked)
        assert ex.returncode == 0, ex.stdout + ex.stderr
        [res] = json.loads(ex.stdout)
        assert (res["root"], res["template"], res["path"]) == ("projects", "nuke", nk)
    esc = json.loads(cli("-c", str(cfg), "explain", "--json", str(work / "sh010_escape_v001.nk")).stdout)[0]
    assert esc["matched"] is False and "outside the root" in esc["reason"]
