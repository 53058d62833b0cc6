"""ShotGrid backend against the fake site in ``tests/fake_shotgrid.py`` (a real HTTP server on
127.0.0.1 speaking the REST wire format): register_publish field parity, lookups, errors in the
server's own words, token handling, retries, outages and exactly-once."""
from __future__ import annotations

import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from pydantic import ValidationError

from tests.fake_shotgrid import ARRAY_CT, FakeShotGrid, standard_site
from watcher.errors import ConfigError, PermanentError, RetryableError
from watcher.model import Entity, Job, Publish
from watcher.publish.base import BackendContext
from watcher.publish.shotgrid import ShotGridBackend, ShotGridSettings, slug
from watcher.publish.tracker import LookupCache

KEY = "s3cret-key-value"
SHOT_DIR = "demo/sequences/sq01/sh010"


@pytest.fixture
def studio(tmp_path: Path) -> Path:
    root = tmp_path / "studio"
    (root / "demo").mkdir(parents=True)
    return root


@pytest.fixture
def fake(studio: Path):
    f = FakeShotGrid().start()
    f.seed = standard_site(f, str(studio))
    yield f
    f.stop()


@pytest.fixture
def make(fake: FakeShotGrid, studio: Path, tmp_path: Path):
    made: list[ShotGridBackend] = []

    def build(roots: dict[str, Path] | None = None, **over: Any) -> ShotGridBackend:
        values: dict[str, Any] = dict(url=fake.url, script_name="watcher", script_key=KEY, project="Demo Project",
                                      retries=3, backoff_base=0.01, backoff_cap=0.05, timeout=5)
        values.update(over)
        settings = ShotGridSettings(**{k: v for k, v in values.items() if v is not None or k in over})
        ctx = BackendContext(config_dir=tmp_path, roots=roots or {"projects": studio / "demo"})
        b = ShotGridBackend(settings, ctx)
        made.append(b)
        return b

    yield build
    for b in made:
        b.close()


def nuke_script(studio: Path, version: int = 3, shot: str = "sh010", task: str | None = "comp",
                name: str | None = None, **kw: Any) -> Publish:
    d = studio / f"demo/sequences/sq01/{shot}/comp/publish/nuke"
    d.mkdir(parents=True, exist_ok=True)
    f = d / f"{name or shot + '_comp'}_v{version:03d}.nk"
    f.write_text(f"# nuke script v{version}\n")
    values: dict[str, Any] = dict(
        key=f"projects|nuke_shot_pub|{f.name}", root="projects", root_path=str(studio / "demo"),
        template="nuke_shot_pub", path=str(f), name=name or f"{shot}_comp", publish_type="Nuke Script",
        version=version, entity=Entity("Shot", shot), task=task,
        fields={"Sequence": "sq01", "Shot": shot, "Step": "comp", "version": version}, size=f.stat().st_size,
        description=f"comp v{version}")
    values.update(kw)
    return Publish(**values)


def frame_sequence(studio: Path, count: int = 100, ext: str = "exr", version: int = 2, first: int = 1001,
                   missing: set[int] | None = None, **kw: Any) -> Publish:
    d = studio / SHOT_DIR / f"light/publish/renders/v{version:03d}"
    d.mkdir(parents=True, exist_ok=True)
    for n in range(first, first + count):
        if n not in (missing or set()):
            (d / f"sh010_beauty_v{version:03d}.{n:04d}.{ext}").write_bytes(f"frame {n}".encode())
    last = first + count - 1
    values: dict[str, Any] = dict(
        key=f"projects|render_pub|beauty|v{version}", root="projects", root_path=str(studio / "demo"),
        template="shot_render_pub", path=str(d / f"sh010_beauty_v{version:03d}.%04d.{ext}"),
        name="sh010_beauty", publish_type="Rendered Image", version=version, entity=Entity("Shot", "sh010"),
        task="light", frames=f"{first}-{last}",
        missing_frames=",".join(str(m) for m in sorted(missing)) if missing else None,
        frame_count=count - len(missing or ()), padding=4,
        fields={"Sequence": "sq01", "Shot": "sh010", "Step": "light", "version": version})
    values.update(kw)
    return Publish(**values)


def job_for(p: Publish, jid: int = 1) -> Job:
    saved: list[dict[str, Any]] = []
    job = Job(id=jid, publish=p, save_state=saved.append)
    job.saved = saved  # type: ignore[attr-defined]
    return job


def publish_until_done(backend: ShotGridBackend, job: Job, attempts: int = 60) -> Any:
    """What the publisher worker does: retry transient failures with uncertain=True."""
    for _ in range(attempts):
        try:
            return backend.publish(job)
        except RetryableError:
            job.uncertain = True
            job.attempts += 1
            time.sleep(0.01)
    raise AssertionError(f"job {job.id} never published")


def creates(fake: FakeShotGrid, etype: str = "published_files") -> list:
    return [e for e in fake.requests_to("POST", f"/entity/{etype}") if e.path.endswith(f"/entity/{etype}")]


# ---- register_publish parity ---------------------------------------------------------------------
def test_single_file_publish_has_register_publish_fields(fake, make, studio):
    backend = make(created_by=fake.seed["user"]["id"])
    p = nuke_script(studio)
    job = job_for(p)
    ref = backend.publish(job)

    [pf] = fake.records("PublishedFile")
    rel = f"{SHOT_DIR}/comp/publish/nuke/sh010_comp_v003.nk"
    assert ref.id == str(pf["id"])
    assert ref.url == f"{fake.url}/detail/PublishedFile/{pf['id']}"
    assert pf["code"] == "sh010_comp_v003.nk"
    assert pf["name"] == "sh010_comp"
    assert pf["version_number"] == 3
    assert pf["description"] == "comp v3"
    assert pf["project"] == fake.seed["project"]
    assert pf["entity"] == fake.seed["shot"]
    assert pf["task"] == fake.seed["task_comp"]
    assert pf["published_file_type"] == fake.seed["type_nuke"]
    assert pf["created_by"] == fake.seed["user"]
    assert pf["path_cache"] == rel
    assert pf["path_cache_storage"] == fake.seed["storage"]
    assert pf["path"]["link_type"] == "local"
    assert pf["path"]["relative_path"] == rel
    assert pf["path"]["local_storage"]["id"] == fake.seed["storage"]["id"]
    assert pf["path"]["local_path_linux"] == p.path
    assert pf["sg_status_list"] == "wtg"  # the site's default when tracker.status is unset
    # the job state holds the id (saved before publish returned)
    assert job.state["published_file_id"] == pf["id"]
    assert job.saved[-1]["published_file_id"] == pf["id"]
    # the create body is what register_publish sends: path as relative_path + local_storage
    [create] = creates(fake)
    assert create.body["path"] == {"relative_path": rel, "local_storage": fake.seed["storage"]}
    assert set(create.body) == {"description", "name", "task", "version_number", "created_by",
                                "published_file_type", "entity", "project", "code", "path", "path_cache",
                                "path_cache_storage"}


def test_sequence_of_100_frames(fake, make, studio):
    fake.add_field("PublishedFile", "sg_frame_range")
    backend = make(frame_range_field="sg_frame_range", status="cmpt")
    p = frame_sequence(studio, count=100)
    assert len(p.file_paths()) == 100
    backend.publish(job_for(p))

    [pf] = fake.records("PublishedFile")
    rel = f"{SHOT_DIR}/light/publish/renders/v002/sh010_beauty_v002.%04d.exr"
    assert pf["code"] == "sh010_beauty_v002.%04d.exr"
    assert pf["path_cache"] == rel and pf["path"]["relative_path"] == rel
    assert pf["sg_frame_range"] == "1001-1100"
    assert pf["sg_status_list"] == "cmpt"
    assert pf["task"] == fake.seed["task_light"]  # found by its Step short name "light"
    assert pf["published_file_type"] == fake.seed["type_render"]
    assert pf["version_number"] == 2
    assert pf["description"] is None  # register_publish sends a null comment


def test_entity_less_publish_links_the_project_and_null_task(fake, make, studio):
    backend = make()
    p = nuke_script(studio, entity=None, task=None)
    backend.publish(job_for(p))
    [pf] = fake.records("PublishedFile")
    assert pf["entity"] == fake.seed["project"]
    assert pf["task"] is None
    assert "task" in creates(fake)[0].body  # sent explicitly as null, as Toolkit does


def test_extra_fields_follow_register_publish_override_order(fake, make, studio):
    fake.add_field("PublishedFile", "sg_department")
    backend = make(extra_fields={"sg_department": "2d", "name": "overridden", "code": "ignored"})
    backend.publish(job_for(nuke_script(studio)))
    [pf] = fake.records("PublishedFile")
    assert pf["sg_department"] == "2d"
    assert pf["name"] == "overridden"  # sg_fields may override name/description/task/version_number
    assert pf["code"] == "sh010_comp_v003.nk"  # ... but not the fields assigned after them


# ---- lookups -----------------------------------------------------------------------------------
def test_project_from_template_key_by_tank_name(fake, make, studio):
    backend = make(project=None, project_key="Project")
    p = nuke_script(studio, fields={"Project": "demo", "Sequence": "sq01", "Shot": "sh010"})
    backend.publish(job_for(p))
    assert fake.records("PublishedFile")[0]["project"] == fake.seed["project"]


def test_project_by_id_and_unknown_project(fake, make, studio):
    backend = make(project=fake.seed["project"]["id"])
    backend.publish(job_for(nuke_script(studio)))
    assert fake.records("PublishedFile")[0]["project"] == fake.seed["project"]
    with pytest.raises(PermanentError, match="no Project named 'Nope'"):
        make(project="Nope").publish(job_for(nuke_script(studio, version=4)))
    with pytest.raises(PermanentError, match="no Project with id 999"):
        make(project=999).publish(job_for(nuke_script(studio, version=5)))


def test_missing_entity_fails_naming_it(fake, make, studio):
    with pytest.raises(PermanentError) as err:
        make().publish(job_for(nuke_script(studio, shot="sh999")))
    assert "no Shot 'sh999' in project 'Demo Project'" in err.value.message
    assert fake.records("PublishedFile") == []


def test_create_missing_shot_and_its_sequence(fake, make, studio):
    backend = make(create_missing_entities=True, require_task=False)
    p = nuke_script(studio, shot="sh020", fields={"Sequence": "sq02", "Shot": "sh020"})
    backend.publish(job_for(p))
    [shot] = fake.find("Shot", code="sh020")
    [seq] = fake.find("Sequence", code="sq02")
    assert shot["sg_sequence"] == {"type": "Sequence", "id": seq["id"]}
    assert shot["project"] == fake.seed["project"]
    [pf] = fake.records("PublishedFile")
    assert pf["entity"] == {"type": "Shot", "id": shot["id"]}
    assert pf["task"] is None  # no task on a new shot; require_task is off


def test_create_missing_entities_limited_to_listed_types(fake, make, studio):
    backend = make(create_missing_entities=["Asset"])
    with pytest.raises(PermanentError, match="no Shot 'sh030'"):
        backend.publish(job_for(nuke_script(studio, shot="sh030")))
    assert fake.find("Shot", code="sh030") == []


def test_missing_task_fails_naming_it(fake, make, studio):
    with pytest.raises(PermanentError) as err:
        make().publish(job_for(nuke_script(studio, task="fx")))
    assert "no Task 'fx' on Shot 'sh010'" in err.value.message


def test_unknown_entity_type_surfaces_server_words(fake, make, studio):
    p = nuke_script(studio, entity=Entity("Level", "lvl1"))
    with pytest.raises(PermanentError) as err:
        make().publish(job_for(p))
    assert "Entity type 'levels' does not exist." in err.value.message
    assert "Level 'lvl1'" in err.value.message


def test_publish_type_created_once_and_matched_case_insensitively(fake, make, studio):
    backend = make()
    backend.publish(job_for(nuke_script(studio, publish_type="Alembic Cache")))
    backend.publish(job_for(nuke_script(studio, version=4, publish_type="Alembic Cache")))
    backend.publish(job_for(nuke_script(studio, version=5, publish_type="nuke script")))
    assert len(fake.find("PublishedFileType", code="Alembic Cache")) == 1
    assert len(fake.records("PublishedFileType")) == 3
    assert fake.records("PublishedFile")[2]["published_file_type"] == fake.seed["type_nuke"]


def test_publish_type_creation_off(fake, make, studio):
    with pytest.raises(PermanentError, match="no PublishedFileType 'Alembic Cache'"):
        make(create_publish_types=False).publish(job_for(nuke_script(studio, publish_type="Alembic Cache")))
    assert fake.find("PublishedFileType", code="Alembic Cache") == []


def test_root_without_local_storage(fake, make, studio, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    f = elsewhere / "x_v001.nk"
    f.write_text("x")
    p = nuke_script(studio, root="scratch", root_path=str(elsewhere), path=str(f))
    with pytest.raises(PermanentError, match="no LocalStorage holds root 'scratch'"):
        make(roots={"scratch": elsewhere}).publish(job_for(p))


def test_deepest_storage_wins_and_explicit_mapping(fake, make, studio, tmp_path):
    fake.add("LocalStorage", code="everything", linux_path=str(tmp_path))
    deep = fake.add("LocalStorage", code="demo_only", linux_path=str(studio / "demo"))
    backend = make()
    backend.publish(job_for(nuke_script(studio)))
    pf = fake.records("PublishedFile")[0]
    assert pf["path_cache_storage"] == deep
    assert pf["path_cache"] == "sequences/sq01/sh010/comp/publish/nuke/sh010_comp_v003.nk"
    # tracker.storages pins the root to the Toolkit storage instead
    make(storages={"projects": "primary"}).publish(job_for(nuke_script(studio, version=4)))
    pf = fake.records("PublishedFile")[1]
    assert pf["path_cache_storage"] == fake.seed["storage"]
    assert pf["path_cache"].startswith("demo/sequences/")
    with pytest.raises(PermanentError, match="LocalStorage 'archive' .* has no linux_path"):
        make(storages={"projects": "archive"}).publish(job_for(nuke_script(studio, version=6)))


def test_storage_match_is_case_insensitive_and_keeps_path_case(fake, make, studio):
    fake.data["LocalStorage"][fake.seed["storage"]["id"]]["linux_path"] = str(studio).upper() + "/"
    make().publish(job_for(nuke_script(studio)))
    [pf] = fake.records("PublishedFile")
    assert pf["path_cache_storage"] == fake.seed["storage"]
    assert pf["path_cache"] == f"{SHOT_DIR}/comp/publish/nuke/sh010_comp_v003.nk"


def test_lookups_follow_pagination(fake, make, studio):
    for i in range(7):
        fake.add("LocalStorage", code=f"other{i}", linux_path=f"/mnt/other{i}")
    # re-create the Toolkit storage last, so that it is on the last page
    with fake.lock:
        rec = fake.data["LocalStorage"].pop(fake.seed["storage"]["id"])
    moved = fake.add("LocalStorage", **{k: v for k, v in rec.items() if k not in ("type", "id")})
    backend = make(page_size=2)
    backend.publish(job_for(nuke_script(studio)))
    pages = fake.requests_to("POST", "/entity/local_storages/_search")
    assert [e.body["page"] for e in pages] == [{"size": 2, "number": n} for n in range(1, 6)]  # 9 rows
    assert fake.records("PublishedFile")[0]["path_cache_storage"] == moved


# ---- errors in the server's own words ----------------------------------------------------------------
def test_validation_error_is_permanent_with_server_message(fake, make, studio):
    backend = make(extra_fields={"sg_no_such_field": "x"})
    with pytest.raises(PermanentError) as err:
        backend.publish(job_for(nuke_script(studio)))
    msg = err.value.message
    assert "API create() PublishedFile.sg_no_such_field doesn't exist." in msg
    assert "Shot 'sh010'" in msg and "task 'comp'" in msg and "type 'Nuke Script'" in msg
    assert fake.records("PublishedFile") == []


def test_bad_status_value_refused(fake, make, studio):
    with pytest.raises(PermanentError, match="status 'bogus' is not a valid value"):
        make(status="bogus").publish(job_for(nuke_script(studio)))


# ---- authentication --------------------------------------------------------------------------------
def grants(fake: FakeShotGrid) -> list[str]:
    return [e.body["grant_type"] for e in fake.requests_to("POST", "/auth/access_token")]


def test_token_is_cached_across_publishes(fake, make, studio):
    backend = make()
    for v in (1, 2, 3):
        backend.publish(job_for(nuke_script(studio, version=v)))
    assert grants(fake) == ["client_credentials"]
    assert all(e.headers.get("authorization", "").startswith("Bearer fake.")
               for e in fake.log if "/entity/" in e.path)


def test_token_refreshed_before_expiry(fake, make, studio):
    fake.token_ttl = 30
    now = [1000.0]
    backend = make()
    backend.client._clock = lambda: now[0]
    backend.publish(job_for(nuke_script(studio, version=1)))
    now[0] += 28.0  # within the last tenth of the token's life: renew before the server refuses it
    backend.publish(job_for(nuke_script(studio, version=2)))
    assert grants(fake) == ["client_credentials", "refresh_token"]
    assert not [e for e in fake.log if e.status == 401]


def test_401_renews_the_token_once(fake, make, studio):
    backend = make()
    backend.publish(job_for(nuke_script(studio, version=1)))
    fake.expire_tokens()  # the site forgot our token (expiry, restart...)
    backend.publish(job_for(nuke_script(studio, version=2)))
    assert len(fake.records("PublishedFile")) == 2
    assert len([e for e in fake.log if e.status == 401]) == 1
    assert grants(fake) == ["client_credentials", "refresh_token"]


def test_bad_script_key_is_permanent_and_secret_free(fake, make, studio, caplog):
    caplog.set_level(logging.DEBUG)
    backend = make(script_key="wrong-key-123456")
    with pytest.raises(PermanentError) as err:
        backend.publish(job_for(nuke_script(studio)))
    msg = err.value.message
    assert "refused the credentials of script 'watcher'" in msg
    assert "Can't authenticate script 'watcher'" in msg
    assert "wrong-key-123456" not in msg and "wrong-key-123456" not in caplog.text
    assert "wrong-key-123456" not in repr(backend.settings)


def test_user_login_with_password_file(fake, make, studio, tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("pa55word\n")
    backend = make(script_name=None, script_key=None, login="jdoe", password_file=pw, sudo_as_login="jdoe")
    backend.publish(job_for(nuke_script(studio)))
    assert grants(fake) == ["password"]
    [auth] = fake.requests_to("POST", "/auth/access_token")
    assert auth.body == {"grant_type": "password", "scope": "sudo_as_login:jdoe", "username": "jdoe"}
    assert fake.records("PublishedFile")[0]["created_by"] == fake.seed["user"]


def test_script_key_file_and_missing_key(fake, make, studio, tmp_path, monkeypatch):
    (tmp_path / "key").write_text(KEY + "\n")
    backend = make(script_key=None, script_key_file=Path("key"))  # relative to the config directory
    backend.publish(job_for(nuke_script(studio)))
    monkeypatch.delenv("WATCHER_TRACKER__SCRIPT_KEY", raising=False)
    with pytest.raises(ConfigError, match="WATCHER_TRACKER__SCRIPT_KEY"):
        make(script_key=None)


def test_settings_validation():
    with pytest.raises(ValidationError, match="either script_name"):
        ShotGridSettings(url="https://x.shotgrid.autodesk.com")
    with pytest.raises(ValidationError, match="either script_name"):
        ShotGridSettings(url="https://x.shotgrid.autodesk.com", script_name="a", login="b")
    with pytest.raises(ValidationError, match="site URL"):
        ShotGridSettings(url="x.shotgrid.autodesk.com", script_name="a")
    with pytest.raises(ValidationError, match="Extra inputs"):
        ShotGridSettings(url="https://x.shotgrid.autodesk.com", script_name="a", scrip_key="typo")
    s = ShotGridSettings(url="https://x.shotgrid.autodesk.com/api/v1/", script_name="a", script_key="zzz-secret",
                         project="123")
    assert s.url == "https://x.shotgrid.autodesk.com"
    assert s.project == 123  # an id given as text (environment override)
    assert "zzz-secret" not in repr(s) and "zzz-secret" not in str(s.model_dump())


# ---- transient errors, outages, exactly once -----------------------------------------------------------
def test_429_retry_after_is_honoured(fake, make, studio):
    backend = make(backoff_cap=2.0)
    fake.reply(429, count=2, retry_after=0.25, path="/_search$")
    t0 = time.monotonic()
    backend.publish(job_for(nuke_script(studio)))
    assert time.monotonic() - t0 >= 0.5
    assert len([e for e in fake.log if e.status == 429]) == 2
    assert len(fake.records("PublishedFile")) == 1


def test_5xx_on_reads_is_retried_transparently(fake, make, studio):
    backend = make()
    fake.reply(503, count=3, method="POST", path="/_search$")
    backend.publish(job_for(nuke_script(studio)))
    assert len(fake.records("PublishedFile")) == 1


def test_create_is_never_retried_blindly(fake, make, studio):
    backend = make()
    fake.reply(500, method="POST", path="/entity/published_files$")
    job = job_for(nuke_script(studio))
    with pytest.raises(RetryableError):
        backend.publish(job)
    assert len(creates(fake)) == 1 and fake.records("PublishedFile") == []
    assert job.state == {"publish_sent": True}
    job.uncertain = True
    backend.publish(job)  # searches, finds nothing, creates
    assert len(fake.records("PublishedFile")) == 1
    # the folder listing before the first create (adoption), then the probe after the uncertain outcome
    assert len(fake.requests_to("POST", "/entity/published_files/_search")) == 2


def test_lost_response_does_not_duplicate(fake, make, studio):
    backend = make()
    fake.drop_after_apply(method="POST", path="/entity/published_files$")
    job = job_for(nuke_script(studio))
    with pytest.raises(RetryableError):
        backend.publish(job)
    [landed] = fake.records("PublishedFile")  # the request landed; its answer was lost
    job.uncertain = True
    ref = backend.publish(job)
    assert ref.id == str(landed["id"])
    assert len(fake.records("PublishedFile")) == 1
    assert len(creates(fake)) == 1
    assert job.state["published_file_id"] == landed["id"]


def test_crash_after_create_uses_remembered_id(fake, make, studio):
    backend = make()
    job = job_for(nuke_script(studio))
    backend.publish(job)
    restarted = Job(id=job.id, publish=job.publish, uncertain=True, state=dict(job.saved[-1]))
    assert make().publish(restarted).id == str(fake.records("PublishedFile")[0]["id"])
    assert len(creates(fake)) == 1


def test_uncertain_retry_matches_path_and_version_only(fake, make, studio):
    backend = make()
    backend.publish(job_for(nuke_script(studio, version=7)))
    other = job_for(nuke_script(studio, version=8), 2)  # another version: the probe must not adopt v7
    other.uncertain = True
    backend.publish(other)
    same = job_for(nuke_script(studio, version=7), 3)  # same path and version: adopted, not duplicated
    same.uncertain = True
    ref = backend.publish(same)
    records = fake.records("PublishedFile")
    assert [r["version_number"] for r in records] == [7, 8]
    assert ref.id == str(records[0]["id"])


def test_outage_in_the_middle_of_a_burst_loses_and_duplicates_nothing(fake, make, studio):
    backend = make()
    jobs = [job_for(nuke_script(studio, version=v, name=f"sh010_burst{v:02d}"), jid=v) for v in range(1, 21)]
    for job in jobs[:5]:
        publish_until_done(backend, job)
    fake.drop_after_apply(count=2, method="POST", path="/entity/published_files$")  # answers lost
    for job in jobs[5:8]:
        publish_until_done(backend, job)
    fake.reply(503, count=12, retry_after=0)  # everything 503 for a while
    for job in jobs[8:11]:
        publish_until_done(backend, job)
    fake.pause()  # connection refused
    with pytest.raises(RetryableError, match="cannot connect"):
        backend.publish(jobs[11])
    jobs[11].uncertain = True
    fake.resume()
    fake.drop(count=2, method="POST", path="/entity/published_files$")  # dropped before processing
    for job in jobs[11:]:
        publish_until_done(backend, job)

    records = fake.records("PublishedFile")
    assert len(records) == 20
    assert sorted(r["version_number"] for r in records) == list(range(1, 21))
    assert len({r["path_cache"] for r in records}) == 20
    for job in jobs:
        assert job.state["published_file_id"] in {r["id"] for r in records}


def test_concurrent_publishes_create_shared_things_once(fake, make, studio):
    backend = make(create_missing_entities=True, require_task=False)
    pubs = [nuke_script(studio, version=v, shot=f"sh{100 + v % 3}", publish_type="Comp Script",
                        fields={"Sequence": "sq09"}) for v in range(1, 13)]
    errors: list[BaseException] = []

    def run(chunk: list[Publish]) -> None:
        try:
            for i, p in enumerate(chunk):
                publish_until_done(backend, job_for(p, i))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(pubs[i::4],)) for i in range(4)]
    fake.slow(0.005, count=None)  # every request, until the end of the test
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert len(fake.records("PublishedFile")) == 12
    assert len(fake.find("PublishedFileType", code="Comp Script")) == 1
    assert sorted(s["code"] for s in fake.records("Shot") if s["code"].startswith("sh1")) == ["sh100", "sh101", "sh102"]
    assert len(fake.find("Sequence", code="sq09")) == 1


# ---- Version for review, thumbnails --------------------------------------------------------------------
def test_version_for_review(fake, make, studio):
    backend = make(version_for_review=True, created_by=fake.seed["user"]["id"], version_status="rev")
    p = frame_sequence(studio, count=100, missing={1050})
    job = job_for(p)
    backend.publish(job)
    [pf] = fake.records("PublishedFile")
    [v] = fake.records("Version")
    assert v["code"] == "sh010_beauty_v002"
    assert v["sg_path_to_frames"] == p.path
    assert (v["sg_first_frame"], v["sg_last_frame"], v["frame_count"]) == (1001, 1100, 100)
    assert v["frame_range"] == "1001-1100"
    assert v["published_files"] == [{"type": "PublishedFile", "id": pf["id"]}]
    assert v["entity"] == fake.seed["shot"] and v["sg_task"] == fake.seed["task_light"]
    assert v["project"] == fake.seed["project"]
    assert v["user"] == fake.seed["user"] and v["created_by"] == fake.seed["user"]
    assert v["sg_status_list"] == "rev"
    assert pf["version"] == {"type": "Version", "id": v["id"]}  # the reverse link
    assert job.state["version_id"] == v["id"]


def test_version_not_made_for_non_review_files(fake, make, studio):
    make(version_for_review=True).publish(job_for(nuke_script(studio)))
    assert fake.records("Version") == []


def test_version_lost_response_does_not_duplicate(fake, make, studio):
    backend = make(version_for_review=True)
    fake.drop_after_apply(method="POST", path="/entity/versions$")
    job = job_for(frame_sequence(studio, count=10))
    with pytest.raises(RetryableError):
        backend.publish(job)
    job.uncertain = True
    backend.publish(job)
    assert len(fake.records("Version")) == 1
    assert len(fake.records("PublishedFile")) == 1


def test_thumbnail_from_middle_frame(fake, make, studio):
    backend = make(thumbnail=True, version_for_review=True)
    p = frame_sequence(studio, count=5, ext="jpg")
    job = job_for(p)
    backend.publish(job)
    pf = fake.records("PublishedFile")[0]
    v = fake.records("Version")[0]
    assert fake.thumbnails[("PublishedFile", pf["id"])] == b"frame 1003"
    assert fake.thumbnails[("Version", v["id"])] == b"frame 1003"
    assert pf["image"].endswith("thumbnail_pending.png")
    assert job.state["thumbnail_done"] is True
    # the presigned PUT carries no bearer token
    [put] = [e for e in fake.log if e.method == "PUT" and e.path.startswith("/fake_s3/")][:1]
    assert "authorization" not in put.headers


def test_thumbnail_command_and_its_failure(fake, make, studio, caplog):
    cmd = [sys.executable, "-c", "import shutil, sys; shutil.copy(sys.argv[1], sys.argv[2])", "{input}", "{output}"]
    make(thumbnail=True, thumbnail_command=cmd).publish(job_for(frame_sequence(studio, count=9)))
    pf = fake.records("PublishedFile")[0]
    assert fake.thumbnails[("PublishedFile", pf["id"])] == b"frame 1005"
    bad = [sys.executable, "-c", "import sys; sys.exit('no converter')"]
    make(thumbnail=True, thumbnail_command=bad).publish(job_for(frame_sequence(studio, count=3, version=3)))
    assert len(fake.records("PublishedFile")) == 2 and len(fake.thumbnails) == 1
    assert "no converter" in caplog.text


def test_exr_without_command_gets_no_thumbnail(fake, make, studio):
    make(thumbnail=True).publish(job_for(frame_sequence(studio, count=3)))
    assert fake.thumbnails == {} and not fake.requests_to("GET", "/_upload")


# ---- watcher check --------------------------------------------------------------------------------------
def by_what(results) -> dict[str, Any]:
    return {r.what: r for r in results}


def test_check_all_good(fake, make, studio):
    fake.add_field("PublishedFile", "sg_frame_range")
    backend = make(publish_types=["Rendered Image", "Alembic Cache"], created_by=fake.seed["user"]["id"],
                   frame_range_field="sg_frame_range", version_for_review=True)
    results = by_what(backend.check())
    assert all(r.ok for r in results.values()), [str(r) for r in results.values()]
    assert "script 'watcher'" in results["credentials"].detail
    assert "tank_name 'demo'" in results["project"].detail
    assert results["publish type 'Rendered Image'"].detail == f"id {fake.seed['type_render']['id']}"
    assert "will be created" in results["publish type 'Alembic Cache'"].detail
    assert "LocalStorage 'primary'" in results["local storage for root 'projects'"].detail
    assert "path_cache starts 'demo/...'" in results["local storage for root 'projects'"].detail
    assert "Jane Doe" in results[f"created_by HumanUser {fake.seed['user']['id']}"].detail
    assert fake.find("PublishedFileType", code="Alembic Cache") == []  # check creates nothing


def test_check_says_exactly_what_is_wrong(fake, make, studio, tmp_path):
    backend = make(roots={"projects": studio / "demo", "scratch": tmp_path / "nowhere"}, project="Nope",
                   publish_types=["Alembic Cache"], create_publish_types=False, created_by=9999,
                   frame_range_field="sg_nope")
    results = by_what(backend.check())
    assert results["credentials"].ok
    assert not results["project"].ok and "no Project named 'Nope'" in results["project"].detail
    assert not results["publish type 'Alembic Cache'"].ok
    assert results["local storage for root 'projects'"].ok
    bad_root = results["local storage for root 'scratch'"]
    assert not bad_root.ok and "no LocalStorage holds root 'scratch'" in bad_root.detail
    assert "primary" in bad_root.detail  # lists what the site has
    assert not results["created_by HumanUser 9999"].ok
    assert not results["field PublishedFile.sg_nope"].ok


def test_check_bad_credentials_and_context_publish_types(fake, make, studio):
    results = make(script_key="nope-nope").check()
    assert len(results) == 1 and not results[0].ok and "Can't authenticate script" in results[0].detail
    backend = make(create_publish_types=False)
    backend.context.publish_types = ["Nuke Script", "Movie"]  # type: ignore[attr-defined]
    results = by_what(backend.check())
    assert results["publish type 'Nuke Script'"].ok and not results["publish type 'Movie'"].ok


def test_check_when_site_is_down(fake, make):
    fake.pause()
    try:
        results = make(retries=0).check()
    finally:
        fake.resume()
    assert len(results) == 1 and not results[0].ok and "cannot connect" in results[0].detail


# ---- helpers and the fake's own fidelity -----------------------------------------------------------------
def test_slug_and_cache():
    assert slug("PublishedFile") == "published_files"
    assert slug("LocalStorage") == "local_storages"
    assert slug("CustomEntity01") == "custom_entity01s"
    assert slug("Delivery") == "deliveries"
    now = [0.0]
    c = LookupCache(10, clock=lambda: now[0])
    c.put("k", {"id": 1})
    c.put("miss", None)
    assert c.get("k") == {"id": 1} and c.get("miss") is None
    now[0] = 11
    assert c.get("k") is None


class RawClient:
    def __init__(self, fake: FakeShotGrid) -> None:
        self.base = fake.url + "/api/v1"
        tok = requests.post(self.base + "/auth/access_token", timeout=5, data={
            "grant_type": "client_credentials", "client_id": "watcher", "client_secret": KEY}).json()
        self.h = {"Authorization": f"Bearer {tok['access_token']}"}

    def post(self, path: str, body: Any, ctype: str = "application/json") -> requests.Response:
        import json as _json
        return requests.post(self.base + path, data=_json.dumps(body), timeout=5,
                             headers={**self.h, "Content-Type": ctype})


def test_fake_enforces_the_wire_format(fake):
    c = RawClient(fake)
    p = fake.seed["project"]
    r = c.post("/entity/published_files", {"project": p, "entity": 5})
    assert r.status_code == 400 and "expected [Hash" in r.json()["errors"][0]["title"]
    r = c.post("/entity/published_files", {"project": p, "sg_bogus": 1})
    assert r.status_code == 400 and "doesn't exist" in r.json()["errors"][0]["title"]
    r = c.post("/entity/shots", {"code": "x"})
    assert r.status_code == 400 and "missing 'project'" in r.json()["errors"][0]["title"]
    r = c.post("/entity/published_files", {"project": p, "path": "/studio/x.ma"})
    assert r.status_code == 400 and "but got String" in r.json()["errors"][0]["title"]
    r = c.post("/entity/published_files", {"project": p, "path": {"relative_path": "a\\b.ma",
                                                                  "local_storage": fake.seed["storage"]}})
    assert r.status_code == 400
    r = c.post("/entity/published_files", {"project": p, "path": {"relative_path": "a/b.ma"}})
    assert r.status_code == 400 and "invalid/missing url hash" in r.json()["errors"][0]["title"]
    r = c.post("/entity/published_files/_search", {"filters": []})
    assert r.status_code == 415 and ARRAY_CT in r.json()["errors"][0]["source"]["content_type"]
    r = c.post("/entity/published_files/_search", {"filters": [["path_cache", "bogus_op", "x"]]}, ARRAY_CT)
    assert r.status_code == 400 and "Invalid operator" in str(r.json()["errors"][0]["source"])
    r = c.post("/entity/published_files/_search", {"filters": [["entity", "is", 5]]}, ARRAY_CT)
    assert r.status_code == 400
    r = c.post("/entity/publishedfiles/_search", {"filters": []}, ARRAY_CT)
    assert r.status_code == 404 and r.json()["errors"][0]["detail"] == "Entity type 'publishedfiles' does not exist."
    r = requests.get(fake.url + "/api/v1/entity/projects", timeout=5)
    assert r.status_code == 401 and set(r.json()["errors"][0]) == {"id", "status", "code", "title", "detail",
                                                                     "source", "meta"}
    r = requests.post(fake.url + "/api/v1/auth/access_token", json={"grant_type": "client_credentials"}, timeout=5)
    assert r.status_code == 400
    # local_path resolves the storage; path_cache is never filled by the server
    r = c.post("/entity/PublishedFile", {"project": p, "code": "x.ma",
                                         "path": {"local_path": fake.data["LocalStorage"][fake.seed["storage"]["id"]]
                                                  ["linux_path"] + "/demo/x.ma"}})
    assert r.status_code == 201
    rec = r.json()["data"]
    assert rec["attributes"]["path"]["relative_path"] == "demo/x.ma"
    assert rec["attributes"].get("path_cache") is None
    assert rec["relationships"]["path_cache_storage"]["data"]["id"] == fake.seed["storage"]["id"]
    # an empty page still has links; text filters are case-insensitive
    r = c.post("/entity/projects/_search", {"filters": [["name", "is", "DEMO PROJECT"]], "fields": ["name"],
                                            "page": {"size": 1, "number": 2}}, ARRAY_CT)
    assert r.json()["data"] == [] and "next" in r.json()["links"]
    r = c.post("/entity/projects/_search", {"filters": [["name", "is", "DEMO PROJECT"]], "fields": ["name"]}, ARRAY_CT)
    assert [d["id"] for d in r.json()["data"]] == [p["id"]]


# ---- tracker frame range (expect_frames: tracker) -------------------------------------------------

def test_frame_range_from_the_shots_cut_in_and_out_read_once(fake, make, studio):
    fake.update("Shot", fake.seed["shot"]["id"], {"sg_cut_in": 1001, "sg_cut_out": 1100})
    b = make()
    p = frame_sequence(studio, count=10)
    assert b.frame_range(p) == (1001, 1100)
    assert b.frame_range(nuke_script(studio)) == (1001, 1100)  # another publish of the same shot
    reads = fake.requests_to("GET", f"/entity/shots/{fake.seed['shot']['id']}")
    assert len(reads) == 1  # looked up once per entity (cache_ttl)
    assert reads[0].query["fields"] == ["sg_cut_in,sg_cut_out"]


def test_frame_range_head_and_tail_fields_by_setting(fake, make, studio):
    fake.add_field("Shot", "sg_head_in", "number")
    fake.add_field("Shot", "sg_tail_out", "number")
    fake.update("Shot", fake.seed["shot"]["id"], {"sg_cut_in": 1009, "sg_cut_out": 1090,
                                                  "sg_head_in": 993, "sg_tail_out": 1106})
    assert make(frame_range_fields=["sg_head_in", "sg_tail_out"]).frame_range(nuke_script(studio)) == (993, 1106)
    assert make().frame_range(nuke_script(studio)) == (1009, 1090)


def test_frame_range_missing_values_or_shot_is_none(fake, make, studio):
    fake.update("Shot", fake.seed["shot"]["id"], {"sg_cut_in": 1001})  # no cut out
    b = make(cache_ttl=0)
    assert b.frame_range(nuke_script(studio)) is None
    assert b.frame_range(nuke_script(studio, shot="sh999")) is None  # no such shot: nothing created
    assert fake.find("Shot", code="sh999") == []
    assert b.frame_range(nuke_script(studio, entity=None)) is None
    fake.update("Shot", fake.seed["shot"]["id"], {"sg_cut_out": 1050})
    assert b.frame_range(nuke_script(studio)) == (1001, 1050)  # cache_ttl 0: read again


def test_frame_range_refusal_is_permanent_in_shotgrids_words(fake, make, studio):
    b = make()
    fake.reply(403, method="GET", path=r"/entity/shots/\d+$",
               body={"errors": [{"status": 403, "title": "Permission denied", "detail": "no read access to Shot"}]})
    with pytest.raises(PermanentError, match="sg_cut_in/sg_cut_out of Shot 'sh010'.*no read access to Shot"):
        b.frame_range(nuke_script(studio))


# ---- amend (a late write, republish: update) -------------------------------------------------------

def test_amend_updates_the_published_file_and_its_review_version(fake, make, studio):
    fake.add_field("PublishedFile", "sg_frame_range", "text")
    b = make(frame_range_field="sg_frame_range", version_for_review=True)
    p = frame_sequence(studio, count=10, missing={1005})
    job = job_for(p)
    ref = b.publish(job)
    state = dict(job.saved[-1])
    # the late frames land: 1005 and 1011-1020
    later = frame_sequence(studio, count=20, description="the whole shot")
    amend = Job(id=1, publish=later, state=state, amend=True, previous_id=ref.id)
    again = make(frame_range_field="sg_frame_range", version_for_review=True).publish(amend)
    assert again.id == ref.id
    [pf] = fake.records("PublishedFile")
    assert (pf["sg_frame_range"], pf["description"]) == ("1001-1020", "the whole shot")
    assert (pf["path_cache"], pf["version_number"]) == (p.path[len(str(studio)) + 1:], 2)
    [version] = fake.records("Version")
    assert (version["sg_first_frame"], version["sg_last_frame"], version["frame_count"],
            version["frame_range"]) == (1001, 1020, 20, "1001-1020")
    assert len(creates(fake, "published_files")) == 1 and len(creates(fake, "versions")) == 1


# ---- versions already on the tracker (republish: new_version) ---------------------------------------
def test_versions_used_lists_the_streams_version_numbers(fake, make, studio):
    ids, b = fake.seed, make()
    for v, name in ((1, "sh010_comp"), (3, "sh010_comp"), (7, "sh010_other")):
        fake.add("PublishedFile", project=ids["project"], entity=ids["shot"], name=name,
                 published_file_type=ids["type_nuke"], version_number=v, code=f"{name}_v{v:03d}.nk")
    fake.add("PublishedFile", project=ids["project"], entity=ids["shot"], name="sh010_comp",
             published_file_type=ids["type_render"], version_number=9, code="sh010_comp_v009.exr")
    assert b.versions_used(nuke_script(studio, version=5)) == {1, 3}
    searches = fake.requests_to("POST", "/entity/published_files/_search")
    assert len(searches) == 1


def test_versions_used_of_an_empty_stream_creates_nothing(fake, make, studio):
    b = make(create_missing_entities=True, create_publish_types=True)
    assert b.versions_used(nuke_script(studio, version=1)) == set()
    assert b.versions_used(nuke_script(studio, version=1, shot="sh999")) == set()  # no such Shot
    assert b.versions_used(nuke_script(studio, version=1, publish_type="Brand New Type")) == set()
    made = [r for r in fake.log if r.method == "POST" and "/entity/" in r.path and not r.path.endswith("/_search")]
    assert made == []
