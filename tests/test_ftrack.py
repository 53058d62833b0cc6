"""ftrack backend against a fake ftrack server on 127.0.0.1 (tests/fake_ftrack.py): real files
under tmp_path, real HTTP, records asserted field by field on the server side."""
from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from tests.fake_ftrack import LOCATION_IDS, OBJECT_TYPE_IDS, FakeFtrack, detail, refusal
from watcher.errors import ConfigError, PermanentError, RetryableError
from watcher.model import Entity, Job, Publish
from watcher.publish.base import BackendContext
from watcher.publish.ftrack import FtrackBackend, FtrackSettings, describe_error

UNMANAGED = LOCATION_IDS["ftrack.unmanaged"]


# ----------------------------------------------------------------------------- fixtures

class World:
    """The fake server with a small project: demo / sq01 / sh010 (tasks comp, lighting),
    Asset Build hero (task model), asset types img, scene, geo."""

    def __init__(self, fake: FakeFtrack, tmp: Path) -> None:
        self.fake, self.tmp = fake, tmp
        self.user, self.key = next(iter(fake.users.items()))
        self.project = fake.add_project("demo", "Demo Project")
        self.sq01 = fake.add_context("Sequence", "sq01", self.project)
        self.sh010 = fake.add_context("Shot", "sh010", self.sq01)
        self.comp = fake.add_task("comp", self.sh010)
        self.lighting = fake.add_task("lighting", self.sh010)
        self.hero = fake.add_context("Asset Build", "hero", self.project)
        self.model = fake.add_task("model", self.hero)
        self.img = fake.add_asset_type("Image", "img")
        self.scene = fake.add_asset_type("Scene", "scene")
        self.geo = fake.add_asset_type("Geometry", "geo")
        self.root = tmp / "proj"
        self.root.mkdir()
        self.states: dict[int, dict[str, Any]] = {}
        self._next_id = 0

    def backend(self, **overrides: Any) -> FtrackBackend:
        values: dict[str, Any] = dict(
            server_url=self.fake.url, api_user=self.user, api_key=self.key, project="demo",
            asset_types={"Rendered Image": "img", "nk": "scene", "abc": "geo"},
            retries=2, backoff_base=0.001, backoff_cap=0.01, timeout=5)
        values.update(overrides)
        return FtrackBackend(FtrackSettings(**values), BackendContext(config_dir=self.tmp, roots={}))

    def single(self, rel: str = "sh010/comp/sh010_comp_v003.nk", *, version: int | None = 3,
               name: str = "sh010_comp", entity: Entity | None = Entity("Shot", "sh010"),
               task: str | None = "comp", publish_type: str = "Nuke Script", size: int = 1234,
               **kw: Any) -> Publish:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"n" * size)
        return Publish(key=f"k:{rel}", root="proj", root_path=str(self.root), template="nuke_script",
                       path=str(path), name=name, publish_type=publish_type, version=version,
                       entity=entity, task=task, project=kw.pop("project", "demo"), size=size, **kw)

    def sequence(self, rel_dir: str = "sh010/render/v001", *, first: int = 1001, count: int = 100,
                 missing: set[int] = frozenset(), version: int | None = 1, name: str = "beauty",
                 **kw: Any) -> Publish:
        d = self.root / rel_dir
        d.mkdir(parents=True, exist_ok=True)
        total = 0
        for f in range(first, first + count):
            if f in missing:
                continue
            size = 100 + f % 7  # frames of different sizes
            (d / f"beauty.{f:04d}.exr").write_bytes(b"e" * size)
            total += size
        frames = f"{first}-{first + count - 1}"
        missing_frames = ",".join(str(f) for f in sorted(missing)) or None
        return Publish(key=f"k:{rel_dir}", root="proj", root_path=str(self.root), template="render",
                       path=str(d / "beauty.%04d.exr"), name=name, publish_type="Rendered Image",
                       version=version, entity=kw.pop("entity", Entity("Shot", "sh010")),
                       task=kw.pop("task", "comp"), project="demo", frames=frames,
                       missing_frames=missing_frames, frame_count=count - len(missing), padding=4,
                       size=total, **kw)

    def job(self, p: Publish, job_id: int | None = None, *, uncertain: bool = False) -> Job:
        """A job as the publisher worker hands it over: its state as last saved in the journal."""
        if job_id is None:
            self._next_id += 1
            job_id = self._next_id
        saved = self.states.setdefault(job_id, {})
        return Job(id=job_id, publish=p, uncertain=uncertain, state=dict(saved),
                   save_state=lambda s, j=job_id: self.states.__setitem__(j, dict(s)))

    # server-side views
    def versions(self) -> list[dict[str, Any]]:
        return self.fake.records("AssetVersion")

    def components_of(self, version_id: str) -> list[dict[str, Any]]:
        return [c for c in self.fake.records("Component") if c.get("version_id") == version_id]

    def members_of(self, container_id: str) -> list[dict[str, Any]]:
        return [c for c in self.fake.records("Component") if c.get("container_id") == container_id]

    def locations_of(self, component_id: str) -> list[dict[str, Any]]:
        return [c for c in self.fake.records("ComponentLocation") if c["component_id"] == component_id]


@pytest.fixture
def fake() -> Any:
    server = FakeFtrack().start()
    yield server
    server.stop()


@pytest.fixture
def world(fake: FakeFtrack, tmp_path: Path) -> World:
    return World(fake, tmp_path)


def creates(fake: FakeFtrack, entity_type: str | None = None) -> list[dict[str, Any]]:
    return [op for op in fake.actions("create") if entity_type is None or op["entity_type"] == entity_type]


# ----------------------------------------------------------------------------- happy paths

def test_single_file_becomes_asset_version_component_and_location(world: World) -> None:
    b = world.backend()
    p = world.single()
    ref = b.publish(world.job(p))

    assets = world.fake.records("Asset")
    assert len(assets) == 1
    asset = assets[0]
    assert asset["name"] == "sh010_comp"
    assert asset["context_id"] == world.sh010  # the task's parent, not the task
    assert asset["type_id"] == world.scene

    [version] = world.versions()
    assert ref.id == version["id"]
    assert version["asset_id"] == asset["id"]
    assert version["version"] == 3
    assert version["task_id"] == world.comp
    assert version["is_published"] is True
    assert version["status_id"] == world.fake.default_version_status

    [comp] = world.components_of(version["id"])
    assert comp["__entity_type__"] == "FileComponent"
    assert comp["name"] == "main"
    assert comp["file_type"] == ".nk"
    assert comp["size"] == 1234 == os.path.getsize(p.path)
    assert comp.get("container_id") is None

    [loc] = world.locations_of(comp["id"])
    assert loc["location_id"] == UNMANAGED
    assert loc["resource_identifier"] == p.path
    assert os.path.isabs(loc["resource_identifier"])


def test_version_is_created_unpublished_then_flagged_in_a_separate_last_request(world: World) -> None:
    world.backend().publish(world.job(world.single()))
    batches = [[op["action"] for op in req.ops] for req in world.fake.log]
    create_batch = next(i for i, b in enumerate(batches) if "create" in b)
    [av] = creates(world.fake, "AssetVersion")
    assert av["entity_data"]["is_published"] is False
    assert av["entity_data"]["__entity_type__"] == "AssetVersion"
    # parents first inside the batch
    assert [op["entity_type"] for op in world.fake.log[create_batch].ops] == [
        "Asset", "AssetVersion", "FileComponent", "ComponentLocation"]
    assert batches[create_batch + 1] == ["update"]
    assert create_batch + 2 == len(batches)
    upd = world.fake.log[create_batch + 1].ops[0]
    assert upd["entity_key"] == [av["entity_data"]["id"]]
    assert upd["entity_data"] == {"__entity_type__": "AssetVersion", "is_published": True}


def test_a_warm_publish_takes_three_requests(world: World) -> None:
    """Lookups are cached; then one lookup request (Asset, AssetVersion and, for adoption, the
    ComponentLocation at this path: no extra request), one create batch, one publish flag."""
    b = world.backend()
    b.publish(world.job(world.single("sh010/comp/sh010_comp_v003.nk", version=3)))
    before = len(world.fake.log)
    b.publish(world.job(world.single("sh010/comp/sh010_comp_v004.nk", version=4,
                                     fields={"Shot": "sh010", "version": 4})))
    actions = [[op["action"] for op in req.ops] for req in world.fake.log[before:]]
    assert actions == [["query", "query", "query"], ["create"] * 3, ["update"]]


def test_every_request_carries_the_auth_headers_and_json(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict[str, str]] = []
    original = world.fake.handle

    def spy(headers: dict[str, str], raw: bytes, **kw: Any) -> Any:
        seen.append(headers)
        return original(headers, raw, **kw)

    monkeypatch.setattr(world.fake, "handle", spy)
    world.backend().publish(world.job(world.single()))
    assert seen
    for h in seen:
        assert h["ftrack-user"] == world.user
        assert h["ftrack-api-key"] == world.key
        assert h["content-type"] == "application/json"
        assert h["accept"] == "application/json"


def test_hundred_frame_sequence_becomes_sequence_component_with_members(world: World) -> None:
    p = world.sequence()
    ref = world.backend().publish(world.job(p))

    [version] = world.versions()
    assert ref.id == version["id"] and version["version"] == 1 and version["is_published"] is True
    assert world.fake.get(version["asset_id"])["type_id"] == world.img
    [seq] = world.components_of(version["id"])
    assert seq["__entity_type__"] == "SequenceComponent"
    assert seq["name"] == "main"
    assert seq["padding"] == 4
    assert seq["file_type"] == ".exr"
    assert seq["size"] == sum(os.path.getsize(f) for f in p.file_paths()) == p.size

    members = world.members_of(seq["id"])
    assert len(members) == 100
    assert sorted(m["name"] for m in members) == [f"{f:04d}" for f in range(1001, 1101)]
    by_name = {m["name"]: m for m in members}
    for f in (1001, 1050, 1100):
        m = by_name[f"{f:04d}"]
        assert m["__entity_type__"] == "FileComponent"
        assert m["size"] == os.path.getsize(p.frame_path(f))
        assert m["file_type"] == ".exr"
        assert m.get("version_id") is None  # members hang off the container only

    [cloc] = world.locations_of(seq["id"])
    assert cloc["resource_identifier"] == p.path  # the printf pattern
    assert cloc["location_id"] == UNMANAGED
    for m in members:
        [mloc] = world.locations_of(m["id"])
        assert mloc["location_id"] == UNMANAGED
        assert mloc["resource_identifier"] == p.frame_path(int(m["name"]))
    assert len(world.fake.records("ComponentLocation")) == 101


def test_sequence_with_holes_registers_present_frames_only(world: World) -> None:
    p = world.sequence(count=10, missing={1004, 1007})
    world.backend().publish(world.job(p))
    [version] = world.versions()
    [seq] = world.components_of(version["id"])
    names = sorted(m["name"] for m in world.members_of(seq["id"]))
    assert names == ["1001", "1002", "1003", "1005", "1006", "1008", "1009", "1010"]
    assert seq["size"] == p.size


def test_sequence_without_members_when_configured(world: World) -> None:
    world.backend(sequence_members=False).publish(world.job(world.sequence(count=20)))
    [version] = world.versions()
    [seq] = world.components_of(version["id"])
    assert world.members_of(seq["id"]) == []
    assert len(world.fake.records("ComponentLocation")) == 1
    assert seq["size"] > 0


def test_large_publish_is_split_into_batches_parents_first(world: World) -> None:
    world.backend(batch_size=50).publish(world.job(world.sequence()))
    create_reqs = [req for req in world.fake.log if any(op["action"] == "create" for op in req.ops)]
    assert len(create_reqs) == 5  # 1 asset + 1 version + 1 sequence + 100 members + 101 locations
    assert [op["entity_type"] for op in create_reqs[0].ops[:3]] == ["Asset", "AssetVersion", "SequenceComponent"]
    assert all(len(r.ops) <= 50 for r in create_reqs)
    assert len(world.fake.records("ComponentLocation")) == 101


def test_next_version_reuses_the_asset(world: World) -> None:
    b = world.backend()
    b.publish(world.job(world.single("sh010/comp/sh010_comp_v003.nk", version=3)))
    b.publish(world.job(world.single("sh010/comp/sh010_comp_v004.nk", version=4)))
    assert len(world.fake.records("Asset")) == 1
    assert sorted(v["version"] for v in world.versions()) == [3, 4]
    assert len(creates(world.fake, "Asset")) == 1


def test_without_a_version_number_the_server_numbers_it(world: World) -> None:
    b = world.backend()
    b.publish(world.job(world.single("a/one.nk", version=None)))
    b.publish(world.job(world.single("a/two.nk", version=None)))
    assert sorted(v["version"] for v in world.versions()) == [1, 2]
    assert all("version" not in op["entity_data"] for op in creates(world.fake, "AssetVersion"))


def test_asset_build_entity_and_object_type_mapping(world: World) -> None:
    p = world.single("assets/hero/model/hero_model_v002.abc", version=2, name="hero_model",
                     entity=Entity("Asset", "hero"), task="model", publish_type="Alembic Cache")
    world.backend().publish(world.job(p))
    [asset] = world.fake.records("Asset")
    assert asset["context_id"] == world.hero and asset["type_id"] == world.geo
    [version] = world.versions()
    assert version["task_id"] == world.model


def test_task_as_the_template_entity_puts_the_asset_on_its_parent(world: World) -> None:
    p = world.single(entity=Entity("Task", "lighting"), task=None)
    world.backend().publish(world.job(p))
    [asset] = world.fake.records("Asset")
    assert asset["context_id"] == world.sh010
    assert world.versions()[0]["task_id"] == world.lighting


def test_same_shot_name_in_two_sequences_is_told_apart_by_template_fields(world: World) -> None:
    sq02 = world.fake.add_context("Sequence", "sq02", world.project)
    other = world.fake.add_context("Shot", "sh010", sq02)
    other_comp = world.fake.add_task("comp", other)
    b = world.backend()
    p = world.single(fields={"Sequence": "sq02", "Shot": "sh010", "Step": "comp"})
    b.publish(world.job(p))
    [asset] = world.fake.records("Asset")
    assert asset["context_id"] == other
    assert world.versions()[0]["task_id"] == other_comp

    with pytest.raises(PermanentError, match=r"2 Shots are named 'sh010' in project 'demo'"):
        b.publish(world.job(world.single("x/y.nk", fields={"Shot": "sh010"})))


def test_custom_location_with_root_relative_identifiers(world: World) -> None:
    loc = world.fake.add_location("studio.projects")
    p = world.single()
    world.backend(location="studio.projects", resource_identifier="root_relative",
                  component_names={"Nuke Script": "nukescript"}).publish(world.job(p))
    [comp] = world.fake.records("Component")
    assert comp["name"] == "nukescript"
    [cl] = world.locations_of(comp["id"])
    assert cl["location_id"] == loc
    assert cl["resource_identifier"] == "sh010/comp/sh010_comp_v003.nk"


def test_version_status_comment_and_url(world: World) -> None:
    status = world.fake.add_status("Auto Published")
    p = world.single(description="from the farm")
    ref = world.backend(version_status="Auto Published",
                        version_url="{server}/#entityType=assetversion&entityId={id}").publish(world.job(p))
    [v] = world.versions()
    assert v["status_id"] == status and v["comment"] == "from the farm"
    assert ref.url == f"{world.fake.url}/#entityType=assetversion&entityId={v['id']}"


def test_publishes_to_one_asset_share_a_serialize_key(world: World) -> None:
    b = world.backend()
    k3 = b.serialize_key(world.job(world.single("a/v3.nk", version=3)))
    k4 = b.serialize_key(world.job(world.single("a/v4.nk", version=4)))
    other = b.serialize_key(world.job(world.single("a/x.nk", name="other")))
    assert k3 == k4 != other


def test_concurrent_workers_share_one_backend(world: World) -> None:
    b = world.backend()
    pubs = [world.single(f"sh010/comp/n{i}.nk", name=f"asset{i}") for i in range(8)]
    jobs = [world.job(p) for p in pubs]
    errors: list[BaseException] = []

    def run(j: Job) -> None:
        try:
            b.publish(j)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(j,)) for j in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not errors
    assert sorted(a["name"] for a in world.fake.records("Asset")) == sorted(f"asset{i}" for i in range(8))
    assert len(world.versions()) == 8 and all(v["is_published"] for v in world.versions())


# ----------------------------------------------------------------------------- existing versions

def _foreign_version(world: World, number: int, comp_name: str, path: str) -> str:
    """A version made by someone else (another publisher) with one registered component."""
    ops = [
        {"action": "create", "entity_type": "Asset", "entity_data": {
            "__entity_type__": "Asset", "id": "a-foreign", "name": "sh010_comp",
            "parent": {"__entity_type__": "Shot", "id": world.sh010},
            "type": {"__entity_type__": "AssetType", "id": world.scene}}},
        {"action": "create", "entity_type": "AssetVersion", "entity_data": {
            "__entity_type__": "AssetVersion", "id": "v-foreign", "version": number,
            "asset": {"__entity_type__": "Asset", "id": "a-foreign"}}},
        {"action": "create", "entity_type": "FileComponent", "entity_data": {
            "__entity_type__": "FileComponent", "id": "c-foreign", "name": comp_name, "file_type": ".nk",
            "version": {"__entity_type__": "AssetVersion", "id": "v-foreign"}}},
        {"action": "create", "entity_type": "ComponentLocation", "entity_data": {
            "__entity_type__": "ComponentLocation", "id": "cl-foreign", "resource_identifier": path,
            "component_id": "c-foreign", "location_id": UNMANAGED}},
    ]
    world.fake.apply(ops)
    return "v-foreign"


def test_existing_version_number_is_reused_and_the_component_added(world: World) -> None:
    vid = _foreign_version(world, 3, "script", "/elsewhere/x.nk")
    p = world.single()
    ref = world.backend().publish(world.job(p))
    assert ref.id == vid
    assert len(world.versions()) == 1 and len(world.fake.records("Asset")) == 1
    names = sorted(c["name"] for c in world.components_of(vid))
    assert names == ["main", "script"]
    assert world.fake.actions("update") == []  # not ours: its published flag is left alone


def test_existing_version_with_the_same_file_is_already_done(world: World) -> None:
    p = world.single()
    vid = _foreign_version(world, 3, "main", p.path)
    assert world.backend().publish(world.job(p)).id == vid
    assert creates(world.fake) == []  # (the foreign records were put in directly, not over HTTP)
    assert len(world.fake.records("Component")) == 1


def test_existing_version_with_another_file_under_the_name_is_refused(world: World) -> None:
    _foreign_version(world, 3, "main", "/elsewhere/other.nk")
    with pytest.raises(PermanentError) as err:
        world.backend().publish(world.job(world.single()))
    msg = str(err.value)
    assert "AssetVersion 'sh010_comp' v003 (scene) on Shot 'sh010'" in msg
    assert "/elsewhere/other.nk" in msg and "component 'main'" in msg
    assert len(world.fake.records("Component")) == 1


# ----------------------------------------------------------------------------- exactly once

def test_ids_are_saved_before_the_create_batch_is_sent(world: World) -> None:
    seen_at_save: list[int] = []
    p = world.single()
    job = world.job(p)
    inner = job.save_state

    def save(state: dict[str, Any]) -> None:
        seen_at_save.append(len(creates(world.fake)))
        inner(state)

    job.save_state = save
    ref = world.backend().publish(job)
    assert seen_at_save and seen_at_save[0] == 0
    ids = world.states[job.id]["ftrack"]
    assert ref.id == ids["version"]
    assert world.fake.records("Asset")[0]["id"] == ids["asset"]
    assert world.fake.records("Component")[0]["id"] == ids["component"]


def test_refused_create_then_retry_uses_the_same_ids(world: World) -> None:
    world.fake.reply(503, action="create")  # creates are not retried blindly
    p = world.single()
    with pytest.raises(RetryableError):
        world.backend().publish(world.job(p, 1))
    assert world.fake.records("AssetVersion") == []
    remembered = world.states[1]["ftrack"]["version"]
    ref = world.backend().publish(world.job(p, 1, uncertain=True))
    assert ref.id == remembered
    assert [v["id"] for v in world.versions()] == [remembered]


def test_lost_response_after_the_batch_landed_completes_without_a_second_create(world: World) -> None:
    world.fake.drop_after_apply(action="create")
    p = world.sequence()
    b = world.backend()
    with pytest.raises(RetryableError):
        b.publish(world.job(p, 7))
    [v] = world.versions()
    assert v["is_published"] is False  # landed, but not flagged: invisible until complete
    n_creates = len(creates(world.fake))

    ref = b.publish(world.job(p, 7, uncertain=True))
    assert ref.id == v["id"]
    assert len(creates(world.fake)) == n_creates  # nothing created twice
    [v] = world.versions()
    assert v["is_published"] is True
    assert len(world.fake.records("Component")) == 101
    assert len(world.fake.records("ComponentLocation")) == 101


def test_non_atomic_partial_batch_is_completed_on_retry(world: World) -> None:
    world.fake.partial(40)  # Asset, AssetVersion, SequenceComponent, 37 members
    p = world.sequence()
    b = world.backend(page_size=7)  # the retry's lookups page through the members
    with pytest.raises(RetryableError):
        b.publish(world.job(p, 3))
    assert len(world.fake.records("Component")) == 38
    b.publish(world.job(p, 3, uncertain=True))
    [v] = world.versions()
    assert v["is_published"] is True
    [seq] = world.components_of(v["id"])
    members = world.members_of(seq["id"])
    assert len(members) == 100 and len({m["name"] for m in members}) == 100
    assert len(world.fake.records("ComponentLocation")) == 101
    assert len(world.fake.records("Asset")) == 1


def test_failure_before_the_published_flag_is_completed_on_retry(world: World) -> None:
    world.fake.reply(502, count=10, action="update")
    p = world.single()
    b = world.backend(retries=1)
    with pytest.raises(RetryableError, match="publishing AssetVersion 'sh010_comp' v003"):
        b.publish(world.job(p, 4))
    world.fake.clear_faults()
    n_creates = len(creates(world.fake))
    b.publish(world.job(p, 4, uncertain=True))
    assert len(creates(world.fake)) == n_creates
    [v] = world.versions()
    assert v["is_published"] is True


def test_uncertain_retry_without_version_number_finds_its_version_by_id(world: World) -> None:
    world.fake.drop_after_apply(action="create")
    p = world.single(version=None)
    b = world.backend()
    with pytest.raises(RetryableError):
        b.publish(world.job(p, 9))
    b.publish(world.job(p, 9, uncertain=True))
    [v] = world.versions()
    assert v["version"] == 1 and v["is_published"] is True
    assert len(creates(world.fake, "AssetVersion")) == 1


def test_outage_mid_burst_loses_nothing_and_duplicates_nothing(world: World) -> None:
    """Twelve publishes; the server drops one answer after applying, refuses connections for a
    while, answers 503s, and fails one batch half way. Retrying as the publisher worker does
    (uncertain=True) ends with each publish exactly once."""
    b = world.backend(retries=1)
    pubs = []
    for i in range(12):
        if i % 4 == 0:
            pubs.append(world.sequence(f"sh010/render/b{i}", name=f"beauty{i}", count=30))
        else:
            pubs.append(world.single(f"sh010/comp/s{i}.nk", name=f"script{i}", version=i))
    pending = {i + 1: p for i, p in enumerate(pubs)}
    uncertain: set[int] = set()

    def run_once() -> None:
        for jid, p in list(pending.items()):
            try:
                b.publish(world.job(p, jid, uncertain=jid in uncertain))
                del pending[jid]
            except RetryableError:
                uncertain.add(jid)

    # round 1: a healthy start, then trouble mid-burst
    for jid in (1, 2, 3):
        b.publish(world.job(pending.pop(jid), jid))
    world.fake.drop_after_apply(action="create")   # job 4: landed, answer lost
    b_job = 4
    with pytest.raises(RetryableError):
        b.publish(world.job(pending[b_job], b_job))
    uncertain.add(b_job)
    world.fake.partial(12)                                     # job 5 (a sequence): half applied
    with pytest.raises(RetryableError):
        b.publish(world.job(pending[5], 5))
    uncertain.add(5)
    world.fake.pause()                                              # jobs 6..: connection refused
    run_once()
    assert len(pending) == 9
    world.fake.resume()
    world.fake.reply(503, count=3)
    for _ in range(6):
        if not pending:
            break
        run_once()
    assert not pending

    versions = world.versions()
    assert len(versions) == 12 and all(v["is_published"] for v in versions)
    assets = world.fake.records("Asset")
    assert sorted(a["name"] for a in assets) == sorted(p.name for p in pubs)  # one asset each
    for p in pubs:
        [asset] = [a for a in assets if a["name"] == p.name]
        [v] = [v for v in versions if v["asset_id"] == asset["id"]]
        [comp] = world.components_of(v["id"])
        if p.is_sequence:
            assert len(world.members_of(comp["id"])) == 30
            assert len(world.locations_of(comp["id"])) == 1
        else:
            assert comp["size"] == p.size
            [loc] = world.locations_of(comp["id"])
            assert loc["resource_identifier"] == p.path
    assert len(world.fake.records("ComponentLocation")) == 3 * 31 + 9


# ----------------------------------------------------------------------------- errors

@pytest.mark.parametrize("kwargs, message", [
    (dict(project="nope"), "project 'nope' not found"),
    (dict(entity=Entity("Shot", "sh999")), "Shot 'sh999' not found in project 'demo'"),
    (dict(task="paint"), "task 'paint' not found on Shot 'sh010' in project 'demo'"),
    (dict(entity=Entity("Planet", "mars")), "object type 'Planet' does not exist; known: "),
    (dict(publish_type="Photoshop Image", rel="sh010/x.psd"), "no asset type for publish type 'Photoshop Image' / extension 'psd'"),
])
def test_missing_things_fail_permanently_with_their_names(world: World, kwargs: dict[str, Any], message: str) -> None:
    rel = kwargs.pop("rel", "sh010/comp/sh010_comp_v003.nk")
    with pytest.raises(PermanentError, match=message.replace("(", r"\(")):
        world.backend().publish(world.job(world.single(rel, **kwargs)))
    assert creates(world.fake) == []


def test_configured_asset_type_missing_on_the_server(world: World) -> None:
    b = world.backend(asset_types={"nk": "nukescript"})
    with pytest.raises(PermanentError, match=r"asset type short code 'nukescript' .* known: geo, img, scene"):
        b.publish(world.job(world.single()))


def test_missing_task_is_allowed_when_not_required(world: World) -> None:
    world.backend(require_task=False).publish(world.job(world.single(task="paint")))
    [v] = world.versions()
    assert v.get("task_id") is None and v["is_published"] is True


def test_server_refusal_is_surfaced_in_its_own_words(world: World) -> None:
    world.fake.reply(200, body=refusal("ValidationError", "Name contains forbidden characters."), action="create")
    with pytest.raises(PermanentError) as err:
        world.backend().publish(world.job(world.single()))
    msg = str(err.value)
    assert "ValidationError: Name contains forbidden characters." in msg
    assert "AssetVersion 'sh010_comp' v003 (scene) on Shot 'sh010', task 'comp' in project 'demo'" in msg
    assert world.versions() == []


def test_schema_violations_come_back_as_the_servers_error(world: World) -> None:
    # the fake enforces the schema like the server: an unknown attribute is refused, batch unapplied
    b = world.backend()
    results = b.call([{"action": "query", "expression": "select id from Asset"}], what="a query")
    assert results[0]["data"] == []
    with pytest.raises(PermanentError, match="Asset has no attribute 'colour'"):
        b.call([{"action": "create", "entity_type": "Asset",
                 "entity_data": {"__entity_type__": "Asset", "name": "x", "colour": "red"}}], what="a bad create")
    with pytest.raises(PermanentError, match="must be an entity reference"):
        b.call([{"action": "create", "entity_type": "Asset",
                 "entity_data": {"__entity_type__": "Asset", "name": "x", "parent": world.sh010}}], what="a bad link")
    assert world.fake.records("Asset") == []


def test_validation_detail_body_is_surfaced(world: World) -> None:
    world.fake.reply(422, body=detail("field required", loc=["body", 0, "expression"]))
    with pytest.raises(PermanentError, match=r"HTTP 422 request rejected: body\.0\.expression: field required"):
        world.backend().publish(world.job(world.single()))


def test_bad_key_fails_clearly_and_never_shows_the_key(world: World, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "wrong-" + world.key
    b = world.backend(api_key=secret)
    with pytest.raises(PermanentError) as err:
        b.publish(world.job(world.single()))
    msg = str(err.value)
    assert "HTTP 401 InvalidCredentialsError: The supplied API key is not valid." in msg
    assert secret not in msg
    [result] = b.check()
    assert not result.ok and result.what == "credentials" and "InvalidCredentialsError" in result.detail
    world.backend().publish(world.job(world.single("a/ok.nk")))
    assert secret not in caplog.text and world.key not in caplog.text
    assert secret not in repr(b.settings) and world.key not in repr(world.backend().settings)


def test_persistent_5xx_is_retryable_and_creates_nothing(world: World) -> None:
    world.fake.reply(500, count=100)
    with pytest.raises(RetryableError, match="HTTP 500 ServerError: Service temporarily unavailable"):
        world.backend().publish(world.job(world.single()))
    world.fake.clear_faults()
    assert world.fake.records("Asset") == []


def test_429_retry_after_is_honoured_then_succeeds(world: World) -> None:
    b = world.backend(retries=3, backoff_cap=30)
    slept: list[float] = []
    b.http._sleep = slept.append  # record instead of waiting
    world.fake.reply(429, count=2, retry_after="7")
    b.publish(world.job(world.single()))
    assert len(slept) == 2 and all(s >= 7 for s in slept)
    assert len(world.versions()) == 1


def test_connection_refused_is_retryable(world: World) -> None:
    b = world.backend(retries=1)
    world.fake.pause()
    with pytest.raises(RetryableError, match="cannot connect"):
        b.publish(world.job(world.single()))
    world.fake.resume()
    b.publish(world.job(world.single()))
    assert len(world.versions()) == 1


def test_dropped_connection_before_apply_then_retry(world: World) -> None:
    world.fake.drop(action="create")
    p = world.single()
    b = world.backend()
    with pytest.raises(RetryableError):
        b.publish(world.job(p, 2))
    assert world.versions() == []
    b.publish(world.job(p, 2, uncertain=True))
    assert len(world.versions()) == 1


def test_vanished_file_fails_permanently(world: World) -> None:
    p = world.single()
    os.unlink(p.path)
    with pytest.raises(PermanentError, match="vanished before it was published"):
        world.backend().publish(world.job(p))


def test_describe_error_both_shapes() -> None:
    assert describe_error(200, {"exception": "ServerError", "content": "boom", "error_code": "E1"}) == \
        "ServerError: boom (error_code E1)"
    assert describe_error(422, {"detail": [{"loc": ["body", 1], "msg": "bad"}, {"msg": "worse"}]}) == \
        "HTTP 422 request rejected: body.1: bad; worse"
    assert describe_error(502, "<html>Bad Gateway</html>") == "HTTP 502: <html>Bad Gateway</html>"


# ----------------------------------------------------------------------------- check and settings

def test_check_reports_each_configured_thing(world: World) -> None:
    results = world.backend(version_status="Pending Review").check()
    assert all(r.ok for r in results), [str(r) for r in results]
    whats = [r.what for r in results]
    assert whats[0] == "credentials" and "project 'demo'" in whats
    assert {"asset type 'img'", "asset type 'scene'", "asset type 'geo'", "location 'ftrack.unmanaged'",
            "object type 'Asset Build'", "status 'Pending Review'"} <= set(whats)


def test_check_names_what_is_wrong(world: World) -> None:
    results = {r.what: r for r in world.backend(
        project="nope", asset_types={"exr": "img", "nk": "nuke"}, location="studio.missing",
        version_status="Bogus").check()}
    assert results["credentials"].ok
    assert not results["project 'nope'"].ok and "not found" in results["project 'nope'"].detail
    assert results["asset type 'img'"].ok
    assert not results["asset type 'nuke'"].ok and "known: geo, img, scene" in results["asset type 'nuke'"].detail
    assert not results["location 'studio.missing'"].ok
    assert not results["status 'Bogus'"].ok


def test_settings_are_strict_and_secrets_come_from_env_or_file(world: World, tmp_path: Path) -> None:
    base = dict(server_url=world.fake.url + "/api/", api_user=world.user)
    with pytest.raises(ValidationError, match="extra"):
        FtrackSettings(**base, api_kee="x")
    with pytest.raises(ValidationError, match="not a URL"):
        FtrackSettings(server_url="ftrack.example.com", api_user="u")
    s = FtrackSettings(**base)
    assert s.server_url == world.fake.url  # "/api" and slashes trimmed
    with pytest.raises(ConfigError, match="WATCHER_TRACKER__API_KEY"):
        FtrackBackend(s, BackendContext(config_dir=tmp_path, roots={}))
    (tmp_path / "ftrack.key").write_text(world.key + "\n")
    b = FtrackBackend(FtrackSettings(**base, api_key_file=Path("ftrack.key"), project="demo",
                                     asset_types={"nk": "scene"}),
                      BackendContext(config_dir=tmp_path, roots={}))
    assert b.check()[0].ok
    with pytest.raises(ConfigError, match="ca_bundle"):
        FtrackBackend(FtrackSettings(**base, api_key="x", ca_bundle=Path("missing.pem")),
                      BackendContext(config_dir=tmp_path, roots={}))


def test_backend_is_registered_under_its_name() -> None:
    from watcher.publish import load_backend
    assert load_backend("ftrack") is FtrackBackend
    assert FtrackBackend.Settings is FtrackSettings


def test_fake_query_language_subset(fake: FakeFtrack) -> None:
    """The fake answers the expressions the backend sends, pages, and refuses unknown attributes."""
    pid = fake.add_project("p")
    for i in range(5):
        fake.add_context("Shot", f"s{i}", pid)
    r = fake.apply([{"action": "query", "expression":
                     f'select id, name from TypedContext where project_id is "{pid}" and '
                     f'(name is "s1" or name in ("s3", "s4")) and object_type_id is "{OBJECT_TYPE_IDS["Shot"]}"'
                     " offset 1 limit 1"}])[0]
    assert [d["name"] for d in r["data"]] == ["s3"] and r["metadata"]["next"]["offset"] == 2
    r = fake.apply([{"action": "query", "expression": 'select id, parent.name from Shot where name like "s%"'}])[0]
    assert len(r["data"]) == 5 and r["data"][0]["parent"]["name"] == "p"
    with pytest.raises(Exception, match="no attribute 'colour'"):
        fake.apply([{"action": "query", "expression": "select colour from Shot"}])


# ----------------------------------------------------------------------------- tracker frame range

def test_frame_range_from_fstart_fend_custom_attributes_read_once(world: World) -> None:
    fake = world.fake
    fake.add_custom_attribute("fstart")
    fake.add_custom_attribute("fend")
    fake.set_custom_attribute(world.sh010, "fstart", 1001.0)  # a number attribute answers a JSON number
    fake.set_custom_attribute(world.sh010, "fend", "1100")  # older servers answer text
    b = world.backend()
    assert b.frame_range(world.sequence(count=10)) == (1001, 1100)
    assert b.frame_range(world.single()) == (1001, 1100)
    queries = [op["expression"] for op in fake.actions("query") if "CustomAttributeValue" in op["expression"]]
    assert len(queries) == 1  # once per entity
    assert "configuration.key in (\"fstart\", \"fend\")" in queries[0]
    assert f'entity_id is "{world.sh010}"' in queries[0]


def test_frame_range_attribute_keys_by_setting_and_missing_values(world: World) -> None:
    fake = world.fake
    for key in ("fstart", "fend", "handle_in", "handle_out"):
        fake.add_custom_attribute(key)
    fake.set_custom_attribute(world.sh010, "fstart", 1001)
    b = world.backend(cache_ttl=0)
    assert b.frame_range(world.single()) is None  # fend not set
    assert b.frame_range(world.single(entity=Entity("Shot", "sh999"))) is None  # no such shot
    fake.set_custom_attribute(world.sh010, "handle_in", 993)
    fake.set_custom_attribute(world.sh010, "handle_out", 1108)
    assert world.backend(frame_range_attributes=["handle_in", "handle_out"]).frame_range(world.single()) == (993, 1108)
    fake.set_custom_attribute(world.sh010, "fend", "soon")
    with pytest.raises(PermanentError, match="fend is 'soon', not a frame number"):
        b.frame_range(world.single())


def test_frame_range_query_refused_in_ftracks_words(world: World) -> None:
    b = world.backend()
    b.publish(world.job(world.single()))  # project and shot looked up and cached: the next query is the values'
    world.fake.reply(200, body=refusal("PermissionError", "No read access to CustomAttributeValue."),
                     action="query")
    with pytest.raises(PermanentError, match="custom attributes fstart/fend of ftrack Shot 'sh010'.*"
                                             "PermissionError: No read access to CustomAttributeValue"):
        b.frame_range(world.single())
    assert "CustomAttributeValue" in world.fake.log[-1].ops[0]["expression"]


# ----------------------------------------------------------------------------- reads never block

def test_fifo_swapped_in_for_a_frame_is_refused_quickly(world: World) -> None:
    p = world.sequence(count=5)
    frame = p.frame_path(1003)
    os.unlink(frame)
    os.mkfifo(frame)  # nobody writes it: a blocking open or read would hang the worker
    started = time.monotonic()
    with pytest.raises(PermanentError, match="is a FIFO, not a regular file"):
        world.backend().publish(world.job(p))
    assert time.monotonic() - started < 5
    assert world.versions() == []


def test_symlink_swapped_in_for_a_file_is_not_followed(world: World) -> None:
    p = world.single(size=10)
    target = world.tmp / "elsewhere.nk"
    target.write_bytes(b"x" * 5000)
    os.unlink(p.path)
    os.symlink(target, p.path)
    with pytest.raises(PermanentError, match="is a symlink"):
        world.backend().publish(world.job(p))


def test_amend_without_journaled_ids_finds_the_component_by_version_and_name(world: World) -> None:
    p = world.sequence(count=4)
    ref = world.backend().publish(world.job(p))
    (Path(p.path % 1005)).write_bytes(b"e" * 300)  # a late frame
    later = world.sequence(count=5)
    job = Job(id=99, publish=later, amend=True, previous_id=ref.id)  # state lost: only the record id
    again = world.backend().publish(job)
    assert again.id == ref.id and len(world.versions()) == 1
    [comp] = world.components_of(ref.id)
    assert comp["size"] == later.size
    assert sorted(m["name"] for m in world.members_of(comp["id"])) == ["1001", "1002", "1003", "1004", "1005"]
    made = [op["entity_type"] for op in world.fake.actions("create") if op["entity_type"] in ("Asset", "AssetVersion")]
    assert made == ["Asset", "AssetVersion"]  # the first publish's, nothing more


# ----------------------------------------------------------------------------- versions already on the server

def test_versions_used_lists_the_assets_versions(world: World) -> None:
    fake = world.fake
    asset = fake._put("Asset", {"name": "sh010_comp", "context_id": world.sh010, "type_id": world.scene})
    other = fake._put("Asset", {"name": "sh010_other", "context_id": world.sh010, "type_id": world.scene})
    for v, a in ((1, asset), (3, asset), (7, other)):
        fake._put("AssetVersion", {"asset_id": a, "version": v, "is_published": True})
    assert world.backend().versions_used(world.single(version=5)) == {1, 3}


def test_versions_used_of_an_empty_stream_creates_nothing(world: World) -> None:
    b = world.backend()
    assert b.versions_used(world.single(version=1)) == set()
    assert b.versions_used(world.single(version=1, entity=Entity("Shot", "sh999"))) == set()  # no such Shot
    assert creates(world.fake) == []
