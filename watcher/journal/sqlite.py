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

SQLITE = Dialect(
    name="sqlite",
    types={"id": "INTEGER PRIMARY KEY AUTOINCREMENT", "json": "TEXT", "bool": "INTEGER", "real": "REAL",
           "text": "TEXT", "bigint": "INTEGER", "rowid_free": "WITHOUT ROWID"},
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
        self._conns: list[sqlite3.Connection] = []
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
            with self._lock:
                self._conns.append(c)
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

        self.write(run)

    def schema_version(self) -> int:
        return self.read(lambda c: c.execute("PRAGMA user_version").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            for c in self._conns:
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
