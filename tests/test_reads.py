"""Reads for publishing check again, at read time, what they read (issue 11): a file admitted
seconds ago may have been replaced since, by a symlink (or its folder by a symlink) to a file
outside the root, by a FIFO or a device. Nothing outside a root is read or sent, a FIFO never
blocks a worker, and such a publish fails for good with a reason naming the path. Real files,
real fake trackers (ShotGrid, Kitsu, ftrack) and, for the FIFO, a real agent."""
from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from watcher.errors import PermanentError
from watcher.journal.base import Status
from watcher.model import Entity, Job, Publish
from watcher.publish.base import BackendContext
from watcher.publish.tracker import UnsafeFile, open_regular, regular_size

from .agent import rows, running, settings, wait_for, write_frames
from .fake_ftrack import FakeFtrack
from .fake_kitsu import FakeZou, render_sequence
from .fake_shotgrid import FakeShotGrid, standard_site

SECRET = b"SECRET BYTES FROM OUTSIDE THE ROOT"


def frames(folder: Path, first: int, count: int, ext: str, payload: bytes = b"frame") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for n in range(first, first + count):
        p = folder / f"beauty.{n:04d}.{ext}"
        p.write_bytes(payload + b" %d" % n)
        out.append(p)
    return out


def swap_folder_for_link(folder: Path, outside: Path) -> None:
    """``folder`` replaced by a symlink to ``outside``, a copy of it holding other bytes: every
    name still looks the same, ``O_NOFOLLOW`` on the last name lets it through."""
    outside.mkdir(parents=True)
    for f in folder.iterdir():
        (outside / f.name).write_bytes(SECRET)
    folder.rename(folder.with_name(folder.name + ".moved"))
    os.symlink(outside, folder)


def sent_anywhere(fake: Any) -> bool:
    with fake.lock:
        return any(SECRET in r.raw for r in fake.log)


# ---- the helper itself -------------------------------------------------------------------------

def test_open_regular_refuses_a_folder_swapped_for_a_link_out_of_the_root(tmp_path):
    root = tmp_path / "root"
    shot = root / "sh010"
    [f] = frames(shot, 1, 1, "exr")
    with open_regular(str(f), "checksum", root=str(root)) as fh:
        assert fh.read() == b"frame 1"
    swap_folder_for_link(shot, tmp_path / "elsewhere")
    for read in (open_regular, regular_size):
        with pytest.raises(UnsafeFile, match=r"sh010/beauty\.0001\.exr resolves to .*elsewhere/beauty\.0001\.exr, "
                                             r"outside its root .*; its checksum is not read"):
            read(str(f), "checksum", root=str(root))
    assert not UnsafeFile("x").retryable and issubclass(UnsafeFile, PermanentError)


def test_a_root_reached_through_a_link_and_links_inside_it_are_fine(tmp_path):
    """The root as the studio declares it (``/mnt/show`` linking to ``/net/fs3/show``) and a
    folder linking elsewhere inside the same root are inside it."""
    real = tmp_path / "fs3/show"
    [f] = frames(real / "sh010", 1, 1, "exr")
    os.symlink(real, tmp_path / "show")
    os.symlink(real / "sh010", real / "alias")
    for path in (tmp_path / "show/sh010/beauty.0001.exr", tmp_path / "show/alias/beauty.0001.exr"):
        assert regular_size(str(path), root=str(tmp_path / "show")) == f.stat().st_size
        with open_regular(str(path), root=str(tmp_path / "show")) as fh:
            assert fh.read() == b"frame 1"


def test_refusals_name_the_path_escaped(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    hostile = root / "evil\nINFO published everything.exr"
    os.mkfifo(hostile)
    started = time.monotonic()
    with pytest.raises(UnsafeFile) as err:
        open_regular(str(hostile), "checksum", root=str(root))
    assert time.monotonic() - started < 2
    assert "\n" not in err.value.message and "evil\\nINFO published everything.exr is a FIFO" in err.value.message
    bad = root / os.fsdecode(b"caf\xe9.exr")
    bad.write_bytes(b"x")
    os.unlink(bad)
    os.symlink(tmp_path, bad)
    with pytest.raises(UnsafeFile, match=r"caf\\xe9\.exr is a symlink"):
        regular_size(str(bad), root=str(root))


# ---- ShotGrid: thumbnails --------------------------------------------------------------------------

@pytest.fixture
def sg(tmp_path):
    studio = tmp_path / "studio"
    (studio / "demo").mkdir(parents=True)
    fake = FakeShotGrid().start()
    standard_site(fake, str(studio))
    yield fake, studio
    fake.stop()


def sg_backend(fake: FakeShotGrid, studio: Path, tmp_path: Path, **over: Any):
    from watcher.publish.shotgrid import ShotGridBackend, ShotGridSettings

    values: dict[str, Any] = dict(url=fake.url, script_name="watcher", script_key="s3cret-key-value",
                                  project="Demo Project", retries=0, timeout=5, thumbnail=True)
    values.update(over)
    context = BackendContext(config_dir=tmp_path, roots={"p": studio / "demo"})
    return ShotGridBackend(ShotGridSettings(**values), context)


def jpg_sequence(studio: Path, count: int = 5) -> tuple[Publish, Path]:
    d = studio / "demo/sequences/sq01/sh010/light/publish/renders/v002"
    frames(d, 1001, count, "jpg")
    return Publish(key="p|render|v2", root="p", root_path=str(studio / "demo"), template="shot_render_pub",
                   path=str(d / "beauty.%04d.jpg"), name="sh010_beauty", publish_type="Rendered Image", version=2,
                   entity=Entity("Shot", "sh010"), task="light", frames=f"1001-{1000 + count}", frame_count=count,
                   padding=4, fields={"Sequence": "sq01", "Shot": "sh010", "Step": "light", "version": 2}), d


def test_shotgrid_thumbnail_of_a_folder_swapped_for_a_link_is_never_uploaded(sg, tmp_path):
    fake, studio = sg
    p, folder = jpg_sequence(studio)
    swap_folder_for_link(folder, tmp_path / "outside")
    backend = sg_backend(fake, studio, tmp_path)
    try:
        with pytest.raises(UnsafeFile, match=r"beauty\.1003\.jpg resolves to .*outside/beauty\.1003\.jpg, outside "
                                             r"its root .*; its thumbnail is not read"):
            backend.publish(Job(id=1, publish=p))
    finally:
        backend.close()
    assert fake.thumbnails == {} and not sent_anywhere(fake)
    assert fake.records("PublishedFile") == []  # refused before anything was created


def test_shotgrid_thumbnail_frame_replaced_by_a_link_out_of_the_root_fails_the_publish(sg, tmp_path):
    fake, studio = sg
    p, folder = jpg_sequence(studio)
    (tmp_path / "passwd.jpg").write_bytes(SECRET)
    middle = folder / "beauty.1003.jpg"
    middle.unlink()
    os.symlink(tmp_path / "passwd.jpg", middle)
    marker = tmp_path / "command-ran"
    command = ["sh", "-c", f"touch {marker}; cp \"$0\" \"$1\"", "{input}", "{output}"]
    for over in ({}, {"thumbnail_command": command}):  # uploaded as is, or read by a converter
        backend = sg_backend(fake, studio, tmp_path, **over)
        try:
            with pytest.raises(UnsafeFile, match=r"beauty\.1003\.jpg is a symlink, not a regular file"):
                backend.publish(Job(id=1, publish=p))
        finally:
            backend.close()
    assert not marker.exists() and fake.thumbnails == {} and not sent_anywhere(fake)
    assert fake.records("PublishedFile") == []


# ---- Kitsu: checksums -------------------------------------------------------------------------------

def kitsu_backend(fake: FakeZou, tmp_path: Path, **over: Any):
    from watcher.publish.kitsu import KitsuBackend, KitsuSettings

    args: dict[str, Any] = dict(url=fake.url, token=SecretStr(FakeZou.BOT_TOKEN), project="Fake Show",
                                task_types={"comp": "Compositing"}, output_types={"exr": "EXR"}, retries=0,
                                timeout=2, comment=False)
    args.update(over)
    return KitsuBackend(KitsuSettings(**args), BackendContext(config_dir=tmp_path, roots={}))


def test_kitsu_checksum_of_a_folder_swapped_for_a_link_is_refused_before_anything_is_created(tmp_path):
    show = tmp_path / "show"
    p = replace(render_sequence(show, count=4), root_path=str(show))
    swap_folder_for_link(Path(p.path).parent, tmp_path / "outside")
    with FakeZou() as fake:
        backend = kitsu_backend(fake, tmp_path)
        try:
            with pytest.raises(UnsafeFile, match=r"beauty\.1001\.exr resolves to .*outside/beauty\.1001\.exr, "
                                                 r"outside its root .*; its checksum is not read"):
                backend.publish(Job(id=1, publish=p))
        finally:
            backend.close()
        assert fake.output_files() == [] and not sent_anywhere(fake)


def test_kitsu_fifo_swapped_in_for_a_pending_frame_never_blocks_the_agent(tmp_path):
    """A real agent: the render is journaled while Kitsu is down; a frame is swapped for a FIFO
    nobody writes; once Kitsu is back that publish fails at once naming the FIFO, and the
    workers go on publishing the rest (they hung for good before)."""
    fake = FakeZou().start()
    fake.pause()  # down: the publishes wait in the journal, retried
    s = settings(tmp_path, workers=1, max_attempts=100, retry_base_seconds=0.05, retry_cap_seconds=0.1,
                 tracker={"backend": "kitsu", "url": fake.url, "token": FakeZou.BOT_TOKEN, "project": "Fake Show",
                          "task_types": {"comp": "Compositing"}, "output_types": {"exr": "EXR"},
                          "comment": False, "retries": 0, "timeout": 2})
    render = s.roots[0].path / "seq/SQ01/SH010/comp/render/beauty/v001"
    try:
        with running(s) as svc:
            write_frames(render, "beauty", range(1001, 1006), size=64)
            wait_for(lambda: [r for r in rows(s) if r.attempts >= 1], 30)
            fifo = render / "beauty.1003.exr"
            fifo.unlink()
            os.mkfifo(fifo)
            fake.resume()
            [failed] = wait_for(lambda: rows(s, Status.FAILED), 20)
            assert "beauty.1003.exr is a FIFO, not a regular file; its checksum is not read" in failed.last_error
            write_frames(render.with_name("v002"), "beauty", range(1001, 1004), size=64)  # the workers still work
            wait_for(lambda: rows(s, Status.PUBLISHED), 20)
            assert svc.wait_idle(10)
    finally:
        fake.stop()
    assert [f["revision"] for f in fake.output_files()] == [2]


# ---- ftrack: component sizes -------------------------------------------------------------------------

def test_ftrack_component_sizes_of_a_folder_swapped_for_a_link_are_refused(tmp_path):
    from watcher.publish.ftrack import FtrackBackend

    root = tmp_path / "proj"
    d = root / "sh010/render/v001"
    frames(d, 1001, 3, "exr")
    p = Publish(key="k", root="proj", root_path=str(root), template="render", path=str(d / "beauty.%04d.exr"),
                name="beauty", publish_type="Rendered Image", version=1, entity=Entity("Shot", "sh010"), task="comp",
                project="demo", frames="1001-1003", frame_count=3, padding=4)
    swap_folder_for_link(d, tmp_path / "outside")
    with FakeFtrack() as fake:
        project = fake.add_project("demo", "Demo Project")
        fake.add_task("comp", fake.add_context("Shot", "sh010", fake.add_context("Sequence", "sq01", project)))
        fake.add_asset_type("Image", "img")
        user, key = next(iter(fake.users.items()))
        backend = FtrackBackend({"server_url": fake.url, "api_user": user, "api_key": key, "project": "demo",
                                 "asset_types": {"Rendered Image": "img"}, "retries": 0},
                                BackendContext(config_dir=tmp_path, roots={}))
        try:
            with pytest.raises(UnsafeFile, match=r"beauty\.100\d\.exr resolves to .*outside.*its size is not read"):
                backend.publish(Job(id=1, publish=p))
        finally:
            backend.close()
        assert fake.records("AssetVersion") == [] and fake.records("Component") == []
