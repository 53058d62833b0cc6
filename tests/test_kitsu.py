"""The Kitsu backend against a REAL Zou server (tests/zou_server.py starts it once per run and
resets its database before each test). Every assertion reads the server's own records back."""
from __future__ import annotations

import dataclasses
import hashlib
import threading
import time
from pathlib import Path

import pytest
from pydantic import SecretStr

from tests.fake_kitsu import nuke_script, picture_sequence, render_sequence
from tests.zou_server import (PROJECT, USER_EMAIL, USER_PASSWORD, LossyProxy, ZouServer,  # noqa: F401
                              zou, zou_server)
from watcher.errors import PermanentError, RetryableError
from watcher.journal.base import Status
from watcher.journal.sqlite import SqliteJournal
from watcher.model import Entity, Job
from watcher.publish.base import BackendContext
from watcher.publish.kitsu import KitsuBackend, KitsuSettings
from watcher.publish.workers import Publishers

pytestmark = [pytest.mark.kitsu, pytest.mark.linux_only, pytest.mark.timeout(600)]  # the first test may install Zou (~90 s)


def settings(zou: ZouServer, **over) -> KitsuSettings:
    base = dict(url=zou.url, token=SecretStr(zou.bot_token), project=PROJECT,
                task_types={"comp": "Compositing", "lgt": "Lighting", "anim": "Animation", "model": "Modeling"},
                output_types={"exr": "EXR", "nk": "Nuke", "png": "Image", "abc": "Cache"},
                retries=1, backoff_base=0.01, timeout=15)
    base.update(over)
    return KitsuSettings(**base)


def backend(zou: ZouServer, tmp_path: Path, **over) -> KitsuBackend:
    return KitsuBackend(settings(zou, **over), BackendContext(config_dir=tmp_path, roots={}))


def task_of(zou: ZouServer, entity_id: str, task_type: str) -> dict:
    rows = zou.api("GET", "/data/tasks", params={"entity_id": entity_id,
                                                  "task_type_id": zou.seed["task_types"][task_type]})
    assert len(rows) == 1
    return rows[0]


def comments_of(zou: ZouServer, task_id: str) -> list[dict]:
    return zou.api("GET", f"/data/tasks/{task_id}/comments")


# ---- publishing ---------------------------------------------------------------------------------

def test_single_nuke_script_becomes_an_output_file(zou, tmp_path):
    p = nuke_script(tmp_path, shot="SH010", version=3)
    b = backend(zou, tmp_path)
    job = Job(id=1, publish=p)
    ref = b.publish(job)

    shot = zou.seed["shots"]["SH010"]
    [of] = zou.output_files(shot)
    assert ref.id == of["id"] and job.state["output_file_id"] == of["id"]
    assert ref.url.endswith(f"/productions/{zou.seed['project']['id']}/shots/{shot}")
    assert of["task_type_id"] == zou.seed["task_types"]["Compositing"]
    out_type = zou.api("GET", f"/data/output-types/{of['output_type_id']}")
    assert out_type["name"] == "Nuke"  # created on the fly (create_output_types default)
    assert (of["name"], of["revision"], of["representation"], of["extension"], of["nb_elements"]) == \
        ("sh010_comp", 3, "nk", ".nk", 1)
    assert of["path"] == p.path
    assert of["size"] == p.size == Path(p.path).stat().st_size
    assert of["checksum"] == hashlib.md5(Path(p.path).read_bytes()).hexdigest()
    assert of["data"]["watcher_key"] == p.key and of["data"]["source"] == "watcher"
    task = task_of(zou, shot, "Compositing")
    assert of["data"]["task_id"] == task["id"]
    [c] = comments_of(zou, task["id"])  # visible on the task in Kitsu
    assert p.path in c["text"] and "v3" in c["text"]
    assert c["task_status_id"] == task["task_status_id"]  # a plain publish leaves the status alone


def test_48_frame_exr_sequence(zou, tmp_path):
    p = render_sequence(tmp_path, shot="SH020", first=1001, count=48, version=7)
    b = backend(zou, tmp_path)
    b.publish(Job(id=1, publish=p))
    [of] = zou.output_files(zou.seed["shots"]["SH020"])
    assert (of["name"], of["revision"], of["representation"], of["nb_elements"]) == ("beauty", 7, "exr", 48)
    assert of["path"].endswith("beauty.%04d.exr")
    assert of["data"]["frames"] == "1001-1048" and of["data"]["frame_in"] == 1001 and of["data"]["frame_out"] == 1048
    assert of["data"]["missing_frames"] is None and of["data"]["padding"] == 4
    assert of["size"] == p.size == sum(Path(f).stat().st_size for f in p.file_paths())
    md5 = hashlib.md5(b"".join(Path(f).read_bytes() for f in p.file_paths())).hexdigest()
    assert of["checksum"] == md5


def test_sequence_with_holes_records_missing_frames(zou, tmp_path):
    p = render_sequence(tmp_path, shot="SH010", first=1, count=100, version=1, holes=(50, 51, 77))
    backend(zou, tmp_path).publish(Job(id=1, publish=p))
    [of] = zou.output_files(zou.seed["shots"]["SH010"])
    assert of["nb_elements"] == 97
    assert of["data"]["frames"] == "1-100" and of["data"]["missing_frames"] == "50-51,77"


def test_asset_publish_within_its_asset_type(zou, tmp_path):
    p = nuke_script(tmp_path, shot=None, version=2, entity=Entity("Asset", "hero"), task="model",
                    fields={"AssetType": "Character", "Asset": "hero"}, ext="abc", name="hero_geo")
    backend(zou, tmp_path).publish(Job(id=1, publish=p))
    [of] = zou.output_files(zou.seed["assets"]["Hero"])
    assert of["task_type_id"] == zou.seed["task_types"]["Modeling"]
    assert (of["representation"], of["revision"]) == ("abc", 2)


def test_sequence_entity_with_task_created(zou, tmp_path):
    """Publishing on a Sequence (Zou's stock tree breaks there, ours does not) and creating the
    missing task through the generic create-tasks route."""
    p = nuke_script(tmp_path, shot=None, version=1, entity=Entity("Sequence", "sq02"), name="sq02_edit",
                    fields={"Sequence": "sq02"})
    backend(zou, tmp_path, create_missing_entities=True).publish(Job(id=1, publish=p))
    seq = zou.seed["sequences"]["SQ02"]
    [of] = zou.output_files(seq)
    assert (of["name"], of["revision"], of["representation"]) == ("sq02_edit", 1, "nk")
    assert task_of(zou, seq, "Compositing")["entity_id"] == seq


def test_working_file_links_the_output_to_the_task(zou, tmp_path):
    p = nuke_script(tmp_path, version=6)
    job = Job(id=1, publish=p)
    backend(zou, tmp_path, working_file=True).publish(job)
    [of] = zou.output_files(zou.seed["shots"]["SH010"])
    task = task_of(zou, zou.seed["shots"]["SH010"], "Compositing")
    [wf] = zou.api("GET", f"/data/tasks/{task['id']}/working-files")
    assert of["source_file_id"] == wf["id"] and (wf["name"], wf["revision"]) == ("sh010_comp", 6)
    backend(zou, tmp_path, working_file=True).publish(Job(id=1, publish=p, uncertain=True))
    assert len(zou.api("GET", f"/data/tasks/{task['id']}/working-files")) == 1


def test_uncertain_retry_finds_the_record(zou, tmp_path):
    p = nuke_script(tmp_path, version=4)
    b = backend(zou, tmp_path)
    first = b.publish(Job(id=1, publish=p))
    # a new agent start with an empty state, told the outcome is unknown
    again = backend(zou, tmp_path).publish(Job(id=1, publish=p, uncertain=True, attempts=1))
    assert again.id == first.id
    assert len(zou.output_files(zou.seed["shots"]["SH010"])) == 1
    assert len(comments_of(zou, task_of(zou, zou.seed["shots"]["SH010"], "Compositing")["id"])) == 1


def test_lost_create_answer_is_found_not_duplicated(zou, tmp_path):
    proxy = LossyProxy(zou.url).start()
    try:
        proxy.drop_after_apply(method="POST", path=r"/output-files/new$")
        proxy.drop_after_apply(method="POST", path=r"/actions/tasks/[^/]+/comment$")
        p = nuke_script(tmp_path, version=5)
        b = backend(zou, tmp_path, url=proxy.url)
        job = Job(id=1, publish=p)
        # the create landed but its answer was lost: found by the follow-up lookup; then the
        # comment's answer is lost too: unknown outcome -> RetryableError
        with pytest.raises(RetryableError):
            b.publish(job)
        assert proxy.lost() == 2
        job.uncertain, job.attempts = True, 1
        ref = b.publish(job)
    finally:
        proxy.stop()
    [of] = zou.output_files(zou.seed["shots"]["SH010"])
    assert ref.id == of["id"] and of["path"] == p.path
    assert len(comments_of(zou, task_of(zou, zou.seed["shots"]["SH010"], "Compositing")["id"])) == 1


def test_concurrent_publishes_of_one_key_create_one_record(zou, tmp_path):
    """Zou checks duplicates only in Python (two gunicorn workers here): the workers'
    serialisation per ``serialize_key`` is what keeps this at one record. Six journal rows
    publish the same file (same revision and path, so each finds the one before it) through six
    real workers."""
    p = render_sequence(tmp_path, shot="SH010", count=3, version=7)
    b = backend(zou, tmp_path, comment=False)
    journal = SqliteJournal(f"sqlite:///{tmp_path}/journal.db")
    for i in range(6):
        journal.add(dataclasses.replace(p, key=f"{p.key}#{i}"), [])
    workers = Publishers(journal, b, "test", workers=6)
    workers.start()
    deadline = time.monotonic() + 60
    while journal.counts()["published"] + journal.counts()["failed"] < 6 and time.monotonic() < deadline:
        time.sleep(0.05)
    workers.stop(grace=5)
    rows = journal.rows()
    journal.close()
    assert [r.status for r in rows] == [Status.PUBLISHED] * 6, [r.last_error for r in rows]
    files = zou.output_files(zou.seed["shots"]["SH010"])
    assert len(files) == 1 and {r.tracker_id for r in rows} == {files[0]["id"]}


def test_serialize_key_groups_the_server_uniqueness_key(zou, tmp_path):
    b = backend(zou, tmp_path)
    a1 = nuke_script(tmp_path / "a", version=1)
    a2 = nuke_script(tmp_path / "b", version=2)  # another revision of the same name: same key
    other = nuke_script(tmp_path / "c", version=1, name="other")
    assert b.serialize_key(Job(1, a1)) == b.serialize_key(Job(2, a2))
    assert b.serialize_key(Job(1, a1)) != b.serialize_key(Job(3, other))


def test_outage_mid_burst_then_every_file_once(zou, tmp_path):
    pubs = [nuke_script(tmp_path / f"f{i}", version=1, name=f"script{i:02d}") for i in range(8)]
    b = backend(zou, tmp_path, retries=0)
    jobs = [Job(id=i, publish=p) for i, p in enumerate(pubs)]
    for job in jobs[:3]:
        b.publish(job)
    zou.stop_api()
    try:
        for job in jobs[3:]:
            with pytest.raises(RetryableError, match="cannot connect"):
                b.publish(job)
            job.uncertain, job.attempts = True, job.attempts + 1
    finally:
        zou.start_api()
    for job in jobs:  # the pipeline re-runs what failed; re-running the rest is harmless too
        job.uncertain = True
        b.publish(job)
    rows = zou.output_files(zou.seed["shots"]["SH010"])
    assert sorted(r["name"] for r in rows) == [f"script{i:02d}" for i in range(8)]
    comments = comments_of(zou, task_of(zou, zou.seed["shots"]["SH010"], "Compositing")["id"])
    assert len(comments) == 8


# ---- missing things ---------------------------------------------------------------------------------

def test_missing_shot_fails_then_publishes_once_created(zou, tmp_path):
    p = nuke_script(tmp_path, shot="SH099", version=1)
    b = backend(zou, tmp_path)
    with pytest.raises(PermanentError, match=r"Shot SQ01/SH099 not found in Kitsu project 'Watcher Test'"):
        b.publish(Job(id=1, publish=p))
    shot = zou.create_shot(zou.seed["project"]["id"], zou.seed["sequences"]["SQ01"], "SH099")
    zou.create_tasks(zou.seed["project"]["id"], zou.seed["task_types"]["Compositing"], "shots", [shot["id"]])
    ref = b.publish(Job(id=1, publish=p, attempts=1))  # `watcher retry`
    [of] = zou.output_files(shot["id"])
    assert of["id"] == ref.id


def test_missing_task_type_names_it(zou, tmp_path):
    p = nuke_script(tmp_path, version=1, task="paint")
    with pytest.raises(PermanentError, match=r"task type 'paint' not found in Kitsu \(known: .*Compositing"):
        backend(zou, tmp_path).publish(Job(id=1, publish=p))


def test_missing_task_on_entity_names_it(zou, tmp_path):
    p = nuke_script(tmp_path, version=1, task="Rendering")  # a real task type, no task on the shot
    with pytest.raises(PermanentError, match=r"task 'Rendering' on Shot SQ01/SH010 not found"):
        backend(zou, tmp_path).publish(Job(id=1, publish=p))


def test_create_missing_entities(zou, tmp_path):
    p = nuke_script(tmp_path, shot="SH900", sequence="SQ09", version=1)
    b = backend(zou, tmp_path, create_missing_entities=True)
    b.publish(Job(id=1, publish=p))
    pid = zou.seed["project"]["id"]
    [seq] = zou.api("GET", "/data/sequences", params={"project_id": pid, "name": "SQ09"})
    [shot] = zou.api("GET", "/data/shots", params={"project_id": pid, "name": "SH900"})
    assert shot["parent_id"] == seq["id"]
    assert task_of(zou, shot["id"], "Compositing")
    assert len(zou.output_files(shot["id"])) == 1
    # the other shots did not get a task (an empty id list would have made one everywhere)
    assert len(zou.api("GET", "/data/tasks", params={"task_type_id": zou.seed["task_types"]["Compositing"]})) == 4


def test_output_type_not_created_when_disabled(zou, tmp_path):
    p = nuke_script(tmp_path, version=1)
    b = backend(zou, tmp_path, create_output_types=False)
    with pytest.raises(PermanentError, match=r"output type 'Nuke' not found in Kitsu and tracker.create_output_types"):
        b.publish(Job(id=1, publish=p))
    assert zou.api("GET", "/data/output-types") == []


def test_project_without_file_tree_refused_without_orphans(zou, tmp_path):
    proj = zou.api("POST", "/data/projects", {"name": "No Tree", "production_type": "short"})
    seq = zou.create_sequence(proj["id"], "SQ01")
    shot = zou.create_shot(proj["id"], seq["id"], "SH010")
    zou.create_tasks(proj["id"], zou.seed["task_types"]["Compositing"], "shots", [shot["id"]])
    b = backend(zou, tmp_path, project="No Tree")
    with pytest.raises(PermanentError, match="has no file tree"):
        b.publish(Job(id=1, publish=nuke_script(tmp_path, version=1)))
    assert zou.output_files(shot["id"]) == []
    [res] = [r for r in b.check() if r.what == "project 'No Tree'"]
    assert not res.ok and "no file tree" in res.detail


def test_existing_record_from_someone_else_is_a_conflict(zou, tmp_path):
    p = nuke_script(tmp_path, version=2)
    b = backend(zou, tmp_path)
    shot = zou.seed["shots"]["SH010"]
    ot = zou.api("POST", "/data/output-types", {"name": "Nuke", "short_name": "nk"})
    zou.api("POST", f"/data/entities/{shot}/output-files/new", {
        "output_type_id": ot["id"], "task_type_id": zou.seed["task_types"]["Compositing"], "name": "sh010_comp",
        "revision": 2, "representation": "nk", "extension": ".nk"})
    with pytest.raises(PermanentError, match=r"already has output file 'sh010_comp' revision 2 \(nk\) on Shot SQ01/SH010"):
        b.publish(Job(id=1, publish=p))


def test_size_over_2gib_goes_to_data(zou, tmp_path):
    import dataclasses
    p = dataclasses.replace(nuke_script(tmp_path, version=1), size=3_000_000_000)
    backend(zou, tmp_path).publish(Job(id=1, publish=p))
    [of] = zou.output_files(zou.seed["shots"]["SH010"])
    assert of["size"] is None and of["data"]["size"] == 3_000_000_000
    assert len(of["checksum"]) == 32


def test_review_comment_with_middle_frame_preview(zou, tmp_path):
    # `review: true` on the template's publishes rule (tracker.review stays off)
    p = dataclasses.replace(picture_sequence(tmp_path, shot="SH010", count=5, version=2), review=True)
    b = backend(zou, tmp_path, task_types={"comp": "Compositing"})
    job = Job(id=1, publish=p)
    b.publish(job)
    task = task_of(zou, zou.seed["shots"]["SH010"], "Compositing")
    [c] = comments_of(zou, task["id"])
    assert c["task_status_id"] == zou.seed["task_status"]["wfa"]
    assert task_of(zou, zou.seed["shots"]["SH010"], "Compositing")["task_status_id"] == zou.seed["task_status"]["wfa"]
    preview = zou.api("GET", f"/data/preview-files/{job.state['preview_file_id']}")
    assert preview["status"] == "ready" and preview["task_id"] == task["id"]
    assert preview["original_name"].startswith("slap.0003")  # frames 1-5: the middle one
    # an uncertain retry neither comments nor uploads twice
    b.publish(Job(id=1, publish=p, uncertain=True))
    assert len(comments_of(zou, task["id"])) == 1
    assert len(zou.api("GET", f"/data/tasks/{task['id']}/previews")) == 1


def test_review_of_unviewable_media_sets_status_without_preview(zou, tmp_path):
    p = render_sequence(tmp_path, shot="SH010", count=4, version=1)
    backend(zou, tmp_path, review=["shot_render"], review_status="Retake").publish(Job(id=1, publish=p))
    task = task_of(zou, zou.seed["shots"]["SH010"], "Compositing")
    [c] = comments_of(zou, task["id"])
    assert c["task_status_id"] == zou.seed["task_status"]["retake"] and c["previews"] == []
    other = nuke_script(tmp_path, version=1)  # not a review template: status untouched
    backend(zou, tmp_path, review=["shot_render"]).publish(Job(id=2, publish=other))
    assert task_of(zou, zou.seed["shots"]["SH010"], "Compositing")["task_status_id"] == zou.seed["task_status"]["retake"]


# ---- credentials and check ------------------------------------------------------------------------

def test_user_login_and_relogin_after_revocation(zou, tmp_path):
    pw = tmp_path / "kitsu.password"
    pw.write_text(USER_PASSWORD + "\n")
    b = backend(zou, tmp_path, token=None, email=USER_EMAIL, password_file=Path("kitsu.password"))
    b.publish(Job(id=1, publish=nuke_script(tmp_path / "a", version=1)))
    # revoke the session (logout revokes the access and the refresh token)
    zou.api("GET", "/auth/logout", token=b.auth.token())
    b.publish(Job(id=2, publish=nuke_script(tmp_path / "b", version=2)))
    assert len(zou.output_files(zou.seed["shots"]["SH010"])) == 2


def test_wrong_password_is_reported_in_the_servers_words(zou, tmp_path):
    b = backend(zou, tmp_path, token=None, email=USER_EMAIL, password=SecretStr("not-the-password"))
    with pytest.raises(PermanentError) as err:
        b.publish(Job(id=1, publish=nuke_script(tmp_path, version=1)))
    assert "Wrong email or password." in str(err.value) and "not-the-password" not in str(err.value)
    [res] = b.check()
    assert not res.ok and "Wrong email or password." in res.detail


def test_bad_bot_token(zou, tmp_path):
    b = backend(zou, tmp_path, token=SecretStr("garbage-token"))
    with pytest.raises(PermanentError, match="Kitsu refused the API token.*create a new bot token") as err:
        b.publish(Job(id=1, publish=nuke_script(tmp_path, version=1)))
    assert "garbage-token" not in str(err.value)


def test_check_reports_each_named_thing(zou, tmp_path):
    zou.api("POST", "/data/output-types", {"name": "EXR", "short_name": "exr"})
    b = backend(zou, tmp_path, task_types={"comp": "Compositing", "paint": "Paint"},
                output_types={"exr": "EXR", "abc": "Cache"}, review=True)
    res = {r.what: r for r in b.check()}
    assert res["credentials (the API token)"].ok and "watcher-bot" in res["credentials (the API token)"].detail
    assert res["project 'Watcher Test'"].ok
    assert res["task type 'Compositing' (step 'comp')"].ok
    assert not res["task type 'Paint' (step 'paint')"].ok
    assert res["output type 'EXR' (exr)"].detail == "found"
    assert res["output type 'Cache' (abc)"].ok and "created at the first publish" in res["output type 'Cache' (abc)"].detail
    assert res["review status 'wfa'"].ok
    strict = {r.what: r for r in backend(zou, tmp_path, output_types={"abc": "Cache"},
                                         create_output_types=False, project="Nope").check()}
    assert not strict["output type 'Cache' (abc)"].ok
    assert not strict["project 'Nope'"].ok and "not found" in strict["project 'Nope'"].detail


# ---- tracker frame range (expect_frames: tracker) -------------------------------------------------

def test_frame_range_from_the_shots_data_frame_in_and_out(zou, tmp_path):
    project = zou.seed["project"]["id"]
    seq = zou.seed["sequences"]["SQ01"]
    # as Kitsu's shot list sets them: in the shot's data, by PUT /data/shots/<id>
    zou.api("PUT", f"/data/shots/{zou.seed['shots']['SH010']}", {"data": {"frame_in": 1001, "frame_out": 1100}})
    zou.create_shot(project, seq, "SH040", data={"frame_in": "993", "frame_out": "1107"})
    b = backend(zou, tmp_path)
    assert b.frame_range(render_sequence(tmp_path, count=3)) == (1001, 1100)
    assert b.frame_range(nuke_script(tmp_path, shot="SH040")) == (993, 1107)
    assert b.frame_range(nuke_script(tmp_path, shot="SH020")) is None  # no range in its data
    assert b.frame_range(nuke_script(tmp_path, shot="SH999")) is None  # no such shot
    assert not zou.api("GET", "/data/entities", params={"name": "SH999"})
