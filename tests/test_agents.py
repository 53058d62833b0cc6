"""Several agents on one PostgreSQL ledger, as real processes: one killed with SIGKILL and one
frozen with SIGSTOP past its lease during a burst. Every file is published once, every sequence
whole and once; the frozen agent, once continued, publishes nothing twice and says it lost its
claims."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterable

import psycopg
import pytest

from tests.pg_server import pg_server, pg_url  # noqa: F401  (pytest fixtures)

from .agent import DATA, wait_for, write_frames

pytestmark = pytest.mark.linux_only  # needs PostgreSQL (a real server)

REPO = Path(__file__).resolve().parents[1]
LEASE = 6.0


def start_agent(tmp: Path, name: str, root: Path, url: str, watched_by: str = "one", **extra: object) -> subprocess.Popen:
    work = tmp / name
    work.mkdir()
    cfg = work / "watcher.yml"
    cfg.write_text(json.dumps({
        "roots": [{"name": "shows", "path": str(root), "templates": str(DATA / "pipeline.yml"),
                   "watched_by": watched_by}],
        "settle_seconds": 0.5, "sequence_settle_seconds": 2.0, "journal": url, "state_dir": str(work / "state"),
        "workers": 2, "rescan_interval": 0, "lease_seconds": LEASE, "retry_base_seconds": 0.2,
        "retry_cap_seconds": 1.0, **extra}))
    log = open(work / "agent.log", "w")
    p = subprocess.Popen([sys.executable, "-m", "watcher", "-c", str(cfg), "run"], cwd=REPO,
                         stdout=subprocess.DEVNULL, stderr=log)
    log.close()
    return p


def stop_all(procs: Iterable[subprocess.Popen]) -> None:
    """Continue any frozen agent, ask each to stop, and kill what does not within 20 s."""
    procs = list(procs)
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGCONT)
            p.terminate()
    for p in procs:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()


def log_of(tmp: Path, name: str) -> str:
    return (tmp / name / "agent.log").read_text(errors="replace")


def query(url: str, sql: str) -> list[tuple]:
    with psycopg.connect(url, autocommit=True) as c:
        return c.execute(sql).fetchall()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_three_agents_one_killed_one_frozen_publish_everything_once(tmp_path, pg_url):
    root = tmp_path / "root"
    shots = [root / f"seq/sq01/sh{i:03d}/comp/work" for i in range(20)]
    for d in shots:
        d.mkdir(parents=True)
    names = ["a", "b", "c"]
    # every agent watches the root (workstations on a share): each journals and claims, so the
    # killed and the frozen agent hold claims mid-burst (`watched_by: one` is the next test's)
    procs = {n: start_agent(tmp_path, n, root, pg_url, watched_by="every") for n in names}
    try:
        wait_for(lambda: all("watcher started" in log_of(tmp_path, n) for n in names), 60)
        wait_for(lambda: query(pg_url, "SELECT count(*) FROM agents WHERE stopped_at IS NULL")[0][0] == 3, 30)

        def singles() -> None:
            for i in range(100):
                for d in shots:
                    (d / f"{d.parent.parent.name}_n{i}_v001.nk").write_bytes(b"x" * 64)

        def sequences() -> None:
            for s in range(20):
                write_frames(root / f"seq/sq02/sh{s:03d}/comp/render/beauty/v001", "beauty", range(1001, 1051),
                             size=64)

        writers = [threading.Thread(target=singles), threading.Thread(target=sequences)]
        for w in writers:
            w.start()
        time.sleep(0.5)
        procs["a"].kill()  # SIGKILL mid-burst
        def b_holds() -> int:
            return query(pg_url, "SELECT count(*) FROM publishes WHERE status='publishing' "
                                 f"AND agent LIKE '%:{procs['b'].pid}:%'")[0][0]

        for _ in range(200):  # frozen while it holds claims: checked once it is stopped, not assumed
            wait_for(b_holds, 30, 0.005)
            procs["b"].send_signal(signal.SIGSTOP)
            time.sleep(0.05)
            if b_holds():
                break
            procs["b"].send_signal(signal.SIGCONT)  # it finished that batch just before the signal: again
        else:
            raise AssertionError("agent b was never caught holding claims")
        frozen_at = time.monotonic()
        for w in writers:
            w.join()
        time.sleep(max(0.0, LEASE * 1.5 - (time.monotonic() - frozen_at)))
        procs["b"].send_signal(signal.SIGCONT)
        expected = 2000 + 20
        wait_for(lambda: query(pg_url, "SELECT count(*) FROM publishes WHERE status='published'")[0][0] >= expected,
                 120, 0.2)
        time.sleep(LEASE)  # anything the continued agent might still do twice would land now
        wait_for(lambda: "lost the claim" in log_of(tmp_path, "b"), 20)
    finally:
        stop_all(procs.values())
    rows = query(pg_url, "SELECT status, payload->>'path', payload->>'frames', (payload->>'frame_count')::int "
                         "FROM publishes")
    assert len(rows) == 2020 and {r[0] for r in rows} == {"published"}
    paths = [r[1] for r in rows]
    assert len(set(paths)) == len(paths), "a file or sequence was journaled twice"
    seqs = [r for r in rows if r[2] is not None]
    assert len(seqs) == 20 and all(r[2] == "1001-1050" and r[3] == 50 for r in seqs)
    done = query(pg_url, "SELECT publish_id, count(*) FROM events WHERE status='published' GROUP BY publish_id")
    assert len(done) == 2020 and all(n == 1 for _, n in done), "a publish was recorded as made twice"
    assert query(pg_url, "SELECT count(DISTINCT tracker_id), count(*) FROM publishes") == [(2020, 2020)]
    assert query(pg_url, "SELECT count(*) FROM registry")[0][0] == 2020
    # the killed and the frozen agent's claims went to others: more than one agent published
    owners = query(pg_url, "SELECT DISTINCT message FROM events WHERE status='publishing'")
    assert len(owners) >= 2
    assert os.path.exists(tmp_path / "b" / "agent.log")


@pytest.mark.timeout(180)
def test_one_agent_watches_a_shared_root_killed_and_frozen_watchers_are_taken_over(tmp_path, pg_url):
    """`watched_by: one` (the default): of three agents on one root, one watches it and the
    others stand by, publishing. The watcher killed with SIGKILL is taken over at the next
    heartbeat (a dead pid on this host); the next watcher frozen past `agent_timeout_seconds`
    is taken over too. Each new watcher rescans the root and publishes what arrived while
    nobody watched. Continued, the frozen agent stands by, and nothing is journaled or
    published twice."""
    root = tmp_path / "root"
    shots = [root / f"seq/sq03/sh{i:03d}/comp/work" for i in range(10)]
    for d in shots:
        d.mkdir(parents=True)
    procs = {n: start_agent(tmp_path, n, root, pg_url, agent_timeout_seconds=3) for n in ("a", "b", "c")}

    def watcher() -> str | None:
        rows = query(pg_url, "SELECT agent FROM watches WHERE root='shows'")
        pid = int(rows[0][0].split(":")[1]) if rows else None
        return next((n for n, p in procs.items() if p.pid == pid), None)

    def write(tag: str, n: int) -> set[str]:
        out = set()
        for i in range(n):
            d = shots[i % len(shots)]
            f = d / f"{d.parent.parent.name}_{tag}{i}_v001.nk"
            f.write_bytes(b"x" * 64)
            out.add(str(f))
        return out

    def published() -> list[str]:
        return [r[0] for r in query(pg_url, "SELECT payload->>'path' FROM publishes WHERE status='published'")]

    try:
        wait_for(lambda: all("watcher started" in log_of(tmp_path, n) for n in procs), 60)
        first = wait_for(watcher, 10)
        assert sum("this agent stands by" in log_of(tmp_path, n) for n in procs) == 2
        files = write("before", 100)
        wait_for(lambda: len(published()) >= 100, 30, 0.1)
        procs[first].kill()  # mid-burst: nobody watches until the next heartbeat finds its pid gone
        files |= write("killed", 100)
        second = wait_for(lambda: (w := watcher()) not in (None, first) and w, 20, 0.1)
        wait_for(lambda: len(published()) >= 200, 30, 0.1)
        assert "taking it over from agent" in log_of(tmp_path, second)
        procs[second].send_signal(signal.SIGSTOP)
        files |= write("frozen", 100)  # found by the third agent's rescan once it takes the root over
        third = wait_for(lambda: (w := watcher()) not in (None, first, second) and w, 20, 0.1)
        wait_for(lambda: len(published()) >= 300, 30, 0.1)
        procs[second].send_signal(signal.SIGCONT)
        wait_for(lambda: "this agent stops watching it and stands by" in log_of(tmp_path, second), 20)
        files |= write("after", 50)
        wait_for(lambda: len(published()) >= 350, 30, 0.1)
        time.sleep(2.0)  # anything done twice would land now
        assert watcher() == third
    finally:
        stop_all(procs.values())
    paths = published()
    assert sorted(paths) == sorted(files), "a file was lost or published twice"
    assert query(pg_url, "SELECT count(*) FROM publishes")[0][0] == 350
    assert all("Traceback" not in log_of(tmp_path, n) for n in procs)
