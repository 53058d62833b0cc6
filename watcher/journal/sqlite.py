"""SQLite under the journal (the embedded default): WAL mode so that `watcher publishes` reads
while `watcher run` writes, one connection per thread, ``BEGIN IMMEDIATE`` for every write so
that claims never race. The schema version is SQLite's ``user_version``."""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Callable, TypeVar

from ..errors import JournalError
from .ledger import Cursor, Database, Dialect, Journal, dumps

T = TypeVar("T")

# SQLite cannot alter a CHECK constraint: `publishes` is rebuilt with the new one, as SQLite's
# documentation says (new table, copy, drop, rename, indexes), keeping ids and the AUTOINCREMENT
# counter. ``migrate`` turns foreign keys off around it, or the DROP would delete every file record
# through ``files.publish_id ... ON DELETE CASCADE``; it checks them before committing.
REBUILD_PUBLISHES_V7 = """
    CREATE TABLE publishes_v7 (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        key TEXT NOT NULL UNIQUE,
        status TEXT NOT NULL CHECK (status IN ({statuses})),
        payload TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        uncertain INTEGER NOT NULL DEFAULT FALSE,
        last_error TEXT,
        next_attempt_at REAL,
        tracker TEXT,
        tracker_id TEXT,
        tracker_url TEXT,
        state TEXT,
        agent TEXT,
        lease_until REAL,
        revision INTEGER NOT NULL DEFAULT 1,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        published_at REAL,
        adopted INTEGER NOT NULL DEFAULT FALSE
    );
    INSERT INTO publishes_v7 (id, key, status, payload, attempts, uncertain, last_error, next_attempt_at, tracker,
                              tracker_id, tracker_url, state, agent, lease_until, revision, created_at, updated_at,
                              published_at, adopted)
        SELECT id, key, status, payload, attempts, uncertain, last_error, next_attempt_at, tracker, tracker_id,
               tracker_url, state, agent, lease_until, revision, created_at, updated_at, published_at, adopted
        FROM publishes;
    DELETE FROM sqlite_sequence WHERE name = 'publishes_v7';
    INSERT INTO sqlite_sequence (name, seq) SELECT 'publishes_v7', seq FROM sqlite_sequence WHERE name = 'publishes';
    DROP TABLE publishes;
    ALTER TABLE publishes_v7 RENAME TO publishes;
    CREATE INDEX publishes_due ON publishes (status, next_attempt_at, id)
"""

SQLITE = Dialect(
    name="sqlite",
    types={"id": "INTEGER PRIMARY KEY AUTOINCREMENT", "json": "TEXT", "bool": "INTEGER", "real": "REAL",
           "text": "TEXT", "bigint": "INTEGER", "rowid_free": "WITHOUT ROWID",
           "payload_root": "json_extract(p.payload, '$.root')", "payload_root_path": "json_extract(p.payload, '$.root_path')",
           "status_check_v7": REBUILD_PUBLISHES_V7},
    to_json=dumps,
    from_json=json.loads,
)
# UPSERT and RETURNING, which the ledger uses, arrived in SQLite 3.35 (2021).
MIN_SQLITE = (3, 35, 0)


class SqliteDatabase(Database):
    dialect = SQLITE

    def __init__(self, url: str) -> None:
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            raise JournalError(f"journal: this Python's SQLite is {sqlite3.sqlite_version}; watcher needs 3.35 or "
                               "newer (use a newer Python, or a postgresql:// journal)")
        self.url = url
        path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else url[len("sqlite://"):]
        if not path or path == ":memory:":
            raise JournalError("journal: an in-memory SQLite journal would lose everything on exit; give a file path")
        self.path = Path(path)
        self._local = threading.local()
        self._conns: list[tuple[threading.Thread, sqlite3.Connection]] = []
        self._lock = threading.Lock()
        # One writer at a time inside this process: threads queue on a lock instead of meeting in
        # SQLite's busy handler, which sleeps in growing steps (measured: most of a burst's time).
        self._write_lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise JournalError(f"journal: cannot create {self.path.parent}: {exc.strerror or exc}") from None

    def _conn(self) -> sqlite3.Connection:
        c = getattr(self._local, "conn", None)
        if c is None:
            try:
                c = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
                c.execute("PRAGMA journal_mode=WAL")
                c.execute("PRAGMA synchronous=NORMAL")
                c.execute("PRAGMA foreign_keys=ON")
                c.execute("PRAGMA busy_timeout=30000")
            except sqlite3.Error as exc:
                raise JournalError(f"journal: cannot open {self.path}: {exc}") from None
            self._local.conn = c
            me = threading.current_thread()
            with self._lock:
                # connections of threads that have ended (an HTTP listener's request threads)
                stale = [old for t, old in self._conns if not t.is_alive()]
                self._conns = [(t, old) for t, old in self._conns if t.is_alive()] + [(me, c)]
            for old in stale:
                try:
                    old.close()
                except sqlite3.Error:
                    pass
        return c

    def _fail(self, exc: sqlite3.Error) -> JournalError:
        return JournalError(f"journal: {self.path}: {exc}")

    def write(self, fn: Callable[[Cursor], T]) -> T:
        with self._write_lock:
            return self._write(fn)

    def _write(self, fn: Callable[[Cursor], T]) -> T:
        c = self._conn()
        try:
            c.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise self._fail(exc) from None
        try:
            result = fn(c)
        except BaseException as exc:
            try:
                c.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            if isinstance(exc, sqlite3.Error):
                raise self._fail(exc) from None
            raise
        try:
            c.execute("COMMIT")
        except sqlite3.Error as exc:
            try:
                c.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            raise self._fail(exc) from None
        return result

    def read(self, fn: Callable[[Cursor], T]) -> T:
        try:
            return fn(self._conn())
        except sqlite3.Error as exc:
            raise self._fail(exc) from None

    def migrate(self, steps: list[list[str]]) -> None:
        def run(c: Cursor) -> None:
            version = c.execute("PRAGMA user_version").fetchone()[0]
            if version > len(steps):
                raise JournalError(f"journal: {self.path} has schema version {version}, newer than this watcher "
                                   f"({len(steps)}); upgrade watcher")
            for i in range(version, len(steps)):
                for stmt in steps[i]:
                    c.execute(stmt)
                c.execute(f"PRAGMA user_version={i + 1}")
            if version < len(steps):
                broken = c.execute("PRAGMA foreign_key_check").fetchall()
                if broken:
                    raise JournalError(f"journal: {self.path}: migrating to schema version {len(steps)} would leave "
                                       f"{len(broken)} record(s) pointing nowhere ({broken[0]}); nothing was changed")

        # A step may rebuild a table (SQLite cannot alter a CHECK): with foreign keys on, dropping
        # the old `publishes` would delete every file record (ON DELETE CASCADE). The pragma is a
        # no-op inside a transaction, so it is set around it, on this thread's connection.
        c = self._conn()
        c.execute("PRAGMA foreign_keys=OFF")
        try:
            self.write(run)
        finally:
            c.execute("PRAGMA foreign_keys=ON")

    def schema_version(self) -> int:
        return self.read(lambda c: c.execute("PRAGMA user_version").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            for _, c in self._conns:
                try:
                    c.close()
                except sqlite3.Error:
                    pass
            self._conns.clear()
        self._local = threading.local()


class SqliteJournal(Journal):
    """The ledger over a SQLite file."""

    def __init__(self, url: str, *, clock: Callable[[], float] = time.time) -> None:
        self.database = SqliteDatabase(url)
        super().__init__(self.database, clock=clock)
        self.path = self.database.path

    def _conn(self) -> sqlite3.Connection:
        """This thread's connection (tests, diagnostics)."""
        return self.database._conn()


__all__ = ["SqliteDatabase", "SqliteJournal", "SQLITE"]
