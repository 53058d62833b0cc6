from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import threading
import time

import pytest

from tests.pg_server import pg_server, pg_url  # noqa: F401  (pytest fixtures)
from watcher.errors import JournalError
from watcher.journal import postgres as pgj
from watcher.journal import open_journal
from watcher.journal.base import FileRecord, Status, TransitionError
from watcher.journal.postgres import PostgresJournal
from watcher.journal.ledger import SCHEMA_VERSION
from watcher.journal.sqlite import SqliteJournal
from watcher.publish.local import Registry
from watcher.model import Entity, Publish, TrackerRef

pytestmark = pytest.mark.linux_only  # needs PostgreSQL (a real server)


def pub(key: str = "shows:render:{}", **kw) -> Publish:
    base = dict(key=key, root="shows", root_path="/shows", template="render", path="/shows/a/beauty.%04d.exr",
                name="beauty", publish_type="Rendered Image", version=3, entity=Entity("Shot", "sh010"), task="comp",
                frames="1001-1010", missing_frames="1005", frame_count=9, padding=4)
    base.update(kw)
    return Publish(**base)


@pytest.fixture(params=["sqlite", "postgres"])
def journal(request, tmp_path):
    """Every contract test runs against both journals: same Python-facing behaviour."""
    if request.param == "sqlite":
        j = SqliteJournal(f"sqlite:///{tmp_path}/journal.db")
    else:
        j = open_journal(request.getfixturevalue("pg_url"))
        assert isinstance(j, PostgresJournal)
    yield j
    j.close()


def test_transitions_and_history(journal):
    row, created = journal.add(pub(), [FileRecord("shows", "a", "beauty.1001.exr", 10, 1)])
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
    assert journal.requeue() == [row.id]
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
    row, _ = journal.add(pub(), [FileRecord("shows", "a", "beauty.1001.exr", 10, 5)])
    assert journal.known_files("shows", "a") == {"beauty.1001.exr": (10, 5, row.id)}
    assert journal.files_of(row.id) == {("shows", "a/beauty.1001.exr"): (10, 5)}
    assert journal.known_files("other", "a") == {}  # another root's folder of the same name
    journal.replace(row.id, pub(frames="1001-1020", missing_frames=None),
                    [FileRecord("shows", "a", "beauty.1020.exr", 10, 6)])
    assert journal.rows()[0].publish.frames == "1001-1020"
    assert set(journal.known_files("shows", "a")) == {"beauty.1001.exr", "beauty.1020.exr"}


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


# -- contract details both journals must share ------------------------------------------------------

def test_keys_like_files_registry_and_counts(journal):
    a, _ = journal.add(pub(key="shows:render:a_%:v1"), [FileRecord("s", "x", "a.1.exr", 1, 1)])
    b, _ = journal.add(pub(key="shows:render:a_%:v2"), [])
    journal.add(pub(key="shows:render:aX%:v1"), [])  # '_' and '%' are literal in the prefix
    assert [r.id for r in journal.keys_like("shows:render:a_%:")] == [a.id, b.id]
    journal.remember_files(b.id, [FileRecord("s", "x", "a.1.exr", 2, 3), FileRecord("s", "x", "b.1.exr", 4, 5)], "kept")
    assert journal.known_files("s", "x") == {"a.1.exr": (2, 3, b.id), "b.1.exr": (4, 5, b.id)}  # moved to b
    assert journal.files_of(a.id) == {}
    assert journal.events(b.id)[-1][1:] == ("note", "kept")
    assert journal.counts() == {"pending": 3, "publishing": 0, "published": 0, "failed": 0, "baseline": 0}
    assert journal.next_due() == min(r.next_attempt_at for r in journal.rows())
    assert [r.id for r in journal.rows(ids=[b.id])] == [b.id] and len(journal.rows(limit=2)) == 2
    assert journal.by_key("shows:render:a_%:v2").id == b.id and journal.by_key("nope") is None
    registry = Registry(journal.url if journal.url.startswith("sqlite") else journal.database._dsn)
    i1, t1 = registry.add("k", {"v": 1})
    i2, t2 = registry.add("k", {"v": 2})
    assert (i1, t1) == (i2, t2) and registry.entries()[-1][3] == {"v": 2}
    registry.close()


def test_release_requeue_ids_and_replace_guard(journal):
    r1, _ = journal.add(pub(key="k1"), [])
    r2, _ = journal.add(pub(key="k2"), [])
    c = journal.claim("a", time.time() + 1, 60)
    journal.release(c.id, "a")
    r = journal.rows(ids=[c.id])[0]
    assert r.status == Status.PENDING and r.uncertain and r.attempts == 0
    c = journal.claim("a", time.time() + 1, 60)
    assert c.key == "k2"  # due since it was added, before k1 was released
    with pytest.raises(TransitionError):  # publishing rows cannot be replaced under their agent
        journal.replace(c.id, pub(key="k2"), [])
    journal.fail(c.id, "a", "refused")
    assert journal.requeue([r1.id, c.id]) == [c.id]  # only failed rows move
    assert journal.requeue([c.id]) == []
    journal.save_state(c.id, {"n": 1, "ids": ["x"]})
    assert journal.by_key("k2").state == {"n": 1, "ids": ["x"]}
    again = journal.replace(r1.id, pub(key="k1", version=4), [], revision=2)
    assert again.revision == 2 and again.publish.version == 4


# -- PostgreSQL only ----------------------------------------------------------------------------------

def test_pg_migrations_version_and_newer_schema_refused(pg_url, pg_server):
    j = PostgresJournal(pg_url)
    assert j.schema_version() == SCHEMA_VERSION
    j.close()
    PostgresJournal(pg_url).close()  # reopening applies nothing twice
    with psycopg_connect(pg_url) as c:
        assert c.execute("SELECT version FROM watcher_schema ORDER BY version").fetchall() == \
            [(v,) for v in range(1, SCHEMA_VERSION + 1)]
        c.execute("INSERT INTO watcher_schema (version) VALUES (%s)", (SCHEMA_VERSION + 1,))
    with pytest.raises(JournalError, match="newer than this watcher"):
        PostgresJournal(pg_url)


def test_pg_concurrent_migrations_are_safe(pg_url):
    n = 4
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def start():
        barrier.wait()
        try:
            PostgresJournal(pg_url).close()
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with psycopg_connect(pg_url) as c:
        assert c.execute("SELECT count(*) FROM watcher_schema").fetchone()[0] == SCHEMA_VERSION


def test_pg_concurrent_agents_never_double_claim(pg_url):
    """4 agents (4 journals, 4 connections) drain 200 rows: each row claimed exactly once."""
    setup = PostgresJournal(pg_url)
    ids = [setup.add(pub(key=f"k{i}"), [])[0].id for i in range(200)]
    agents = [PostgresJournal(pg_url) for _ in range(4)]
    got: dict[str, list[int]] = {f"agent-{i}": [] for i in range(4)}
    barrier = threading.Barrier(4)

    errors: list[BaseException] = []

    def worker(name, j):
        barrier.wait()
        try:
            while True:
                r = j.claim(name, time.time() + 1, 60)
                if r is None:
                    return
                assert r.status == Status.PUBLISHING
                got[name].append(r.id)
                j.published(r.id, name, "local", TrackerRef(str(r.id)))  # guarded: raises if not ours
        except BaseException as exc:  # noqa: BLE001 - asserted below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(name, j)) for name, j in zip(got, agents)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    claimed = [i for ids_ in got.values() for i in ids_]
    assert sorted(claimed) == ids
    assert sum(1 for ids_ in got.values() if ids_) >= 2  # they really ran side by side
    assert setup.counts()["published"] == 200
    with psycopg_connect(pg_url) as c:
        assert c.execute("SELECT count(*), count(DISTINCT publish_id) FROM events WHERE status='publishing'").fetchone() \
            == (200, 200)
    for j in (setup, *agents):
        j.close()


def test_pg_concurrent_add_of_one_key_makes_one_row(pg_url):
    agents = [PostgresJournal(pg_url) for _ in range(4)]
    barrier = threading.Barrier(4)
    results: list[tuple[int, bool]] = []

    def add(j):
        barrier.wait()
        try:
            row, created = j.add(pub(), [FileRecord("shows", "a", "beauty.1001.exr", 10, 1)])
            results.append((row.id, created))
        except BaseException as exc:  # noqa: BLE001 - shows up as a missing result below
            results.append((-1, repr(exc)))

    threads = [threading.Thread(target=add, args=(j,)) for j in agents]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({i for i, _ in results}) == 1 and sorted(c for _, c in results) == [False, False, False, True]
    assert len(agents[0].rows()) == 1
    for j in agents:
        j.close()


def test_pg_expired_lease_is_recovered_by_another_agent_as_uncertain(pg_url):
    a, b = PostgresJournal(pg_url), PostgresJournal(pg_url)
    row, _ = a.add(pub(), [])
    t0 = time.time()
    assert a.claim("hostA:1:1", t0, lease_seconds=30).id == row.id
    assert b.recover("hostB:2:2", t0 + 10, alive=lambda agent: True) == 0  # alive and inside its lease
    a.renew(row.id, "hostA:1:1", t0 + 60)
    assert b.recover("hostB:2:2", t0 + 45, alive=lambda agent: True) == 0  # renewed
    assert b.recover("hostB:2:2", t0 + 61, alive=lambda agent: True) == 1  # lease over: A is presumed gone
    r = b.rows()[0]
    assert r.status == Status.PENDING and r.uncertain
    assert "lease expired" in b.events(row.id)[-1][2]
    with pytest.raises(TransitionError):  # A comes back late: its row is no longer its own
        a.published(row.id, "hostA:1:1", "local", TrackerRef("1"))
    with pytest.raises(TransitionError):
        a.renew(row.id, "hostA:1:1", t0 + 120)
    again = b.claim("hostB:2:2", t0 + 62, 30)
    assert again.id == row.id and again.uncertain  # B's backend looks before it creates
    b.published(row.id, "hostB:2:2", "local", TrackerRef("7"))
    assert a.rows()[0].status == Status.PUBLISHED
    a.close()
    b.close()


def test_pg_recover_skips_a_row_its_owner_is_moving(pg_url):
    """A row locked by its owner's transition is not stolen by a concurrent recover."""
    a = PostgresJournal(pg_url)
    row, _ = a.add(pub(), [])
    a.claim("hostA:1:1", time.time(), 1)
    with psycopg_connect(pg_url) as c, c.transaction():
        c.execute("SELECT 1 FROM publishes WHERE id=%s FOR UPDATE", (row.id,))  # the owner mid-update
        assert a.recover("hostB:2:2", time.time() + 100, alive=lambda agent: False) == 0
    assert a.recover("hostB:2:2", time.time() + 100, alive=lambda agent: False) == 1
    a.close()


def test_pg_wrong_password_is_a_journal_error_without_the_password(pg_server, pg_url, caplog):
    caplog.set_level(logging.DEBUG)  # psycopg's own debug logging included
    secret = "Not-The-Pass-Word-8817"
    url = pg_server.url("watcher_tests", password=secret)
    with pytest.raises(JournalError) as err:
        open_journal(url)
    text = str(err.value)
    assert secret not in text and secret not in repr(err.value) and secret not in caplog.text
    assert "password authentication failed" in text and f"127.0.0.1:{pg_server.port}" in text
    assert "database watcher_tests" in text and "check that" in text
    assert err.value.__suppress_context__


def test_pg_unreachable_server_says_what_to_check():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nobody listens here once closed
    t = time.monotonic()
    with pytest.raises(JournalError, match=rf"127\.0\.0\.1:{port}.*check that the server is running") as err:
        PostgresJournal(f"postgresql://watcher:hunter2-secret@127.0.0.1:{port}/journal")
    assert "hunter2-secret" not in str(err.value) and time.monotonic() - t < 5


def test_pg_url_is_redacted_for_display(pg_url, pg_server):
    j = PostgresJournal(pg_url)
    assert pg_server.password not in j.url and j.url == pg_url.replace(pg_server.password, "***")
    j.close()
    assert pgj.redact("postgresql://u:p%40ss@h/db?password=x&sslmode=require") == \
        "postgresql://u:***@h/db?password=***&sslmode=require"


def test_pg_reconnects_after_the_server_drops_the_connection(pg_url, pg_server):
    j = PostgresJournal(pg_url)
    j.add(pub(), [])
    pid = j._conn().info.backend_pid
    pg_server.execute("SELECT pg_terminate_backend(%s)", (pid,))
    assert j.counts()["pending"] == 1  # the dead connection was replaced, the call retried
    assert j._conn().info.backend_pid != pid
    j.close()


def test_pg_connections_of_finished_threads_are_closed(pg_url):
    """One connection per thread, and none left behind by threads that have ended."""
    j = PostgresJournal(pg_url)
    first = threading.Thread(target=j.counts)
    first.start()
    first.join()
    old = [c for th, c in j._conns if th is first]
    assert len(old) == 1 and not old[0].closed
    second = threading.Thread(target=j.counts)  # its new connection sweeps the dead thread's
    second.start()
    second.join()
    assert old[0].closed and all(th is not first for th, _ in j._conns)
    j.close()
    assert all(c.closed for c in old)


def psycopg_connect(url):
    import psycopg

    return psycopg.connect(url, autocommit=True)


def test_pg_deadlock_is_rolled_back_and_retried(pg_url):
    """A server-reported deadlock (40P01) undoes the transaction; the journal runs it again."""
    j = PostgresJournal(pg_url)
    calls = []

    def body(cur):
        calls.append(1)
        cur.execute("INSERT INTO registry (key, created_at, payload) VALUES (?, 0, '{}')", (f"k{len(calls)}",))
        if len(calls) == 1:
            cur.execute("DO $$ BEGIN RAISE EXCEPTION 'simulated' USING ERRCODE = '40P01'; END $$")
        return len(calls)

    assert j._tx(body) == 2
    assert [k for _, k, _, _ in Registry(pg_url).entries()] == ["k2"]  # the first attempt left nothing behind
    j.close()


def test_pg_two_agents_publish_each_row_once_through_the_pipeline(pg_url):
    """Two agents (journal + local backend + publisher threads each) share one PostgreSQL queue."""
    from pathlib import Path

    from watcher.publish.base import BackendContext
    from watcher.publish.local import LocalBackend, LocalSettings
    from watcher.publish.workers import Publishers

    seed = PostgresJournal(pg_url)
    agents = []
    for n in range(2):
        j = PostgresJournal(pg_url)
        backend = LocalBackend(LocalSettings(), BackendContext(config_dir=Path("."), roots={}, journal_url=pg_url))
        agents.append((j, Publishers(j, backend, f"host{n}:{n}:0", workers=2)))
    for _, p in agents:
        p.start()
    n = 600
    for i in range(0, n, 20):  # rows arrive while both agents claim in batches
        seed.add_many([(pub(key=f"shows:render:{k}"), []) for k in range(i, i + 20)])
        time.sleep(0.1)  # 3 s of arrivals: on a loaded machine both agents get to claim some
    deadline = time.monotonic() + 30
    while seed.counts()["published"] < n and time.monotonic() < deadline:
        time.sleep(0.05)
    for j, p in agents:
        p.stop(grace=5)
        j.close()
    assert seed.counts() == {"pending": 0, "publishing": 0, "published": n, "failed": 0, "baseline": 0}
    assert sum(p.published for _, p in agents) == n and all(p.published for _, p in agents)
    assert len(Registry(pg_url).entries()) == n and len({r.tracker_id for r in seed.rows()}) == n
    seed.close()


def test_missing_postgresql_is_reported_not_skipped(monkeypatch):
    import tests.pg_server as pgs

    monkeypatch.setattr(pgs.glob, "glob", lambda pattern: [])
    with pytest.raises(pgs.PgUnavailable, match="apt|postgresql"):
        pgs.start_postgres()


def test_pg_agents_need_only_row_privileges_once_the_schema_is_current(pg_url, pg_server):
    """The usual split: an owner role migrates; agents' role reads and writes rows only."""
    schema = pg_url.rsplit("%3D", 1)[1]
    role, secret = f"agent_{schema}", "agent-S3cret-pw"
    pg_server.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{secret}'")
    agent_url = pg_server.url("watcher_tests", user=role, password=secret, schema=schema)
    with pytest.raises(JournalError, match="cannot create or upgrade the journal's tables .* database owner") as err:
        PostgresJournal(agent_url)  # nothing there yet, and it may not create tables
    assert secret not in str(err.value)
    PostgresJournal(pg_url).close()  # the owner migrates
    with psycopg_connect(pg_url) as c:
        c.execute(f"GRANT USAGE ON SCHEMA {schema} TO {role}")
        c.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {role}")
        c.execute(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA {schema} TO {role}")
    j = PostgresJournal(agent_url)
    row, created = j.add(pub(), [])
    assert created and j.claim("a", time.time() + 1, 60).id == row.id
    j.close()


def test_a_version_1_journal_is_migrated_to_root_relative_file_records(tmp_path):
    """Journals made before file records were keyed by root: absolute directories become root
    name + root-relative directory, read from each publish's own root."""
    import sqlite3

    from watcher.journal.ledger import MIGRATIONS
    from watcher.journal.sqlite import SQLITE

    db = tmp_path / "old.db"
    c = sqlite3.connect(db)
    for stmt in SQLITE.ddl(MIGRATIONS[0]):
        c.execute(stmt)
    payload = json.dumps(pub(root="shows", root_path="/mnt/shows").to_dict())
    c.execute("INSERT INTO publishes (key, status, payload, created_at, updated_at) VALUES ('k', 'published', ?, 0, 0)",
              (payload,))
    c.executemany("INSERT INTO files (dir, name, size, mtime_ns, publish_id) VALUES (?, ?, 1, 2, 1)",
                  [("/mnt/shows/a/b", "x.1001.exr"), ("/mnt/shows", "top.nk")])
    c.execute("PRAGMA user_version=1")
    c.commit()
    c.close()
    j = SqliteJournal(f"sqlite:///{db}")
    try:
        assert j.schema_version() == SCHEMA_VERSION
        assert j.known_files("shows", "a/b") == {"x.1001.exr": (1, 2, 1)}
        assert j.known_files("shows", "") == {"top.nk": (1, 2, 1)}
        assert j.files_of(1) == {("shows", "a/b/x.1001.exr"): (1, 2), ("shows", "top.nk"): (1, 2)}
    finally:
        j.close()


# -- batch statements: rows travel as VALUES (SQLite) or one JSON document (PostgreSQL) ----------
AWKWARD = ["plain", "", "quote ' and \" double", "back\\slash", "tab\tnew\nline", "ünïcödé ✓ 日本", "comma, {brace}",
           "NULL", "%s ? %(x)s", "[1,2]", " lead and trail "]


def test_batch_rows_round_trip_every_kind_of_value(journal):
    """Texts with quotes, backslashes, placeholders and JSON look-alikes, None, big integers,
    exact floats, booleans and nested JSON come back as they went in, on both databases."""
    from watcher.journal.ledger import insert_rows

    d = journal.db.dialect
    rows = [(f"k{i}-{t}", t if i % 3 else None, 2**53 + i, 1764680000.123456 + i / 7, bool(i % 2),
             {"t": t, "n": [i, None, 1.5], "nested": {"deep": t}}) for i, t in enumerate(AWKWARD * 40)]

    def run(cur):
        cur.execute("CREATE TEMPORARY TABLE batch_probe (k TEXT PRIMARY KEY, t TEXT, big BIGINT, r "
                    + ("DOUBLE PRECISION" if d.name == "postgres" else "REAL") + ", b "
                    + ("BOOLEAN" if d.name == "postgres" else "INTEGER") + ", j "
                    + ("JSONB" if d.name == "postgres" else "TEXT") + ")")
        got = insert_rows(cur, d, "INSERT INTO batch_probe (k, t, big, r, b, j)",
                          ("text", "text", "bigint", "real", "bool", "json"),
                          [(k, t, big, r, b, d.to_json(j)) for k, t, big, r, b, j in rows], "RETURNING k")
        assert sorted(x[0] for x in got) == sorted(r[0] for r in rows)
        cond, params = d.any_of("k", [r[0] for r in rows[:300]])
        n = cur.execute(f"SELECT COUNT(*) FROM batch_probe WHERE {cond}", params).fetchone()[0]
        back = cur.execute("SELECT k, t, big, r, b, j FROM batch_probe").fetchall()
        cur.execute("DROP TABLE batch_probe")
        return n, back

    n, back = journal.db.write(run)
    assert n == 300
    got = {k: (t, big, r, bool(b), d.from_json(j)) for k, t, big, r, b, j in back}
    assert got == {k: (t, big, r, b, j) for k, t, big, r, b, j in rows}


# -- one agent watches a shared root (`watched_by: one`) -----------------------------------------
def test_watches_one_agent_per_root_taken_over_when_its_agent_is_gone(journal):
    """The first agent takes a free root; another sees it held while the holder's heartbeat is
    fresh, and takes it once the holder went silent past the timeout, stopped cleanly, or is a
    process known dead. Roots are independent."""
    now = [1000.0]
    journal._clock = lambda: now[0]
    everyone_alive = lambda _agent: True  # noqa: E731
    journal.heartbeat("A", "h", 1, 1.0, ["shows", "vendor"])
    assert journal.take_watches("A", ["shows", "vendor"], 30, everyone_alive) == {"shows": "A", "vendor": "A"}
    now[0] += 5
    journal.heartbeat("B", "h", 2, 1.0, ["shows", "plates"])
    assert journal.take_watches("B", ["shows", "plates"], 30, everyone_alive) == {"shows": "A", "plates": "B"}
    now[0] += 20  # A's heartbeat is 25 s old: still A's
    journal.heartbeat("B", "h", 2, 1.0, ["shows", "plates"])
    assert journal.take_watches("B", ["shows"], 30, everyone_alive) == {"shows": "A"}
    assert journal.take_watches("B", ["shows"], 30, lambda agent: agent != "A") == {"shows": "B"}  # A died
    assert journal.watches() == {"shows": "B", "vendor": "A", "plates": "B"}
    # A comes back (it was frozen): the root stays B's, A's other root stays A's
    journal.heartbeat("A", "h", 1, 1.0, ["shows", "vendor"])
    assert journal.take_watches("A", ["shows", "vendor"], 30, everyone_alive) == {"shows": "B", "vendor": "A"}
    now[0] += 31  # B silent past the timeout; A beats on
    journal.heartbeat("A", "h", 1, 1.0, ["shows", "vendor"])
    assert journal.take_watches("A", ["shows", "vendor"], 30, everyone_alive) == {"shows": "A", "vendor": "A"}
    journal.agent_stopped("A")  # a clean stop frees its roots at once
    assert journal.watches() == {"plates": "B"}
    journal.heartbeat("B", "h", 2, 1.0, ["shows", "plates"])
    assert journal.take_watches("B", ["shows", "plates"], 30, everyone_alive) == {"shows": "B", "plates": "B"}
    by_agent = {a["agent"]: (a["watching"], a["live"]) for a in journal.agents(30)}
    assert by_agent == {"A": ([], False), "B": (["plates", "shows"], True)}  # A stopped


def test_pg_watches_two_agents_racing_for_a_free_root_one_wins(pg_url):
    """Agents starting together: each takes the root in its own transaction, on its own
    connection; exactly one holds it, and both agree on which."""
    js = [open_journal(pg_url) for _ in range(2)]
    try:
        js[0].db.write(lambda cur: cur.execute("DELETE FROM watches WHERE root='race'"))
        for i, j in enumerate(js):
            j.heartbeat(f"racer{i}", "h", i, 1.0, ["race"])
        out: list[dict[str, str]] = [{}, {}]
        barrier = threading.Barrier(2)

        def take(i: int) -> None:
            barrier.wait()
            out[i] = js[i].take_watches(f"racer{i}", ["race"], 30, lambda _a: True)

        ts = [threading.Thread(target=take, args=(i,)) for i in range(2)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert out[0] == out[1] and out[0]["race"] in ("racer0", "racer1")
    finally:
        for j in js:
            j.close()


def test_pg_batch_statements_look_rows_up_by_index_not_by_scanning_the_journal(pg_url):
    """A batch of outcomes on a journal of thousands of rows: no statement of claim, published
    or lookup reads the whole `publishes` table (a hash join against a batch the planner cannot
    size did, once per batch: 900 us of server time per publish at 10,000 rows)."""
    j = open_journal(pg_url)
    try:
        j.add_many([(pub(key=f"scan:{i}"), [FileRecord("shows", "a", f"f{i}.nk", 1, 1)]) for i in range(3000)])
        with psycopg_connect(pg_url) as c:
            c.execute("ANALYZE publishes")

            def seq_scans() -> int:
                time.sleep(0.6)  # a backend reports its table statistics at most every 500 ms
                return c.execute("SELECT seq_scan FROM pg_stat_user_tables WHERE relname='publishes'").fetchone()[0]

            steps = {"claim": lambda: len(j.claim_many("agent", time.time() + 1, 60, 300)) == 300,
                     "published": lambda: j.published_many("agent", "local", [(i, TrackerRef(id=str(i))) for i in
                                                                              range(1, 301)]) == [],
                     "by_keys": lambda: len(j.by_keys([f"scan:{i}" for i in range(0, 3000, 7)])) == 429}
            scanned = {}
            for name, step in steps.items():
                before = seq_scans()
                assert step()
                j.close()  # its backends flush their statistics as they end
                scanned[name] = seq_scans() - before
            assert scanned == {name: 0 for name in steps}
    finally:
        j.close()


def test_watches_a_root_its_watcher_no_longer_has_is_free(journal):
    """A reload that removes a root (or makes it `watched_by: every`) frees it at the agent's
    next heartbeat; a holder whose heartbeat lists no such root counts as gone for it."""
    alive = lambda _agent: True  # noqa: E731
    journal.heartbeat("A", "h", 1, 1.0, ["shows", "vendor"], ["shows", "vendor"])
    assert journal.take_watches("A", ["shows", "vendor"], 30, alive) == {"shows": "A", "vendor": "A"}
    journal.heartbeat("A", "h", 1, 1.0, ["vendor"], ["vendor"])  # `shows` removed by a reload
    assert journal.watches() == {"vendor": "A"}
    journal.heartbeat("B", "h", 2, 1.0, ["shows", "vendor"], ["shows", "vendor"])
    assert journal.take_watches("B", ["shows", "vendor"], 30, alive) == {"shows": "B", "vendor": "A"}
    # an older agent that keeps its row: its heartbeat's roots say it has no `vendor` any more
    journal.heartbeat("A", "h", 1, 1.0, ["plates"])
    assert journal.take_watches("B", ["vendor"], 30, alive) == {"vendor": "B"}
