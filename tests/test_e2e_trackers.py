"""End to end through the watch pipeline into the tracker fakes: files dropped in a watched root
become tracker records; an outage in the middle of a burst loses nothing and duplicates nothing."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from watcher.journal.base import Status

from .agent import rows, running, settings, wait_for, write_frames
from .fake_ftrack import FakeFtrack
from .fake_shotgrid import FakeShotGrid, standard_site

SHOTS = [f"sh{n:03d}" for n in range(20, 32)]


def drop_shot(root: Path, shot: str, frames: int = 12) -> None:
    write_frames(root / f"seq/sq01/{shot}/comp/render/beauty/v002", "beauty", range(1001, 1001 + frames), size=512)
    work = root / f"seq/sq01/{shot}/comp/work"
    work.mkdir(parents=True, exist_ok=True)
    (work / f"{shot}_main_v002.nk").write_text("Root {}\n" * 30)


def burst_with_outage(root: Path, outage_on, outage_off) -> None:
    """Half the shots, then the tracker goes away while the other half lands, then comes back."""
    for shot in SHOTS[:6]:
        drop_shot(root, shot)
    time.sleep(0.6)
    outage_on()
    for shot in SHOTS[6:]:
        drop_shot(root, shot)
    time.sleep(2.0)
    outage_off()


# -- ShotGrid ------------------------------------------------------------------------------
@pytest.fixture
def sg(tmp_path):
    studio = tmp_path / "studio"
    (studio / "demo").mkdir(parents=True)
    fake = FakeShotGrid().start()
    ids = standard_site(fake, str(studio))
    for shot in SHOTS:
        s = fake.add("Shot", code=shot, project=ids["project"], sg_sequence=ids["seq"])
        fake.add("Task", content="comp", project=ids["project"], entity=s, step=ids["step_comp"])
    fake.site = ids
    yield fake, studio
    fake.stop()


def test_shotgrid_end_to_end_with_an_outage_mid_burst(tmp_path, sg):
    fake, studio = sg
    s = settings(tmp_path, root=studio / "demo", workers=3, max_attempts=50,
                 tracker={"backend": "shotgrid", "url": fake.url, "script_name": "watcher",
                          "script_key": "s3cret-key-value", "project": "Demo Project", "retries": 1,
                          "backoff_base": 0.01, "backoff_cap": 0.05, "timeout": 3,
                          "frame_range_field": None})
    with running(s):
        burst_with_outage(s.roots[0].path, fake.pause, fake.resume)
        fake.drop_after_apply(count=2, method="POST")  # two creates land but their answers are lost
        wait_for(lambda: len([r for r in rows(s) if r.status == Status.PUBLISHED]) == 2 * len(SHOTS), 60, 0.2)
    assert any(r.attempts > 1 for r in rows(s)), "the outage never reached a publish"
    pubs = fake.records("PublishedFile")
    assert len(pubs) == 2 * len(SHOTS), "a publish was lost or duplicated"
    keys = {(p["path_cache"], p["version_number"]) for p in pubs}
    assert len(keys) == len(pubs)
    seq = next(p for p in pubs if p["path_cache"].endswith("sh020/comp/render/beauty/v002/beauty.%04d.exr"))
    assert seq["path_cache"] == "demo/seq/sq01/sh020/comp/render/beauty/v002/beauty.%04d.exr"
    assert seq["version_number"] == 2 and seq["entity"]["type"] == "Shot"
    assert fake.get("Shot", seq["entity"]["id"])["code"] == "sh020"
    assert fake.get("Task", seq["task"]["id"])["content"] == "comp"
    types = {fake.get("PublishedFileType", p["published_file_type"]["id"])["code"] for p in pubs}
    assert types == {"Rendered Image", "Nuke Script"}
    tracker_ids = {r.tracker_id for r in rows(s)}
    assert tracker_ids == {str(p["id"]) for p in pubs}


def test_shotgrid_missing_shot_fails_with_its_name_then_retry_publishes(tmp_path, sg):
    fake, studio = sg
    s = settings(tmp_path, root=studio / "demo",
                 tracker={"backend": "shotgrid", "url": fake.url, "script_name": "watcher",
                          "script_key": "s3cret-key-value", "project": "Demo Project", "retries": 0})
    root = s.roots[0].path
    with running(s) as svc:
        drop_shot(root, "sh999", frames=3)
        failed = wait_for(lambda: len([r for r in rows(s) if r.status == Status.FAILED]) == 2 and
                          [r for r in rows(s) if r.status == Status.FAILED], 30)
        assert all("no Shot 'sh999'" in r.last_error for r in failed)
        assert fake.records("PublishedFile") == []
        shot = fake.add("Shot", code="sh999", project=fake.site["project"], sg_sequence=fake.site["seq"])
        fake.add("Task", content="comp", project=fake.site["project"], entity=shot, step=fake.site["step_comp"])
        assert sorted(svc.journal.requeue()) == sorted(r.id for r in failed)  # = `watcher retry --failed`
        svc.publishers.wake()
        wait_for(lambda: len([r for r in rows(s) if r.status == Status.PUBLISHED]) == 2, 30)
    assert {p["entity"]["id"] for p in fake.records("PublishedFile")} == {shot["id"]}


# -- ftrack --------------------------------------------------------------------------------
@pytest.fixture
def ft(tmp_path):
    fake = FakeFtrack().start()
    project = fake.add_project("demo", "Demo Project")
    sq = fake.add_context("Sequence", "sq01", project)
    for shot in SHOTS:
        fake.add_task("comp", fake.add_context("Shot", shot, sq))
    fake.add_asset_type("Image", "img")
    fake.add_asset_type("Scene", "scene")
    yield fake
    fake.stop()


def test_ftrack_end_to_end_with_an_outage_mid_burst(tmp_path, ft):
    user, key = next(iter(ft.users.items()))
    s = settings(tmp_path, workers=3, max_attempts=50,
                 tracker={"backend": "ftrack", "server_url": ft.url, "api_user": user, "api_key": key,
                          "project": "demo", "asset_types": {"Rendered Image": "img", "Nuke Script": "scene"},
                          "retries": 1, "backoff_base": 0.01, "backoff_cap": 0.05, "timeout": 3})
    with running(s):
        burst_with_outage(s.roots[0].path, ft.pause, ft.resume)
        ft.drop_after_apply(count=2)  # two batches land but their answers are lost
        wait_for(lambda: len([r for r in rows(s) if r.status == Status.PUBLISHED]) == 2 * len(SHOTS), 60, 0.2)
    assert any(r.attempts > 1 for r in rows(s)), "the outage never reached a publish"
    versions = ft.records("AssetVersion")
    assert len(versions) == 2 * len(SHOTS), "a publish was lost or duplicated"
    assert all(v["is_published"] for v in versions) and {v["version"] for v in versions} == {2}
    seqs = ft.records("SequenceComponent")
    assert len(seqs) == len(SHOTS) and all(c["padding"] == 4 for c in seqs)
    members = [c for c in ft.records("FileComponent") if c.get("container_id")]
    assert len(members) == 12 * len(SHOTS)
    assert len(ft.records("Asset")) == 2 * len(SHOTS)  # beauty (img) and main (scene) per shot


def test_ftrack_single_file_and_100_frame_sequence_dropped_in_a_root(tmp_path, ft):
    user, key = next(iter(ft.users.items()))
    s = settings(tmp_path, tracker={"backend": "ftrack", "server_url": ft.url, "api_user": user, "api_key": key,
                                    "project": "demo",
                                    "asset_types": {"Rendered Image": "img", "Nuke Script": "scene"}})
    root = s.roots[0].path
    with running(s):
        drop_shot(root, "sh020", frames=100)
        wait_for(lambda: len([r for r in rows(s) if r.status == Status.PUBLISHED]) == 2, 30)
    by_path = {r.publish.path: r for r in rows(s)}
    seq_path = str(root / "seq/sq01/sh020/comp/render/beauty/v002/beauty.%04d.exr")
    nk_path = str(root / "seq/sq01/sh020/comp/work/sh020_main_v002.nk")
    assert set(by_path) == {seq_path, nk_path}
    [shot] = [c for c in ft.records("Shot") if c["name"] == "sh020"]
    assets = {a["name"]: a for a in ft.records("Asset")}
    assert set(assets) == {"beauty", "main"}
    assert all(a["context_id"] == shot["id"] for a in assets.values())
    versions = {v["asset_id"]: v for v in ft.records("AssetVersion")}
    seq_version = versions[assets["beauty"]["id"]]
    assert seq_version["version"] == 2 and seq_version["is_published"]
    assert ft.get(seq_version["task_id"])["name"] == "comp"
    assert by_path[seq_path].tracker_id == seq_version["id"]
    [seq] = [c for c in ft.records("SequenceComponent") if c.get("version_id") == seq_version["id"]]
    members = sorted((c for c in ft.records("FileComponent") if c.get("container_id") == seq["id"]),
                     key=lambda c: c["name"])
    assert [m["name"] for m in members] == [f"{f:04d}" for f in range(1001, 1101)]
    locations = {c["component_id"]: c for c in ft.records("ComponentLocation")}
    assert locations[seq["id"]]["resource_identifier"] == seq_path
    assert locations[members[0]["id"]]["resource_identifier"] == seq_path % 1001
    nk_version = versions[assets["main"]["id"]]
    [nk] = [c for c in ft.records("FileComponent") if c.get("version_id") == nk_version["id"]]
    assert nk["name"] == "main" and nk["size"] == os.path.getsize(nk_path)
    assert locations[nk["id"]]["resource_identifier"] == nk_path


def test_shotgrid_cut_holds_a_render_until_every_frame_of_the_shot_is_there(tmp_path, sg):
    """`expect_frames: tracker`: the shot's sg_cut_in/sg_cut_out (read once, by the range
    lookup thread) hold the sequence until its last frame lands, past every quiet window."""
    from .test_completion import templates

    fake, studio = sg
    shot = fake.find("Shot", code="sh020")[0]
    fake.update("Shot", shot["id"], {"sg_cut_in": 1001, "sg_cut_out": 1008})
    s = settings(tmp_path, root=studio / "demo", templates=templates(tmp_path, {"expect_frames": "tracker"}),
                 settle_seconds=0.2, sequence_settle_seconds=0.4,
                 tracker={"backend": "shotgrid", "url": fake.url, "script_name": "watcher",
                          "script_key": "s3cret-key-value", "project": "Demo Project", "retries": 0})
    root = s.roots[0].path
    render = root / "seq/sq01/sh020/comp/render/beauty/v002"
    with running(s) as svc:
        write_frames(render, "beauty", range(1001, 1005), size=64)
        held = wait_for(lambda: svc.status()["held"], 15)
        wait_for(lambda: "frames 1005-1008 of 1001-1008" in svc.status()["held"][0]["waiting_for"], 15)
        time.sleep(1.0)
        assert rows(s) == [] and fake.records("PublishedFile") == []
        write_frames(render, "beauty", range(1005, 1009), size=64)
        [row] = wait_for(lambda: [r for r in rows(s) if r.status == Status.PUBLISHED], 20)
    assert held and (row.publish.frames, row.publish.frame_count) == ("1001-1008", 8)
    assert len(fake.records("PublishedFile")) == 1
    assert len(fake.requests_to("GET", f"/entity/shots/{shot['id']}")) == 1  # the cut was read once


def test_shotgrid_new_version_never_takes_a_number_a_peer_published(tmp_path, sg):
    """`republish: new_version`: frames added to v002 after its publish. Toolkit already has a
    PublishedFile v3 of the same stream (its files are elsewhere, not on this disk), so the new
    publish is v4: neither the journal, the tree nor the tracker used that number."""
    fake, studio = sg
    s = settings(tmp_path, root=studio / "demo", settle_seconds=0.2, sequence_settle_seconds=0.4,
                 first_frame_wait=0.3, root_opts={"republish": "new_version"},
                 tracker={"backend": "shotgrid", "url": fake.url, "script_name": "watcher",
                          "script_key": "s3cret-key-value", "project": "Demo Project", "retries": 0})
    root = s.roots[0].path
    render = root / "seq/sq01/sh020/comp/render/beauty/v002"
    with running(s):
        write_frames(render, "beauty", range(1001, 1005), size=64)
        wait_for(lambda: [r for r in rows(s) if r.status == Status.PUBLISHED], 20)
        shot = fake.find("Shot", code="sh020")[0]
        fake.add("PublishedFile", code="beauty.%04d.exr", name="beauty", version_number=3,
                 project=fake.site["project"], entity={"type": "Shot", "id": shot["id"]},
                 published_file_type=fake.site["type_render"], path_cache="elsewhere/beauty.%04d.exr")
        time.sleep(0.5)
        write_frames(render, "beauty", range(1005, 1007), size=64)
        wait_for(lambda: len([r for r in rows(s) if r.status == Status.PUBLISHED]) == 2, 20)
    assert sorted(r.publish.version for r in rows(s)) == [2, 4]
    assert sorted(p["version_number"] for p in fake.records("PublishedFile")) == [2, 3, 4]
