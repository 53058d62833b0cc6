"""No secret leaks (issue 11): a credential with a trailing newline or two lines, a server that
echoes a credential back in another spelling, a tracker URL holding a password. Real
`python -m watcher` processes against the fake trackers; what `check` prints, the logs, the
journal, `publishes --json` and the desk page are searched for every spelling of the secret."""
from __future__ import annotations

import io
import json
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import parse_qs, quote, quote_plus

import pytest

from watcher.errors import PermanentError
from watcher.model import Job, Publish, TrackerRef
from watcher.publish.base import Backend, BackendContext
from watcher.publish.tracker import Scrubber

from .agent import DATA
from .fake_ftrack import FakeFtrack
from .fake_kitsu import FakeZou
from .fake_shotgrid import FakeShotGrid, standard_site
from .test_cli import cli


def spellings(secret: str) -> list[str]:
    """How a secret may be written in a message: as is, repr- and JSON-escaped, percent-encoded,
    and each of its lines."""
    out = {secret, repr(secret)[1:-1], json.dumps(secret)[1:-1], quote(secret, safe=""), quote_plus(secret)}
    out.update(line for line in secret.splitlines() if line.strip())
    return sorted(out)


def assert_nowhere(secret: str, *texts: str) -> None:
    for text in texts:
        for s in spellings(secret):
            assert s not in text, f"{s!r} leaked in: {text[:2000]}"


def write_config(tmp: Path, tracker: str, *, root: Path | None = None, extra: str = "") -> Path:
    root = root or tmp / "root"
    root.mkdir(parents=True, exist_ok=True)
    cfg = tmp / "watcher.yml"
    cfg.write_text(f"roots:\n  - {{name: shows, path: '{root}', templates: {DATA / 'pipeline.yml'}}}\n"
                   f"settle_seconds: 0.2\njournal: sqlite:///{tmp}/journal.db\nstate_dir: state\n"
                   f"max_attempts: 1\n{extra}tracker:\n{tracker}")
    return cfg


class Tracker:
    """One fake tracker with what a `watcher check` against it needs, and where its secret
    went on the wire."""

    def __init__(self, kind: str, tmp: Path) -> None:
        self.kind, self.tmp = kind, tmp
        self.root = tmp / "studio/demo"
        self.root.mkdir(parents=True)
        if kind == "ftrack":
            self.fake: Any = FakeFtrack().start()
            self.fake.add_project("demo", "Demo Project")
            self.user, self.secret = next(iter(self.fake.users.items()))
            self.setting = "api_key"
            self.yaml = f"  backend: ftrack\n  server_url: {self.fake.url}\n  api_user: {self.user}\n  project: demo\n"
        elif kind == "kitsu":
            self.fake = FakeZou().start()
            self.secret, self.setting = FakeZou.BOT_TOKEN, "token"
            self.yaml = f"  backend: kitsu\n  url: {self.fake.url}\n  project: Fake Show\n"
        else:
            self.fake = FakeShotGrid().start()
            standard_site(self.fake, str(tmp / "studio"))
            self.secret, self.setting = "s3cret-key-value", "script_key"
            self.yaml = (f"  backend: shotgrid\n  url: {self.fake.url}\n  script_name: watcher\n"
                         "  project: Demo Project\n")
        self.yaml += "  retries: 0\n  timeout: 5\n"

    def sent(self) -> list[str]:
        """Every value of the secret the fake received."""
        with self.fake.lock:
            log = list(self.fake.log)
        if self.kind == "ftrack":
            return [r.headers["ftrack-api-key"] for r in log if "ftrack-api-key" in r.headers]
        if self.kind == "kitsu":
            return [r.headers["Authorization"].removeprefix("Bearer ") for r in log if "Authorization" in r.headers]
        return [v for r in log if r.path.endswith("auth/access_token")
                for v in parse_qs(r.raw.decode()).get("client_secret", [])]

    def stop(self) -> None:
        self.fake.stop()


@pytest.fixture(params=["ftrack", "kitsu", "shotgrid"])
def tracker(request, tmp_path) -> Iterator[Tracker]:
    t = Tracker(request.param, tmp_path)
    yield t
    t.stop()


# ---- secrets with line breaks ---------------------------------------------------------------------

def test_a_secret_with_a_trailing_newline_reaches_the_tracker_without_it(tracker, tmp_path):
    """`export WATCHER_TRACKER__API_KEY=$(cat key)` keeps no newline, but an editor's key file
    ends with one, and some tools put one in the variable too."""
    cfg = write_config(tmp_path, tracker.yaml, root=tracker.root)
    key_file = tmp_path / "key"
    key_file.write_text(tracker.secret + "\n\n")
    runs = [({f"WATCHER_TRACKER__{tracker.setting.upper()}": tracker.secret + "\n"}, cfg),
            ({}, tmp_path / "from-file.yml")]
    runs[1][1].write_text(cfg.read_text() + f"  {tracker.setting}_file: {key_file}\n")
    with ThreadPoolExecutor(2) as pool:
        done = list(pool.map(lambda run: cli("-c", str(run[1]), "check", env=run[0]), runs))
    for r in done:
        assert "Traceback" not in r.stderr and "ok   credentials" in r.stdout, (r.stdout, r.stderr)
    assert tracker.sent() and set(tracker.sent()) == {tracker.secret}


def test_a_two_line_key_file_is_refused_at_start_without_showing_it(tracker, tmp_path):
    second = "second-line-9f8e7d6c"
    key_file = tmp_path / "key"
    key_file.write_text(f"{tracker.secret}\n{second}\n")
    cfg = write_config(tmp_path, tracker.yaml + f"  {tracker.setting}_file: {key_file}\n", root=tracker.root)
    r = cli("-c", str(cfg), "check")
    assert r.returncode == 2 and "Traceback" not in r.stderr, (r.stdout, r.stderr)
    line = r.stderr.strip().splitlines()[-1]
    assert f"tracker.{tracker.setting}_file: {key_file}" in line and "2 lines" in line
    assert_nowhere(tracker.secret + "\n" + second, r.stdout, r.stderr)
    assert tracker.sent() == []  # nothing went out with it


# ---- a server echoing a credential back in another spelling -------------------------------------------

def test_a_credential_echoed_back_escaped_is_masked_in_check_logs_journal_and_publishes(tmp_path):
    """A proxy in front of the tracker answers the login with the request it got, in the
    request's own encoding: form-encoded for ShotGrid's script key, JSON for Kitsu's password.
    The secret then stands in the error text in that spelling."""
    sg_key = "Zr7^mx$qk(vbl#2wQp"  # ShotGrid generates keys with such characters
    kitsu_password = 'pa"ss\\w\u00f6rd-1234'
    sg, zou = FakeShotGrid().start(), FakeZou().start()
    try:
        standard_site(sg, str(tmp_path / "sg/studio"), script=("watcher", sg_key))
        form = f"grant_type=client_credentials&client_id=watcher&client_secret={quote_plus(sg_key)}"
        sg.reply(400, path="auth/access_token", count=None, body=f"proxy refused: {form}".encode())
        login = json.dumps({"email": FakeZou.USER_EMAIL, "password": kitsu_password})
        zou.reply(400, path="auth/login", count=None, body=f"proxy refused: {login}".encode())
        cases = [(sg_key, f"  backend: shotgrid\n  url: {sg.url}\n  script_name: watcher\n  project: Demo Project\n",
                  "WATCHER_TRACKER__SCRIPT_KEY", tmp_path / "sg"),
                 (kitsu_password, f"  backend: kitsu\n  url: {zou.url}\n  email: {FakeZou.USER_EMAIL}\n"
                                  "  project: Fake Show\n", "WATCHER_TRACKER__PASSWORD", tmp_path / "kitsu")]
        for secret, yaml, var, tmp in cases:
            root = tmp / "studio/demo" if tmp.name == "sg" else tmp / "root"
            cfg = write_config(tmp, yaml + "  retries: 0\n", root=root)
            script = root / "seq/sq01/sh010/comp/work/sh010_main_v001.nk"
            script.parent.mkdir(parents=True)
            script.write_text("Root {}\n")
            check = cli("-c", str(cfg), "check", env={var: secret})
            assert check.returncode == 1 and "FAIL credentials" in check.stdout, (check.stdout, check.stderr)
            assert "proxy refused" in check.stdout and "***" in check.stdout  # the words stay, the secret goes
            scan = cli("-c", str(cfg), "scan", env={var: secret})
            listed = cli("-c", str(cfg), "publishes", "--json", env={var: secret})
            [row] = json.loads(listed.stdout)
            assert row["status"] == "failed" and "proxy refused" in row["error"], row
            with sqlite3.connect(tmp / "journal.db") as db:
                journaled = json.dumps(db.execute("SELECT * FROM publishes").fetchall())
            assert_nowhere(secret, check.stdout, check.stderr, scan.stdout, scan.stderr, listed.stdout, journaled)
    finally:
        sg.stop()
        zou.stop()


# ---- a tracker URL with credentials ---------------------------------------------------------------------

def test_a_tracker_url_with_credentials_is_shown_with_the_password_masked(tmp_path):
    password = "pa55w0rd-basic"
    with FakeFtrack() as fake:
        project = fake.add_project("demo", "Demo Project")
        fake.add_task("comp", fake.add_context("Shot", "sh010", fake.add_context("Sequence", "sq01", project)))
        fake.add_asset_type("Scene", "scene")
        user, key = next(iter(fake.users.items()))
        url = fake.url.replace("http://", f"http://studio:{password}@")
        cfg = write_config(tmp_path, f"  backend: ftrack\n  server_url: {url}\n  api_user: {user}\n  api_key: {key}\n"
                                     "  project: demo\n  asset_types: {Nuke Script: scene}\n"
                                     "  version_url: '{server}/#entityType=assetversion&entityId={id}'\n"
                                     "  retries: 0\n  timeout: 2\n",
                           extra=f"on_publish: ['http://hook:{password}@127.0.0.1:9/publish']\n")
        work = tmp_path / "root/seq/sq01/sh010/comp/work"
        work.mkdir(parents=True)
        (work / "sh010_main_v001.nk").write_text("Root {}\n")
        check = cli("-c", str(cfg), "check")
        assert f"studio:***@127.0.0.1:{fake.port}" in check.stdout and "hook:***@127.0.0.1:9" in check.stdout, \
            check.stdout
        published = cli("-c", str(cfg), "scan")
        assert published.returncode == 0, published.stderr
    (work / "sh010_other_v001.nk").write_text("Root {}\n")  # the tracker is gone now
    failed = cli("-c", str(cfg), "scan", "--log-level", "DEBUG")
    listed = cli("-c", str(cfg), "publishes", "--json")
    rows = {r["status"]: r for r in json.loads(listed.stdout)}
    assert rows["published"]["tracker_url"].startswith(f"http://127.0.0.1:{fake.port}/#entityType=assetversion")
    assert f"cannot connect to http://studio:***@127.0.0.1:{fake.port}" in rows["failed"]["error"]
    with sqlite3.connect(tmp_path / "journal.db") as db:
        journaled = json.dumps(db.execute("SELECT * FROM publishes").fetchall())
    page = desk_page(tmp_path, cfg, old_link=url + "/#entityType=assetversion&entityId=1")
    assert f"http://127.0.0.1:{fake.port}/#entityType" in page
    for text in (check.stdout, check.stderr, published.stderr, failed.stdout, failed.stderr, listed.stdout, page,
                 journaled):
        assert password not in text, text[:3000]


def desk_page(tmp: Path, cfg: Path, old_link: str) -> str:
    """The desk page over the journal, with a row journaled by an older version whose tracker
    link and error still hold the URL's password."""
    from watcher.config import load_settings
    from watcher.desk import DeskApp
    from watcher.journal.sqlite import SqliteJournal

    settings = load_settings(cfg)
    j = SqliteJournal(settings.journal_url())
    try:
        row, _ = j.add(Publish(key="old", root="shows", root_path=str(tmp / "root"), template="nuke",
                               path=str(tmp / "root/old.nk"), name="old", publish_type="Nuke Script"), [])
        claimed = j.claim("old-agent", time.time(), 60)
        assert claimed is not None and claimed.id == row.id
        j.published(row.id, "old-agent", "ftrack", TrackerRef("1", old_link))
        app = DeskApp(settings, j, read_only=True)
        got: dict[str, Any] = {}
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "QUERY_STRING": "", "SCRIPT_NAME": "",
                   "CONTENT_LENGTH": "0", "wsgi.input": io.BytesIO(b"")}
        page = b"".join(app(environ, lambda status, headers: got.update(status=status))).decode()
        assert got["status"].startswith("200")
        return page
    finally:
        j.close()


# ---- the backend boundary ----------------------------------------------------------------------------------

class _Careless(Backend):
    """A backend whose own code puts its secret in its errors (a plug-in written without care)."""

    name = "careless"
    SECRET = "plug-in-secret-7731"

    def scrub(self, value: Any) -> Any:
        return Scrubber(self.SECRET)(value)

    def publish(self, job: Job) -> TrackerRef:
        if job.id == 1:
            raise PermanentError(f"refused with key {self.SECRET!r} and 'x{self.SECRET}\\n'")
        if job.id == 2:
            raise KeyError(f"no session for {self.SECRET}")  # a bug
        return TrackerRef("ok")


def test_every_error_leaving_a_backend_is_scrubbed_and_a_bug_costs_one_job(tmp_path, caplog):
    p = Publish(key="k", root="r", root_path=str(tmp_path), template="t", path=str(tmp_path / "a.nk"), name="a",
                publish_type="Nuke Script")
    b = _Careless(None, BackendContext(config_dir=tmp_path, roots={}))
    out = b.publish_batch([Job(id=i, publish=p) for i in (1, 2, 3)])
    assert isinstance(out[0], PermanentError) and not out[0].retryable and "***" in out[0].message
    assert out[1].retryable and "internal error in backend careless: KeyError" in out[1].message
    assert out[2] == TrackerRef("ok")  # the bug cost job 2 alone
    assert_nowhere(_Careless.SECRET, out[0].message, str(out[0]), out[1].message, caplog.text)
