"""A real, throwaway PostgreSQL server for tests (Debian's binaries), started once per session.
This is the one PostgreSQL launcher of the tests: the journal's tests use it through the
fixtures below, the real Zou harness (``tests/zou_server.py``) for its own database.

``start_postgres(tmpdir)`` runs ``initdb`` + ``pg_ctl start`` as the ``postgres`` system user
when we are root (initdb refuses root), with the data directory and the unix socket under
``tmpdir``, TCP on a private port of 127.0.0.1, password authentication (scram) over TCP, and
durability switched off (fsync, synchronous_commit) because the data is thrown away. Each test
gets its own empty schema in one shared database (``pg_url``: ~1 ms; the URL sets the
search_path), or, when it needs a whole database, ``pg_db`` (``create_db``: 30-300 ms, since
CREATE DATABASE checkpoints).

Use from a test module::

    from tests.pg_server import pg_server, pg_url  # noqa: F401  (pytest fixtures)

No PostgreSQL → the fixture FAILS with the reason (``tests/run.sh`` installs it); never skips.
"""
from __future__ import annotations

import atexit
import glob
import itertools
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import psycopg
import pytest


TEST_DB = "watcher_tests"
PREFIX = "watcher-pg-"


class PgUnavailable(RuntimeError):
    """PostgreSQL could not be started here; the message says why and what to install."""


def pg_bin() -> Path:
    """Newest installed server version's bin directory."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: [int(x) if x.isdigit() else 0 for x in p.split("/")[4].split(".")])
    if not found:
        raise PgUnavailable("PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin/initdb); "
                            "tests/run.sh installs the Debian package 'postgresql'")
    return Path(found[-1]).parent


def _as_postgres() -> list[str]:
    """Prefix that runs a command as the postgres system user when we are root."""
    if os.geteuid() != 0:
        return []
    runuser = shutil.which("runuser")
    if not runuser:
        raise PgUnavailable("running as root but 'runuser' is missing (needed to run PostgreSQL as 'postgres')")
    try:
        import pwd
        pwd.getpwnam("postgres")
    except KeyError:
        raise PgUnavailable("running as root but there is no 'postgres' system user "
                            "(the Debian 'postgresql' package creates it)") from None
    return [runuser, "-u", "postgres", "--"]


def _give_to_postgres(path: Path) -> None:
    if os.geteuid() == 0:
        import pwd
        pw = pwd.getpwnam("postgres")
        os.chown(path, pw.pw_uid, pw.pw_gid)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd: list[str], what: str, log: Path, timeout: float = 60) -> None:
    with open(log, "a") as out:
        try:
            rc: object = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = f"timeout after {timeout:g} s"
    if rc != 0:
        raise PgUnavailable(f"{what} failed (exit {rc}); log {log}:\n{_tail(log)}")


def _tail(path: Path, n: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


@dataclass
class PgServer:
    """A running server: superuser ``postgres`` with ``password`` on 127.0.0.1:``port`` (no
    password: trust authentication)."""

    base: Path
    port: int
    password: str | None
    bin: Path
    runas: list[str]
    startup_seconds: float = 0.0
    _admin: psycopg.Connection | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _names: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    _dbs: set[str] = field(default_factory=set)

    @property
    def data(self) -> Path:
        return self.base / "data"

    @property
    def log(self) -> Path:
        return self.base / "postgres.log"

    def url(self, dbname: str = "postgres", *, user: str = "postgres", password: str | None = None,
            schema: str | None = None) -> str:
        """libpq URL with the password in it; ``schema`` sets the connection's search_path."""
        secret = self.password if password is None else password
        url = f"postgresql://{user}{':' + secret if secret else ''}@127.0.0.1:{self.port}/{dbname}"
        return f"{url}?options=-csearch_path%3D{schema}" if schema else url

    def admin(self) -> psycopg.Connection:
        if self._admin is None or self._admin.closed:
            self._admin = psycopg.connect(self.url(), autocommit=True, connect_timeout=5)
        return self._admin

    def execute(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Run one statement on the maintenance database (autocommit)."""
        with self._lock:
            cur = self.admin().execute(sql, params)
            return cur.fetchall() if cur.description else []

    def create_db(self, name: str | None = None) -> str:
        """A fresh, empty database; returns its name."""
        name = name or f"t{next(self._names)}"
        # FILE_COPY (15+) copies template1's files: ~20 ms with fsync off, half of WAL_LOG.
        strategy = " STRATEGY FILE_COPY" if self.admin().info.server_version >= 150000 else ""
        self.execute(f'CREATE DATABASE "{name}"{strategy}')
        return name

    def drop_db(self, name: str) -> None:
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def create_schema(self, dbname: str = "watcher_tests") -> str:
        """A fresh, empty schema in ``dbname`` (created on first use); returns a URL whose
        search_path points at it. ~1 ms, where a database costs 30-300 ms (checkpoints) on a
        busy machine."""
        with self._lock:
            if dbname not in self._dbs:
                self._dbs.add(dbname)
                if not self.admin().execute("SELECT 1 FROM pg_database WHERE datname=%s", (dbname,)).fetchone():
                    self.admin().execute(f'CREATE DATABASE "{dbname}"')
            name = f"s{next(self._names)}"
        with psycopg.connect(self.url(dbname), autocommit=True, connect_timeout=5) as c:
            c.execute(f'CREATE SCHEMA "{name}"')
        return self.url(dbname, schema=name)

    def disconnect_all(self, dbname: str) -> None:
        """End every session on ``dbname`` (connections a failed test left open)."""
        self.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname=%s "
                     "AND pid <> pg_backend_pid()", (dbname,))

    def stop(self) -> None:
        if self._admin is not None:
            self._admin.close()
            self._admin = None
        stop_cluster(self.base, self.bin, self.runas)
        shutil.rmtree(self.base, ignore_errors=True)


def stop_cluster(base: Path, pgbin: Path | None = None, runas: list[str] | None = None, timeout: int = 20) -> None:
    """Stop the server whose data directory is ``base/data`` if it runs (also one that another,
    dead test process started)."""
    if not (base / "data" / "postmaster.pid").exists():
        return
    pgbin = pgbin or pg_bin()
    runas = _as_postgres() if runas is None else runas
    subprocess.run([*runas, str(pgbin / "pg_ctl"), "-D", str(base / "data"), "-m", "immediate", "-w", "-t",
                    str(timeout), "stop"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)


def _reap_orphans(pgbin: Path, runas: list[str], parent: Path) -> None:
    """Stop servers that an earlier, killed test run of ours left behind (owner process gone)."""
    for owner in parent.glob(f"{PREFIX}*/owner.pid"):
        try:
            os.kill(int(owner.read_text()), 0)
            continue  # its test run is still going
        except ProcessLookupError:
            pass
        except (OSError, ValueError):
            continue
        stop_cluster(owner.parent, pgbin, runas, timeout=10)
        shutil.rmtree(owner.parent, ignore_errors=True)


def start_postgres(tmpdir: Path | str | None = None, *, base: Path | None = None, password: bool = True,
                   max_connections: int = 60) -> PgServer:
    """initdb + start a private server under ``tmpdir`` (a new temp dir when None), wait until it
    answers. The directory must be reachable by the ``postgres`` user when we are root (/tmp is;
    pytest's tmp_path is not, being 0700 root).

    ``base``: use that directory instead (created if missing; whoever owns its parent reaps it
    after a crash). ``password=False``: trust authentication, the URL has no password."""
    t0 = time.monotonic()
    pgbin = pg_bin()
    runas = _as_postgres()
    if base is None:
        _reap_orphans(pgbin, runas, Path(tmpdir or tempfile.gettempdir()))
        base = Path(tempfile.mkdtemp(prefix=PREFIX, dir=tmpdir))
        (base / "owner.pid").write_text(str(os.getpid()))
    else:
        base.mkdir(parents=True, exist_ok=True)
    base.chmod(0o700)
    _give_to_postgres(base)
    secret = secrets.token_urlsafe(18) if password else None
    server = PgServer(base=base, port=0, password=secret, bin=pgbin, runas=runas)
    try:
        auth = ["--auth=trust"]
        if secret:
            pwfile = base / "pw"
            pwfile.write_text(secret + "\n")
            _give_to_postgres(pwfile)
            auth = [f"--pwfile={pwfile}", "--auth-local=trust", "--auth-host=scram-sha-256"]
        _run([*runas, str(pgbin / "initdb"), "-D", str(server.data), "-U", "postgres", *auth, "-E", "UTF8",
              "--locale=C.UTF-8", "--no-sync", "--no-instructions"], "initdb", base / "initdb.log")
        if secret:
            pwfile.unlink()
        opts = ("-c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                f"-c shared_buffers=16MB -c max_connections={max_connections} -c unix_socket_directories={base} "
                "-c log_min_messages=warning")
        for attempt in range(3):  # the port we picked may be taken by the time we bind it
            server.port = free_port()
            try:
                _run([*runas, str(pgbin / "pg_ctl"), "-D", str(server.data), "-l", str(server.log), "-w", "-t", "60",
                      "-o", f"{opts} -p {server.port}", "start"], "starting PostgreSQL", base / "pg_ctl.log")
                break
            except PgUnavailable:
                if attempt == 2 or "could not bind" not in _tail(server.log, 50):
                    raise
        server.admin()
    except BaseException:
        server.stop()
        raise
    atexit.register(server.stop)
    server.startup_seconds = time.monotonic() - t0
    return server


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    try:
        server = start_postgres()
    except (PgUnavailable, OSError, psycopg.Error) as exc:
        pytest.fail(f"PostgreSQL test server unavailable: {exc}", pytrace=False)
    yield server
    server.stop()


@pytest.fixture
def pg_url(pg_server: PgServer) -> Iterator[str]:
    """URL (password included) of a fresh schema in the shared test database: each test starts
    from nothing, as if the database were new."""
    yield pg_server.create_schema(TEST_DB)
    pg_server.disconnect_all(TEST_DB)


@pytest.fixture
def pg_db(pg_server: PgServer) -> Iterator[str]:
    """URL of a fresh database of its own (slower than ``pg_url``), dropped afterwards."""
    name = pg_server.create_db()
    yield pg_server.url(name)
    pg_server.drop_db(name)
