"""The toolkit the HTTP tracker backends share (watcher/publish/tracker.py): its parts on their
own, and through the backends against the fake servers."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from tests.fake_kitsu import FakeZou, nuke_script, render_sequence
from watcher.errors import ConfigError, PermanentError, RetryableError
from watcher.model import Entity, Job, Publish
from watcher.publish.base import BackendContext
from watcher.publish.ftrack import FtrackSettings
from watcher.publish.kitsu import KitsuBackend, KitsuSettings
from watcher.publish.shotgrid import ShotGridSettings
from watcher.publish.tracker import (LookupCache, Scrubber, TrackerSettings, check_step, config_path, create_once,
                                     project_of, tls_verify)
from watcher.secrets import read_secret


@pytest.fixture
def zou():
    server = FakeZou().start()
    yield server
    server.stop()


def kitsu(zou: FakeZou, tmp_path: Path, **over) -> KitsuBackend:
    args = dict(url=zou.url, token=SecretStr(FakeZou.BOT_TOKEN), project="Fake Show",
                task_types={"comp": "Compositing"}, output_types={"nk": "Nuke"}, retries=0, timeout=2)
    args.update(over)
    return KitsuBackend(KitsuSettings(**args), BackendContext(config_dir=tmp_path, roots={}))


def kitsu_user(zou: FakeZou, tmp_path: Path, **over) -> KitsuBackend:
    return kitsu(zou, tmp_path, token=None, email=FakeZou.USER_EMAIL, password=SecretStr(FakeZou.USER_PASSWORD), **over)


# ---- cache --------------------------------------------------------------------------------------------
def test_cache_keeps_positive_lookups_until_they_expire():
    now = [100.0]
    c = LookupCache(10, clock=lambda: now[0])
    assert c.put("project", {"id": 1}) == {"id": 1}
    assert c.put("missing", None) is None
    now[0] = 109.0
    assert c.get("project") == {"id": 1} and c.get("missing", "no") == "no"
    now[0] = 110.5
    assert c.get("project") is None  # expired: asked again


def test_cache_fetch_drop_and_zero_ttl():
    calls = []

    def load() -> list[int]:
        calls.append(1)
        return [len(calls)]
    c = LookupCache(60)
    assert c.fetch(("types",), load) == [1] and c.fetch(("types",), load) == [1]
    assert c.fetch(("types",), load, fresh=True) == [2]
    c.put(("entities", 1), "a")
    c.drop(lambda key: key[0] == "entities")
    assert c.get(("entities", 1)) is None and c.get(("types",)) == [2]
    off = LookupCache(0)
    off.put("k", 1)
    assert off.get("k") is None and off.fetch("k", load) == [3]


# ---- secrets and scrubbing ------------------------------------------------------------------------------
def test_scrubber_masks_secrets_in_text_and_bodies():
    s = Scrubber("s3cret-key-0123", None, "pw")
    assert s("refused s3cret-key-0123!") == "refused ***!"
    assert s({"error": ["bad key s3cret-key-0123"], "n": 3}) == {"error": ["bad key ***"], "n": 3}
    assert s("password 'pw' is wrong; upward") == "password '***' is wrong; upward"  # short: alone only
    assert Scrubber()("as is") == "as is"


def test_secret_from_environment_loses_its_trailing_newline(tmp_path):
    assert read_secret(SecretStr("abc-key\n"), None, "tracker.api_key") == "abc-key"
    (tmp_path / "k").write_text("  from-file \n")
    assert read_secret(SecretStr(" \n"), tmp_path / "k", "tracker.api_key") == "from-file"


def test_token_with_trailing_newline_reaches_the_server_clean(zou, tmp_path):
    b = kitsu(zou, tmp_path, token=SecretStr(FakeZou.BOT_TOKEN + "\n"))
    assert b.check()[0].ok


def test_secret_echoed_by_the_server_never_reaches_a_message(zou, tmp_path):
    zou.reply(400, body={"message": f"login {FakeZou.USER_PASSWORD} refused"}, path="/auth/login")
    b = kitsu_user(zou, tmp_path)
    with pytest.raises(PermanentError) as err:
        b.publish(Job(id=1, publish=nuke_script(tmp_path, version=1)))
    assert "login *** refused" in err.value.message and FakeZou.USER_PASSWORD not in err.value.message
    assert FakeZou.USER_PASSWORD not in str(b.check())


# ---- token renewal --------------------------------------------------------------------------------------
def test_one_renewal_on_401_then_the_request_goes_through(zou, tmp_path):
    b = kitsu_user(zou, tmp_path)
    assert b.call("GET", "/auth/authenticated")["authenticated"]
    zou.expire_access_tokens()
    assert b.call("GET", "/auth/authenticated")["authenticated"]
    assert (zou.logins, zou.refreshes) == (1, 1)
    assert len([e for e in zou.log if e.status == 401]) == 1
    zou.revoke_everything()  # refresh refused too: a new login
    assert b.call("GET", "/auth/authenticated")["authenticated"]
    assert (zou.logins, zou.refreshes) == (2, 1)


def test_a_fixed_token_refused_is_not_retried(zou, tmp_path):
    b = kitsu(zou, tmp_path, token=SecretStr("a.b.c"))
    with pytest.raises(PermanentError, match=r"Kitsu refused the API token \(GET /auth/authenticated\)"):
        b.call("GET", "/auth/authenticated")
    assert len([e for e in zou.log if e.status == 401]) == 1


# ---- TLS and paths --------------------------------------------------------------------------------------
def test_tls_options_mean_the_same_everywhere(tmp_path, caplog):
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    assert tls_verify(TrackerSettings(), tmp_path) is True
    assert tls_verify(TrackerSettings(ca_bundle=Path("ca.pem")), tmp_path) == str(tmp_path / "ca.pem")
    with pytest.raises(ConfigError, match=r"tracker.ca_bundle: .*missing.pem is not a file"):
        tls_verify(TrackerSettings(ca_bundle=Path("missing.pem")), tmp_path)
    caplog.set_level(logging.WARNING)
    assert tls_verify(TrackerSettings(verify_tls=False, ca_bundle=Path("missing.pem")), tmp_path) is False
    assert "NOT checked" in caplog.text and "ca_bundle is ignored" in caplog.text
    # every backend has the options, with one meaning
    sg = ShotGridSettings(url="https://x.shotgrid.autodesk.com", script_name="w", verify_tls=False)
    assert tls_verify(sg, tmp_path) is False


def test_backend_defaults_and_the_renamed_setting():
    ft = FtrackSettings(server_url="https://x.ftrackapp.com", api_user="w", cache_ttl=5)
    assert (ft.timeout, ft.retries, ft.backoff_base, ft.backoff_cap, ft.cache_ttl) == (60.0, 4, 1.0, 60.0, 5)
    k = KitsuSettings(url="http://z", token=SecretStr("t"), backoff_cap=2)
    assert (k.timeout, k.retries, k.backoff_base, k.backoff_cap, k.cache_ttl) == (30.0, 3, 0.5, 2, 300.0)
    with pytest.raises(ValidationError, match="cache_seconds"):
        FtrackSettings(server_url="https://x.ftrackapp.com", api_user="w", cache_seconds=5)


def test_config_path(tmp_path):
    assert config_path(None, tmp_path) is None
    assert config_path(Path("a/key"), tmp_path) == tmp_path / "a/key"
    assert config_path("/etc/key", tmp_path) == Path("/etc/key")
    assert config_path("~/key", tmp_path) == Path.home() / "key"


# ---- check steps, create once, project, middle frame ------------------------------------------------------
def test_check_step_turns_errors_into_failed_lines():
    assert str(check_step("project 'x'", lambda: "id 3")) == "ok   project 'x': id 3"
    failed = check_step("project 'y'", lambda: (_ for _ in ()).throw(PermanentError("no Project named 'y'")))
    assert not failed.ok and failed.detail == "no Project named 'y'"
    assert not check_step("credentials", lambda: (_ for _ in ()).throw(RetryableError("cannot connect"))).ok


def test_create_once_never_resends_a_create_blindly():
    saved: list[dict] = []
    job = Job(id=1, publish=nuke_publish(), save_state=saved.append)
    creates: list[int] = []

    def create() -> int:
        creates.append(1)
        raise RetryableError("answer lost")
    with pytest.raises(RetryableError):
        create_once(job, "rid", "sent", lambda: None, create)
    assert saved[-1] == {"sent": True}  # journaled before the create went out
    assert create_once(job, "rid", "sent", lambda: 42, create) == 42  # looked for, found
    assert create_once(job, "rid", "sent", lambda: 0, create) == 42  # the journaled id
    assert len(creates) == 1 and job.state == {"sent": True, "rid": 42}


def nuke_publish(**over) -> Publish:
    values = dict(key="k", root="shows", root_path="/shows", template="t", path="/shows/sh010/a.nk", name="a",
                  publish_type="Nuke Script", entity=Entity("Shot", "sh010"))
    values.update(over)
    return Publish(**values)


def test_project_from_key_then_rule_then_setting():
    p = nuke_publish(fields={"show": "From Key"}, project="From Rule")
    assert project_of(p, "From Setting", key="Show") == "From Key"  # any case of the key
    assert project_of(nuke_publish(project="From Rule"), "From Setting", key="Show") == "From Rule"
    assert project_of(nuke_publish(), 12) == 12
    with pytest.raises(PermanentError, match=r"no project for /shows/sh010/a.nk: its path gives no template key "
                                             r"'Show', its publishes rule names no project, tracker.project is not set"):
        project_of(nuke_publish(), None, key="Show")


def test_middle_frame(tmp_path):
    seq = render_sequence(tmp_path, first=1, count=5, holes=(3,))
    assert seq.middle_frame_path() == seq.frame_path(4)  # frames present: 1 2 4 5
    assert nuke_publish().middle_frame_path() == "/shows/sh010/a.nk"
