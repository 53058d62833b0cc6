"""The contract every backend keeps, run the same way against each: the built-in local registry,
ShotGrid, ftrack and Kitsu against their fakes (tests/fake_*.py, real HTTP on 127.0.0.1), and
Kitsu against the real Zou (tests/zou_server.py, with the faults injected by a forwarding
``LossyProxy`` in front of it). Each case runs for a single file and for a frame sequence, both
real files under tmp_path.

- exactly once after an uncertain outcome (the answer of the create is lost after it applied);
- a 401 renews the token once and the publish goes through; a second 401 is a PermanentError
  naming the credentials problem;
- a 429 with Retry-After is honoured, and the publish ends with exactly one record;
- a refusal surfaces the tracker's own words in a PermanentError;
- ``check()`` names what is wrong;
- an amend (``Job.amend``: the files changed after the publish) updates the one record in place
  with the new size and frames, also when the answer of the update is lost and it is retried.

A case is skipped only where its concept does not exist for a backend (the skip says why)."""
from __future__ import annotations

import dataclasses
import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest
from pydantic import SecretStr

from tests.fake_ftrack import FakeFtrack, refusal
from tests.fake_kitsu import FakeZou
from tests.fake_shotgrid import ApiError, FakeShotGrid, standard_site
from tests.fakes import FakeServer
from tests.zou_server import PROJECT, USER_EMAIL, USER_PASSWORD, LossyProxy, zou, zou_server  # noqa: F401
from watcher.errors import PermanentError, RetryableError
from watcher.model import Entity, Job, Publish
from watcher.publish.base import Backend, BackendContext

RETRY_AFTER = 1  # seconds, as the header says it: an integer


@dataclass
class Tracker:
    """One backend under the contract: how to build it, where its requests go, how to count
    its records, and what it is expected to do where backends legitimately differ."""

    name: str
    tmp: Path
    root: Path  # the root the publishes live under
    build: Callable[..., Backend]  # build(**setting overrides)
    records: Callable[[], list[Any]]  # the publish records on the tracker side
    record_id: Callable[[Any], str]
    names: dict[str, str]  # sequence, shot, task
    fake: FakeServer | None = None  # where faults are injected (None: no HTTP)
    write: dict[str, Any] = field(default_factory=dict)  # fault filter for the create request
    api: dict[str, Any] = field(default_factory=dict)  # fault filter for authenticated API calls
    drop_outcome: str = "raises"  # first attempt after a lost answer: "raises" | "recovers"
    retry_429: str = "job"  # "client": retried inside the HTTP client; "job": RetryableError
    renews_token: bool = True
    renewals: Callable[[], int] = lambda: 0  # renewal requests seen by the server
    token_backend: Callable[[], Backend] | None = None  # credentials that renew on a 401
    auth_body: Any = None  # the tracker's own body for a 401
    auth_words: tuple[str, ...] = ()  # in the PermanentError of a persistent 401
    refusal: tuple[int, Any, str] | None = None  # status, the tracker's own body, its words
    bad_check: dict[str, Any] = field(default_factory=dict)
    bad_words: str = ""
    secrets: tuple[str, ...] = ()
    amend_write: dict[str, Any] = field(default_factory=dict)  # fault filter for the amend's update
    amended: Callable[[Any, Publish], None] = lambda _rec, _p: None  # asserts a record holds p's values
    made: list[Backend] = field(default_factory=list)
    saved: dict[int, dict[str, Any]] = field(default_factory=dict)

    def backend(self, **over: Any) -> Backend:
        b = self.build(**over)
        self.made.append(b)
        return b

    def publish(self, kind: str, version: int = 3) -> Publish:
        return make_publish(self.root, kind, version=version, **self.names)

    def job(self, publish: Publish, job_id: int = 1, *, uncertain: bool = False) -> Job:
        """A job as the publisher worker hands it over: with the state last saved for it."""
        return Job(id=job_id, publish=publish, uncertain=uncertain, state=dict(self.saved.get(job_id, {})),
                   save_state=lambda s: self.saved.__setitem__(job_id, dict(s)))

    def assert_the_one_record(self, ref: Any) -> None:
        """Exactly one record on the tracker side, and it is the one the backend answered."""
        records = self.records()
        assert len(records) == 1, f"{len(records)} records on the {self.name} side"
        assert ref.id == self.record_id(records[0])

    def close(self) -> None:
        for b in self.made:
            b.close()


def make_publish(root: Path, kind: str, *, sequence: str, shot: str, task: str, version: int = 3) -> Publish:
    """A Nuke script or a 24-frame EXR sequence (frame 1010 missing), as real files."""
    fields = {"Sequence": sequence, "Shot": shot, "Step": task, "version": version}
    base = root / "sequences" / sequence / shot / task
    if kind == "single":
        path = base / "work" / f"{shot.lower()}_{task}_v{version:03d}.nk"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#! nuke\n" + "Root { name x }\n" * 40)
        return Publish(key=f"shows|nuke|{shot}|{task}|v{version}", root="shows", root_path=str(root),
                       template="nuke_shot_work", path=str(path), name=f"{shot.lower()}_{task}",
                       publish_type="Nuke Script", version=version, entity=Entity("Shot", shot), task=task,
                       fields=fields, size=path.stat().st_size)
    folder = base / "render" / f"v{version:03d}"
    folder.mkdir(parents=True, exist_ok=True)
    size = 0
    for f in range(1001, 1025):
        if f != 1010:
            p = folder / f"beauty.{f:04d}.exr"
            p.write_bytes(b"\x76\x2f\x31\x01" + f"frame {f}".encode() * 8)
            size += p.stat().st_size
    return Publish(key=f"shows|render|{shot}|{task}|beauty|v{version}", root="shows", root_path=str(root),
                   template="shot_render", path=str(folder / "beauty.%04d.exr"), name="beauty",
                   publish_type="Rendered Image", version=version, entity=Entity("Shot", shot), task=task,
                   frames="1001-1024", missing_frames="1010", frame_count=23, padding=4, size=size,
                   fields={**fields, "name": "beauty"})


# ---- the backends ----------------------------------------------------------------------------

def grow(p: Publish) -> Publish:
    """The same publish after a late write: the script gets longer; the sequence gets its hole
    (1010) filled, frames 1025-1030 added and frame 1001 rewritten bigger."""
    if not p.is_sequence:
        with open(p.path, "a") as fh:
            fh.write("Write { name late }\n" * 30)
        return dataclasses.replace(p, size=Path(p.path).stat().st_size, description="amended")
    for f in [1001, 1010, *range(1025, 1031)]:
        Path(p.frame_path(f)).write_bytes(b"\x76\x2f\x31\x01" + f"frame {f} late".encode() * 20)
    size = sum(Path(p.frame_path(f)).stat().st_size for f in range(1001, 1031))
    return dataclasses.replace(p, frames="1001-1030", missing_frames=None, frame_count=30, size=size,
                               description="amended")


def md5_of(p: Publish) -> str:
    digest = hashlib.md5()
    for f in p.file_paths():
        digest.update(Path(f).read_bytes())
    return digest.hexdigest()


def local_tracker(tmp: Path) -> Tracker:
    from watcher.publish.local import LocalBackend, LocalSettings

    def build(**over: Any) -> Backend:
        return LocalBackend(LocalSettings(**over), BackendContext(
            config_dir=tmp, roots={}, journal_url=f"sqlite:///{tmp}/journal.db"))

    def amended(entry: Any, p: Publish) -> None:
        payload = entry[3]
        assert (payload["size"], payload["frames"], payload["missing_frames"]) == (p.size, p.frames, p.missing_frames)

    t = Tracker("local", tmp, tmp / "shows", build, records=lambda: t.made[0].registry.entries(),
                record_id=lambda e: str(e[0]), names=dict(sequence="sq01", shot="sh010", task="comp"),
                amended=amended)
    t.backend()  # records() reads the registry through the first backend
    return t


def shotgrid_tracker(tmp: Path) -> Tracker:
    from watcher.publish.shotgrid import ShotGridBackend, ShotGridSettings
    studio = tmp / "studio"
    (studio / "demo").mkdir(parents=True)
    fake = FakeShotGrid().start()
    fake.seed = standard_site(fake, str(studio))
    fake.add_field("PublishedFile", "sg_frame_range", "text")  # custom fields a studio adds
    fake.add_field("PublishedFile", "sg_file_size", "number")
    key = "s3cret-key-value"

    def build(**over: Any) -> Backend:
        values: dict[str, Any] = dict(url=fake.url, script_name="watcher", script_key=key, project="Demo Project",
                                      frame_range_field="sg_frame_range", size_field="sg_file_size",
                                      retries=2, backoff_base=0.01, backoff_cap=2.0, timeout=5)
        values.update(over)
        return ShotGridBackend(ShotGridSettings(**values),
                               BackendContext(config_dir=tmp, roots={"shows": studio / "demo"}))

    amended = amended_published_file
    t = Tracker(
        "shotgrid", tmp, studio / "demo", build, records=lambda: fake.records("PublishedFile"),
        record_id=lambda r: str(r["id"]), names=dict(sequence="sq01", shot="sh010", task="comp"), fake=fake,
        write=dict(method="POST", path=r"/entity/published_files$"), api=dict(path=r"/entity/"),
        renewals=lambda: len(fake.requests_to("POST", "/auth/access_token")) - 1,
        auth_body=ApiError(401, "Unauthorized", code=102, detail="Invalid or expired token.").body(),
        auth_words=("refused a fresh access token for script 'watcher'", "Invalid or expired token."),
        refusal=(400, ApiError(400, "Request Parameters invalid.",
                               detail="code: contains characters the site does not allow").body(),
                 "Request Parameters invalid.: code: contains characters the site does not allow"),
        bad_check=dict(project="Nope"), bad_words="no Project named 'Nope'", secrets=(key,),
        amend_write=dict(method="PUT", path=r"/entity/published_files/\d+$"), amended=amended)
    t.token_backend = t.backend
    return t


def amended_published_file(rec: dict[str, Any], p: Publish) -> None:
    assert rec["sg_file_size"] == p.size
    assert rec.get("sg_frame_range") == p.frames
    assert rec["description"] == p.description


def ftrack_tracker(tmp: Path) -> Tracker:
    from watcher.publish.ftrack import FtrackBackend, FtrackSettings
    fake = FakeFtrack().start()
    project = fake.add_project("demo", "Demo Project")
    shot = fake.add_context("Shot", "sh010", fake.add_context("Sequence", "sq01", project))
    fake.add_task("comp", shot)
    fake.add_asset_type("Image", "img")
    fake.add_asset_type("Scene", "scene")
    user, key = next(iter(fake.users.items()))

    def build(**over: Any) -> Backend:
        values: dict[str, Any] = dict(server_url=fake.url, api_user=user, api_key=key, project="demo",
                                      asset_types={"Rendered Image": "img", "nk": "scene"},
                                      retries=2, backoff_base=0.01, backoff_cap=2.0, timeout=5)
        values.update(over)
        return FtrackBackend(FtrackSettings(**values), BackendContext(config_dir=tmp, roots={}))

    def amended(version: dict[str, Any], p: Publish) -> None:
        [comp] = [c for c in fake.records("Component") if c.get("version_id") == version["id"]]
        assert comp["size"] == p.size
        if p.is_sequence:
            members = {m["name"]: m for m in fake.records("Component") if m.get("container_id") == comp["id"]}
            assert sorted(members) == [f"{f:04d}" for f in p.frame_numbers()]
            for f in p.frame_numbers():
                assert members[f"{f:04d}"]["size"] == Path(p.frame_path(f)).stat().st_size
            located = {loc["component_id"]: loc["resource_identifier"] for loc in fake.records("ComponentLocation")}
            assert {located[m["id"]] for m in members.values()} == set(p.file_paths())

    return Tracker(
        "ftrack", tmp, tmp / "proj", build, records=lambda: fake.records("AssetVersion"),
        record_id=lambda r: r["id"], names=dict(sequence="sq01", shot="sh010", task="comp"), fake=fake,
        write=dict(action="create"), renews_token=False, auth_body=fake.error_body(401),
        auth_words=("InvalidCredentialsError", "The supplied API key is not valid."),
        refusal=(400, refusal("ValidationError", "Name contains forbidden characters."),
                 "ValidationError: Name contains forbidden characters."),
        bad_check=dict(project="nope"), bad_words="project 'nope' not found", secrets=(key,),
        amend_write=dict(action="update"), amended=amended)


def _kitsu(name: str, tmp: Path, url: str, fake: FakeServer, records: Callable[[], list[Any]], *, token: str,
           project: str, email: str, password: str, renewals: Callable[[], int]) -> Tracker:
    from watcher.publish.kitsu import KitsuBackend, KitsuSettings

    def build(**over: Any) -> Backend:
        values: dict[str, Any] = dict(url=url, token=SecretStr(token), project=project,
                                      task_types={"comp": "Compositing"}, output_types={"nk": "Nuke", "exr": "EXR"},
                                      retries=2, backoff_base=0.01, backoff_cap=2.0, timeout=15)
        values.update(over)
        return KitsuBackend(KitsuSettings(**values), BackendContext(config_dir=tmp, roots={}))

    t = Tracker(
        name, tmp, tmp / "shows", build, records=records, record_id=lambda r: r["id"],
        names=dict(sequence="SQ01", shot="SH010", task="comp"), fake=fake,
        write=dict(method="POST", path=r"/output-files/new$"), api=dict(path=r"^/data/"),
        drop_outcome="recovers", renewals=renewals,
        auth_body={"msg": "Token has been revoked"},
        auth_words=(f"Kitsu refused the login {email}", "Token has been revoked", "check the email and password"),
        refusal=(400, {"error": True, "message": "Validation error.",
                       "data": {"errors": [{"field": "revision", "message": "Input should be a valid integer"}]}},
                 "Validation error. (revision: Input should be a valid integer)"),
        bad_check=dict(project="Nope"), bad_words="'Nope' not found", secrets=(token, password),
        amend_write=dict(method="PUT", path=r"^/data/output-files/[^/]+$"), amended=amended_output_file)
    t.token_backend = lambda: t.backend(token=None, email=email, password=SecretStr(password))
    return t


def amended_output_file(rec: dict[str, Any], p: Publish) -> None:
    assert rec["size"] == p.size and rec["data"]["size"] == p.size
    assert rec["checksum"] == md5_of(p)
    if p.is_sequence:
        data = rec["data"]
        assert (data["frames"], data["missing_frames"], data["frame_count"]) == (p.frames, None, p.frame_count)
        assert (data["frame_in"], data["frame_out"], rec["nb_elements"]) == (1001, 1030, 30)


def kitsu_fake_tracker(tmp: Path) -> Tracker:
    fake = FakeZou().start()
    return _kitsu("kitsu", tmp, fake.url, fake, fake.output_files, token=FakeZou.BOT_TOKEN, project="Fake Show",
                  email=FakeZou.USER_EMAIL, password=FakeZou.USER_PASSWORD, renewals=lambda: fake.refreshes)


def kitsu_zou_tracker(tmp: Path, zou: Any) -> Tracker:
    proxy = LossyProxy(zou.url).start()
    shot = zou.seed["shots"]["SH010"]
    return _kitsu("zou", tmp, proxy.url, proxy, lambda: zou.output_files(shot), token=zou.bot_token,
                  project=PROJECT, email=USER_EMAIL, password=USER_PASSWORD,
                  renewals=lambda: proxy.count("GET", r"^/auth/refresh-token$"))


BUILDERS = {"shotgrid": shotgrid_tracker, "ftrack": ftrack_tracker, "kitsu": kitsu_fake_tracker}


@pytest.fixture(params=[
    "local",
    "shotgrid", "ftrack", "kitsu",
    pytest.param("zou", marks=[pytest.mark.kitsu, pytest.mark.linux_only, pytest.mark.timeout(600)]),  # the first may install Zou
])
def tracker(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "local":
        t = local_tracker(tmp_path)
    elif request.param == "zou":
        t = kitsu_zou_tracker(tmp_path, request.getfixturevalue("zou"))
    else:
        t = BUILDERS[request.param](tmp_path)
    yield t
    t.close()
    if t.fake is not None:
        t.fake.stop()


def needs_http(t: Tracker, what: str) -> None:
    if t.fake is None:
        pytest.skip(f"the {t.name} backend makes no HTTP requests: {what}")


KINDS = ["single", "sequence"]


# ---- the cases -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_exactly_once_after_an_uncertain_outcome(tracker: Tracker, kind: str) -> None:
    """The create lands but its answer is lost; the retry (uncertain, with the state the first
    attempt saved) adopts what landed. The local registry has no answer to lose: there the
    first attempt completes and its outcome is treated as lost, as after a crash."""
    t = tracker
    p = t.publish(kind)
    if t.fake is not None:
        t.fake.drop_after_apply(**t.write)
    try:
        first = t.backend().publish(t.job(p))
        outcome = "recovers"
    except RetryableError:
        first, outcome = None, "raises"
    if t.fake is not None:
        assert t.fake.lost() == 1, "the create's answer was never lost"
        assert outcome == t.drop_outcome
    assert len(t.records()) == 1  # it landed
    ref = t.backend().publish(t.job(p, uncertain=True))  # a new backend: nothing cached from before
    t.assert_the_one_record(ref)
    if first is not None:
        assert first.id == ref.id


@pytest.mark.parametrize("kind", KINDS)
def test_401_renews_the_token_once_then_publishes(tracker: Tracker, kind: str) -> None:
    t = tracker
    needs_http(t, "no token")
    if not t.renews_token:
        pytest.skip(f"{t.name} authenticates every request with API-key headers: there is no token to renew")
    b = t.token_backend()
    t.fake.reply(401, body=t.auth_body, **t.api)
    ref = b.publish(t.job(t.publish(kind)))
    assert len(t.fake.answered(401)) == 1
    assert t.renewals() == 1
    t.assert_the_one_record(ref)


@pytest.mark.parametrize("kind", KINDS)
def test_second_401_is_a_permanent_credentials_error(tracker: Tracker, kind: str) -> None:
    t = tracker
    needs_http(t, "no credentials to refuse")
    b = t.token_backend() if t.token_backend else t.backend()
    t.fake.reply(401, count=None, body=t.auth_body, **t.api)
    with pytest.raises(PermanentError) as err:
        b.publish(t.job(t.publish(kind)))
    for words in t.auth_words:
        assert words in err.value.message
    for secret in t.secrets:
        assert secret not in err.value.message
    # renewed once then refused again; API-key headers are not retried at all
    assert len(t.fake.answered(401)) == (2 if t.renews_token else 1)
    assert t.renewals() == (1 if t.renews_token else 0)
    assert t.records() == []


@pytest.mark.parametrize("kind", KINDS)
def test_429_with_retry_after_is_honoured_then_one_record(tracker: Tracker, kind: str) -> None:
    """The create is answered 429 (nothing applied). Creates are never re-sent blindly inside
    the HTTP client, so each backend either knows 429 means 'not processed' and retries inside,
    or raises a RetryableError carrying the server's Retry-After for the worker's backoff."""
    t = tracker
    needs_http(t, "no rate limit")
    p = t.publish(kind)
    t.fake.reply(429, retry_after=RETRY_AFTER, **t.write)
    b = t.backend()
    started = time.monotonic()
    try:
        ref = b.publish(t.job(p))
        how = "client"
        assert time.monotonic() - started >= RETRY_AFTER
    except RetryableError as exc:
        how = "job"
        assert exc.retry_after == RETRY_AFTER
        assert t.records() == []
        ref = t.backend().publish(t.job(p, uncertain=True))
    assert how == t.retry_429
    assert len(t.fake.answered(429)) == 1
    t.assert_the_one_record(ref)


@pytest.mark.parametrize("kind", KINDS)
def test_refusal_is_permanent_in_the_trackers_words(tracker: Tracker, kind: str) -> None:
    t = tracker
    needs_http(t, "the local registry refuses nothing")
    status, body, words = t.refusal
    t.fake.reply(status, body=body, **t.write)
    with pytest.raises(PermanentError) as err:
        t.backend().publish(t.job(t.publish(kind)))
    assert words in err.value.message
    assert t.records() == []


def test_check_names_what_is_wrong(tracker: Tracker) -> None:
    t = tracker
    if not t.bad_check:
        pytest.skip(f"the {t.name} backend names no project, credentials or types: nothing for check() to find wrong")
    good = t.backend().check()
    assert good and all(r.ok for r in good if "project" in r.what), [str(r) for r in good]
    results = t.backend(**t.bad_check).check()
    failing = [r for r in results if not r.ok]
    assert any(t.bad_words in f"{r.what}: {r.detail}" for r in failing), [str(r) for r in results]
    assert all(r.ok for r in results if r.what.startswith("credentials")), [str(r) for r in results]


@pytest.mark.parametrize("kind", KINDS)
def test_amend_updates_the_one_record_even_when_its_answer_is_lost(tracker: Tracker, kind: str) -> None:
    """Published, then the files change (a late write, ``republish: update``): the job comes back
    with ``amend`` set, the first publish's state and its record id. The record gets the new
    size and frames in place; nothing new is created. The update's answer is lost once: a
    retry (uncertain) leaves the same one record holding the new values."""
    t = tracker
    p = t.publish(kind)
    first = t.backend().publish(t.job(p))
    t.assert_the_one_record(first)
    bigger = grow(p)
    assert bigger.size > p.size
    if t.fake is not None:
        t.fake.drop_after_apply(**t.amend_write)
    job = t.job(bigger)
    job.amend, job.previous_id = True, first.id
    try:
        ref = t.backend().publish(job)
    except RetryableError:
        job = t.job(bigger, uncertain=True)
        job.amend, job.previous_id = True, first.id
        ref = t.backend().publish(job)
    if t.fake is not None:
        assert t.fake.lost() == 1, "the amend's answer was never lost"
    assert ref.id == first.id
    t.assert_the_one_record(ref)
    t.amended(t.records()[0], bigger)
