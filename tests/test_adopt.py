"""Adoption (issue 13, item 1): a record of the same file that a peer tool already registered
(tk-multi-publish2 on ShotGrid, an ftrack publisher, a Kitsu publisher) is taken as the publish:
nothing is created, the journal marks it adopted, and a later version publishes normally. Each
backend's fake (and the real Zou) is seeded the way the peer tool writes its record; the extra
requests adoption costs per publish are counted from the fakes' request logs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from tests.fake_ftrack import LOCATION_IDS, FakeFtrack
from tests.fake_kitsu import FakeZou
from tests.fake_kitsu import nuke_script as kitsu_script
from tests.fake_shotgrid import FakeShotGrid, standard_site
from tests.test_ftrack import World
from tests.test_shotgrid import job_for, nuke_script
from tests.zou_server import zou, zou_server  # noqa: F401  (the real Zou fixtures)
from watcher.errors import RetryableError
from watcher.journal.base import Status
from watcher.journal.sqlite import SqliteJournal
from watcher.model import Job, TrackerRef
from watcher.publish.base import BackendContext
from watcher.publish.kitsu import KitsuBackend, KitsuSettings
from watcher.publish.shotgrid import ShotGridBackend, ShotGridSettings

from .agent import DATA, rows, running, settings, wait_for

KEY = "s3cret-key-value"
UNMANAGED = LOCATION_IDS["ftrack.unmanaged"]


# ---- ShotGrid ------------------------------------------------------------------------------------
@pytest.fixture
def sg(tmp_path: Path):
    studio = tmp_path / "studio"
    (studio / "demo").mkdir(parents=True)
    fake = FakeShotGrid().start()
    fake.seed = standard_site(fake, str(studio))
    yield fake, studio
    fake.stop()


def sg_backend(fake: FakeShotGrid, studio: Path, tmp_path: Path, **over: Any) -> ShotGridBackend:
    values: dict[str, Any] = dict(url=fake.url, script_name="watcher", script_key=KEY, project="Demo Project",
                                  retries=1, backoff_base=0.01, timeout=5)
    values.update(over)
    return ShotGridBackend(ShotGridSettings(**values),
                           BackendContext(config_dir=tmp_path, roots={"projects": studio / "demo"}))


def publish2_record(fake: FakeShotGrid, path: Path, studio: Path, version: int) -> dict[str, Any]:
    """A PublishedFile as tk-multi-publish2 (register_publish) writes it: ``name`` the file name
    without version, ``code`` the file name, ``path_cache`` relative to the storage root."""
    s = fake.seed
    rel = path.relative_to(studio).as_posix()
    return fake.add("PublishedFile", project=s["project"], entity=s["shot"], task=s["task_comp"],
                    code=path.name, name=path.name.replace(f"_v{version:03d}", ""), version_number=version,
                    published_file_type=s["type_nuke"], path_cache=rel, path_cache_storage=s["storage"],
                    path={"local_path": str(path), "local_storage": s["storage"], "name": path.name},
                    description="published by tk-multi-publish2")


def sg_creates(fake: FakeShotGrid) -> int:
    return fake.count("POST", r"/entity/published_files$")


def test_shotgrid_adopts_a_publish2_record_then_publishes_the_next_version(sg, tmp_path):
    fake, studio = sg
    p2 = nuke_script(studio, version=2)
    theirs = publish2_record(fake, Path(p2.path), studio, 2)
    b = sg_backend(fake, studio, tmp_path)
    try:
        job = job_for(p2)
        ref = b.publish(job)
        assert ref == TrackerRef(str(theirs["id"]), f"{fake.url}/detail/PublishedFile/{theirs['id']}", adopted=True)
        assert sg_creates(fake) == 0 and len(fake.records("PublishedFile")) == 1
        assert job.state == {"published_file_id": theirs["id"], "adopted": True}
        assert b.publish(job).adopted  # a retry keeps the adoption and creates nothing
        assert sg_creates(fake) == 0

        ref3 = b.publish(job_for(nuke_script(studio, version=3), 2))
        assert not ref3.adopted and sg_creates(fake) == 1
        [ours] = fake.find("PublishedFile", version_number=3)
        assert ref3.id == str(ours["id"]) and ours["path_cache"].endswith("sh010_comp_v003.nk")
    finally:
        b.close()


def test_shotgrid_same_path_other_version_is_not_adopted(sg, tmp_path):
    """``republish: new_version`` publishes the same file under a new number: a new record."""
    fake, studio = sg
    p = nuke_script(studio, version=2)
    publish2_record(fake, Path(p.path), studio, 1)
    b = sg_backend(fake, studio, tmp_path)
    try:
        assert not b.publish(job_for(p)).adopted
        assert sg_creates(fake) == 1
    finally:
        b.close()


def test_shotgrid_adoption_costs_one_search_per_folder(sg, tmp_path):
    """Six scripts in one folder (two made by publish2): one PublishedFile listing for all six,
    i.e. at most one extra request per publish, 1/6 here."""
    fake, studio = sg
    scripts = [nuke_script(studio, version=v) for v in range(1, 7)]
    for p in scripts[:2]:
        publish2_record(fake, Path(p.path), studio, p.version)
    b = sg_backend(fake, studio, tmp_path)
    try:
        b.publish(job_for(nuke_script(studio, version=9, shot="sh010", name="warmup"), 99))  # warm the caches
        before = fake.count("POST", r"/entity/published_files/_search$")
        refs = [b.publish(job_for(p, i)) for i, p in enumerate(scripts, 1)]
        searches = fake.count("POST", r"/entity/published_files/_search$") - before
        assert [r.adopted for r in refs] == [True, True, False, False, False, False]
        assert searches == 0  # the warm-up's listing of this folder is still fresh (ADOPT_TTL)
        assert sg_creates(fake) == 1 + 4

        b2 = sg_backend(fake, studio, tmp_path)  # a cold backend: one listing for the folder
        try:
            before = fake.count("POST", r"/entity/published_files/_search$")
            more = [nuke_script(studio, version=v) for v in range(10, 16)]
            for i, p in enumerate(more, 200):
                b2.publish(job_for(p, i))
            per_publish = (fake.count("POST", r"/entity/published_files/_search$") - before) / len(more)
            assert per_publish <= 1 / len(more)
        finally:
            b2.close()
    finally:
        b.close()


# ---- ftrack --------------------------------------------------------------------------------------
@pytest.fixture
def world(tmp_path: Path):
    fake = FakeFtrack().start()
    yield World(fake, tmp_path)
    fake.stop()


def ftrack_peer_version(world: World, path: str, *, version: int, asset_name: str = "comp",
                        component: str = "nukescript") -> str:
    """What an ftrack publisher (ftrack Connect, the Python API's ``create_component`` with the
    unmanaged location) leaves: an Asset with its own name, an AssetVersion, a FileComponent and
    a ComponentLocation in ``ftrack.unmanaged`` whose resource identifier is the path."""
    asset, av, comp = (str(uuid.uuid4()) for _ in range(3))

    def create(t: str, i: str, **data: Any) -> dict[str, Any]:
        return {"action": "create", "entity_type": t, "entity_data": {"__entity_type__": t, "id": i, **data}}
    world.fake.apply([
        create("Asset", asset, name=asset_name, context_id=world.sh010, type_id=world.scene),
        create("AssetVersion", av, asset_id=asset, version=version, task_id=world.comp, is_published=True),
        create("FileComponent", comp, name=component, version_id=av, file_type=".nk", size=10),
        create("ComponentLocation", str(uuid.uuid4()), component_id=comp, location_id=UNMANAGED,
               resource_identifier=path)])
    return av


def test_ftrack_adopts_a_peer_version_at_no_extra_request(world: World):
    b = world.backend()
    b.publish(world.job(world.single("sh010/comp/warmup_v001.nk", version=1, name="warmup")))  # warm caches
    p2 = world.single("sh010/comp/sh010_comp_v002.nk", version=2)
    theirs = ftrack_peer_version(world, p2.path, version=2)
    versions, before = len(world.versions()), len(world.fake.log)
    job = world.job(p2)
    ref = b.publish(job)
    assert ref.adopted and ref.id == theirs
    assert len(world.versions()) == versions and world.fake.actions("create")[-1]["entity_data"]["id"] != job.state.get("adopted_version")
    assert len(world.fake.log) - before == 1  # the adoption query rode the usual lookup request
    assert not [op for req in world.fake.log[before:] for op in req.ops if op["action"] != "query"]
    assert b.publish(world.job(p2, job.id)).adopted and len(world.fake.log) - before == 1  # retry: journaled

    before = len(world.fake.log)
    ref3 = b.publish(world.job(world.single("sh010/comp/sh010_comp_v003.nk", version=3)))
    assert not ref3.adopted and len(world.fake.log) - before == 3  # lookup, create batch, publish flag
    assert world.fake.get(ref3.id)["version"] == 3


def test_ftrack_sequence_registered_by_its_frames_is_adopted(world: World):
    b = world.backend()
    p = world.sequence(count=5)
    first = p.frame_path(1001)
    theirs = ftrack_peer_version(world, first, version=1, asset_name="beauty_render", component="main")
    ref = b.publish(world.job(p))
    assert ref.adopted and ref.id == theirs and not world.fake.records("SequenceComponent")


def test_ftrack_own_landed_batch_is_not_adopted(world: World):
    """A create batch whose answer was lost left our own records: the retry completes them and
    reports a normal publish, never an adoption of itself."""
    b = world.backend()
    p = world.single("sh010/comp/sh010_comp_v004.nk", version=4)
    world.fake.drop_after_apply(count=1, action="create")
    job = world.job(p)
    with pytest.raises(RetryableError):
        b.publish(job)
    ref = b.publish(world.job(p, job.id, uncertain=True))
    assert not ref.adopted and len(world.versions()) == 1 and world.versions()[0]["is_published"]


# ---- Kitsu (fake) --------------------------------------------------------------------------------
@pytest.fixture
def zou_fake():
    server = FakeZou().start()
    yield server
    server.stop()


def kitsu_backend(url: str, token: str, project: str, tmp_path: Path, **over: Any) -> KitsuBackend:
    args: dict[str, Any] = dict(url=url, token=SecretStr(token), project=project,
                                task_types={"comp": "Compositing"}, output_types={"nk": "Nuke", "exr": "EXR"},
                                retries=1, backoff_base=0.01, timeout=15)
    args.update(over)
    return KitsuBackend(KitsuSettings(**args), BackendContext(config_dir=tmp_path, roots={}))


def test_kitsu_fake_adopts_an_output_file_of_the_same_path(zou_fake: FakeZou, tmp_path: Path):
    p2 = kitsu_script(tmp_path, version=2)
    nuke = zou_fake._add("output_types", name="Nuke Script", short_name="nk")
    theirs = zou_fake._add("output_files", entity_id=zou_fake.shot["id"], output_type_id=nuke["id"],
                           task_type_id=zou_fake.comp["id"], name="main", representation="nk", revision=2,
                           extension=".nk", nb_elements=1, comment="from the Kitsu publisher", path=p2.path,
                           size=None, checksum=None, data=None, canceled=False)
    b = kitsu_backend(zou_fake.url, FakeZou.BOT_TOKEN, "Fake Show", tmp_path)
    listings = lambda: zou_fake.count("GET", r"/output-files$")  # noqa: E731
    writes = lambda: zou_fake.count("POST", r"output-files") + zou_fake.count("PUT", r"output-files")  # noqa: E731
    try:
        ref = b.publish(Job(id=1, publish=p2))
        assert ref.adopted and ref.id == theirs["id"]
        # one listing of the shot's output files (as before adoption existed), nothing written
        assert listings() == 1 and writes() == 0 and not zou_fake.count("POST", r"/comment$")
        assert len(zou_fake.output_files()) == 1 and zou_fake.db["output_files"][theirs["id"]]["data"] is None

        ref3 = b.publish(Job(id=2, publish=kitsu_script(tmp_path, version=3)))
        assert not ref3.adopted and len(zou_fake.output_files()) == 2
        assert listings() == 1  # the shot's listing is shared by the next publish (ADOPT_TTL): 0 extra
    finally:
        b.close()


# ---- Kitsu (real Zou) ----------------------------------------------------------------------------
@pytest.mark.kitsu
@pytest.mark.timeout(600)
@pytest.mark.linux_only  # the real Zou
def test_kitsu_real_zou_adopts_a_gazu_output_file(zou, tmp_path):
    from tests.zou_server import PROJECT

    p2 = kitsu_script(tmp_path, version=2)
    shot = zou.seed["shots"]["SH010"]
    ot = zou.api("POST", "/data/output-types", {"name": "Nuke Script", "short_name": "nks"})
    # as gazu.files.new_entity_output_file then an update of its path: another name, another type
    made = zou.api("POST", f"/data/entities/{shot}/output-files/new", {
        "output_type_id": ot["id"], "task_type_id": zou.seed["task_types"]["Compositing"], "name": "main",
        "revision": 2, "representation": "nk", "extension": ".nk"})
    zou.api("PUT", f"/data/output-files/{made['id']}", {"path": p2.path})
    b = kitsu_backend(zou.url, zou.bot_token, PROJECT, tmp_path,
                      task_types={"comp": "Compositing"}, output_types={"nk": "Nuke"})
    try:
        ref = b.publish(Job(id=1, publish=p2))
        assert ref.adopted and ref.id == made["id"]
        assert [f["id"] for f in zou.output_files(shot)] == [made["id"]]  # nothing created
        ref3 = b.publish(Job(id=2, publish=kitsu_script(tmp_path, version=3)))
        assert not ref3.adopted and len(zou.output_files(shot)) == 2
    finally:
        b.close()


# ---- the journal ---------------------------------------------------------------------------------
def test_journal_records_adopted_and_publishes_json_shows_it(tmp_path: Path):
    from tests.test_shotgrid import nuke_script as script

    j = SqliteJournal(f"sqlite:///{tmp_path}/journal.db")
    try:
        (tmp_path / "s" / "demo").mkdir(parents=True)
        a, _ = j.add(script(tmp_path / "s", version=1), [])
        b, _ = j.add(script(tmp_path / "s", version=2), [])
        for row, adopted in ((a, True), (b, False)):
            claimed = j.claim("agent", row.next_attempt_at + 1e9, 60)
            j.published(claimed.id, "agent", "shotgrid", TrackerRef("7", None, adopted=adopted))
        got = {r.id: r for r in j.rows(Status.PUBLISHED)}
        assert got[a.id].adopted and not got[b.id].adopted
        assert got[a.id].to_json()["adopted"] is True and got[b.id].to_json()["adopted"] is False
        assert any(m == "shotgrid 7 (adopted)" for _, s, m in j.events(a.id) if s == "published")
    finally:
        j.close()


# ---- end to end ----------------------------------------------------------------------------------
def test_end_to_end_adopted_in_publishes_json(tmp_path: Path, sg, caplog):
    """A Toolkit publish of a file exists; the agent sees the file, adopts the record (the INFO
    line says so), `publishes --json` shows ``"adopted": true`` and the project from
    ``tracker.project``; a later version is published normally."""
    fake, studio = sg
    root = studio / "demo"
    work = root / "seq/sq01/sh010/comp/work"
    work.mkdir(parents=True)
    script = work / "sh010_main_v002.nk"
    script.write_text("Root {}\n")
    publish2_record(fake, script, studio, 2)
    tracker = {"backend": "shotgrid", "url": fake.url, "script_name": "watcher", "script_key": KEY,
               "project": "Demo Project", "retries": 1, "backoff_base": 0.01, "timeout": 5}
    s = settings(tmp_path, root=root, tracker=tracker)
    cfg = tmp_path / "watcher.yml"
    cfg.write_text(json.dumps({"roots": [{"name": "shows", "path": str(root), "templates": str(DATA / "pipeline.yml")}],
                               "journal": s.journal_url(), "state_dir": str(tmp_path / "state"), "tracker": tracker}))
    caplog.set_level("INFO", logger="watcher")
    with running(s):
        wait_for(lambda: [r for r in rows(s) if r.status == Status.PUBLISHED], 30, 0.1)
        (work / "sh010_main_v003.nk").write_text("Root {}\n")
        wait_for(lambda: len([r for r in rows(s) if r.status == Status.PUBLISHED]) == 2, 30, 0.1)
    out = subprocess.run([sys.executable, "-m", "watcher", "-c", str(cfg), "publishes", "--json"], capture_output=True,
                         text=True, timeout=120, env={**os.environ}, cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr
    listed = {d["version"]: d for d in json.loads(out.stdout)}
    assert listed[2]["adopted"] is True and listed[3]["adopted"] is False
    assert listed[2]["tracker_id"] == str(fake.find("PublishedFile", version_number=2)[0]["id"])
    assert {d["project"] for d in listed.values()} == {"Demo Project"}
    assert len(fake.records("PublishedFile")) == 2  # theirs (v2) and ours (v3)
    lines = [r.getMessage() for r in caplog.records if r.levelname == "INFO"]
    assert any(f"sh010_main_v002.nk Shot sh010 v2 adopted existing shotgrid {listed[2]['tracker_id']}" in m
               for m in lines), lines
    assert any(m.startswith(f"published {work}/sh010_main_v003.nk") and " as shotgrid " in m for m in lines)
