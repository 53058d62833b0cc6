"""The journal's state machine, written once for every database.

A publish is a row; every change of state is one entry of ``TRANSITIONS`` and runs as a guarded
``UPDATE ... WHERE id=? AND status IN (...) [AND agent=?]`` that must move exactly one row, so
two workers (or two agents on a shared PostgreSQL) can never both own a publish::

    pending ──claim──► publishing ──published──► published
       ▲                   │
       ├── retry_later ────┤ (RetryableError, attempts < max)
       ├── release ────────┤ (shutdown) / recover (its agent died or its lease ran out)
       │                   └──fail──► failed (parked: PermanentError or attempts exhausted)
       └──────── requeue (`watcher retry`) ───────┘
    published / failed / pending ──replace──► pending (files changed: republish)

The idempotency key (root, template, fields without frame, version) is unique over all states,
so a candidate seen again (rescan, restart, duplicate event) never becomes a second publish.

What differs per database lives in ``sqlite.py`` / ``postgres.py``: connections, locking, how
the schema version is kept, and a ``Dialect`` (column types, JSON, row locking). Adding a state
is one edit here (``Status`` + ``TRANSITIONS``) plus a migration."""
from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Protocol, TypeVar

from ..model import Publish, TrackerRef
from .base import FileRecord, Row, Status, TransitionError

T = TypeVar("T")


class Cursor(Protocol):
    """What the ledger needs of a DB-API cursor (sqlite3's connection and psycopg's cursor both
    fit; placeholders are ``?``, the PostgreSQL database translates them)."""

    def execute(self, sql: str, params: Any = ...) -> Any: ...

    def executemany(self, sql: str, params: Iterable[Any]) -> Any: ...


@dataclass(frozen=True)
class Dialect:
    """The few things SQL spells differently per database."""

    name: str
    types: dict[str, str]  # DDL placeholders: {id} {json} {bool} {real} {text} {bigint} {rowid_free}
    to_json: Callable[[Any], Any]  # Python object -> parameter
    from_json: Callable[[Any], Any]  # column value -> Python object
    lock_rows: str = ""  # appended to the claim's sub-select: " FOR UPDATE SKIP LOCKED" on PostgreSQL

    def ddl(self, template: str) -> list[str]:
        text = template.format(statuses=", ".join(f"'{s.value}'" for s in Status), **self.types)
        return [s.strip() for s in text.split(";") if s.strip()]


def dumps(obj: Any) -> str:
    return json.dumps(obj, default=str, ensure_ascii=False, separators=(",", ":"))


class Database(ABC):
    """Connections and locking for one database; the ledger runs every statement through it."""

    dialect: Dialect
    url: str  # for display: never holds a password

    @abstractmethod
    def write(self, fn: Callable[[Cursor], T]) -> T:
        """Run ``fn`` in one write transaction (serialised against other writers' claims)."""

    @abstractmethod
    def read(self, fn: Callable[[Cursor], T]) -> T: ...

    @abstractmethod
    def migrate(self, steps: list[list[str]]) -> None:
        """Apply ``steps[v:]`` where v is the stored schema version, each step recorded as done,
        under a lock that keeps agents starting together from racing."""

    @abstractmethod
    def schema_version(self) -> int: ...

    @abstractmethod
    def close(self) -> None: ...


# Each entry migrates from version i to i+1; never edit a released entry, append a new one. The
# ``registry`` table is the local backend's (publish/local.py); the schema is versioned here, once.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE publishes (
        id {id},
        key {text} NOT NULL UNIQUE,
        status TEXT NOT NULL CHECK (status IN ({statuses})),
        payload {json} NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        uncertain {bool} NOT NULL DEFAULT FALSE,
        last_error TEXT,
        next_attempt_at {real},
        tracker TEXT,
        tracker_id TEXT,
        tracker_url TEXT,
        state {json},
        agent TEXT,
        lease_until {real},
        revision INTEGER NOT NULL DEFAULT 1,
        created_at {real} NOT NULL,
        updated_at {real} NOT NULL,
        published_at {real}
    );
    CREATE INDEX publishes_due ON publishes (status, next_attempt_at, id);
    CREATE TABLE files (
        dir {text} NOT NULL,
        name {text} NOT NULL,
        size {bigint} NOT NULL,
        mtime_ns {bigint} NOT NULL,
        publish_id {bigint} NOT NULL REFERENCES publishes (id) ON DELETE CASCADE,
        PRIMARY KEY (dir, name)
    ) {rowid_free};
    CREATE INDEX files_publish ON files (publish_id);
    CREATE TABLE events (
        id {id},
        publish_id {bigint} NOT NULL,
        at {real} NOT NULL,
        status TEXT NOT NULL,
        message TEXT
    );
    CREATE INDEX events_publish ON events (publish_id, id);
    CREATE TABLE registry (
        id {id},
        key {text} NOT NULL UNIQUE,
        created_at {real} NOT NULL,
        payload {json} NOT NULL
    )
    """,
    # webhook deliveries (watcher/webhooks.py): one row per (publish, URL), written in the same
    # transaction as the publish's `published`, so an outage or a restart loses none
    """
    CREATE TABLE deliveries (
        id {id},
        delivery_id {text} NOT NULL UNIQUE,
        publish_id {bigint} NOT NULL,
        url TEXT NOT NULL,
        payload {json} NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at {real},
        last_error TEXT,
        agent TEXT,
        lease_until {real},
        created_at {real} NOT NULL,
        delivered_at {real}
    );
    CREATE INDEX deliveries_due ON deliveries (status, next_attempt_at, id)
    """,
    # files that matched no template or were ignored, with their reason (watcher/unmatched.py):
    # one row per file, bounded per root; unmatched_dropped counts what the bound dropped
    """
    CREATE TABLE unmatched (
        path {text} NOT NULL PRIMARY KEY,
        root {text} NOT NULL,
        arrived_at {real} NOT NULL,
        updated_at {real} NOT NULL,
        closest TEXT,
        reason TEXT NOT NULL
    );
    CREATE INDEX unmatched_root ON unmatched (root, arrived_at);
    CREATE INDEX unmatched_arrived ON unmatched (arrived_at);
    CREATE TABLE unmatched_dropped (
        root {text} NOT NULL PRIMARY KEY,
        dropped {bigint} NOT NULL DEFAULT 0,
        last_at {real}
    )
    """,
    # a publish that took an existing tracker record of the same file instead of creating one
    """
    ALTER TABLE publishes ADD COLUMN adopted {bool} NOT NULL DEFAULT FALSE
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


def ensure_schema(db: Database) -> None:
    """Bring the database to this watcher's schema (a no-op when it is current); on failure
    the database is closed, since nobody will get it to close."""
    try:
        db.migrate([db.dialect.ddl(m) for m in MIGRATIONS])
    except BaseException:
        db.close()
        raise


@dataclass(frozen=True)
class Transition:
    """One guarded move: from any of ``frm`` to ``to`` (None: the status stays), with ``sets``
    (``?`` placeholders, filled by the caller's params), owned by the claiming agent or not,
    and the event it leaves in the history."""

    frm: tuple[Status, ...]
    to: Status | None
    sets: str
    owned: bool
    event: str | None


P = Status
TRANSITIONS: dict[str, Transition] = {
    "claim": Transition((P.PENDING,), P.PUBLISHING, "agent=?, lease_until=?", False, "publishing"),
    "renew": Transition((P.PUBLISHING,), None, "lease_until=?", True, None),
    "published": Transition((P.PUBLISHING,), P.PUBLISHED,
                            "tracker=?, tracker_id=?, tracker_url=?, published_at=?, adopted=?, last_error=NULL, "
                            "uncertain=FALSE, attempts=attempts+1, agent=NULL, lease_until=NULL", True, "published"),
    "retry_later": Transition((P.PUBLISHING,), P.PENDING,
                              "last_error=?, next_attempt_at=?, attempts=attempts+1, uncertain=TRUE, agent=NULL, "
                              "lease_until=NULL", True, "retry"),
    "fail": Transition((P.PUBLISHING,), P.FAILED,
                       "last_error=?, next_attempt_at=NULL, attempts=attempts+1, agent=NULL, lease_until=NULL",
                       True, "failed"),
    "release": Transition((P.PUBLISHING,), P.PENDING,
                          "uncertain=TRUE, next_attempt_at=?, agent=NULL, lease_until=NULL", True, "pending"),
    "recover": Transition((P.PUBLISHING,), P.PENDING,
                          "uncertain=TRUE, next_attempt_at=?, agent=NULL, lease_until=NULL", False, "pending"),
    "requeue": Transition((P.FAILED,), P.PENDING, "next_attempt_at=?, attempts=0", False, "pending"),
    "replace": Transition((P.PUBLISHED, P.FAILED, P.PENDING), P.PENDING,
                          "payload=?, attempts=0, last_error=NULL, next_attempt_at=?, revision=COALESCE(?, revision)",
                          False, "pending"),
}
del P

COLUMNS = ("id, key, status, payload, attempts, uncertain, last_error, next_attempt_at, tracker, tracker_id, "
           "tracker_url, state, created_at, updated_at, published_at, revision, adopted")


class Journal:
    """The ledger the pipeline, the publishers and the CLI share, over one ``Database``."""

    def __init__(self, db: Database, *, clock: Callable[[], float]) -> None:
        self.db = db
        self.url = db.url
        self._clock = clock
        self._j = db.dialect.to_json
        ensure_schema(db)

    # -- plumbing ----------------------------------------------------------------------------
    def _row(self, r: tuple[Any, ...]) -> Row:
        load = self.db.dialect.from_json
        return Row(id=r[0], key=r[1], status=Status(r[2]), publish=Publish.from_dict(load(r[3])), attempts=r[4],
                   uncertain=bool(r[5]), last_error=r[6], next_attempt_at=r[7], tracker=r[8], tracker_id=r[9],
                   tracker_url=r[10], state=(load(r[11]) if r[11] else None) or {}, created_at=r[12],
                   updated_at=r[13], published_at=r[14], revision=r[15], adopted=bool(r[16]))

    def _event(self, cur: Cursor, publish_id: int, status: str, message: str | None = None) -> None:
        cur.execute("INSERT INTO events (publish_id, at, status, message) VALUES (?,?,?,?)",
                    (publish_id, self._clock(), status, message))

    def _move(self, cur: Cursor, name: str, row_id: int, params: tuple[Any, ...] = (), *,
              agent: str | None = None, message: str | None = None) -> None:
        """Apply ``TRANSITIONS[name]`` to one row, or raise ``TransitionError``."""
        t = TRANSITIONS[name]
        sets = t.sets + ", updated_at=?" + (", status=?" if t.to is not None else "")
        args: tuple[Any, ...] = (*params, self._clock()) + ((t.to.value,) if t.to is not None else ())
        where = f"id=? AND status IN ({','.join('?' * len(t.frm))})"
        args += (row_id, *(s.value for s in t.frm))
        if t.owned:
            assert agent is not None, f"transition {name} needs the owning agent"
            where += " AND agent=?"
            args += (agent,)
        if cur.execute(f"UPDATE publishes SET {sets} WHERE {where}", args).rowcount != 1:
            raise TransitionError(f"publish {row_id}: not in state {'/'.join(s.value for s in t.frm)}"
                                  + (f" for agent {agent}" if t.owned else ""))
        if t.event:
            self._event(cur, row_id, t.event, message)

    def _files(self, cur: Cursor, row_id: int, files: Iterable[FileRecord]) -> None:
        # Duplicates collapse (last wins) and rows go in key order, so that two agents upserting
        # overlapping files cannot deadlock each other.
        latest = {(f.dir, f.name): f for f in files}
        if latest:
            cur.executemany("INSERT INTO files (dir, name, size, mtime_ns, publish_id) VALUES (?,?,?,?,?) "
                            "ON CONFLICT (dir, name) DO UPDATE SET size=excluded.size, mtime_ns=excluded.mtime_ns, "
                            "publish_id=excluded.publish_id",
                            [(d, n, f.size, f.mtime_ns, row_id) for (d, n), f in sorted(latest.items())])

    def _get(self, cur: Cursor, row_id: int) -> Row:
        return self._row(cur.execute(f"SELECT {COLUMNS} FROM publishes WHERE id=?", (row_id,)).fetchone())

    def schema_version(self) -> int:
        return self.db.schema_version()

    # -- writes ------------------------------------------------------------------------------
    def add(self, publish: Publish, files: Iterable[FileRecord]) -> tuple[Row, bool]:
        """Record a candidate as ``pending`` (or return the row that already holds its key).
        Returns (row, created)."""
        [(row_id, created)] = self.add_many([(publish, list(files))])
        return self.db.read(lambda cur: self._get(cur, row_id)), created

    def add_many(self, items: list[tuple[Publish, list[FileRecord]]]) -> list[tuple[int, bool]]:
        """``add`` for a batch, in one transaction (group commit): [(row id, created)]."""
        def run(cur: Cursor) -> list[tuple[int, bool]]:
            out = []
            now = self._clock()
            for publish, files in items:
                # ON CONFLICT waits for a concurrent insert of the same key, then yields nothing.
                new = cur.execute(
                    "INSERT INTO publishes (key, status, payload, created_at, updated_at, next_attempt_at) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO NOTHING RETURNING id",
                    (publish.key, Status.PENDING.value, self._j(publish.to_dict()), now, now, now)).fetchone()
                if new is None:
                    out.append((cur.execute("SELECT id FROM publishes WHERE key=?", (publish.key,)).fetchone()[0],
                                False))
                    continue
                self._files(cur, new[0], files)
                out.append((new[0], True))
            cur.executemany("INSERT INTO events (publish_id, at, status, message) VALUES (?,?,?,?)",
                            [(row_id, now, Status.PENDING.value, None) for row_id, created in out if created])
            return out

        return self.db.write(run) if items else []

    def replace(self, row_id: int, publish: Publish, files: Iterable[FileRecord], *, revision: int | None = None) -> Row:
        """Put a published/failed/pending row back to ``pending`` with a new payload."""
        files = list(files)

        def run(cur: Cursor) -> Row:
            self._move(cur, "replace", row_id, (self._j(publish.to_dict()), self._clock(), revision),
                       message="files changed: republish")
            self._files(cur, row_id, files)
            return self._get(cur, row_id)

        return self.db.write(run)

    def claim(self, agent: str, now: float, lease_seconds: float) -> Row | None:
        """Take the next due ``pending`` row under a lease."""
        rows = self.claim_many(agent, now, lease_seconds, 1)
        return rows[0] if rows else None

    def claim_many(self, agent: str, now: float, lease_seconds: float, limit: int) -> list[Row]:
        """Take up to ``limit`` due ``pending`` rows under a lease, oldest due first, in one
        transaction. On PostgreSQL the sub-select skips rows other agents are claiming right
        now, so agents never wait on each other and never take the same row."""
        t = TRANSITIONS["claim"]

        def run(cur: Cursor) -> list[Row]:
            # MATERIALIZED: the pick runs once. Inlined as a sub-select, PostgreSQL may run it again
            # per row, and SKIP LOCKED then skips the rows it just locked and picks more.
            rows = cur.execute(
                f"WITH picked AS MATERIALIZED (SELECT id FROM publishes WHERE status=? AND next_attempt_at<=? "
                f"ORDER BY next_attempt_at, id LIMIT ?{self.db.dialect.lock_rows}) "
                f"UPDATE publishes SET {t.sets}, status=?, updated_at=? WHERE status=? AND id IN "
                f"(SELECT id FROM picked) RETURNING {COLUMNS}",
                (Status.PENDING.value, now, limit, agent, now + lease_seconds, Status.PUBLISHING.value, now,
                 Status.PENDING.value)).fetchall()
            at = self._clock()
            cur.executemany("INSERT INTO events (publish_id, at, status, message) VALUES (?,?,?,?)",
                            [(r[0], at, t.event, agent) for r in rows])
            return sorted((self._row(r) for r in rows), key=lambda r: (r.next_attempt_at or 0, r.id))

        return self.db.write(run)

    def renew(self, row_id: int, agent: str, until: float) -> None:
        self.db.write(lambda cur: self._move(cur, "renew", row_id, (until,), agent=agent))

    def published(self, row_id: int, agent: str, tracker: str, ref: TrackerRef, *,
                  then: Callable[[Cursor, Row], None] | None = None) -> None:
        """``publishing → published``. ``then(cursor, row)`` runs in the same transaction
        (webhook deliveries are queued there, so they exist exactly when the publish does)."""
        def run(cur: Cursor) -> None:
            self._move(cur, "published", row_id, (tracker, ref.id, ref.url, self._clock(), ref.adopted),
                       agent=agent, message=f"{tracker} {ref.id}" + (" (adopted)" if ref.adopted else ""))
            if then is not None:
                then(cur, self._get(cur, row_id))

        self.db.write(run)

    def published_many(self, agent: str, tracker: str, done: list[tuple[int, TrackerRef]], *,
                       then: Callable[[Cursor, Row], None] | None = None) -> list[int]:
        """``published`` for a batch in one transaction; returns the ids that had been moved by
        someone else meanwhile (their outcome is not recorded: the next attempt finds it).
        ``then(cursor, row)`` runs for each row recorded, in the same transaction (webhooks)."""
        def run(cur: Cursor) -> list[int]:
            lost = []
            for row_id, ref in done:
                try:
                    self._move(cur, "published", row_id, (tracker, ref.id, ref.url, self._clock(), ref.adopted), agent=agent,
                               message=f"{tracker} {ref.id}" + (" (adopted)" if ref.adopted else ""))
                except TransitionError:
                    lost.append(row_id)
                    continue
                if then is not None:
                    then(cur, self._get(cur, row_id))
            return lost

        return self.db.write(run) if done else []

    def retry_later(self, row_id: int, agent: str, error: str, at: float) -> None:
        """``publishing → pending`` with the error and the next attempt time; outcome uncertain."""
        self.db.write(lambda cur: self._move(cur, "retry_later", row_id, (error, at), agent=agent, message=error))

    def fail(self, row_id: int, agent: str, error: str) -> None:
        """``publishing → failed``: parked until ``watcher retry``."""
        self.db.write(lambda cur: self._move(cur, "fail", row_id, (error,), agent=agent, message=error))

    def release(self, row_id: int, agent: str) -> None:
        """``publishing → pending`` at shutdown, marked uncertain, attempt not counted."""
        self.db.write(lambda cur: self._move(cur, "release", row_id, (self._clock(),), agent=agent,
                                             message="released at shutdown"))

    def save_state(self, row_id: int, state: dict[str, Any]) -> None:
        self.db.write(lambda cur: cur.execute("UPDATE publishes SET state=?, updated_at=? WHERE id=?",
                                              (self._j(state), self._clock(), row_id)))

    def recover(self, agent: str, now: float, alive: Callable[[str], bool]) -> int:
        """Return ``publishing`` rows of dead agents (or expired leases) to ``pending``, uncertain."""
        def run(cur: Cursor) -> int:
            moved = 0
            rows = cur.execute(f"SELECT id, agent, lease_until FROM publishes WHERE status=? ORDER BY id"
                               f"{self.db.dialect.lock_rows}", (Status.PUBLISHING.value,)).fetchall()
            for row_id, owner, lease in rows:
                if owner == agent or (owner and alive(owner) and (lease or 0) > now):
                    continue
                why = "lease expired" if (lease or 0) <= now else "agent gone"
                try:
                    self._move(cur, "recover", row_id, (now,), message=f"recovered from {owner} ({why}; outcome unknown)")
                except TransitionError:
                    continue
                moved += 1
            return moved

        return self.db.write(run)

    def requeue(self, ids: Iterable[int] | None = None) -> list[int]:
        """``failed → pending`` for the given ids (or all failed); returns the ids moved."""
        wanted = None if ids is None else list(dict.fromkeys(ids))

        def run(cur: Cursor) -> list[int]:
            targets = wanted if wanted is not None else [r[0] for r in cur.execute(
                "SELECT id FROM publishes WHERE status=? ORDER BY id", (Status.FAILED.value,)).fetchall()]
            moved = []
            for i in targets:
                try:
                    self._move(cur, "requeue", i, (self._clock(),), message="retry requested")
                except TransitionError:
                    continue
                moved.append(i)
            return moved

        return self.db.write(run)

    def remember_files(self, publish_id: int, files: Iterable[FileRecord], note: str | None = None) -> None:
        """Record files as belonging to a publish without republishing it (``republish: never``),
        so that scans skip them and the warning is logged once."""
        files = list(files)

        def run(cur: Cursor) -> None:
            self._files(cur, publish_id, files)
            if note:
                self._event(cur, publish_id, "note", note)

        self.db.write(run)

    # -- reads -------------------------------------------------------------------------------
    def rows(self, status: Status | None = None, *, ids: Iterable[int] | None = None,
             limit: int | None = None) -> list[Row]:
        sql, args, cond = f"SELECT {COLUMNS} FROM publishes", [], []
        if status is not None:
            cond.append("status=?")
            args.append(status.value)
        if ids is not None:
            ids = list(ids)
            if not ids:
                return []
            cond.append(f"id IN ({','.join('?' * len(ids))})")
            args += ids
        if cond:
            sql += " WHERE " + " AND ".join(cond)
        sql += " ORDER BY id"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return self.db.read(lambda cur: [self._row(r) for r in cur.execute(sql, args).fetchall()])

    def newest(self, *, status: Status | None = None, since: float | None = None, limit: int | None = None,
               keep: Callable[[Row], bool] = lambda _row: True, page: int = 500) -> list[Row]:
        """Rows newest first (highest id first), ``status`` and ``since`` (created at or after)
        in SQL, ``keep`` in Python; paged so that ``limit`` stops the read early."""
        out: list[Row] = []
        before: int | None = None
        while limit is None or len(out) < limit:
            cond, args = [], []
            if status is not None:
                cond.append("status=?")
                args.append(status.value)
            if since is not None:
                cond.append("created_at>=?")
                args.append(since)
            if before is not None:
                cond.append("id<?")
                args.append(before)
            sql = (f"SELECT {COLUMNS} FROM publishes" + (" WHERE " + " AND ".join(cond) if cond else "")
                   + f" ORDER BY id DESC LIMIT {int(page)}")
            batch = self.db.read(lambda cur: [self._row(r) for r in cur.execute(sql, args).fetchall()])
            out.extend(r for r in batch if keep(r))
            if len(batch) < page:
                break
            before = batch[-1].id
        return out if limit is None else out[:limit]

    def oldest_pending(self) -> float | None:
        """``created_at`` of the oldest row not yet published or failed (None: none)."""
        return self.db.read(lambda cur: cur.execute(
            "SELECT MIN(created_at) FROM publishes WHERE status IN (?, ?)",
            (Status.PENDING.value, Status.PUBLISHING.value)).fetchone()[0])

    def by_key(self, key: str) -> Row | None:
        r = self.db.read(lambda cur: cur.execute(f"SELECT {COLUMNS} FROM publishes WHERE key=?", (key,)).fetchone())
        return self._row(r) if r else None

    def by_keys(self, keys: list[str]) -> dict[str, Row]:
        """``by_key`` for many keys in few round trips (the pipeline's group commit)."""
        out: dict[str, Row] = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            for r in self.db.read(lambda cur: cur.execute(
                    f"SELECT {COLUMNS} FROM publishes WHERE key IN ({','.join('?' * len(chunk))})", chunk).fetchall()):
                out[r[1]] = self._row(r)
        return out

    def keys_like(self, prefix: str) -> list[Row]:
        """Rows whose key starts with ``prefix`` (the revisions of one publish)."""
        esc = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return self.db.read(lambda cur: [self._row(r) for r in cur.execute(
            f"SELECT {COLUMNS} FROM publishes WHERE key LIKE ? ESCAPE '\\' ORDER BY id", (esc + "%",)).fetchall()])

    def known_files(self, directory: str) -> dict[str, tuple[int, int, int]]:
        """name -> (size, mtime_ns, publish id) for files the journal holds in one directory."""
        rows = self.db.read(lambda cur: cur.execute(
            "SELECT name, size, mtime_ns, publish_id FROM files WHERE dir=?", (directory,)).fetchall())
        return {name: (size, mtime, pid) for name, size, mtime, pid in rows}

    def files_of(self, publish_id: int) -> dict[str, tuple[int, int]]:
        """path -> (size, mtime_ns) of every file recorded for one publish."""
        rows = self.db.read(lambda cur: cur.execute(
            "SELECT dir, name, size, mtime_ns FROM files WHERE publish_id=?", (publish_id,)).fetchall())
        return {os.path.join(d, n): (size, mtime) for d, n, size, mtime in rows}

    def next_due(self) -> float | None:
        """Earliest ``next_attempt_at`` among pending rows (None: nothing pending)."""
        return self.db.read(lambda cur: cur.execute(
            "SELECT MIN(next_attempt_at) FROM publishes WHERE status=?", (Status.PENDING.value,)).fetchone()[0])

    def counts(self) -> dict[str, int]:
        out = {s.value: 0 for s in Status}
        for status, n in self.db.read(lambda cur: cur.execute(
                "SELECT status, COUNT(*) FROM publishes GROUP BY status").fetchall()):
            out[status] = n
        return out

    def events(self, publish_id: int) -> list[tuple[float, str, str | None]]:
        return [tuple(r) for r in self.db.read(lambda cur: cur.execute(  # type: ignore[misc]
            "SELECT at, status, message FROM events WHERE publish_id=? ORDER BY id", (publish_id,)).fetchall())]

    def close(self) -> None:
        self.db.close()
