"""Journal faults lose nothing: a SQLite journal locked by another process, on a full disk, or
read-only while the agent runs keeps every settled candidate in memory, says so in `status` and
the health verdict, and journals and publishes all of it once it can write again, each file
once, without a restart. `check` finds damaged and read-only journals; an empty or foreign file
is never taken for a new journal; `scan` says why it did not finish.

Real faults: a second process holding the write lock (``BEGIN IMMEDIATE``), a small tmpfs
filled up, a read-only bind mount (the tests run as root, so a chmod alone would not stop them;
the chmod case runs `check` as `nobody` in a forked child)."""
from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.pg_server import pg_server, pg_url  # noqa: F401  (pytest fixtures)
from watcher.errors import JournalError
from watcher.journal.base import Fault, JournalHealth, JournalUnavailable, Status
from watcher.journal.sqlite import SqliteJournal

from .agent import DATA, registry, rows, settings, wait_for

pytestmark = pytest.mark.linux_only  # needs PostgreSQL, and Linux fault injection

REPO = Path(__file__).resolve().parents[1]


# -- real faults ----------------------------------------------------------------------------------
class LockHolder:
    """Another process holding the journal's write lock (``BEGIN IMMEDIATE``) until released."""

    def __init__(self, path: Path) -> None:
        code = ("import sqlite3, sys\n"
                f"c = sqlite3.connect({str(path)!r}, isolation_level=None, timeout=30)\n"
                "c.execute('BEGIN IMMEDIATE')\n"
                "print('locked', flush=True)\n"
                "sys.stdin.readline()\n"
                "c.execute('ROLLBACK')\n")
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "locked"

    def release(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.write("\n")
            self.proc.stdin.flush()
            self.proc.wait(10)


def _mount(*args: str) -> None:
    r = subprocess.run(["mount", *args], capture_output=True, text=True)
    if r.returncode:
        pytest.fail(f"mount {' '.join(args)} failed (these tests need root and mount rights): {r.stderr.strip()}")


@contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@contextmanager
def bind_mount(path: Path) -> Iterator[Path]:
    """``path`` mounted on itself, so that it can be made read-only and back (``set_ro``)."""
    path.mkdir(parents=True, exist_ok=True)
    _mount("--bind", str(path), str(path))
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def set_ro(path: Path, ro: bool) -> None:
    _mount("-o", f"remount,bind,{'ro' if ro else 'rw'}", str(path))


def fill(directory: Path) -> Path:
    """Fill the filesystem of ``directory`` to the last byte."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        chunk = b"\0" * 65536
        while True:
            try:
                os.write(fd, chunk)
            except OSError:
                if len(chunk) == 1:
                    break
                chunk = chunk[:len(chunk) // 2]
    finally:
        os.close(fd)
    return filler


# -- helpers ---------------------------------------------------------------------------------------
def start(s: Any, **kw: Any) -> Any:
    from watcher.service import Service

    svc = Service(s, **kw)
    svc.start()
    return svc


def published(s: Any) -> list[Any]:
    return [r for r in rows(s) if r.status == Status.PUBLISHED]


def drop_files(root: Path, n: int, tag: str, first: int = 0) -> list[Path]:
    d = root / "drop"
    d.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(first, first + n):
        p = d / f"sh{i:04d}_comp_{tag}_v001.nk"
        p.write_text(f"{tag} {i}\n")
        out.append(p)
    return out


def assert_each_published_once(s: Any, paths: list[Path]) -> None:
    """Every file is one published row with one `published` event, and one registry entry."""
    j = SqliteJournal(s.journal_url())
    try:
        got = {r.publish.path: r for r in j.rows()}
        assert sorted(got) == sorted(str(p) for p in paths)
        assert {r.status for r in got.values()} == {Status.PUBLISHED}
        for r in got.values():
            assert [e[1] for e in j.events(r.id)].count("published") == 1
    finally:
        j.close()
    keys = [e[1] for e in registry(s)]
    assert len(keys) == len(paths) == len(set(keys))


def tracebacks(text: str) -> list[str]:
    """Tracebacks in a log, but for the webhook deliverer's (watcher/webhooks.py logs its claim
    failures with one; the change is proposed to its owner): none may come from the journal's
    users here."""
    import re

    blocks = text.split("Traceback (most recent call last):")[1:]
    return [b for b in blocks if not re.match(r'\s*File "[^"]*watcher/webhooks\.py"', b)]


def status_cli(s: Any, tmp: Path) -> subprocess.CompletedProcess:
    cfg = tmp / "watcher.yml"
    cfg.write_text(f"roots:\n  - {{name: shows, path: {s.roots[0].path}, templates: {DATA / 'pipeline.yml'}}}\n"
                   f"journal: {s.journal_url()}\nstate_dir: {s.state_dir}\n")
    return subprocess.run([sys.executable, "-m", "watcher", "-c", str(cfg), "status"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


# -- the health record -----------------------------------------------------------------------------
def test_journal_health_backs_off_exponentially_capped_and_says_each_outage_once(caplog):
    now = [100.0]
    h = JournalHealth(base=1.0, cap=4.0, clock=lambda: now[0], wall=lambda: 1000.0 + now[0])
    down = JournalUnavailable(Fault.LOCKED, "locked by another process")
    waits = []
    for _ in range(5):
        h.failed(down)
        waits.append(h.retry_in())
    assert waits == [1.0, 2.0, 4.0, 4.0, 4.0]
    snap = h.snapshot()
    assert not snap["ok"] and snap["fault"] == "locked" and snap["reason"] == "locked by another process"
    h.succeeded(on_write=False)  # a read does not prove that writes work
    assert h.down
    h.succeeded()
    assert not h.down and h.retry_in() == 0 and h.snapshot()["ok"] and h.unresolved is None
    said = [r.getMessage() for r in caplog.records]
    assert sum("journal unavailable: locked" in m for m in said) == 1
    assert sum("writable again" in m for m in said) == 1


# -- faults while running --------------------------------------------------------------------------
def test_journal_locked_by_another_process_keeps_every_candidate_and_publishes_each_once(tmp_path):
    s = settings(tmp_path)
    root = s.roots[0].path
    journal = SqliteJournal(s.journal_url(), busy_timeout=0.5)
    svc = start(s, journal=journal)
    lock = None
    try:
        first = drop_files(root, 1, "before")
        wait_for(lambda: len(published(s)) == 1)
        lock = LockHolder(tmp_path / "journal.db")
        files = first + drop_files(root, 40, "locked", first=1)
        st = wait_for(lambda: (x := svc.status())["journal"]["candidates_waiting"] >= 1 and x, 20)
        assert st["journal"]["ok"] is False and st["journal"]["fault"] == "locked"
        assert "another process holds its write lock" in st["journal"]["reason"] and "fuser" in st["journal"]["reason"]
        health = svc.health()
        assert health["ok"] is False and "journal" in health["failed"]
        assert health["checks"]["journal"]["reason"].startswith("journal unavailable: ")
        svc.supervisor.write_status()  # what `watcher status` reads
        out = status_cli(s, tmp_path)
        assert out.returncode == 1 and "FAIL journal: journal unavailable: " in out.stdout, out.stdout + out.stderr
        assert not tracebacks(out.stderr)
        assert len(published(s)) == 1  # nothing could be journaled meanwhile
        lock.release()
        wait_for(lambda: len(published(s)) == 41, 30)
        wait_for(lambda: svc.status()["journal"]["ok"], 10)
        assert svc.health()["checks"]["journal"]["ok"]
    finally:
        if lock is not None:
            lock.release()
        svc.stop(grace=3)
    assert_each_published_once(s, files)


def test_full_disk_loses_nothing_and_publishes_500_files_each_once_after(tmp_path, caplog):
    """The journal on a 16 MiB tmpfs, filled up after the first publish: ~500 files written during
    the fault all wait in memory, then all publish once the space is back (no restart)."""
    with tmpfs(tmp_path / "jfs", "16m") as jfs:
        s = settings(tmp_path, journal=f"sqlite:///{jfs / 'journal.db'}")
        root = s.roots[0].path
        svc = start(s)
        try:
            files = drop_files(root, 1, "before")
            wait_for(lambda: len(published(s)) == 1)
            filler = fill(jfs)
            files += drop_files(root, 500, "full", first=1)
            st = wait_for(lambda: (x := svc.status())["journal"]["fault"] == "full" and x, 30)
            assert "is full; free space there" in st["journal"]["reason"]
            time.sleep(1.0)  # every file has settled and come back at least once
            assert len(published(s)) < 501
            assert not svc.health()["checks"]["journal"]["ok"]
            filler.unlink()
            wait_for(lambda: len(published(s)) == 501, 60, 0.2)
            wait_for(lambda: svc.status()["journal"]["ok"], 10)
        finally:
            svc.stop(grace=3)
        assert_each_published_once(s, files)
    text = caplog.text
    assert not tracebacks(text) and "sqlite3." not in text
    assert sum("journal unavailable: " in r.getMessage() for r in caplog.records) <= 3  # said, not repeated


def test_journal_made_read_only_while_running_recovers_without_restart(tmp_path):
    """The journal's folder becomes read-only while the agent runs (a read-only mount over it):
    the connections opened before keep working, a connection opened now (the pipeline's first)
    is read-only and its writes fail. Once the folder is writable again, the pipeline opens a
    new connection and everything publishes, without a restart."""
    jdir = tmp_path / "jdir"
    jdir.mkdir()
    s = settings(tmp_path, journal=f"sqlite:///{jdir / 'journal.db'}")
    root = s.roots[0].path
    svc = start(s)
    try:
        assert svc.wait_idle(10)  # the start-up scan is done: nothing settling, nothing written yet
        with bind_mount(jdir):  # mounted over the folder: new opens go through it, open files do not
            set_ro(jdir, True)
            files = drop_files(root, 30, "ro")
            st = wait_for(lambda: (x := svc.status())["journal"]["candidates_waiting"] and x, 20)
            assert st["journal"]["fault"] in (Fault.READ_ONLY.value, Fault.CANNOT_OPEN.value)
            assert "write" in st["journal"]["reason"] and "pipeline" in st["journal"]["waiting_threads"]
            assert published(s) == []
            set_ro(jdir, False)
            wait_for(lambda: len(published(s)) == 30, 30)
            wait_for(lambda: svc.status()["journal"]["ok"], 10)
    finally:
        svc.stop(grace=3)
    assert_each_published_once(s, files)


class Gate:
    """A backend that waits at a gate before it publishes (so the journal can fail meanwhile)."""

    name = "gate"
    batch_size = 16

    def __init__(self) -> None:
        import threading

        self.entered = threading.Event()
        self.go = threading.Event()
        self.calls: list[str] = []

    def serialize_key(self, job: Any) -> str:
        return job.publish.key

    def publish_batch(self, jobs: list[Any]) -> list[Any]:
        from watcher.model import TrackerRef

        self.entered.set()
        assert self.go.wait(20)
        self.calls += [j.publish.key for j in jobs]
        return [TrackerRef(id=f"t{len(self.calls)}-{i}") for i, _ in enumerate(jobs)]


def test_outcome_the_journal_cannot_record_is_kept_and_recorded_once_it_can(tmp_path):
    """A publish done while another process locks the journal: the row does not stay
    `publishing` for the agent's lifetime, and the tracker is not asked twice."""
    from watcher.publish.workers import Publishers

    from .test_journal import pub

    j = SqliteJournal(f"sqlite:///{tmp_path}/journal.db", busy_timeout=0.3)
    j.health.configure(base=0.05, cap=0.2)
    j.add(pub(key="k1"), [])
    gate = Gate()
    workers = Publishers(j, gate, "host:1:1", workers=1, lease_seconds=6)  # type: ignore[arg-type]
    workers.start()
    lock = None
    try:
        assert gate.entered.wait(10)
        lock = LockHolder(tmp_path / "journal.db")
        gate.go.set()
        wait_for(lambda: workers.unrecorded == 1, 10)
        assert j.rows()[0].status == Status.PUBLISHING and j.health.down
        lock.release()
        wait_for(lambda: j.rows()[0].status == Status.PUBLISHED, 10)
        assert workers.unrecorded == 0 and gate.calls == ["k1"] and workers.published == 1
    finally:
        if lock is not None:
            lock.release()
        workers.stop(grace=1)
        j.close()


def test_a_claim_this_agent_does_not_hold_is_taken_back_not_stuck(tmp_path):
    """A claim whose commit landed although this agent saw it fail (a connection lost during the
    commit) is held by no worker: the keeper takes it back and it publishes."""
    from watcher.publish.base import BackendContext
    from watcher.publish.local import LocalBackend, LocalSettings
    from watcher.publish.workers import Publishers

    from .test_journal import pub

    url = f"sqlite:///{tmp_path}/journal.db"
    j = SqliteJournal(url)
    row, _ = j.add(pub(key="k1"), [])
    assert [r.id for r in j.claim_many("host:1:1", time.time(), 900, 10)] == [row.id]  # "lost" by its agent
    backend = LocalBackend(LocalSettings(), BackendContext(config_dir=tmp_path, roots={}, journal_url=url))
    workers = Publishers(j, backend, "host:1:1", workers=1, lease_seconds=1.2)
    workers.orphaned_after = 0.3
    workers.start()
    try:
        wait_for(lambda: j.rows()[0].status == Status.PUBLISHED, 10)
        assert "recovered from this agent" in " ".join(str(e[2]) for e in j.events(row.id))
    finally:
        workers.stop(grace=1)
        backend.close()
        j.close()


# -- `watcher check` --------------------------------------------------------------------------------
def check_cli(cfg: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "watcher", "-c", str(cfg), "check"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def config(tmp: Path, journal: str | None = None) -> Path:
    root = tmp / "root"
    root.mkdir(exist_ok=True)
    cfg = tmp / "watcher.yml"
    cfg.write_text(f"roots:\n  - {{name: shows, path: {root}, templates: {DATA / 'pipeline.yml'}}}\n"
                   f"journal: {journal or f'sqlite:///{tmp}/journal.db'}\nstate_dir: {tmp}/state\n")
    return cfg


def test_check_fails_a_journal_with_corrupt_pages(tmp_path):
    from .test_journal import pub

    cfg = config(tmp_path)
    j = SqliteJournal(f"sqlite:///{tmp_path}/journal.db")
    j.add_many([(pub(key=f"k{i}", path=f"/shows/a/long/path/number/{i:05d}/beauty.%04d.exr"), []) for i in range(2000)])
    j.close()  # checkpointed: every page is in the file
    ok = check_cli(cfg)
    assert ok.returncode == 0 and "ok   journal sqlite:///" in ok.stdout and "quick_check: ok" in ok.stdout, ok.stdout
    data = (tmp_path / "journal.db").read_bytes()
    page = 4096
    assert len(data) > 20 * page
    with open(tmp_path / "journal.db", "r+b") as f:  # no agent runs: nothing holds the file
        f.seek(10 * page)
        f.write(os.urandom(2 * page))
    bad = check_cli(cfg)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "FAIL journal" in bad.stdout and "damaged" in bad.stdout and "restore the journal" in bad.stdout
    assert "ok   journal" not in bad.stdout and "Traceback" not in bad.stderr


def _as_nobody(argv: list[str], out: Path) -> tuple[int, str]:
    """Run the CLI in a forked child as `nobody` (root ignores file modes); (exit code, output)."""
    import watcher.cli
    import watcher.publish.local  # noqa: F401  (imported by name otherwise: nobody cannot read the install)
    import watcher.service  # noqa: F401

    nobody = pwd.getpwnam("nobody")
    pid = os.fork()
    if pid == 0:
        rc = 99
        try:
            fd = os.open(out, os.O_WRONLY | os.O_CREAT, 0o666)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            sys.stdout = os.fdopen(1, "w", buffering=1)
            sys.stderr = os.fdopen(2, "w", buffering=1)
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            rc = watcher.cli.main(argv)
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(rc)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out.read_text()


def test_check_fails_a_read_only_journal():
    base = Path(tempfile.mkdtemp(prefix="watcher-ro-"))
    try:
        os.chmod(base, 0o755)
        cfg = config(base)
        SqliteJournal(f"sqlite:///{base}/journal.db").close()
        nobody = pwd.getpwnam("nobody")
        for dirpath, _dirs, files in os.walk(base):
            for name in [dirpath, *(os.path.join(dirpath, f) for f in files)]:
                os.chown(name, nobody.pw_uid, nobody.pw_gid)
        rc, out = _as_nobody(["-c", str(cfg), "check"], base / "ok.txt")
        assert rc == 0 and "ok   journal" in out, out
        os.chmod(base / "journal.db", 0o444)
        rc, out = _as_nobody(["-c", str(cfg), "check"], base / "ro.txt")
        assert rc == 1 and "FAIL journal" in out and "read-only" in out and "write access" in out, out
        assert "Traceback" not in out
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_check_fails_a_postgresql_journal_that_takes_no_writes(pg_url):
    from watcher.journal.postgres import PostgresJournal

    j = PostgresJournal(pg_url)
    probes = {p.what: p for p in j.check()}
    assert probes["server"].ok and probes["writable"].ok and probes["schema"].ok
    j.close()
    ro = PostgresJournal(pg_url + "%20-cdefault_transaction_read_only%3Don")
    probes = {p.what: p for p in ro.check()}
    ro.close()
    assert not probes["writable"].ok and "takes no writes" in probes["writable"].detail


# -- empty or foreign journal files ---------------------------------------------------------------
@pytest.mark.parametrize("kind", ["empty", "text", "other-sqlite"])
def test_an_empty_or_foreign_journal_file_is_refused_not_recreated(tmp_path, kind):
    cfg = config(tmp_path)
    path = tmp_path / "journal.db"
    (tmp_path / "root/drop").mkdir(parents=True)
    (tmp_path / "root/drop/sh010_comp_main_v001.nk").write_text("nuke\n")
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is a shopping list, not a journal\n" * 10)
    else:
        import sqlite3

        c = sqlite3.connect(path)
        c.execute("CREATE TABLE customers (name TEXT)")
        c.commit()
        c.close()
    before = path.read_bytes()
    r = subprocess.run([sys.executable, "-m", "watcher", "-c", str(cfg), "scan", "--timeout", "30"], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and "Traceback" not in r.stderr
    assert ("empty file" in err[0] and "remove the file" in err[0]) if kind == "empty" else "not a watcher journal" in err[0]
    assert path.read_bytes() == before  # untouched
    if kind == "empty":  # the escape hatch: remove it, and a new journal is made
        path.unlink()
        r = subprocess.run([sys.executable, "-m", "watcher", "-c", str(cfg), "scan", "--timeout", "30"], cwd=REPO,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        assert json.loads(subprocess.run([sys.executable, "-m", "watcher", "-c", str(cfg), "publishes", "--json"],
                                         cwd=REPO, capture_output=True, text=True).stdout)[0]["status"] == "published"


# -- `watcher scan` says why it did not finish --------------------------------------------------------
def test_scan_against_a_locked_journal_exits_1_with_the_reason(tmp_path):
    cfg = config(tmp_path)
    SqliteJournal(f"sqlite:///{tmp_path}/journal.db").close()
    drop_files(tmp_path / "root", 3, "scan")
    lock = LockHolder(tmp_path / "journal.db")
    try:
        t0 = time.monotonic()
        r = subprocess.run([sys.executable, "-m", "watcher", "-c", str(cfg), "scan", "--timeout", "3"], cwd=REPO,
                           capture_output=True, text=True, timeout=120)
        took = time.monotonic() - t0
    finally:
        lock.release()
    assert r.returncode == 1, r.stdout + r.stderr
    assert "3 candidate(s) could not be journaled: journal unavailable: " in r.stderr, r.stderr
    assert "another process holds its write lock" in r.stderr and not tracebacks(r.stderr) and "sqlite3." not in r.stderr
    assert took < 25  # the stop does not sit out the lock
    j = SqliteJournal(f"sqlite:///{tmp_path}/journal.db")
    assert j.rows() == []
    j.close()


def test_scan_of_a_root_it_cannot_read_exits_1_with_the_reason():
    base = Path(tempfile.mkdtemp(prefix="watcher-walk-"))
    try:
        os.chmod(base, 0o755)
        cfg = config(base)
        drop_files(base / "root", 2, "walk")
        nobody = pwd.getpwnam("nobody")
        for dirpath, _dirs, files in os.walk(base):
            for name in [dirpath, *(os.path.join(dirpath, f) for f in files)]:
                os.chown(name, nobody.pw_uid, nobody.pw_gid)
        os.chmod(base / "root", 0o311)  # it can be entered, not listed
        rc, out = _as_nobody(["-c", str(cfg), "scan", "--timeout", "30"], base / "scan.txt")
        assert rc == 1 and "root shows: its folder" in out and "could not be read" in out, out
        assert "Traceback" not in out
    finally:
        os.chmod(base / "root", 0o755)
        shutil.rmtree(base, ignore_errors=True)


def test_journal_error_text_never_carries_a_raw_sqlite_traceback(tmp_path):
    """The one-line messages the agent logs name the path and what to do."""
    j = SqliteJournal(f"sqlite:///{tmp_path}/journal.db", busy_timeout=0.2)
    lock = LockHolder(tmp_path / "journal.db")
    try:
        with pytest.raises(JournalUnavailable) as err:
            j.heartbeat("a", "h", 1, 0.0, ["shows"])
    finally:
        lock.release()
        j.close()
    assert err.value.fault is Fault.LOCKED and str(tmp_path / "journal.db") in str(err.value)
    assert err.value.__suppress_context__ and isinstance(err.value, JournalError)
