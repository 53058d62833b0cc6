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
    pending ──baseline──► baseline (on disk before watcher: known, never claimed, never published)

The idempotency key (root, template, fields without frame, version) is unique over all states,
so a candidate seen again (rescan, restart, duplicate event) never becomes a second publish.

What differs per database lives in ``sqlite.py`` / ``postgres.py``: connections, locking, how
the schema version is kept, and a ``Dialect`` (column types, JSON, row locking). Adding a state
is one edit here (``Status`` + ``TRANSITIONS``) plus a migration."""
from __future__ import annotations

import json
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Iterable, Protocol, TypeVar

from cachetools import LRUCache

from ..errors import JournalError
from ..model import Publish, TrackerRef
from .base import FileRecord, JournalHealth, Probe, Row, Status, TransitionError

T = TypeVar("T")


class Cursor(Protocol):
    """What the ledger needs of a DB-API cursor (sqlite3's connection and psycopg's cursor both
    fit; placeholders are ``?``, the PostgreSQL database translates them)."""

    def execute(self, sql: str, params: Any = ...) -> Any: ...

    def executemany(self, sql: str, params: Iterable[Any]) -> Any: ...


def values_rows(types: tuple[str, ...], rows: list[tuple[Any, ...]]) -> tuple[str, list[Any]]:
    """``(VALUES (?,..),..) AS v``: SQLite names its columns column1..N."""
    one = "(" + ",".join("?" * len(types)) + ")"
    return f"(VALUES {','.join([one] * len(rows))}) AS v", [x for row in rows for x in row]


def in_list(column: str, values: list[Any]) -> tuple[str, list[Any]]:
    return f"{column} IN ({','.join('?' * len(values))})", list(values)


@dataclass(frozen=True)
class Dialect:
    """The few things SQL spells differently per database."""

    name: str
    types: dict[str, str]  # DDL placeholders: {id} {json} {bool} {real} {text} {bigint} {rowid_free}
    #                        and {payload_root} {payload_root_path}: a publish's root, read from its JSON;
    #                        {status_check_v7}: statements that let the status CHECK take {statuses}
    to_json: Callable[[Any], Any]  # Python object -> parameter
    from_json: Callable[[Any], Any]  # column value -> Python object
    lock_rows: str = ""  # appended to the claim's sub-select: " FOR UPDATE SKIP LOCKED" on PostgreSQL
    # Many rows in one statement: ``rows(types, rows)`` is (a relation ``v`` with columns
    # column1..N, its parameters) for ``INSERT ... SELECT * FROM`` and ``UPDATE ... FROM``;
    # ``any_of(column, values)`` is (a condition, its parameters). SQLite spells them as VALUES
    # and IN lists; PostgreSQL as arrays (unnest, = ANY), so that a batch is a handful of
    # parameters and one short statement that the driver and the server parse once.
    rows: Callable[[tuple[str, ...], list[tuple[Any, ...]]], tuple[str, list[Any]]] = values_rows
    any_of: Callable[[str, list[Any]], tuple[str, list[Any]]] = in_list
    rows_per_statement: int = 200  # SQLite: bounded by its parameter limit
    # ``column`` among the first column of a CTE's rows, spelled so that the planner looks the
    # rows up by index (PostgreSQL otherwise hash-joins a whole table to a batch it cannot size)
    in_cte: Callable[[str, str, str], str] = lambda column, cte, of: f"{column} IN (SELECT {of} FROM {cte})"

    def ddl(self, template: str) -> list[str]:
        statuses = ", ".join(f"'{s.value}'" for s in Status)
        # a placeholder may itself name {statuses} (a dialect's own way to change the CHECK)
        types = {k: v.replace("{statuses}", statuses) for k, v in self.types.items()}
        text = template.format(statuses=statuses, **types)
        return [s.strip() for s in text.split(";") if s.strip()]


def insert_rows(cur: Cursor, dialect: Dialect, head: str, types: tuple[str, ...], rows: list[tuple[Any, ...]],
                tail: str = "") -> list[tuple[Any, ...]]:
    """``head`` (``INSERT INTO t (cols)``) with many ``rows`` and ``tail`` (``ON CONFLICT ..``,
    ``RETURNING ..``), a few statements per batch: what RETURNING gives, for every row."""
    out: list[tuple[Any, ...]] = []
    step = dialect.rows_per_statement
    for i in range(0, len(rows), step):
        rel, params = dialect.rows(types, rows[i:i + step])
        # WHERE true: SQLite would read ON CONFLICT as a join constraint right after FROM
        got = cur.execute(f"{head} SELECT * FROM {rel} WHERE true {tail}", params)
        if "RETURNING" in tail:
            out += got.fetchall()
    return out


FILE_ROWS = ("INSERT INTO files (root, dir, name, size, mtime_ns, publish_id)",
             ("text", "text", "text", "bigint", "bigint", "bigint"),
             "ON CONFLICT (root, dir, name) DO UPDATE SET size=excluded.size, mtime_ns=excluded.mtime_ns, "
             "publish_id=excluded.publish_id")
EVENT_ROWS = ("INSERT INTO events (publish_id, at, status, message)", ("bigint", "real", "text", "text"))


def dumps(obj: Any) -> str:
    return json.dumps(obj, default=str, ensure_ascii=False, separators=(",", ":"))


class Database(ABC):
    """Connections and locking for one database; the ledger runs every statement through it.
    A failure of the database itself (locked, full, read-only, unreachable) is raised as
    ``JournalUnavailable`` and recorded in ``health``; anything else as ``JournalError``."""

    dialect: Dialect
    url: str  # for display: never holds a password
    health: JournalHealth

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
    def check(self) -> list[Probe]:
        """`watcher check`: is the journal sound and writable now (each probe one line)."""

    def stop_waiting(self) -> None:
        """The agent is stopping: writes no longer wait for another process's lock."""

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
    # file records keyed by root name + root-relative directory, so agents that mount a share at
    # different paths agree; existing records are rewritten from their publish's root
    """
    CREATE TABLE files_by_root (
        root {text} NOT NULL,
        dir {text} NOT NULL,
        name {text} NOT NULL,
        size {bigint} NOT NULL,
        mtime_ns {bigint} NOT NULL,
        publish_id {bigint} NOT NULL REFERENCES publishes (id) ON DELETE CASCADE,
        PRIMARY KEY (root, dir, name)
    ) {rowid_free};
    INSERT INTO files_by_root (root, dir, name, size, mtime_ns, publish_id)
        SELECT {payload_root},
               CASE WHEN f.dir = {payload_root_path} THEN '' ELSE substr(f.dir, length({payload_root_path}) + 2) END,
               f.name, f.size, f.mtime_ns, f.publish_id
        FROM files f JOIN publishes p ON p.id = f.publish_id WHERE true
        ON CONFLICT DO NOTHING;
    DROP TABLE files;
    ALTER TABLE files_by_root RENAME TO files;
    CREATE INDEX files_publish ON files (publish_id)
    """,
    # agents sharing this journal: who they are, what they watch, when they last spoke
    """
    CREATE TABLE agents (
        agent {text} NOT NULL PRIMARY KEY,
        host TEXT NOT NULL,
        pid INTEGER NOT NULL,
        started_at {real} NOT NULL,
        roots TEXT NOT NULL,
        heartbeat_at {real} NOT NULL,
        stopped_at {real}
    )
    """,
    # `baseline`: files that were on disk before watcher, recorded as known and never published
    # (`watcher baseline`, `existing: baseline`). The status CHECK must take it: SQLite cannot
    # alter a CHECK, so it rebuilds `publishes` (foreign keys off around the migration, or the
    # DROP would cascade into `files`); PostgreSQL drops and re-adds the constraint. `roots_seen`:
    # when the journal first saw each root (the first agent start that watched it).
    """
    {status_check_v7};
    CREATE TABLE roots_seen (
        root {text} NOT NULL PRIMARY KEY,
        first_seen {real} NOT NULL
    )
    """,
    # which agent watches each root (`watched_by: one`): held while its heartbeat is fresh
    """
    CREATE TABLE watches (
        root {text} NOT NULL PRIMARY KEY,
        agent {text} NOT NULL,
        since {real} NOT NULL
    )
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
    "refuse": Transition((P.PENDING,), P.FAILED, "last_error=?, next_attempt_at=NULL", False, "failed"),
    "release": Transition((P.PUBLISHING,), P.PENDING,
                          "uncertain=TRUE, next_attempt_at=?, agent=NULL, lease_until=NULL", True, "pending"),
    "recover": Transition((P.PUBLISHING,), P.PENDING,
                          "uncertain=TRUE, next_attempt_at=?, agent=NULL, lease_until=NULL", False, "pending"),
    "requeue": Transition((P.FAILED,), P.PENDING, "next_attempt_at=?, attempts=0", False, "pending"),
    "baseline": Transition((P.PENDING,), P.BASELINE, "next_attempt_at=NULL", False, "baseline"),
    "replace": Transition((P.PUBLISHED, P.FAILED, P.PENDING), P.PENDING,
                          "payload=?, attempts=0, last_error=NULL, next_attempt_at=?, revision=COALESCE(?, revision)",
                          False, "pending"),
}
del P

Then = Callable[[Cursor, int, Callable[[], Row]], None]  # a hook run where a publish is recorded

COLUMNS = ("id, key, status, payload, attempts, uncertain, last_error, next_attempt_at, tracker, tracker_id, "
           "tracker_url, state, created_at, updated_at, published_at, revision, adopted")


class Journal:
    """The ledger the pipeline, the publishers and the CLI share, over one ``Database``."""

    def __init__(self, db: Database, *, clock: Callable[[], float]) -> None:
        self.db = db
        self.url = db.url
        self._clock = clock
        self._j = db.dialect.to_json
        # Publishes this process journaled, by their payload text: a claim of such a row reuses
        # the object instead of decoding the JSON again (a burst claims what it just wrote).
        # Keyed by the exact text, so a payload changed by anyone else is decoded afresh.
        self._written: LRUCache[str, Publish] = LRUCache(maxsize=32768)
        self._written_lock = threading.Lock()
        ensure_schema(db)

    @property
    def health(self) -> JournalHealth:
        """Whether the journal takes writes now (shared by every thread of the agent)."""
        return self.db.health

    def check(self) -> list[Probe]:
        """The database's own probes plus the schema version (`watcher check`)."""
        out = self.db.check()
        try:
            version = self.schema_version()
        except JournalError as exc:
            return out + [Probe(False, "schema", str(exc))]
        return out + [Probe(version == SCHEMA_VERSION, "schema", f"version {version}" if version == SCHEMA_VERSION
                            else f"version {version}, this watcher uses {SCHEMA_VERSION}")]

    # -- plumbing ----------------------------------------------------------------------------
    def _payload(self, publish: Publish) -> Any:
        """The payload column's value for ``publish``, remembered for the claim that follows."""
        value = self._j(publish.to_dict())
        if isinstance(value, str):
            with self._written_lock:
                self._written[value] = publish
        return value

    def _publish_of(self, value: Any) -> Publish:
        if isinstance(value, str):
            with self._written_lock:
                known = self._written.get(value)
            if known is not None:
                return known
        return Publish.from_dict(self.db.dialect.from_json(value))

    def _row(self, r: tuple[Any, ...]) -> Row:
        load = self.db.dialect.from_json
        return Row(id=r[0], key=r[1], status=Status(r[2]), publish=self._publish_of(r[3]), attempts=r[4],
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
        latest = {(f.root, f.dir, f.name): f for f in files}
        if latest:
            head, types, tail = FILE_ROWS
            insert_rows(cur, self.db.dialect, head, types,
                        [(r, d, n, f.size, f.mtime_ns, row_id) for (r, d, n), f in sorted(latest.items())], tail)

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

    def add_many(self, items: list[tuple[Publish, list[FileRecord]]], *,
                 refuse: dict[str, str] | None = None) -> list[tuple[int, bool]]:
        """``add`` for a batch, in one transaction (group commit): [(row id, created)].

        A publish whose ``arrived`` is set (its root says ``existing: baseline``) and older than
        the journal's first sight of its root predates watcher: it is recorded as ``baseline``,
        never published. The first sight is the first agent start that watched the root
        (``heartbeat``), or now when none is recorded yet. A new row whose key is in ``refuse``
        is parked as ``failed`` with that reason in the same transaction (``holes: refuse``, a
        candidate that cannot be published as it is)."""
        def run(cur: Cursor) -> list[tuple[int, bool]]:
            out = self._insert(cur, items)
            cutoffs: dict[str, float] = {}
            for (publish, _files), (row_id, created) in zip(items, out):
                if created and refuse and publish.key in refuse:
                    self._move(cur, "refuse", row_id, (refuse[publish.key],), message=refuse[publish.key])
                    continue
                if not created or publish.arrived is None:
                    continue
                if publish.root not in cutoffs:
                    self._see_roots(cur, [publish.root], self._clock())
                    cutoffs[publish.root] = cur.execute("SELECT first_seen FROM roots_seen WHERE root=?",
                                                        (publish.root,)).fetchone()[0]
                if publish.arrived < cutoffs[publish.root]:
                    self._move(cur, "baseline", row_id,
                               message=f"on disk before the journal first saw root {publish.root} (existing: baseline)")
            return out

        return self.db.write(run) if items else []

    def baseline_many(self, items: list[tuple[Publish, list[FileRecord]]]) -> list[tuple[int, bool]]:
        """Record candidates found on disk as ``baseline`` (`watcher baseline`): known, so scans
        skip their files, and never claimed. One transaction per call; a key the journal holds
        already is left as it is (created False). [(row id, created)]"""
        def run(cur: Cursor) -> list[tuple[int, bool]]:
            out = self._insert(cur, items)
            for row_id, created in out:
                if created:
                    self._move(cur, "baseline", row_id, message="on disk before watcher (watcher baseline)")
            self._see_roots(cur, sorted({p.root for p, _ in items}), self._clock())
            return out

        return self.db.write(run) if items else []

    def _see_roots(self, cur: Cursor, roots: list[str], at: float) -> None:
        cur.executemany("INSERT INTO roots_seen (root, first_seen) VALUES (?, ?) ON CONFLICT (root) DO NOTHING",
                        [(r, at) for r in roots])

    def first_seen(self, root: str) -> float | None:
        """When the journal first saw ``root`` (None: never): files older than this predate it."""
        r = self.db.read(lambda cur: cur.execute("SELECT first_seen FROM roots_seen WHERE root=?", (root,)).fetchone())
        return r[0] if r else None

    def _insert(self, cur: Cursor, items: list[tuple[Publish, list[FileRecord]]]) -> list[tuple[int, bool]]:
        """Insert new keys as ``pending`` with their files: [(row id, created)]. A few statements
        per batch, not per candidate: on PostgreSQL each statement is a round trip."""
        now = self._clock()
        created: dict[str, int] = {}
        firsts = list({p.key: p for p, _ in items}.values())  # a key twice in a batch: the first
        d = self.db.dialect
        pending = Status.PENDING.value
        # ON CONFLICT waits for a concurrent insert of the same key, then skips that row.
        rows = insert_rows(cur, d, "INSERT INTO publishes (key, status, payload, created_at, updated_at, next_attempt_at)",
                           ("text", "text", "json", "real", "real", "real"),
                           [(p.key, pending, self._payload(p), now, now, now) for p in firsts],
                           "ON CONFLICT (key) DO NOTHING RETURNING id, key")
        created.update((key, rid) for rid, key in rows)
        held = [p.key for p in firsts if p.key not in created]
        known: dict[str, int] = {}
        for i in range(0, len(held), 500):
            cond, params = d.any_of("key", held[i:i + 500])
            known.update((key, rid) for rid, key in cur.execute(f"SELECT id, key FROM publishes WHERE {cond}",
                                                                params).fetchall())
        out: list[tuple[int, bool]] = []
        files: list[FileRecord] = []
        owner: dict[tuple[str, str, str], int] = {}
        counted: set[int] = set()
        for publish, recs in items:
            rid = created.get(publish.key)
            if rid is not None and rid not in counted:
                counted.add(rid)
                out.append((rid, True))
                for f in recs:
                    owner[(f.root, f.dir, f.name)] = rid
                    files.append(f)
            else:
                out.append((rid if rid is not None else known[publish.key], False))
        if files:
            latest = {(f.root, f.dir, f.name): f for f in files}
            head, types, tail = FILE_ROWS
            insert_rows(cur, d, head, types, [(*k, f.size, f.mtime_ns, owner[k]) for k, f in sorted(latest.items())],
                        tail)
        insert_rows(cur, d, *EVENT_ROWS,
                    [(row_id, now, Status.PENDING.value, None) for row_id, was_created in out if was_created])
        return out

    def replace(self, row_id: int, publish: Publish, files: Iterable[FileRecord], *, revision: int | None = None,
                refuse: str | None = None) -> Row:
        """Put a published/failed/pending row back to ``pending`` with a new payload (parked as
        ``failed`` with ``refuse``, in the same transaction, when it may not publish as it is)."""
        files = list(files)

        def run(cur: Cursor) -> Row:
            self._move(cur, "replace", row_id, (self._payload(publish), self._clock(), revision),
                       message="files changed: republish")
            self._files(cur, row_id, files)
            if refuse is not None:
                self._move(cur, "refuse", row_id, (refuse,), message=refuse)
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
                f"UPDATE publishes SET {t.sets}, status=?, updated_at=? WHERE status=? AND "
                f"{self.db.dialect.in_cte('id', 'picked', 'id')} RETURNING {COLUMNS}",
                (Status.PENDING.value, now, limit, agent, now + lease_seconds, Status.PUBLISHING.value, now,
                 Status.PENDING.value)).fetchall()
            at = self._clock()
            insert_rows(cur, self.db.dialect, *EVENT_ROWS, [(r[0], at, t.event, agent) for r in rows])
            return sorted((self._row(r) for r in rows), key=lambda r: (r.next_attempt_at or 0, r.id))

        return self.db.write(run)

    def renew(self, row_id: int, agent: str, until: float) -> None:
        self.db.write(lambda cur: self._move(cur, "renew", row_id, (until,), agent=agent))

    def published(self, row_id: int, agent: str, tracker: str, ref: TrackerRef, *,
                  then: "Then | None" = None) -> None:
        """``publishing → published``. ``then(cursor, row_id, row)`` runs in the same transaction
        (webhook deliveries are queued there, so they exist exactly when the publish does);
        ``row()`` reads the row only if the hook needs it."""
        if self.published_many(agent, tracker, [(row_id, ref)], then=then):
            raise TransitionError(f"publish {row_id}: not in state publishing for agent {agent}")

    def published_many(self, agent: str, tracker: str, done: list[tuple[int, TrackerRef]], *,
                       then: "Then | None" = None) -> list[int]:
        """``published`` for a batch, in one statement and one transaction; returns the ids that
        had been moved by someone else meanwhile (their outcome is not recorded: the next attempt
        finds it). ``then`` runs for each row recorded, in the same transaction (webhooks)."""
        t = TRANSITIONS["published"]
        assert t.owned and t.to is not None
        to: Status = t.to  # narrowed here: the closure below cannot see the assert

        def run(cur: Cursor) -> list[int]:
            now = self._clock()
            moved: set[int] = set()
            d = self.db.dialect
            for i in range(0, len(done), d.rows_per_statement):
                chunk = done[i:i + d.rows_per_statement]
                # One guarded UPDATE for the batch: each row's own tracker id comes from a
                # relation of rows (columns column1..4).
                rel, args = d.rows(("bigint", "text", "text", "bool"),
                                   [(row_id, ref.id, ref.url, ref.adopted) for row_id, ref in chunk])
                rows = cur.execute(
                    f"WITH b AS MATERIALIZED (SELECT * FROM {rel}) "
                    f"UPDATE publishes SET status=?, tracker=?, tracker_id=b.column2, tracker_url=b.column3, "
                    f"adopted=b.column4, published_at=?, updated_at=?, last_error=NULL, uncertain=FALSE, "
                    f"attempts=attempts+1, agent=NULL, lease_until=NULL FROM b "
                    f"WHERE publishes.id=b.column1 AND {d.in_cte('publishes.id', 'b', 'column1')} AND publishes.status=? "
                    f"AND publishes.agent=? RETURNING publishes.id",
                    (*args, to.value, tracker, now, now, t.frm[0].value, agent)).fetchall()
                moved.update(r[0] for r in rows)
            recorded = [(row_id, ref) for row_id, ref in done if row_id in moved]
            insert_rows(cur, d, *EVENT_ROWS,
                        [(row_id, now, t.event, f"{tracker} {ref.id}" + (" (adopted)" if ref.adopted else ""))
                         for row_id, ref in recorded])
            if then is not None:
                for row_id, _ref in recorded:
                    then(cur, row_id, partial(self._get, cur, row_id))
            return [row_id for row_id, _ in done if row_id not in moved]

        return self.db.write(run) if done else []

    def retry_later(self, row_id: int, agent: str, error: str, at: float) -> None:
        """``publishing → pending`` with the error and the next attempt time; outcome uncertain."""
        self.db.write(lambda cur: self._move(cur, "retry_later", row_id, (error, at), agent=agent, message=error))

    def fail(self, row_id: int, agent: str, error: str) -> None:
        """``publishing → failed``: parked until ``watcher retry``."""
        self.db.write(lambda cur: self._move(cur, "fail", row_id, (error,), agent=agent, message=error))

    def refuse(self, row_id: int, reason: str) -> None:
        """``pending → failed`` before any attempt: what settled is not what the rule accepts
        (``holes: refuse``); parked until ``watcher retry``."""
        self.db.write(lambda cur: self._move(cur, "refuse", row_id, (reason,), message=reason))

    def release(self, row_id: int, agent: str) -> None:
        """``publishing → pending`` at shutdown, marked uncertain, attempt not counted."""
        self.db.write(lambda cur: self._move(cur, "release", row_id, (self._clock(),), agent=agent,
                                             message="released at shutdown"))

    def save_state(self, row_id: int, state: dict[str, Any]) -> None:
        self.db.write(lambda cur: cur.execute("UPDATE publishes SET state=?, updated_at=? WHERE id=?",
                                              (self._j(state), self._clock(), row_id)))

    def recover(self, agent: str, now: float, alive: Callable[[str], bool], *,
                holding: Callable[[], Iterable[int]] | None = None, orphaned_after: float = 0.0) -> int:
        """Return ``publishing`` rows of dead agents (or expired leases) to ``pending``, uncertain.

        With ``holding`` (the ids this agent works on now, asked inside the transaction), rows
        of ``agent`` itself that it does not hold are taken back too, once their lease was last
        set ``orphaned_after`` seconds ago: a claim whose transaction failed as far as we know,
        but landed (a connection lost during the commit), would otherwise stay ``publishing``
        for the agent's lifetime."""
        lease_seconds = orphaned_after

        def run(cur: Cursor) -> int:
            moved = 0
            rows = cur.execute(f"SELECT id, agent, lease_until, updated_at FROM publishes WHERE status=? ORDER BY id"
                               f"{self.db.dialect.lock_rows}", (Status.PUBLISHING.value,)).fetchall()
            held = set(holding()) if holding is not None else None
            for row_id, owner, lease, updated in rows:
                if owner == agent:
                    if held is None or row_id in held or (updated or 0) > now - lease_seconds:
                        continue
                    try:
                        self._move(cur, "recover", row_id, (now,),
                                   message="recovered from this agent: its claim was not held (a journal error)")
                    except TransitionError:
                        continue
                    moved += 1
                    continue
                if owner and alive(owner) and (lease or 0) > now:
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
        sql = f"SELECT {COLUMNS} FROM publishes"
        args: list[Any] = []
        cond: list[str] = []
        if status is not None:
            cond.append("status=?")
            args.append(status.value)
        if ids is not None:
            ids = list(ids)
            if not ids:
                return []
            ids_cond, ids_args = self.db.dialect.any_of("id", ids)
            cond.append(ids_cond)
            args += ids_args
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
            cond: list[str] = []
            args: list[Any] = []
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
            cond, params = self.db.dialect.any_of("key", keys[i:i + 500])
            for r in self.db.read(lambda cur: cur.execute(f"SELECT {COLUMNS} FROM publishes WHERE {cond}",
                                                          params).fetchall()):
                out[r[1]] = self._row(r)
        return out

    def keys_like(self, prefix: str) -> list[Row]:
        """Rows whose key starts with ``prefix`` (the revisions of one publish)."""
        esc = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return self.db.read(lambda cur: [self._row(r) for r in cur.execute(
            f"SELECT {COLUMNS} FROM publishes WHERE key LIKE ? ESCAPE '\\' ORDER BY id", (esc + "%",)).fetchall()])

    def known_files(self, root: str, directory: str) -> dict[str, tuple[int, int, int]]:
        """name -> (size, mtime_ns, publish id) for files the journal holds in one directory of a
        root (``directory`` relative to the root, ``""`` for its top)."""
        rows = self.db.read(lambda cur: cur.execute(
            "SELECT name, size, mtime_ns, publish_id FROM files WHERE root=? AND dir=?", (root, directory)).fetchall())
        return {name: (size, mtime, pid) for name, size, mtime, pid in rows}

    def files_of(self, publish_id: int) -> dict[tuple[str, str], tuple[int, int]]:
        """(root, relative path) -> (size, mtime_ns) of every file recorded for one publish."""
        rows = self.db.read(lambda cur: cur.execute(
            "SELECT root, dir, name, size, mtime_ns FROM files WHERE publish_id=?", (publish_id,)).fetchall())
        return {(r, f"{d}/{n}" if d else n): (size, mtime) for r, d, n, size, mtime in rows}

    # -- agents ------------------------------------------------------------------------------
    def heartbeat(self, agent: str, host: str, pid: int, started_at: float, roots: list[str],
                  shared: list[str] | None = None) -> None:
        """This agent is alive and watches ``roots`` (``watcher agents``); of them, only ``shared``
        (default: all) may be watched by one agent for all (``take_watches``). A root never seen
        before is first seen now, at this agent's first heartbeat, which it sends as it starts,
        before its first scan (``existing: baseline``; the agent id's start is whole seconds)."""
        now = self._clock()

        def run(cur: Cursor) -> None:
            cur.execute(
                "INSERT INTO agents (agent, host, pid, started_at, roots, heartbeat_at) VALUES (?,?,?,?,?,?) "
                "ON CONFLICT (agent) DO UPDATE SET heartbeat_at=excluded.heartbeat_at, roots=excluded.roots, "
                "stopped_at=NULL", (agent, host, pid, started_at, dumps(roots), now))
            if shared:  # a root this agent no longer watches for all is free for the next agent
                cond, params = self.db.dialect.any_of("root", sorted(shared))
                cur.execute(f"DELETE FROM watches WHERE agent=? AND NOT ({cond})", (agent, *params))
            elif shared is not None:
                cur.execute("DELETE FROM watches WHERE agent=?", (agent,))
            self._see_roots(cur, sorted(roots), now)

        self.db.write(run)

    def agent_stopped(self, agent: str) -> None:
        """A clean stop: the roots it watched are free for the next agent at once."""
        def run(cur: Cursor) -> None:
            cur.execute("UPDATE agents SET stopped_at=? WHERE agent=?", (self._clock(), agent))
            cur.execute("DELETE FROM watches WHERE agent=?", (agent,))

        self.db.write(run)

    def take_watches(self, agent: str, roots: list[str], timeout: float,
                     alive: Callable[[str], bool]) -> dict[str, str]:
        """Root -> the agent that watches it now, after taking for ``agent`` each of ``roots``
        that nobody watches or whose watcher is gone: stopped, silent for ``timeout`` seconds,
        (``alive``) a process known dead, or no longer configured with the root (a reload
        removed it, or made it `watched_by: every`). Each takeover is a guarded UPDATE, so two
        agents racing for a root cannot both win."""
        now = self._clock()

        def run(cur: Cursor) -> dict[str, str]:
            insert_rows(cur, self.db.dialect, "INSERT INTO watches (root, agent, since)", ("text", "text", "real"),
                        [(r, agent, now) for r in sorted(roots)], "ON CONFLICT (root) DO NOTHING")
            cond, params = self.db.dialect.any_of("w.root", sorted(roots))
            found = cur.execute(f"SELECT w.root, w.agent, a.heartbeat_at, a.stopped_at, a.roots FROM watches w "
                                f"LEFT JOIN agents a ON a.agent = w.agent WHERE {cond}", params).fetchall()
            out: dict[str, str] = {}
            for root, holder, beat, stopped, theirs in found:
                gone = holder != agent and (beat is None or stopped is not None or beat < now - timeout
                                            or root not in json.loads(theirs or "[]") or not alive(holder))
                if gone and cur.execute("UPDATE watches SET agent=?, since=? WHERE root=? AND agent=?",
                                        (agent, now, root, holder)).rowcount == 1:
                    holder = agent
                out[root] = holder
            return out

        return self.db.write(run) if roots else {}

    def watches(self) -> dict[str, str]:
        """Root -> the agent that watches it (``watched_by: one``)."""
        return dict(self.db.read(lambda cur: cur.execute("SELECT root, agent FROM watches").fetchall()))

    def agents(self, timeout: float) -> list[dict[str, Any]]:
        """Every agent that has spoken, newest heartbeat first, with what it holds now; ``live``:
        not stopped, and heard from within ``timeout`` seconds (``agent_timeout_seconds``)."""
        now = self._clock()

        def run(cur: Cursor) -> list[dict[str, Any]]:
            held = dict(cur.execute("SELECT agent, COUNT(*) FROM publishes WHERE status=? GROUP BY agent",
                                    (Status.PUBLISHING.value,)).fetchall())
            watching: dict[str, list[str]] = {}
            for root, who in cur.execute("SELECT root, agent FROM watches ORDER BY root").fetchall():
                watching.setdefault(who, []).append(root)
            return [{"agent": a, "host": h, "pid": pid, "started_at": st, "roots": json.loads(roots),
                     "watching": watching.get(a, []), "heartbeat_at": hb, "stopped_at": stop,
                     "publishing": held.get(a, 0), "live": stop is None and now - hb < timeout}
                    for a, h, pid, st, roots, hb, stop in cur.execute(
                        "SELECT agent, host, pid, started_at, roots, heartbeat_at, stopped_at FROM agents "
                        "ORDER BY heartbeat_at DESC").fetchall()]

        return self.db.read(run)

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
        return [tuple(r) for r in self.db.read(lambda cur: cur.execute(
            "SELECT at, status, message FROM events WHERE publish_id=? ORDER BY id", (publish_id,)).fetchall())]

    def close(self) -> None:
        self.db.close()
