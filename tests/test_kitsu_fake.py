"""Kitsu backend branches a real Zou cannot be made to produce on demand, against FakeZou
(same wire format and refusals as Zou 1.0.97 on the routes used). No Zou needed."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from tests.fake_kitsu import FakeZou, nuke_script, render_sequence
from watcher.errors import ConfigError, PermanentError, RetryableError
from watcher.model import Job
from watcher.publish.base import BackendContext
from watcher.publish.kitsu import KitsuBackend, KitsuSettings, describe_zou_error


@pytest.fixture
def fake():
    server = FakeZou().start()
    yield server
    server.stop()


def make(fake: FakeZou, tmp_path: Path, **over) -> KitsuBackend:
    args = dict(url=fake.url, token=SecretStr(FakeZou.BOT_TOKEN), project="Fake Show",
                task_types={"comp": "Compositing"}, output_types={"nk": "Nuke", "exr": "EXR"},
                retries=2, backoff_base=0.01, timeout=2)
    args.update(over)
    return KitsuBackend(KitsuSettings(**args), BackendContext(config_dir=tmp_path, roots={}))


def user(fake: FakeZou, tmp_path: Path, **over) -> KitsuBackend:
    return make(fake, tmp_path, token=None, email=FakeZou.USER_EMAIL,
                password=SecretStr(FakeZou.USER_PASSWORD), **over)


def test_request_shapes(fake, tmp_path):
    p = render_sequence(tmp_path, count=12, version=3, holes=(1005,))
    job = Job(id=1, publish=p)
    ref = make(fake, tmp_path).publish(job)
    [of] = fake.output_files()
    assert ref.id == of["id"] == job.state["output_file_id"]
    assert (of["name"], of["revision"], of["representation"], of["extension"], of["nb_elements"]) == \
        ("beauty", 3, "exr", ".exr", 11)
    assert of["comment"].startswith("published by watcher [watcher ")
    assert of["path"] == p.path and of["size"] == p.size and len(of["checksum"]) == 32
    assert of["data"]["frames"] == "1001-1012" and of["data"]["missing_frames"] == "1005"
    [c] = fake.comments()
    assert c["object_id"] == fake.task["id"] and c["task_status_id"] == fake.todo["id"]
    assert "11 frames 1001-1012, missing 1005" in c["text"]
    # the create is never sent twice and the lookups come first
    assert fake.count("POST", r"/output-files/new$") == 1
    order = [m + " " + p for m, p in fake.requests]
    assert order.index(f"GET /data/entities/{fake.shot['id']}/output-files") < \
        order.index(f"POST /data/entities/{fake.shot['id']}/output-files/new")


def test_lookups_are_cached(fake, tmp_path):
    b = make(fake, tmp_path, comment=False)
    for v in (1, 2, 3):
        b.publish(Job(id=v, publish=nuke_script(tmp_path / str(v), version=v)))
    assert fake.count("GET", r"^/data/projects$") == 1
    assert fake.count("GET", r"^/data/entities$") == 2  # sequence, then shot
    assert fake.count("GET", r"^/data/task-types$") == 1
    assert len(fake.output_files()) == 3


def test_cache_expires(fake, tmp_path):
    b = make(fake, tmp_path, comment=False, cache_ttl=0)
    b.publish(Job(id=1, publish=nuke_script(tmp_path / "a", version=1)))
    time.sleep(0.01)
    b.publish(Job(id=2, publish=nuke_script(tmp_path / "b", version=2)))
    assert fake.count("GET", r"^/data/projects$") == 2


@pytest.mark.parametrize("status, body, words", [
    (400, {"message": "A record with the same unique values already exists."}, "same unique values already exists"),
    (400, {"error": "Cannot find given output type."}, "Cannot find given output type."),
    (400, {"error": True, "message": "Validation error.", "data": {"errors": [
        {"field": "revision", "message": "Input should be a valid integer"}]}},
     "Validation error. (revision: Input should be a valid integer)"),
    (403, {"error": True, "message": "You are not allowed to do that."}, "You are not allowed to do that."),
])
def test_error_bodies_surface_the_servers_words(fake, tmp_path, status, body, words):
    fake.reply(status, body=body, method="POST", path=r"/output-files/new$")
    with pytest.raises(PermanentError) as err:
        make(fake, tmp_path).publish(Job(id=1, publish=nuke_script(tmp_path, version=1)))
    assert words in str(err.value)
    assert "Shot SQ01/SH010" in str(err.value) and "'Compositing'" in str(err.value)


def test_describe_zou_error_shapes():
    assert describe_zou_error(401, {"msg": "Token has expired"}) == "HTTP 401: Token has expired"
    assert describe_zou_error(502, "<html>bad gateway</html>") == "HTTP 502: <html>bad gateway</html>"
    assert describe_zou_error(500, None) == "HTTP 500"


def test_429_with_retry_after_is_honoured(fake, tmp_path):
    fake.reply(429, body={"message": "slow down"}, retry_after="0.3", method="GET", path=r"^/data/projects$")
    t = time.monotonic()
    make(fake, tmp_path).publish(Job(id=1, publish=nuke_script(tmp_path, version=1)))
    assert time.monotonic() - t >= 0.3
    assert fake.count("GET", r"^/data/projects$") == 2


def test_5xx_on_lookups_is_retried(fake, tmp_path):
    fake.reply(503, body={"error": True, "message": "busy"}, count=2, method="GET", path=r"/output-files$")
    make(fake, tmp_path).publish(Job(id=1, publish=nuke_script(tmp_path, version=1)))
    assert len(fake.output_files()) == 1


def test_5xx_on_create_raises_retryable_then_uncertain_retry_creates_once(fake, tmp_path):
    fake.reply(502, body="<html>Bad Gateway</html>", method="POST", path=r"/output-files/new$")
    b = make(fake, tmp_path)
    job = Job(id=1, publish=nuke_script(tmp_path, version=1))
    with pytest.raises(RetryableError, match="Bad Gateway"):
        b.publish(job)
    assert fake.output_files() == [] and fake.count("POST", r"/output-files/new$") == 1  # not re-sent blindly
    job.uncertain, job.attempts = True, 1
    b.publish(job)
    assert len(fake.output_files()) == 1


def test_create_landed_but_answer_lost(fake, tmp_path):
    fake.drop_after_apply(method="POST", path=r"/output-files/new$")
    ref = make(fake, tmp_path).publish(Job(id=1, publish=nuke_script(tmp_path, version=1)))
    [of] = fake.output_files()
    assert ref.id == of["id"] and of["path"] is not None


def test_create_answer_lost_with_automatic_revision(fake, tmp_path):
    """No version in the path: Zou picks the revision; the marker in the comment finds it."""
    fake.drop_after_apply(method="POST", path=r"/output-files/new$")
    p = nuke_script(tmp_path, version=None)
    ref = make(fake, tmp_path).publish(Job(id=1, publish=p))
    [of] = fake.output_files()
    assert ref.id == of["id"] and of["revision"] == 1
    make(fake, tmp_path).publish(Job(id=1, publish=p, uncertain=True))
    assert len(fake.output_files()) == 1


def test_put_answer_lost_then_retry_completes(fake, tmp_path):
    fake.drop_after_apply(count=3, method="PUT", path=r"^/data/output-files/")  # every HttpClient attempt
    b = make(fake, tmp_path)
    job = Job(id=1, publish=nuke_script(tmp_path, version=1))
    with pytest.raises(RetryableError):
        b.publish(job)
    job.uncertain = True
    b.publish(job)
    [of] = fake.output_files()
    assert of["data"]["watcher_key"] == job.publish.key
    assert fake.count("POST", r"/output-files/new$") == 1 and len(fake.comments()) == 1


def test_dropped_connection_and_timeout_are_retryable(fake, tmp_path):
    fake.drop(count=3, method="GET", path=r"^/data/projects$")
    with pytest.raises(RetryableError, match="cannot connect"):
        make(fake, tmp_path).publish(Job(id=1, publish=nuke_script(tmp_path, version=1)))
    fake.slow(1.5, count=3, method="GET", path=r"^/data/projects$")
    with pytest.raises(RetryableError, match="no answer within 0.5 s"):
        make(fake, tmp_path, timeout=0.5, retries=0).publish(Job(id=1, publish=nuke_script(tmp_path, version=1)))


def test_connection_refused_is_retryable(tmp_path):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    s = KitsuSettings(url=f"http://127.0.0.1:{port}", token=SecretStr("t"), project="P", retries=0)
    b = KitsuBackend(s, BackendContext(config_dir=tmp_path, roots={}))
    with pytest.raises(RetryableError, match="cannot connect"):
        b.publish(Job(id=1, publish=nuke_script(tmp_path, version=1)))


def test_user_login_once_then_refresh_on_401(fake, tmp_path):
    b = user(fake, tmp_path, comment=False)
    b.publish(Job(id=1, publish=nuke_script(tmp_path / "a", version=1)))
    b.publish(Job(id=2, publish=nuke_script(tmp_path / "b", version=2)))
    assert fake.logins == 1  # logged in once, token reused
    fake.expire_access_tokens()
    b.publish(Job(id=3, publish=nuke_script(tmp_path / "c", version=3)))
    assert (fake.logins, fake.refreshes) == (1, 1)


def test_login_redone_when_refresh_is_refused(fake, tmp_path):
    b = user(fake, tmp_path, comment=False)
    b.publish(Job(id=1, publish=nuke_script(tmp_path / "a", version=1)))
    fake.revoke_everything()
    b.publish(Job(id=2, publish=nuke_script(tmp_path / "b", version=2)))
    assert fake.logins == 2


def test_malformed_bot_token(fake, tmp_path):
    b = make(fake, tmp_path, token=SecretStr("not-a-jwt"))
    with pytest.raises(PermanentError, match="Kitsu refused the API token .*Not enough segments"):
        b.publish(Job(id=1, publish=nuke_script(tmp_path, version=1)))
    assert [r.ok for r in b.check()] == [False]


def test_token_file_relative_to_config_dir(fake, tmp_path):
    (tmp_path / "kitsu.token").write_text(FakeZou.BOT_TOKEN + "\n")
    b = make(fake, tmp_path, token=None, token_file=Path("kitsu.token"))
    assert b.check()[0].ok


def test_extension_over_zou_limit_refused_before_sending(fake, tmp_path):
    p = nuke_script(tmp_path, version=1, ext="verylongext")
    with pytest.raises(PermanentError, match="extension '.verylongext' is longer than Kitsu's limit of 10"):
        make(fake, tmp_path).publish(Job(id=1, publish=p))
    assert fake.count("POST", r"/output-files/new$") == 0  # Zou would answer 500, retried forever


def test_duplicate_from_another_agent_is_adopted(fake, tmp_path):
    """Another agent created our record between our lookup and our create."""
    p = nuke_script(tmp_path, version=1)
    make(fake, tmp_path, comment=False).publish(Job(id=1, publish=p))
    b = make(fake, tmp_path, comment=False)
    orig = b._find_output
    calls = []

    def blind_first(*args, **kw):
        calls.append(1)
        return None if len(calls) == 1 else orig(*args, **kw)
    b._find_output = blind_first  # the first lookup misses it, as if it were not there yet
    ref = b.publish(Job(id=1, publish=p))
    assert len(fake.output_files()) == 1 and ref.id == fake.output_files()[0]["id"]


def test_project_from_template_key(fake, tmp_path):
    p = nuke_script(tmp_path, version=1, fields={"Sequence": "SQ01", "Shot": "SH010", "Show": "Fake Show"})
    make(fake, tmp_path, project="{Show}").publish(Job(id=1, publish=p))
    assert len(fake.output_files()) == 1
    q = nuke_script(tmp_path / "x", version=1, fields={"Sequence": "SQ01", "Shot": "SH010"})
    with pytest.raises(PermanentError, match="template key 'Show'"):
        make(fake, tmp_path, project="{Show}").publish(Job(id=2, publish=q))


# ---- settings ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad, words", [
    (dict(url="kitsu.example"), "http(s) address"),
    (dict(token=None), "no credentials"),
    (dict(email="a@b.c"), "not both"),
    (dict(unknown=1), "Extra inputs are not permitted"),
    (dict(task_types={"comp": " "}), "'comp' maps to an empty name"),
])
def test_settings_are_validated(bad, words):
    args = dict(url="http://127.0.0.1:1", token=SecretStr("t"), project="P")
    args.update(bad)
    with pytest.raises(ValidationError) as err:
        KitsuSettings(**args)
    assert words in str(err.value)


def test_unreadable_token_file_is_a_config_error(tmp_path):
    s = KitsuSettings(url="http://127.0.0.1:1", token_file=Path("missing.token"), project="P")
    with pytest.raises(ConfigError, match=r"tracker.token_file: cannot read .*missing.token"):
        KitsuBackend(s, BackendContext(config_dir=tmp_path, roots={}))


def test_password_from_environment(monkeypatch):
    """The service validates ``tracker:`` plus WATCHER_TRACKER__* into these settings; the
    password arrives as a SecretStr and never shows in a repr."""
    s = KitsuSettings(url="http://127.0.0.1:1", email="a@b.c", password="hunter2-secret", project="P")
    assert "hunter2-secret" not in repr(s) and "hunter2-secret" not in str(s.model_dump())


def test_refused_update_of_our_own_output_file_is_retried_then_parked(fake, tmp_path):
    """Zou answers 400 'invalid format' when its database connection drops mid-request (seen
    while it shuts down): the update of a record we created is retried a few attempts, then
    parked with the server's words."""
    body = {"error": True, "message": "One of the provided values has an invalid format."}
    fake.reply(400, body=body, method="PUT", path=r"^/data/output-files/")
    b = make(fake, tmp_path)
    job = Job(id=1, publish=nuke_script(tmp_path, version=1))
    with pytest.raises(RetryableError, match="invalid format"):
        b.publish(job)
    job.uncertain, job.attempts = True, 1
    b.publish(job)  # the next attempt finds the output file and completes it
    [of] = fake.output_files()
    assert of["path"] == job.publish.path and fake.count("POST", r"/output-files/new$") == 1
    fake.reply(400, body=body, method="PUT", path=r"^/data/output-files/")
    late = Job(id=2, publish=nuke_script(tmp_path, version=2), attempts=3)
    with pytest.raises(PermanentError, match="invalid format"):
        b.publish(late)


# ---- tracker frame range (expect_frames: tracker) -------------------------------------------------

def test_frame_range_from_shot_data_read_once(fake, tmp_path):
    fake.set_frame_range(fake.shot["id"], 1001, 1100)
    b = make(fake, tmp_path)
    assert b.frame_range(render_sequence(tmp_path, count=4)) == (1001, 1100)
    assert b.frame_range(nuke_script(tmp_path)) == (1001, 1100)
    assert fake.count("GET", rf"^/data/entities/{fake.shot['id']}$") == 1  # once per entity


def test_frame_range_missing_values_or_shot_is_none(fake, tmp_path):
    b = make(fake, tmp_path, cache_ttl=0)
    assert b.frame_range(nuke_script(tmp_path)) is None  # data has no frame_in/frame_out
    assert b.frame_range(nuke_script(tmp_path, shot="SH999")) is None  # no such shot: nothing created
    fake.set_frame_range(fake.shot["id"], "1001", "")  # Kitsu's shot list may store text
    assert b.frame_range(nuke_script(tmp_path)) is None
    fake.set_frame_range(fake.shot["id"], "1001", "1050")
    assert b.frame_range(nuke_script(tmp_path)) == (1001, 1050)
    fake.set_frame_range(fake.shot["id"], 1050, 1001)
    with pytest.raises(PermanentError, match="data.frame_out 1001 is before data.frame_in 1050"):
        b.frame_range(nuke_script(tmp_path))


# ---- reads never block, never follow a symlink --------------------------------------------------

def test_fifo_swapped_in_is_refused_quickly_by_the_checksum(fake, tmp_path):
    import os
    p = render_sequence(tmp_path, count=5)
    os.unlink(p.frame_path(1004))
    os.mkfifo(p.frame_path(1004))  # no writer: a blocking open would hang the worker for good
    started = time.monotonic()
    with pytest.raises(PermanentError, match=r"beauty\.1004\.exr is a FIFO, not a regular file; its checksum"):
        make(fake, tmp_path, comment=False).publish(Job(id=1, publish=p))
    assert time.monotonic() - started < 5


def test_open_regular_refuses_fifo_symlink_and_directory(tmp_path):
    import os

    from watcher.publish.tracker import open_regular, regular_size
    real = tmp_path / "real.exr"
    real.write_bytes(b"pixels")
    with open_regular(str(real), "checksum") as fh:
        assert fh.read() == b"pixels"
    os.mkfifo(tmp_path / "pipe")
    os.symlink(real, tmp_path / "link.exr")
    for name, words in (("pipe", "is a FIFO"), ("link.exr", "is a symlink"), ("", "is a directory"),
                        ("gone.exr", "vanished")):
        for read in (open_regular, regular_size):
            with pytest.raises(PermanentError, match=words):
                read(str(tmp_path / name) if name else str(tmp_path))


# ---- versions already on the tracker (republish: new_version) ---------------------------------------
def test_versions_used_lists_the_streams_revisions(fake, tmp_path):
    nuke = fake._add("output_types", name="Nuke", short_name="nk")
    for rev, name in ((1, "sh010_comp"), (3, "sh010_comp"), (7, "sh010_other")):
        fake._add("output_files", entity_id=fake.shot["id"], output_type_id=nuke["id"],
                  task_type_id=fake.comp["id"], name=name, representation="nk", revision=rev,
                  extension=".nk", canceled=False)
    fake._add("output_files", entity_id=fake.shot["id"], output_type_id=nuke["id"], task_type_id=fake.comp["id"],
              name="sh010_comp", representation="exr", revision=9, extension=".exr", canceled=False)
    assert make(fake, tmp_path).versions_used(nuke_script(tmp_path, version=5)) == {1, 3}


def test_versions_used_of_an_empty_stream_creates_nothing(fake, tmp_path):
    b = make(fake, tmp_path, create_missing_entities=True, create_output_types=True)
    assert b.versions_used(nuke_script(tmp_path, version=1)) == set()  # no output type "Nuke" yet
    fake._add("output_types", name="Nuke", short_name="nk")
    assert b.versions_used(nuke_script(tmp_path / "b", version=1)) == set()  # no output file
    assert b.versions_used(nuke_script(tmp_path / "c", version=1, shot="SH999")) == set()  # no such shot
    assert [r for r in fake.requests if r[0] != "GET"] == []
