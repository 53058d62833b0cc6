"""A real Zou (the Kitsu API server) for the kitsu tests, started once per test process.

Zou pins ~50 dependencies with ``==``, so it lives in its own virtual environment, cached
outside the checkout (``~/.cache/watcher-tests/zou-<version>``, or ``$WATCHER_TEST_CACHE``):
the first run pays the ``pip install`` (~75-90 s), later runs reuse it. The server itself is
throwaway: PostgreSQL (started by the tests' one launcher, ``tests/pg_server.py``) on a
private port and data directory, Redis on a private port, Zou under gunicorn, all bound to
127.0.0.1, all under one temporary directory removed at the end.

After start-up the database is seeded (project with a file tree, sequences, shots, an asset,
tasks, a bot) and snapshotted as a template, so ``reset()`` between tests is a
``DROP``/``CREATE DATABASE ... TEMPLATE`` (~0.3 s) and the admin and bot tokens stay valid.

Use from a test module::

    from tests.zou_server import zou, zou_server  # noqa: F401  (pytest fixtures)

A test that needs Zou and cannot get it FAILS with the reason (``pytest.fail``); it never skips.
"""
from __future__ import annotations

import atexit
import contextlib
import fcntl
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests

from .fakes import FakeServer, Request
from .pg_server import PgServer, PgUnavailable, free_port, pg_bin, start_postgres, stop_cluster

ZOU_VERSION = os.environ.get("WATCHER_ZOU_VERSION", "1.0.97")
CACHE_DIR = Path(os.environ.get("WATCHER_TEST_CACHE", "~/.cache/watcher-tests")).expanduser()
ADMIN_EMAIL = "admin@example.com"
ADMIN_PASSWORD = "S3cretPassw0rd"
USER_EMAIL = "ingest@studio.example"
USER_PASSWORD = "Ingest-Passw0rd-42"
SECRET_KEY = "watcher-test-zou-secret-key-0123456789abcdef"
WORKERS = int(os.environ.get("WATCHER_ZOU_WORKERS", "2"))
PROJECT = "Watcher Test"
RUN_PREFIX = "watcher-zou-"

# Our own file tree: Zou's stock default.json has a typo on sequences ("<OuputType>").
FILE_TREE: dict[str, Any] = {
    "working": {
        "mountpoint": "/prod", "root": "work",
        "folder_path": {
            "shot": "<Project>/shots/<Sequence>/<Shot>/<TaskType>",
            "asset": "<Project>/assets/<AssetType>/<Asset>/<TaskType>",
            "sequence": "<Project>/sequences/<Sequence>/<TaskType>",
            "episode": "<Project>/episodes/<Episode>/<TaskType>",
            "style": "lowercase"},
        "file_name": {
            "shot": "<Project>_<Sequence>_<Shot>_<TaskType>_<Name>_v<Version>",
            "asset": "<Project>_<AssetType>_<Asset>_<TaskType>_<Name>_v<Version>",
            "sequence": "<Project>_<Sequence>_<TaskType>_<Name>_v<Version>",
            "episode": "<Project>_<Episode>_<TaskType>_<Name>_v<Version>",
            "style": "lowercase"},
    },
    "output": {
        "mountpoint": "/prod", "root": "publish",
        "folder_path": {
            "shot": "<Project>/shots/<Sequence>/<Shot>/<TaskType>/<OutputType>",
            "asset": "<Project>/assets/<AssetType>/<Asset>/<TaskType>/<OutputType>",
            "sequence": "<Project>/sequences/<Sequence>/<TaskType>/<OutputType>",
            "episode": "<Project>/episodes/<Episode>/<TaskType>/<OutputType>",
            "style": "lowercase"},
        "file_name": {
            "shot": "<Project>_<Sequence>_<Shot>_<TaskType>_<OutputType>_<Name>_v<Version>",
            "asset": "<Project>_<AssetType>_<Asset>_<TaskType>_<OutputType>_<Name>_v<Version>",
            "sequence": "<Project>_<Sequence>_<TaskType>_<OutputType>_<Name>_v<Version>",
            "episode": "<Project>_<Episode>_<TaskType>_<OutputType>_<Name>_v<Version>",
            "style": "lowercase"},
    },
    "preview": {
        "mountpoint": "/prod", "root": "previews",
        "folder_path": {"shot": "<Project>/shots/<Sequence>/<Shot>/<TaskType>",
                        "asset": "<Project>/assets/<AssetType>/<Asset>/<TaskType>",
                        "style": "lowercase"},
        "file_name": {"shot": "<Project>_<Sequence>_<Shot>_<TaskType>",
                      "asset": "<Project>_<AssetType>_<Asset>_<TaskType>",
                      "style": "lowercase"},
    },
}


class ZouUnavailable(PgUnavailable):
    """Zou could not be installed or started; the message says why and what to do."""


def _tail(path: Path, lines: int = 25) -> str:
    try:
        kept = [ln if len(ln) <= 300 else ln[:300] + " ..." for ln in path.read_text(errors="replace").splitlines()
                if not ln.startswith("WARNING: Location")]  # pip's noise about the local indexes
        return "\n".join(kept[-lines:])
    except OSError:
        return "(no log)"


# ---------------------------------------------------------------------------------------------
# The cached virtual environment

def venv_dir(version: str = ZOU_VERSION) -> Path:
    return CACHE_DIR / f"zou-{version}"


def ensure_venv(version: str = ZOU_VERSION) -> Path:
    """The Zou venv, installed on first use. A marker file is written only after a complete
    install, so an interrupted one is redone; a lock keeps two test processes from racing."""
    venv = venv_dir(version)
    marker = venv / ".watcher-ready"
    if marker.exists():
        return venv
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    log = CACHE_DIR / f"zou-{version}-install.log"
    with open(CACHE_DIR / f"zou-{version}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists():
            return venv
        shutil.rmtree(venv, ignore_errors=True)
        with open(log, "w") as out:
            steps = [[sys.executable, "-m", "venv", str(venv)],
                     [str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                      "--disable-pip-version-check", f"zou=={version}"]]
            for cmd in steps:
                try:
                    rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=900).returncode
                except subprocess.TimeoutExpired:
                    rc = "timeout after 900 s"
                if rc != 0:
                    raise ZouUnavailable(f"installing zou=={version} into {venv} failed ({' '.join(cmd[-3:])}: "
                                         f"exit {rc}); log {log}:\n{_tail(log)}")
        marker.write_text(version)
    return venv


# ---------------------------------------------------------------------------------------------
# System binaries

def redis_bin() -> str:
    exe = shutil.which("redis-server")
    if not exe:
        raise ZouUnavailable("redis-server not found; tests/run.sh installs the Debian package 'redis-server'")
    return exe


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_pidfile(pidfile: Path, expect: str, timeout: float = 10) -> None:
    """Stop the process named in ``pidfile`` if its command line still contains ``expect``
    (so a recycled PID is never hit)."""
    try:
        pid = int(pidfile.read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (OSError, ValueError, IndexError):
        return
    if expect not in cmdline:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def reap_leftovers() -> None:
    """Stop servers left behind by an earlier test process that died without cleaning up
    (its PID file names a dead owner). Only processes named in our own PID files are touched."""
    for d in glob.glob(os.path.join(tempfile.gettempdir(), RUN_PREFIX + "*")):
        run = Path(d)
        try:
            owner = int((run / "owner.pid").read_text())
        except (OSError, ValueError):
            continue
        if _pid_alive(owner):
            continue
        ZouServer._stop_dir(run)


# ---------------------------------------------------------------------------------------------
# The server

class ZouServer:
    """PostgreSQL + Redis + Zou (gunicorn) on 127.0.0.1 under one temporary directory."""

    def __init__(self, workers: int = WORKERS) -> None:
        self.workers = workers
        self.run: Path | None = None
        self.pg_port = self.kv_port = self.port = 0
        self.venv: Path | None = None
        self.url = ""
        self.admin_token = ""
        self.bot_token = ""
        self.seed: dict[str, Any] = {}
        self.timings: dict[str, float] = {}
        self._gunicorn: subprocess.Popen | None = None
        self._redis: subprocess.Popen | None = None
        self._pg: PgServer | None = None
        self._admin = requests.Session()
        self._db = None  # psycopg connection to the 'postgres' maintenance database
        self._lock = threading.Lock()

    # ---- start / stop -----------------------------------------------------------------------
    def start(self) -> "ZouServer":
        t0 = time.monotonic()
        reap_leftovers()
        pg_bin()  # fail early, with the reason, when PostgreSQL is missing
        redis = redis_bin()
        self.venv = ensure_venv()
        self.timings["venv"] = time.monotonic() - t0
        self.run = Path(tempfile.mkdtemp(prefix=RUN_PREFIX))
        os.chmod(self.run, 0o755)
        (self.run / "owner.pid").write_text(str(os.getpid()))
        try:
            self._start_postgres()
            self._start_redis(redis)
            self._init_zou()
            self.start_api()
            self._seed()
            self._snapshot()
        except BaseException:
            self.stop()
            raise
        self.timings["total"] = time.monotonic() - t0
        return self

    def _start_postgres(self) -> None:
        """The shared launcher of tests/pg_server.py, under our run directory, trust auth."""
        t = time.monotonic()
        assert self.run
        try:
            self._pg = start_postgres(base=self.run / "pg", password=False, max_connections=100)
        except PgUnavailable as exc:
            raise ZouUnavailable(str(exc)) from None
        self.pg_port = self._pg.port
        self._db = self._pg.admin()
        self._pg.create_db("zoudb")
        self.timings["postgres"] = time.monotonic() - t

    def _start_redis(self, redis: str) -> None:
        t = time.monotonic()
        assert self.run
        d = self.run / "redis"
        d.mkdir()
        self.kv_port = free_port()
        self._redis = subprocess.Popen(
            [redis, "--bind", "127.0.0.1", "--port", str(self.kv_port), "--save", "", "--appendonly", "no",
             "--dir", str(d), "--logfile", str(d / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
        (d / "redis.pid").write_text(str(self._redis.pid))
        deadline = time.monotonic() + 15
        while True:
            with contextlib.suppress(OSError):
                if self._redis_cmd("PING") == "+PONG":
                    break
            if self._redis.poll() is not None or time.monotonic() > deadline:
                raise ZouUnavailable(f"redis-server did not start; log:\n{_tail(d / 'redis.log')}")
            time.sleep(0.02)
        self.timings["redis"] = time.monotonic() - t

    def _redis_cmd(self, *args: str) -> str:
        with socket.create_connection(("127.0.0.1", self.kv_port), timeout=5) as s:
            s.sendall(("*%d\r\n" % len(args) + "".join(f"${len(a)}\r\n{a}\r\n" for a in args)).encode())
            return s.recv(4096).decode().strip()

    @property
    def env(self) -> dict[str, str]:
        assert self.run
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "KV_", "INDEXER_", "WATCHER_"))}
        env.update({
            "DB_HOST": "127.0.0.1", "DB_PORT": str(self.pg_port), "DB_USERNAME": "postgres",
            "DB_PASSWORD": "unused", "DB_DATABASE": "zoudb", "DB_POOL_SIZE": "5", "DB_MAX_OVERFLOW": "5",
            "KV_HOST": "127.0.0.1", "KV_PORT": str(self.kv_port), "SECRET_KEY": SECRET_KEY,
            "PREVIEW_FOLDER": str(self.run / "previews"), "TMP_DIR": str(self.run / "tmp"),
            # never created: an existing empty folder named event_handlers on sys.path breaks the boot
            "PLUGIN_FOLDER": str(self.run / "hooks" / "plugins"),
            "EVENT_HANDLERS_FOLDER": str(self.run / "hooks"),
            "MAIL_ENABLED": "false", "MAIL_CHECK_DELIVERABILITY": "false", "ENABLE_JOB_QUEUE": "false",
            "PYTHONDONTWRITEBYTECODE": "1",
        })
        return env

    def _init_zou(self) -> None:
        """Schema, reference data and the admin in one Python process (each ``zou`` CLI call
        costs ~5 s of imports). ``init-db``, not ``upgrade-db``: the latter phones home."""
        t = time.monotonic()
        assert self.run and self.venv
        for sub in ("previews", "tmp"):
            (self.run / sub).mkdir(exist_ok=True)
        script = (
            "from zou.cli import cli\n"
            "for args in (['init-db'], ['init-data'],\n"
            f"             ['create-admin', {ADMIN_EMAIL!r}, '--password', {ADMIN_PASSWORD!r}]):\n"
            "    cli.main(args, standalone_mode=False)\n")
        log = self.run / "init.log"
        with open(log, "w") as out:
            try:
                rc = subprocess.run([str(self.venv / "bin" / "python"), "-c", script], env=self.env,
                                    cwd=self.run, stdout=out, stderr=subprocess.STDOUT, timeout=180).returncode
            except subprocess.TimeoutExpired:
                rc = "timeout after 180 s"
        if rc != 0:
            raise ZouUnavailable(f"zou init-db/init-data/create-admin failed (exit {rc}); log {log}:\n{_tail(log)}")
        self.timings["init"] = time.monotonic() - t

    def start_api(self) -> None:
        """Start gunicorn (also used to bring the API back after ``stop_api``)."""
        t = time.monotonic()
        assert self.run and self.venv
        if not self.port:
            self.port = free_port()
            self.url = f"http://127.0.0.1:{self.port}"
        log = self.run / "gunicorn.log"
        self._gunicorn = subprocess.Popen(
            [str(self.venv / "bin" / "python"), "-m", "gunicorn", "-b", f"127.0.0.1:{self.port}",
             "-w", str(self.workers), "--timeout", "60", "--graceful-timeout", "2",
             "--control-socket", str(self.run / "gunicorn.ctl"), "--pid", str(self.run / "gunicorn.pid"),
             "--access-logfile", str(self.run / "access.log"), "zou.app:create_app()"],
            cwd=self.run, env=self.env, stdin=subprocess.DEVNULL, stdout=open(log, "a"),
            stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 90
        while True:
            with contextlib.suppress(requests.RequestException):
                if requests.get(self.url + "/", timeout=2).ok:
                    break
            if self._gunicorn.poll() is not None or time.monotonic() > deadline:
                raise ZouUnavailable(f"gunicorn (zou.app:create_app()) did not answer on {self.url}; log:\n{_tail(log)}")
            time.sleep(0.1)
        self.timings["api_start"] = time.monotonic() - t

    def stop_api(self) -> None:
        """Stop gunicorn only (the database and Redis keep running): an outage of the API."""
        p, self._gunicorn = self._gunicorn, None
        if p is None:
            return
        with contextlib.suppress(ProcessLookupError):
            p.send_signal(signal.SIGINT)  # gunicorn's quick shutdown: an outage, not a drain
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        if p.stdout:
            p.stdout.close()

    def stop(self) -> None:
        """Stop everything and remove the run directory."""
        self.stop_api()
        if self._redis is not None:
            self._redis.terminate()
            try:
                self._redis.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._redis.kill()
            self._redis = None
        self._db = None
        if self._pg is not None:
            with contextlib.suppress(Exception):
                self._pg.stop()
            self._pg = None
        self._admin.close()
        if self.run is not None:
            self._stop_dir(self.run)
            self.run = None

    @staticmethod
    def _stop_dir(run: Path) -> None:
        _kill_pidfile(run / "gunicorn.pid", "gunicorn")
        _kill_pidfile(run / "redis" / "redis.pid", "redis-server")
        with contextlib.suppress(PgUnavailable, OSError, subprocess.SubprocessError):
            stop_cluster(run / "pg")
        shutil.rmtree(run, ignore_errors=True)

    # ---- data -------------------------------------------------------------------------------
    def api(self, method: str, path: str, json_body: Any = None, *, token: str | None = None,
            ok: tuple[int, ...] = (200, 201), **kw: Any) -> Any:
        """Call Zou as the admin (or with ``token``); assert the status, return the JSON."""
        headers = {"Authorization": f"Bearer {token or self.admin_token}"}
        r = self._admin.request(method, self.url + path, json=json_body, headers=headers, timeout=30, **kw)
        if r.status_code not in ok:
            raise AssertionError(f"{method} {path} -> {r.status_code}: {r.text[:500]}")
        return r.json() if r.content else None

    def login(self, email: str = ADMIN_EMAIL, password: str = ADMIN_PASSWORD) -> str:
        r = self._admin.post(self.url + "/auth/login", json={"email": email, "password": password}, timeout=30)
        if r.status_code != 200:
            raise ZouUnavailable(f"login as {email} failed: {r.status_code} {r.text[:300]}")
        return r.json()["access_token"]

    def _seed(self) -> None:
        """The fixture every test starts from (kept in the template database)."""
        t = time.monotonic()
        self.admin_token = self.login()
        s: dict[str, Any] = {}
        bot = self.api("POST", "/data/persons", {"first_name": "watcher-bot", "last_name": "", "is_bot": True,
                                                  "role": "admin", "email": "watcher-bot@studio.example"})
        self.bot_token = bot.get("access_token") or ""
        if not self.bot_token:
            raise ZouUnavailable(f"creating a bot did not return a token: {sorted(bot)}")
        user = self.api("POST", "/data/persons", {"first_name": "Ingest", "last_name": "User",
                                                   "email": USER_EMAIL, "role": "admin", "password": USER_PASSWORD})
        s["user_id"], s["bot_id"] = user["id"], bot["id"]
        proj = self.api("POST", "/data/projects", {"name": PROJECT, "production_type": "short"})
        self.api("PUT", f"/data/projects/{proj['id']}", {"file_tree": FILE_TREE})
        s["project"] = proj
        s["task_types"] = {tt["name"]: tt["id"] for tt in self.api("GET", "/data/task-types")}
        s["task_status"] = {ts["short_name"]: ts["id"] for ts in self.api("GET", "/data/task-status")}
        s["asset_types"] = {at["name"]: at["id"] for at in self.api("GET", "/data/asset-types")}
        s["sequences"], s["shots"], s["assets"] = {}, {}, {}
        for seq_name, shots in (("SQ01", ("SH010", "SH020")), ("SQ02", ("SH030",))):
            seq = self.create_sequence(proj["id"], seq_name)
            s["sequences"][seq_name] = seq["id"]
            for shot_name in shots:
                shot = self.create_shot(proj["id"], seq["id"], shot_name)
                s["shots"][shot_name] = shot["id"]
        hero = self.api("POST", f"/data/projects/{proj['id']}/asset-types/{s['asset_types']['Character']}/assets/new",
                        {"name": "Hero", "description": "main character", "data": {}})
        s["assets"]["Hero"] = hero["id"]
        for tt in ("Compositing", "Lighting", "Animation"):
            self.create_tasks(proj["id"], s["task_types"][tt], "shots", list(s["shots"].values()))
        for tt in ("Modeling", "Rigging"):
            self.create_tasks(proj["id"], s["task_types"][tt], "assets", [hero["id"]])
        self.seed = s
        self.timings["seed"] = time.monotonic() - t

    def create_sequence(self, project_id: str, name: str) -> dict:
        return self.api("POST", f"/data/projects/{project_id}/sequences", {"name": name})

    def create_shot(self, project_id: str, sequence_id: str, name: str, **extra: Any) -> dict:
        return self.api("POST", f"/data/projects/{project_id}/shots",
                        {"name": name, "sequence_id": sequence_id, **extra})

    def create_tasks(self, project_id: str, task_type_id: str, kind: str, entity_ids: list[str]) -> list[dict]:
        return self.api("POST", f"/actions/projects/{project_id}/task-types/{task_type_id}/{kind}/create-tasks",
                        entity_ids)

    def output_files(self, entity_id: str | None = None, **filters: Any) -> list[dict]:
        """Every output file (of one entity), straight from the server."""
        path = f"/data/entities/{entity_id}/output-files" if entity_id else "/data/output-files"
        return self.api("GET", path, params=filters)

    def _snapshot(self) -> None:
        """Keep the seeded database as the template ``reset()`` copies from."""
        assert self._db is not None
        for attempt in range(50):
            self._db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                             "WHERE datname = 'zoudb' AND pid <> pg_backend_pid()")
            try:
                self._db.execute("CREATE DATABASE zoudb_tpl TEMPLATE zoudb")
                return
            except Exception as exc:  # another session got in between: try again
                if "being accessed" not in str(exc) or attempt == 49:
                    raise ZouUnavailable(f"snapshotting the seeded database failed: {exc}") from None
                time.sleep(0.05)

    def reset(self) -> None:
        """Back to the seeded state (~0.3 s). The gunicorn workers reconnect by themselves."""
        t = time.monotonic()
        with self._lock:
            if self._gunicorn is None:
                self.start_api()
            assert self._db is not None
            self._db.execute("DROP DATABASE zoudb WITH (FORCE)")
            self._db.execute("CREATE DATABASE zoudb TEMPLATE zoudb_tpl")
            self._redis_cmd("FLUSHALL")
        self.timings["last_reset"] = time.monotonic() - t


# ---------------------------------------------------------------------------------------------
# One server per test process, shared by every module that imports the fixtures

_server: ZouServer | None = None
_failure: str | None = None
_start_lock = threading.Lock()


def get_server() -> ZouServer:
    """Start the shared server on first use; a failure is remembered so that every later
    test fails at once with the same reason instead of trying again."""
    global _server, _failure
    with _start_lock:
        if _server is not None:
            return _server
        if _failure is not None:
            raise ZouUnavailable(_failure)
        try:
            _server = ZouServer().start()
        except ZouUnavailable as exc:
            _failure = str(exc)
            raise
        except Exception as exc:  # anything else while starting is the same kind of failure
            _failure = f"{type(exc).__name__}: {exc}"
            raise ZouUnavailable(_failure) from exc
        atexit.register(_shutdown)
        return _server


def _shutdown() -> None:
    global _server
    if _server is not None:
        _server.stop()
        _server = None


@pytest.fixture(scope="session")
def zou_server() -> Iterator[ZouServer]:
    try:
        server = get_server()
    except ZouUnavailable as exc:
        pytest.fail(f"the kitsu tests need a real Zou and it could not be started: {exc}", pytrace=False)
    yield server  # stopped at process exit, after every module that shares it is done


@pytest.fixture
def zou(zou_server: ZouServer) -> ZouServer:
    """The shared server, reset to the seeded state."""
    zou_server.reset()
    return zou_server


if __name__ == "__main__":  # manual use: python -m tests.zou_server  (starts, prints, waits)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    srv = ZouServer().start()
    print(json.dumps({"url": srv.url, "timings": srv.timings, "admin": ADMIN_EMAIL, "run": str(srv.run)}, indent=1))
    try:
        signal.pause()
    finally:
        srv.stop()


# ---------------------------------------------------------------------------------------------
# A forwarding proxy that can lose answers: the request reaches the real Zou, the client never
# hears back (what a dropped connection after the send looks like to the backend).

class LossyProxy(FakeServer):
    """``http://127.0.0.1:<port>`` forwarding everything to ``target``. It takes the faults of
    ``tests/fakes.py``: ``drop_after_apply(method=, path=)`` makes the next matching requests land
    on the server but closes the client's connection instead of answering; ``lost()`` counts them."""

    name = "lossy-proxy"

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target.rstrip("/")
        self._upstream = requests.Session()

    def respond(self, request: Request) -> tuple[int, Any, dict[str, str]]:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        r = self._upstream.request(request.method, self.target + request.target, data=request.raw or None,
                                   headers=headers, timeout=60, allow_redirects=False)
        kept = {k: v for k, v in r.headers.items()
                if k.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding")}
        return r.status_code, r.content, kept

    def stop(self) -> None:
        super().stop()
        self._upstream.close()
