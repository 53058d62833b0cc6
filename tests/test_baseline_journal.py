"""The journal's `baseline` state: rows that are known and never claimed, on SQLite and
PostgreSQL, and the migration that lets journals made before it take the new status without
losing a file record (SQLite rebuilds `publishes`; its DROP must not cascade into `files`)."""
from __future__ import annotations

import json
import sqlite3
import time

import psycopg
import pytest

from tests.pg_server import pg_server, pg_url  # noqa: F401  (pytest fixtures)
from watcher.errors import JournalError
from watcher.journal import open_journal
from watcher.journal.base import FileRecord, Status
from watcher.journal.ledger import MIGRATIONS, SCHEMA_VERSION
from watcher.journal.postgres import POSTGRES, PostgresDatabase
from watcher.journal.sqlite import SQLITE, SqliteJournal
from watcher.model import Publish

pytestmark = pytest.mark.linux_only  # needs PostgreSQL (a real server)


def pub(key: str, **kw) -> Publish:
    base = dict(key=key, root="shows", root_path="/shows", template="nuke", path=f"/shows/{key}.nk", name=key,
                publish_type="Nuke Script", version=1)
    base.update(kw)
    return Publish(**base)


def rec(name: str, d: str = "a") -> FileRecord:
    return FileRecord("shows", d, name, 10, 20)


@pytest.fixture(params=["sqlite", "postgres"])
def journal(request, tmp_path):
    j = (SqliteJournal(f"sqlite:///{tmp_path}/journal.db") if request.param == "sqlite"
         else open_journal(request.getfixturevalue("pg_url")))
    yield j
    j.close()


def test_baselined_rows_are_known_never_claimed_and_counted(journal):
    out = journal.baseline_many([(pub("a"), [rec("a.nk")]), (pub("b"), [rec("b.nk")])])
    assert [created for _, created in out] == [True, True]
    journal.add(pub("c"), [rec("c.nk")])
    assert journal.baseline_many([(pub("c"), [rec("c.nk")])]) == [(out[-1][0] + 1, False)]  # queued: left alone
    claimed = journal.claim_many("agent", 1e12, 60, 10)
    assert [r.publish.key for r in claimed] == ["c"]
    assert journal.counts() == {"pending": 0, "publishing": 1, "published": 0, "failed": 0, "baseline": 2}
    a = journal.by_key("a")
    assert a.status is Status.BASELINE and a.tracker is None and a.next_attempt_at is None
    assert a.to_json()["status"] == "baseline"
    assert journal.known_files("shows", "a") == {"a.nk": (10, 20, a.id), "b.nk": (10, 20, a.id + 1),
                                                 "c.nk": (10, 20, a.id + 2)}
    assert [e[1] for e in journal.events(a.id)] == ["pending", "baseline"]
    assert journal.first_seen("shows") is not None and journal.first_seen("other") is None
    journal.remember_files(a.id, [rec("a2.nk")], "new frame")  # a baselined row takes new files as known
    assert journal.files_of(a.id) == {("shows", "a/a.nk"): (10, 20), ("shows", "a/a2.nk"): (10, 20)}


def test_existing_baseline_cutoff_is_the_journals_first_sight_of_the_root(journal):
    journal.heartbeat("h:1:100", "h", 1, 100.0, ["shows"])
    first = journal.first_seen("shows")
    assert first is not None and first > 100.0  # the first heartbeat's own clock, not the id's whole seconds
    time.sleep(0.01)
    journal.heartbeat("h:2:500", "h", 2, 500.0, ["shows", "vendor"])  # a later agent moves nothing back
    assert journal.first_seen("shows") == first and journal.first_seen("vendor") > first
    journal.add_many([(pub("old", arrived=first - 1), [rec("old.nk")]), (pub("new", arrived=first + 1), [rec("new.nk")]),
                      (pub("plain"), [rec("plain.nk")]),  # existing: publish (no arrival time): always pending
                      (pub("v", root="vendor", arrived=first), [FileRecord("vendor", "", "v.nk", 1, 2)])])
    got = {k: journal.by_key(k).status for k in ("old", "new", "plain", "v")}
    assert got == {"old": Status.BASELINE, "new": Status.PENDING, "plain": Status.PENDING, "v": Status.BASELINE}


def test_without_a_recorded_first_sight_everything_already_there_is_baseline(journal):
    journal.add_many([(pub("x", arrived=1.0), [rec("x.nk")])])  # a lost journal: no agent recorded yet
    assert journal.by_key("x").status is Status.BASELINE and journal.first_seen("shows") > 1.0


OLD_STATUSES = "'pending', 'publishing', 'published', 'failed'"  # the CHECK of journals made before baseline


def old_ddl(dialect, m: str) -> list[str]:
    return [s.strip() for s in m.format(statuses=OLD_STATUSES, **dialect.types).split(";") if s.strip()]


def _v6_sqlite(path) -> None:
    c = sqlite3.connect(path)
    for m in MIGRATIONS[:6]:
        for stmt in old_ddl(SQLITE, m):
            c.execute(stmt)
    payload = json.dumps(pub("k1").to_dict())
    for i, status in ((1, "published"), (2, "pending"), (3, "failed")):
        c.execute("INSERT INTO publishes (key, status, payload, created_at, updated_at, tracker, tracker_id, adopted) "
                  "VALUES (?, ?, ?, 0, 0, 'local', ?, ?)", (f"k{i}", status, payload, f"t{i}", i == 1))
    c.executemany("INSERT INTO files (root, dir, name, size, mtime_ns, publish_id) VALUES ('shows', 'a', ?, 1, 2, ?)",
                  [("k1.nk", 1), ("k2.nk", 2), ("k2b.nk", 2)])
    c.execute("INSERT INTO publishes (key, status, payload, created_at, updated_at) VALUES ('gone', 'failed', ?, 0, 0)",
              (payload,))
    c.execute("DELETE FROM publishes WHERE key='gone'")  # id 4 used once: never to be handed out again
    c.execute("PRAGMA user_version=6")
    c.commit()
    with pytest.raises(sqlite3.IntegrityError):  # what the migration is for
        c.execute("UPDATE publishes SET status='baseline' WHERE id=1")
    c.close()


def test_a_version_6_sqlite_journal_takes_baseline_and_keeps_every_file_record(tmp_path):
    db = tmp_path / "v6.db"
    _v6_sqlite(db)
    j = SqliteJournal(f"sqlite:///{db}")
    try:
        assert j.schema_version() == SCHEMA_VERSION
        assert j.known_files("shows", "a") == {"k1.nk": (1, 2, 1), "k2.nk": (1, 2, 2), "k2b.nk": (1, 2, 2)}
        old = j.by_key("k1")
        assert (old.status, old.tracker_id, old.adopted) == (Status.PUBLISHED, "t1", True)
        assert j._conn().execute("PRAGMA foreign_keys").fetchone()[0] == 1  # back on after the migration
        [(new_id, created)] = j.baseline_many([(pub("k5"), [rec("k5.nk")])])
        assert created and new_id == 5 and j.by_key("k5").status is Status.BASELINE
        with pytest.raises(sqlite3.IntegrityError):  # the rebuilt CHECK still refuses what is not a status
            j._conn().execute("UPDATE publishes SET status='bogus' WHERE id=1")
        with pytest.raises(sqlite3.IntegrityError):  # and the foreign key still holds
            j._conn().execute("INSERT INTO files (root, dir, name, size, mtime_ns, publish_id) "
                              "VALUES ('shows', 'a', 'x', 1, 2, 999)")
        j._conn().execute("DELETE FROM publishes WHERE id=2")  # ... and still cascades
        assert j.files_of(2) == {}
    finally:
        j.close()


def test_a_sqlite_migration_leaving_dangling_files_is_refused_and_changes_nothing(tmp_path):
    db = tmp_path / "v6.db"
    _v6_sqlite(db)
    c = sqlite3.connect(db)
    c.execute("INSERT INTO files (root, dir, name, size, mtime_ns, publish_id) VALUES ('shows', 'a', 'orphan', 1, 2, 77)")
    c.commit()
    c.close()
    with pytest.raises(JournalError, match="pointing nowhere"):
        SqliteJournal(f"sqlite:///{db}")
    c = sqlite3.connect(db)
    assert c.execute("PRAGMA user_version").fetchone()[0] == 6
    assert c.execute("SELECT count(*) FROM files").fetchone()[0] == 4
    c.close()


def test_a_version_6_postgres_journal_takes_baseline(pg_url):
    db = PostgresDatabase(pg_url)
    try:
        db.migrate([old_ddl(POSTGRES, m) for m in MIGRATIONS[:6]])
        payload = psycopg.types.json.Jsonb(pub("k1").to_dict())
        db.write(lambda cur: cur.execute("INSERT INTO publishes (key, status, payload, created_at, updated_at) "
                                         "VALUES ('k1', 'published', ?, 0, 0)", (payload,)))
        with pytest.raises(JournalError):  # a schema-6 CHECK refuses the new status
            db.write(lambda cur: cur.execute("UPDATE publishes SET status='baseline'"))
    finally:
        db.close()
    j = open_journal(pg_url)
    try:
        assert j.schema_version() == SCHEMA_VERSION
        assert j.by_key("k1").status is Status.PUBLISHED
        [(_, created)] = j.baseline_many([(pub("k2"), [rec("k2.nk")])])
        assert created and j.by_key("k2").status is Status.BASELINE
        with pytest.raises(JournalError):
            j.db.write(lambda cur: cur.execute("UPDATE publishes SET status='bogus'"))
    finally:
        j.close()
