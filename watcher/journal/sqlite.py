"""SQLite under the journal (the embedded default): WAL mode so that `watcher publishes` reads
while `watcher run` writes, one connection per thread, ``BEGIN IMMEDIATE`` for every write so
that claims never race. The schema version is SQLite's ``user_version``."""
from __future__ import annotations

import json
import os
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import Callable, TypeVar

from ..errors import JournalError
from .base import Fault, JournalHealth, JournalUnavailable, Probe
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
# How long a write waits for another process's write lock before the journal counts as locked
# (its candidates are then kept in memory and tried again). Writes of watcher's agents take
# milliseconds; a lock held longer is a backup tool, an open `sqlite3` shell, a stuck process.
BUSY_TIMEOUT = 10.0
BUSY_STEP_MS = 100  # SQLite's own busy wait per try; between tries, shutdown is noticed
TABLES = {"publishes", "files", "events", "registry", "deliveries", "unmatched", "unmatched_dropped", "agents",
          "roots_seen", "watches", "sqlite_sequence"}


class SqliteDatabase(Database):
    dialect = SQLITE

    def __init__(self, url: str, *, busy_timeout: float = BUSY_TIMEOUT) -> None:
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            raise JournalError(f"journal: this Python's SQLite is {sqlite3.sqlite_version}; watcher needs 3.35 or "
                               "newer (use a newer Python, or a postgresql:// journal)")
        self.url = url
        path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else url[len("sqlite://"):]
        if not path or path == ":memory:":
            raise JournalError("journal: an in-memory SQLite journal would lose everything on exit; give a file path")
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        self.health = JournalHealth()
        self._local = threading.local()
        self._conns: list[tuple[threading.Thread, sqlite3.Connection]] = []
        self._lock = threading.Lock()
        # One writer at a time inside this process: threads queue on a lock instead of meeting in
        # SQLite's busy handler, which sleeps in growing steps (measured: most of a burst's time).
        self._write_lock = threading.Lock()
        self._no_waiting = threading.Event()  # shutting down: nobody waits for another process's lock
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise JournalError(f"journal: cannot create {self.path.parent}: {exc.strerror or exc}") from None
        self._refuse_foreign_file()
        if not self.path.exists():
            self._create()

    # -- the file ----------------------------------------------------------------------------
    def _refuse_foreign_file(self) -> None:
        """An empty file where the journal should be: refused, never taken for a new journal
        (that would publish everything on disk again). Only stat'ed: opening and closing the file
        outside SQLite would drop the POSIX locks this process's connections hold on it (SQLite's
        "how to corrupt a database"). A file that is not SQLite is refused by ``migrate``."""
        try:
            size = self.path.stat().st_size
        except OSError:
            return  # missing (created next), or unreadable (opening it says why)
        if size == 0:
            raise JournalError(
                f"journal {self.path} is an empty file: a watcher journal never is (watcher creates it whole), so it "
                "was truncated or replaced (a full disk, a failed copy or restore). Restore it from a backup; or, to "
                "start a new journal, remove the file: everything already on disk is then published again, unless "
                "the root says `existing: baseline` (or run `watcher baseline` first)")

    def _create(self) -> None:
        """Make a new journal file whole, under a temporary name hard-linked into place, so that
        the path never holds an empty file that watcher wrote (an empty one is refused) and an
        agent starting at the same moment keeps the one that is there."""
        tmp = self.path.with_name(f".{self.path.name}.new-{os.getpid()}-{threading.get_ident()}")
        try:
            c = sqlite3.connect(tmp, isolation_level=None)
            try:
                c.execute("PRAGMA journal_mode=WAL")  # writes the header page: the file is a database now
            finally:
                c.close()
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                pass  # another agent created it meanwhile: theirs is the journal
            except OSError:  # no hard links here (some network or FAT filesystems)
                if not self.path.exists():
                    os.replace(tmp, self.path)
        except (OSError, sqlite3.Error) as exc:
            raise self._fail(exc, on_write=True) if isinstance(exc, sqlite3.Error) else JournalError(
                f"journal: cannot create {self.path}: {exc.strerror or exc}") from None
        finally:
            for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
                try:
                    leftover.unlink()
                except OSError:
                    pass

    # -- connections -------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        c = getattr(self._local, "conn", None)
        if c is None:
            try:
                c = sqlite3.connect(self.path, timeout=BUSY_STEP_MS / 1000, isolation_level=None,
                                    check_same_thread=False)
            except sqlite3.Error as exc:
                raise self._fail(exc) from None
            try:
                if not getattr(self._local, "opening", False):  # a file not known to be ours is not changed
                    c.execute("PRAGMA journal_mode=WAL")
                c.execute("PRAGMA synchronous=NORMAL")
                c.execute("PRAGMA foreign_keys=ON")
                c.execute(f"PRAGMA busy_timeout={BUSY_STEP_MS}")
            except sqlite3.Error as exc:
                c.close()
                raise self._fail(exc) from None
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

    def _drop(self) -> None:
        """Close this thread's connection: after a fault it may be stuck as it was opened (read-only
        while the file was), so the next call opens a fresh one."""
        c = getattr(self._local, "conn", None)
        if c is None:
            return
        self._local.conn = None
        with self._lock:
            self._conns = [(t, old) for t, old in self._conns if old is not c]
        try:
            c.close()
        except sqlite3.Error:
            pass

    def _fail(self, exc: sqlite3.Error, *, on_write: bool = True) -> JournalError:
        """The error to raise for ``exc``: ``JournalUnavailable`` (recorded in ``health``, this
        thread's connection dropped) when the database itself is in trouble; a plain
        ``JournalError`` when the statement or its data is (a constraint, a bad parameter)."""
        unavailable = _unavailable(exc, self.path, self.busy_timeout)
        if unavailable is None:
            return JournalError(f"journal: {self.path}: {exc}")
        if getattr(self._local, "opening", False):
            return unavailable
        self.health.failed(unavailable, on_write=on_write)
        if unavailable.fault is not Fault.LOCKED:
            self._drop()
        return unavailable

    def stop_waiting(self) -> None:
        self._no_waiting.set()

    # -- transactions ------------------------------------------------------------------------
    def write(self, fn: Callable[[Cursor], T]) -> T:
        deadline = time.monotonic() + self.busy_timeout
        if not self._write_lock.acquire(timeout=max(0.0, self.busy_timeout)):
            raise self._fail(_Busy("another thread of this agent waits for the write lock"))
        try:
            result = self._write(fn, deadline)
        finally:
            self._write_lock.release()
        self.health.succeeded()
        return result

    def _write(self, fn: Callable[[Cursor], T], deadline: float) -> T:
        c = self._conn()
        while True:
            try:
                c.execute("BEGIN IMMEDIATE")
                break
            except sqlite3.OperationalError as exc:
                # SQLite's busy handler waited BUSY_STEP_MS; try again until the deadline, unless
                # the agent is stopping (it must not sit out another process's lock)
                if not _is_busy(exc) or time.monotonic() >= deadline or self._no_waiting.is_set():
                    raise self._fail(exc) from None
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
        deadline = time.monotonic() + self.busy_timeout
        while True:
            try:
                result = fn(self._conn())
                break
            except sqlite3.OperationalError as exc:
                # WAL readers wait only while another process recovers the WAL after a crash
                if not _is_busy(exc) or time.monotonic() >= deadline or self._no_waiting.is_set():
                    raise self._fail(exc, on_write=False) from None
            except sqlite3.Error as exc:
                raise self._fail(exc, on_write=False) from None
        self.health.succeeded(on_write=False)
        return result

    def migrate(self, steps: list[list[str]]) -> None:
        # Read first: a current journal needs no write (a read-only one still opens for reading:
        # `watcher publishes`, `status`); a journal that is not watcher's is refused untouched.
        self._local.opening = True  # a failure here is the open's, said by the caller: not an outage
        try:
            version, tables = self.read(lambda c: (c.execute("PRAGMA user_version").fetchone()[0], {
                r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall()}))
        except JournalUnavailable as exc:
            if exc.fault is Fault.DAMAGED and "not a database" in exc.reason:
                raise JournalError(f"journal {self.path} is not a watcher journal (not an SQLite database): point "
                                   "`journal` at another file, or restore the journal from a backup") from None
            raise
        finally:
            self._local.opening = False
        self._refuse_foreign_schema(version, tables, len(steps))
        self.read(lambda c: c.execute("PRAGMA journal_mode=WAL"))
        if version == len(steps):
            return

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
            if getattr(self._local, "conn", None) is c:  # not dropped after a fault
                c.execute("PRAGMA foreign_keys=ON")

    def _refuse_foreign_schema(self, version: int, tables: set[str], current: int) -> None:
        if version > current:
            raise JournalError(f"journal: {self.path} has schema version {version}, newer than this watcher "
                               f"({current}); upgrade watcher")
        theirs = sorted(tables - TABLES)
        if (version == 0 and theirs) or (version > 0 and "publishes" not in tables):
            what = (f"it holds other tables: {', '.join(theirs[:5])}{', ...' if len(theirs) > 5 else ''}" if theirs
                    else f"schema version {version}, but no `publishes` table")
            raise JournalError(f"journal {self.path} is an SQLite database but not a watcher journal ({what}); point "
                               "`journal` at another file, or restore the journal from a backup")

    def schema_version(self) -> int:
        return self.read(lambda c: c.execute("PRAGMA user_version").fetchone()[0])

    def check(self) -> list[Probe]:
        """`watcher check`: the pages are sound (``PRAGMA quick_check``), the file and its folder
        take writes (a write probe, rolled back), and its disk has room."""
        out: list[Probe] = []
        try:
            problems = [r[0] for r in self.read(lambda c: c.execute("PRAGMA quick_check(20)").fetchall())]
        except JournalError as exc:
            problems = [str(exc)]
        bad = [p for p in problems if p != "ok"]
        out.append(Probe(not bad, "integrity", "quick_check: ok" if not bad else
                         f"damaged: {len(bad)} problem(s), first: {bad[0]}; stop the agent and restore the journal "
                         f"from a backup (`sqlite3 {self.path} .recover` saves what can be read)"))
        out.append(self._write_probe())
        free: int | None = None
        if sys.platform != "win32":  # no statvfs (nor geteuid) on Windows: no disk line there
            try:
                st = os.statvfs(self.path.parent)
                free = st.f_frsize * (st.f_bfree if os.geteuid() == 0 else st.f_bavail)
            except (OSError, AttributeError):
                free = None
        if free is not None:
            out.append(Probe(free >= 1 << 20, "disk", f"{free / (1 << 20):.0f} MiB free" if free >= 1 << 20 else
                             f"the disk holding {self.path} is full ({free} bytes free); free space there"))
        return out

    def _write_probe(self) -> Probe:
        def probe() -> None:
            c = self._conn()
            deadline = time.monotonic() + min(self.busy_timeout, 2.0)
            while True:
                try:
                    c.execute("BEGIN IMMEDIATE")
                    break
                except sqlite3.OperationalError as exc:
                    if not _is_busy(exc) or time.monotonic() >= deadline:
                        raise
            try:
                # a real write statement: a read-only file still lets BEGIN IMMEDIATE through
                c.execute("CREATE TABLE main.watcher_write_probe (x INTEGER)")
            finally:
                c.execute("ROLLBACK")

        try:
            with self._write_lock:
                probe()
        except sqlite3.Error as exc:
            gone = self._fail(exc)
            return Probe(False, "writable", gone.reason if isinstance(gone, JournalUnavailable) else str(gone))
        except JournalError as exc:
            return Probe(False, "writable", str(exc))
        for what in (self.path, self.path.parent):
            if not os.access(what, os.W_OK):
                return Probe(False, "writable", f"{what} is not writable for this user; give it write access")
        return Probe(True, "writable", "a write transaction went through (rolled back)")

    def close(self) -> None:
        with self._lock:
            for _, c in self._conns:
                try:
                    c.close()
                except sqlite3.Error:
                    pass
            self._conns.clear()
        self._local = threading.local()
        self._no_waiting.clear()  # opened again later (a test, a CLI command): writes wait again


class _Busy(sqlite3.OperationalError):
    """Our own wait for the write lock ran out (SQLite's would say SQLITE_BUSY)."""

    sqlite_errorname = "SQLITE_BUSY"


def _is_busy(exc: sqlite3.Error) -> bool:
    return getattr(exc, "sqlite_errorname", "").startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or \
        "database is locked" in str(exc)


def _unavailable(exc: sqlite3.Error, path: Path, busy_timeout: float) -> JournalUnavailable | None:
    """The fault behind a SQLite error, with what to do; None when it is not the database's
    (a constraint, a bad parameter, a bug in a statement)."""
    if not isinstance(exc, (sqlite3.OperationalError, sqlite3.DatabaseError)) or isinstance(
            exc, (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError, sqlite3.DataError)):
        return None
    name = getattr(exc, "sqlite_errorname", "") or ""
    if _is_busy(exc):
        return JournalUnavailable(Fault.LOCKED, f"{path} is locked: another process holds its write lock (waited "
                                  f"up to {busy_timeout:.0f} s; a backup, an open `sqlite3` shell, a stuck program: "
                                  f"`fuser {path}` names it)")
    if name.startswith("SQLITE_FULL") or "disk is full" in str(exc):
        return JournalUnavailable(Fault.FULL, f"the disk holding {path} is full; free space there")
    if name.startswith(("SQLITE_READONLY", "SQLITE_PERM", "SQLITE_AUTH")) or "readonly" in str(exc):
        return JournalUnavailable(Fault.READ_ONLY, f"{path} is read-only ({exc}): give this agent's user write "
                                  "access to the file and its folder, or remount the filesystem read-write")
    if name.startswith("SQLITE_CANTOPEN") or "unable to open" in str(exc):
        return JournalUnavailable(Fault.CANNOT_OPEN, f"{path} cannot be opened ({exc}): check that it and its "
                                  "folder exist and that this agent's user may read and write both")
    if name.startswith("SQLITE_IOERR") or "I/O error" in str(exc):
        return JournalUnavailable(Fault.IO, f"disk I/O error on {path} ({name or exc}): check the disk "
                                  "(`dmesg`); if it was remounted read-only, fix it and remount it read-write")
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or "malformed" in str(exc):
        return JournalUnavailable(Fault.DAMAGED, f"{path} is damaged ({exc}): stop the agent and restore the journal "
                                  f"from a backup (`sqlite3 {path} .recover` saves what can be read)")
    if isinstance(exc, sqlite3.OperationalError) and not name.startswith("SQLITE_ERROR"):
        return JournalUnavailable(Fault.OTHER, f"{path}: {exc}")
    return None  # SQLITE_ERROR: a statement's own mistake


class SqliteJournal(Journal):
    """The ledger over a SQLite file."""

    def __init__(self, url: str, *, clock: Callable[[], float] = time.time, busy_timeout: float = BUSY_TIMEOUT) -> None:
        self.database = SqliteDatabase(url, busy_timeout=busy_timeout)
        super().__init__(self.database, clock=clock)
        self.path = self.database.path

    def _conn(self) -> sqlite3.Connection:
        """This thread's connection (tests, diagnostics)."""
        return self.database._conn()


__all__ = ["SqliteDatabase", "SqliteJournal", "SQLITE"]
