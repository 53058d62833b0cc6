"""SQLite journal (the embedded default): WAL mode so that `watcher publishes` reads while
`watcher run` writes, one connection per thread, ``BEGIN IMMEDIATE`` for every write so that
claims never race."""
from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from ..errors import JournalError
from ..model import Publish, TrackerRef
from .base import FileRecord, Journal, Row, Status, TransitionError

# Each entry migrates from version i to i+1; never edit a released entry, append a new one.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE publishes (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        key TEXT NOT NULL UNIQUE,
        status TEXT NOT NULL CHECK (status IN ('pending','publishing','published','failed')),
        payload TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        uncertain INTEGER NOT NULL DEFAULT 0,
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
        published_at REAL
    );
    CREATE INDEX publishes_due ON publishes (status, next_attempt_at);
    CREATE TABLE files (
        dir TEXT NOT NULL,
        name TEXT NOT NULL,
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        publish_id INTEGER NOT NULL REFERENCES publishes (id) ON DELETE CASCADE,
        PRIMARY KEY (dir, name)
    ) WITHOUT ROWID;
    CREATE INDEX files_publish ON files (publish_id);
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        publish_id INTEGER NOT NULL,
        at REAL NOT NULL,
        status TEXT NOT NULL,
        message TEXT
    );
    CREATE TABLE registry (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        key TEXT NOT NULL UNIQUE,
        created_at REAL NOT NULL,
        payload TEXT NOT NULL
    );
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)

COLUMNS = ("id, key, status, payload, attempts, uncertain, last_error, next_attempt_at, tracker, tracker_id, "
           "tracker_url, state, created_at, updated_at, published_at, revision")


def _row(r: tuple[Any, ...]) -> Row:
    return Row(id=r[0], key=r[1], status=Status(r[2]), publish=Publish.from_dict(json.loads(r[3])), attempts=r[4],
               uncertain=bool(r[5]), last_error=r[6], next_attempt_at=r[7], tracker=r[8], tracker_id=r[9],
               tracker_url=r[10], state=json.loads(r[11]) if r[11] else {}, created_at=r[12], updated_at=r[13],
               published_at=r[14], revision=r[15])


def dumps(obj: Any) -> str:
    return json.dumps(obj, default=str, ensure_ascii=False, separators=(",", ":"))


class SqliteJournal(Journal):
    def __init__(self, url: str, *, clock: Callable[[], float] = time.time) -> None:
        self.url = url
        path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else url[len("sqlite://"):]
        if not path or path == ":memory:":
            raise JournalError("journal: an in-memory SQLite journal would lose everything on exit; give a file path")
        self.path = Path(path)
        self._clock = clock
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise JournalError(f"journal: cannot create {self.path.parent}: {exc.strerror or exc}") from None
        self._migrate()

    # -- connections -------------------------------------------------------------------------
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
            with self._lock:
                self._conns.append(c)
        return c

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        c = self._conn()
        c.execute("BEGIN IMMEDIATE")
        try:
            yield c
        except BaseException:
            c.execute("ROLLBACK")
            raise
        else:
            c.execute("COMMIT")

    def _migrate(self) -> None:
        with self._write() as c:
            version = c.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise JournalError(f"journal: {self.path} has schema version {version}, newer than this watcher "
                                   f"({SCHEMA_VERSION}); upgrade watcher")
            for i in range(version, SCHEMA_VERSION):
                for stmt in MIGRATIONS[i].split(";"):
                    if stmt.strip():
                        c.execute(stmt)
                c.execute(f"PRAGMA user_version={i + 1}")

    def schema_version(self) -> int:
        return self._conn().execute("PRAGMA user_version").fetchone()[0]

    # -- helpers -----------------------------------------------------------------------------
    def _event(self, c: sqlite3.Connection, publish_id: int, status: str, message: str | None = None) -> None:
        c.execute("INSERT INTO events (publish_id, at, status, message) VALUES (?,?,?,?)",
                  (publish_id, self._clock(), status, message))

    def _move(self, c: sqlite3.Connection, row_id: int, frm: tuple[str, ...], sql_set: str, params: tuple[Any, ...],
              agent: str | None = None) -> None:
        """A guarded transition: update only when the row is in one of ``frm`` (and owned by
        ``agent``); anything else means someone moved it first."""
        where = f"id=? AND status IN ({','.join('?' * len(frm))})" + (" AND agent=?" if agent is not None else "")
        args = (*params, self._clock(), row_id, *frm) + ((agent,) if agent is not None else ())
        if c.execute(f"UPDATE publishes SET {sql_set}, updated_at=? WHERE {where}", args).rowcount != 1:
            raise TransitionError(f"publish {row_id}: not in state {'/'.join(frm)}" + (f" for agent {agent}" if agent else ""))

    def _files(self, c: sqlite3.Connection, row_id: int, files: Iterable[FileRecord]) -> None:
        c.executemany("INSERT OR REPLACE INTO files (dir, name, size, mtime_ns, publish_id) VALUES (?,?,?,?,?)",
                      ((f.dir, f.name, f.size, f.mtime_ns, row_id) for f in files))

    # -- Journal -----------------------------------------------------------------------------
    def add(self, publish: Publish, files: Iterable[FileRecord]) -> tuple[Row, bool]:
        now = self._clock()
        with self._write() as c:
            hit = c.execute(f"SELECT {COLUMNS} FROM publishes WHERE key=?", (publish.key,)).fetchone()
            if hit:
                return _row(hit), False
            cur = c.execute("INSERT INTO publishes (key, status, payload, created_at, updated_at, next_attempt_at) "
                            "VALUES (?, 'pending', ?, ?, ?, ?)", (publish.key, dumps(publish.to_dict()), now, now, now))
            row_id = cur.lastrowid
            self._files(c, row_id, files)
            self._event(c, row_id, "pending")
            row = c.execute(f"SELECT {COLUMNS} FROM publishes WHERE id=?", (row_id,)).fetchone()
        return _row(row), True

    def replace(self, row_id: int, publish: Publish, files: Iterable[FileRecord], *, revision: int | None = None) -> Row:
        now = self._clock()
        with self._write() as c:
            self._move(c, row_id, ("published", "failed", "pending"),
                       "status='pending', payload=?, attempts=0, last_error=NULL, next_attempt_at=?, "
                       "revision=COALESCE(?, revision)", (dumps(publish.to_dict()), now, revision))
            self._files(c, row_id, files)
            self._event(c, row_id, "pending", "files changed: republish")
            return _row(c.execute(f"SELECT {COLUMNS} FROM publishes WHERE id=?", (row_id,)).fetchone())

    def claim(self, agent: str, now: float, lease_seconds: float, *, exclude_keys: set[str] = frozenset()) -> Row | None:  # type: ignore[assignment]
        with self._write() as c:
            for r in c.execute(f"SELECT {COLUMNS} FROM publishes WHERE status='pending' AND next_attempt_at<=? "
                               "ORDER BY next_attempt_at, id LIMIT ?", (now, len(exclude_keys) + 1)):
                if r[1] in exclude_keys:
                    continue
                c.execute("UPDATE publishes SET status='publishing', agent=?, lease_until=?, updated_at=? WHERE id=?",
                          (agent, now + lease_seconds, now, r[0]))
                self._event(c, r[0], "publishing", agent)
                row = _row(r)
                row.status = Status.PUBLISHING
                return row
        return None

    def renew(self, row_id: int, agent: str, until: float) -> None:
        with self._write() as c:
            self._move(c, row_id, ("publishing",), "lease_until=?", (until,), agent)

    def published(self, row_id: int, agent: str, tracker: str, ref: TrackerRef) -> None:
        now = self._clock()
        with self._write() as c:
            self._move(c, row_id, ("publishing",),
                       "status='published', tracker=?, tracker_id=?, tracker_url=?, published_at=?, last_error=NULL, "
                       "uncertain=0, attempts=attempts+1, agent=NULL, lease_until=NULL",
                       (tracker, ref.id, ref.url, now), agent)
            self._event(c, row_id, "published", f"{tracker} {ref.id}")

    def retry_later(self, row_id: int, agent: str, error: str, at: float) -> None:
        with self._write() as c:
            self._move(c, row_id, ("publishing",),
                       "status='pending', last_error=?, next_attempt_at=?, attempts=attempts+1, uncertain=1, "
                       "agent=NULL, lease_until=NULL", (error, at), agent)
            self._event(c, row_id, "retry", error)

    def fail(self, row_id: int, agent: str, error: str) -> None:
        with self._write() as c:
            self._move(c, row_id, ("publishing",),
                       "status='failed', last_error=?, next_attempt_at=NULL, attempts=attempts+1, "
                       "agent=NULL, lease_until=NULL", (error,), agent)
            self._event(c, row_id, "failed", error)

    def release(self, row_id: int, agent: str) -> None:
        with self._write() as c:
            self._move(c, row_id, ("publishing",),
                       "status='pending', uncertain=1, next_attempt_at=?, agent=NULL, lease_until=NULL",
                       (self._clock(),), agent)
            self._event(c, row_id, "pending", "released at shutdown")

    def save_state(self, row_id: int, state: dict[str, Any]) -> None:
        with self._write() as c:
            c.execute("UPDATE publishes SET state=?, updated_at=? WHERE id=?", (dumps(state), self._clock(), row_id))

    def recover(self, agent: str, now: float, alive: Callable[[str], bool]) -> int:
        moved = 0
        with self._write() as c:
            for row_id, owner, lease in c.execute(
                    "SELECT id, agent, lease_until FROM publishes WHERE status='publishing'").fetchall():
                if owner == agent or (owner and alive(owner) and (lease or 0) > now):
                    continue
                c.execute("UPDATE publishes SET status='pending', uncertain=1, next_attempt_at=?, agent=NULL, "
                          "lease_until=NULL, updated_at=? WHERE id=? AND status='publishing'", (now, now, row_id))
                self._event(c, row_id, "pending", f"recovered from {owner} (outcome unknown)")
                moved += 1
        return moved

    def requeue(self, ids: Iterable[int] | None = None, *, failed: bool = False) -> list[int]:
        now = self._clock()
        with self._write() as c:
            if ids is None:
                targets = [r[0] for r in c.execute("SELECT id FROM publishes WHERE status='failed'")]
            else:
                targets = [i for i in ids if c.execute(
                    "SELECT 1 FROM publishes WHERE id=? AND status='failed'", (i,)).fetchone()]
            for i in targets:
                c.execute("UPDATE publishes SET status='pending', next_attempt_at=?, attempts=0, updated_at=? "
                          "WHERE id=?", (now, now, i))
                self._event(c, i, "pending", "retry requested")
        return targets

    def rows(self, status: Status | None = None, *, ids: Iterable[int] | None = None, limit: int | None = None) -> list[Row]:
        sql, args = f"SELECT {COLUMNS} FROM publishes", []
        cond = []
        if status is not None:
            cond.append("status=?")
            args.append(status.value)
        if ids is not None:
            ids = list(ids)
            cond.append(f"id IN ({','.join('?' * len(ids))})")
            args += ids
        if cond:
            sql += " WHERE " + " AND ".join(cond)
        sql += " ORDER BY id"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return [_row(r) for r in self._conn().execute(sql, args)]

    def by_key(self, key: str) -> Row | None:
        r = self._conn().execute(f"SELECT {COLUMNS} FROM publishes WHERE key=?", (key,)).fetchone()
        return _row(r) if r else None

    def keys_like(self, prefix: str) -> list[Row]:
        esc = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return [_row(r) for r in self._conn().execute(
            f"SELECT {COLUMNS} FROM publishes WHERE key LIKE ? ESCAPE '\\' ORDER BY id", (esc + "%",))]

    def known_files(self, directory: str) -> dict[str, tuple[int, int, int]]:
        return {name: (size, mtime, pid) for name, size, mtime, pid in self._conn().execute(
            "SELECT name, size, mtime_ns, publish_id FROM files WHERE dir=?", (directory,))}

    def files_of(self, publish_id: int) -> dict[str, tuple[int, int]]:
        return {os.path.join(d, n): (size, mtime) for d, n, size, mtime in self._conn().execute(
            "SELECT dir, name, size, mtime_ns FROM files WHERE publish_id=?", (publish_id,))}

    def remember_files(self, publish_id: int, files: Iterable[FileRecord], note: str | None = None) -> None:
        with self._write() as c:
            self._files(c, publish_id, files)
            if note:
                self._event(c, publish_id, "note", note)

    def next_due(self) -> float | None:
        r = self._conn().execute("SELECT MIN(next_attempt_at) FROM publishes WHERE status='pending'").fetchone()
        return r[0]

    def counts(self) -> dict[str, int]:
        out = {s.value: 0 for s in Status}
        for status, n in self._conn().execute("SELECT status, COUNT(*) FROM publishes GROUP BY status"):
            out[status] = n
        return out

    def registry_add(self, key: str, payload: dict[str, Any]) -> tuple[int, float]:
        with self._write() as c:
            hit = c.execute("SELECT id, created_at FROM registry WHERE key=?", (key,)).fetchone()
            if hit:
                c.execute("UPDATE registry SET payload=? WHERE id=?", (dumps(payload), hit[0]))
                return hit[0], hit[1]
            now = self._clock()
            cur = c.execute("INSERT INTO registry (key, created_at, payload) VALUES (?,?,?)", (key, now, dumps(payload)))
            return cur.lastrowid, now

    def registry(self) -> list[tuple[int, str, float, dict[str, Any]]]:
        return [(i, k, t, json.loads(p)) for i, k, t, p in
                self._conn().execute("SELECT id, key, created_at, payload FROM registry ORDER BY id")]

    def events(self, publish_id: int) -> list[tuple[float, str, str | None]]:
        return list(self._conn().execute(
            "SELECT at, status, message FROM events WHERE publish_id=? ORDER BY id", (publish_id,)))

    def close(self) -> None:
        with self._lock:
            for c in self._conns:
                try:
                    c.close()
                except sqlite3.Error:
                    pass
            self._conns.clear()
        self._local = threading.local()


def agent_id() -> str:
    import socket

    return f"{socket.gethostname()}:{os.getpid()}:{int(time.time())}"
