from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest

from watcher.journal.base import FileRecord, Status, TransitionError
from watcher.journal.sqlite import SCHEMA_VERSION, SqliteJournal
from watcher.model import Entity, Publish, TrackerRef


def pub(key: str = "shows:render:{}", **kw) -> Publish:
    base = dict(key=key, root="shows", root_path="/shows", template="render", path="/shows/a/beauty.%04d.exr",
                name="beauty", publish_type="Rendered Image", version=3, entity=Entity("Shot", "sh010"), task="comp",
                frames="1001-1010", missing_frames="1005", frame_count=9, padding=4)
    base.update(kw)
    return Publish(**base)


@pytest.fixture
def journal(tmp_path):
    j = SqliteJournal(f"sqlite:///{tmp_path}/journal.db")
    yield j
    j.close()


def test_transitions_and_history(journal):
    row, created = journal.add(pub(), [FileRecord("/shows/a", "beauty.1001.exr", 10, 1)])
    assert created and row.status == Status.PENDING
    again, created = journal.add(pub(), [])
    assert not created and again.id == row.id  # one row per idempotency key
    claimed = journal.claim("agent-a", time.time() + 1, 60)
    assert claimed.id == row.id and claimed.status == Status.PUBLISHING
    assert journal.claim("agent-b", time.time() + 1, 60) is None  # nobody claims it twice
    with pytest.raises(TransitionError):
        journal.published(row.id, "agent-b", "local", TrackerRef("9"))  # not agent-b's
    journal.retry_later(row.id, "agent-a", "HTTP 503", time.time() + 3600)
    r = journal.rows()[0]
    assert r.status == Status.PENDING and r.uncertain and r.attempts == 1 and r.last_error == "HTTP 503"
    assert journal.claim("agent-a", time.time(), 60) is None  # not due yet
    journal.claim("agent-a", time.time() + 7200, 60)
    journal.fail(row.id, "agent-a", "Shot sh010 not found")
    assert journal.rows(Status.FAILED)[0].last_error == "Shot sh010 not found"
    with pytest.raises(TransitionError):
        journal.published(row.id, "agent-a", "local", TrackerRef("1"))
    assert journal.requeue(failed=True) == [row.id]
    journal.claim("agent-a", time.time() + 1, 60)
    journal.published(row.id, "agent-a", "local", TrackerRef("42", "http://t/42"))
    r = journal.rows()[0]
    assert (r.status, r.tracker_id, r.tracker_url, r.attempts, r.uncertain) == (Status.PUBLISHED, "42", "http://t/42", 1, False)  # retry resets the count
    assert [e[1] for e in journal.events(row.id)] == ["pending", "publishing", "retry", "publishing", "failed",
                                                      "pending", "publishing", "published"]


def test_recover_returns_dead_agents_rows_as_uncertain(journal):
    row, _ = journal.add(pub(), [])
    journal.claim("host:999999:1", time.time() + 1, 600)
    assert journal.recover("me", time.time(), alive=lambda a: True) == 0  # alive and leased
    assert journal.recover("me", time.time(), alive=lambda a: False) == 1
    r = journal.rows()[0]
    assert r.status == Status.PENDING and r.uncertain


def test_state_is_persisted_before_sending(journal):
    row, _ = journal.add(pub(), [])
    journal.save_state(row.id, {"asset_version_id": "uuid-1"})
    assert journal.rows()[0].state == {"asset_version_id": "uuid-1"}


def test_known_files_and_replace(journal):
    row, _ = journal.add(pub(), [FileRecord("/shows/a", "beauty.1001.exr", 10, 5)])
    assert journal.known_files("/shows/a") == {"beauty.1001.exr": (10, 5, row.id)}
    assert journal.files_of(row.id) == {"/shows/a/beauty.1001.exr": (10, 5)}
    journal.replace(row.id, pub(frames="1001-1020", missing_frames=None),
                    [FileRecord("/shows/a", "beauty.1020.exr", 10, 6)])
    assert journal.rows()[0].publish.frames == "1001-1020"
    assert set(journal.known_files("/shows/a")) == {"beauty.1001.exr", "beauty.1020.exr"}


def test_json_contract_shape(journal):
    row, _ = journal.add(pub(), [])
    d = journal.rows()[0].to_json()
    for k in ("id", "root", "template", "path", "frames", "missing_frames", "name", "version", "entity", "task",
              "publish_type", "status", "tracker", "tracker_id", "error", "created_at", "published_at"):
        assert k in d
    assert d["entity"] == {"type": "Shot", "name": "sh010"} and d["published_at"] is None
    assert d["created_at"].endswith("Z")


def test_migrations_version_and_newer_schema_refused(tmp_path):
    j = SqliteJournal(f"sqlite:///{tmp_path}/j.db")
    assert j.schema_version() == SCHEMA_VERSION
    j._conn().execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    j.close()
    from watcher.errors import JournalError
    with pytest.raises(JournalError, match="newer than this watcher"):
        SqliteJournal(f"sqlite:///{tmp_path}/j.db")


def test_concurrent_claims_never_double_claim(tmp_path):
    j = SqliteJournal(f"sqlite:///{tmp_path}/j.db")
    for i in range(200):
        j.add(pub(key=f"k{i}"), [])
    got: list[int] = []
    lock = threading.Lock()

    def worker(name):
        while True:
            r = j.claim(name, time.time() + 1, 60)
            if r is None:
                return
            with lock:
                got.append(r.id)

    threads = [threading.Thread(target=worker, args=(f"a{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    j.close()
    assert sorted(got) == list(range(1, 201))


def test_reader_process_sees_writes_while_writer_holds_connection(tmp_path):
    j = SqliteJournal(f"sqlite:///{tmp_path}/j.db")
    j.add(pub(), [])
    code = ("import json,sys;from watcher.journal.sqlite import SqliteJournal as J;"
            f"j=J('sqlite:///{tmp_path}/j.db');print(json.dumps([r.to_json() for r in j.rows()]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out)[0]["path"] == "/shows/a/beauty.%04d.exr"
    j.close()
