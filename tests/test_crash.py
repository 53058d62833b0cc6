"""Exactly once under crashes: an agent killed with SIGKILL at random moments while a writer
produces sequences; after the last restart every complete sequence is published once, whole."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from watcher.journal.base import Status

from .agent import DATA, registry, rows, wait_for, write_frames

REPO = Path(__file__).resolve().parents[1]


def config(tmp: Path) -> Path:
    root = tmp / "root"
    root.mkdir()
    cfg = tmp / "watcher.yml"
    cfg.write_text(f"roots:\n  - {{name: shows, path: {root}, templates: {DATA / 'pipeline.yml'}}}\n"
                   f"settle_seconds: 0.3\nsequence_settle_seconds: 1.5\njournal: sqlite:///{tmp}/journal.db\n"
                   f"state_dir: {tmp}/state\nworkers: 3\nrescan_interval: 0\n")
    return cfg


def agent(cfg: Path) -> subprocess.Popen:
    log = open(cfg.parent / "agent.log", "a")
    p = subprocess.Popen([sys.executable, "-m", "watcher", "-c", str(cfg), "run"], cwd=REPO,
                         stdout=subprocess.DEVNULL, stderr=log, text=True)
    log.close()
    return p


def started(cfg: Path, offset: int) -> bool:
    """An agent has logged that it is up since the log had ``offset`` bytes."""
    with open(cfg.parent / "agent.log") as f:
        f.seek(offset)
        return "watcher started" in f.read()


class Settings:  # what tests.agent.rows/registry read
    def __init__(self, tmp: Path):
        self.tmp = tmp

    def journal_url(self):
        return f"sqlite:///{self.tmp}/journal.db"


def test_sigterm_stops_within_10_seconds(tmp_path):
    cfg = config(tmp_path)
    p = agent(cfg)
    try:
        write_frames(tmp_path / "root/seq/sq01/sh010/comp/render/beauty/v001", "beauty", range(1, 11))
        wait_for(lambda: [r for r in rows(Settings(tmp_path)) if r.status == Status.PUBLISHED], 30)
        t0 = time.monotonic()
        p.send_signal(signal.SIGTERM)
        rc = p.wait(12)
        assert time.monotonic() - t0 < 10 and rc == 0
        assert "watcher stopped" in (tmp_path / "agent.log").read_text()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


@pytest.mark.slow
def test_kill_9_at_random_moments_publishes_every_sequence_exactly_once(tmp_path):
    cfg = config(tmp_path)
    root = tmp_path / "root"
    rnd = random.Random(int(os.environ.get("WATCHER_SOAK_SEED", "7")))
    expected: dict[str, int] = {}
    stop = threading.Event()

    def writer():
        n = 0
        while not stop.is_set() and n < 40:
            shot = f"sh{n:03d}"
            d = root / f"seq/sq01/{shot}/comp/render/beauty/v001"
            frames = rnd.randint(5, 40)
            write_frames(d, "beauty", range(1001, 1001 + frames), size=2048)
            (root / f"seq/sq01/{shot}/comp/work").mkdir(parents=True, exist_ok=True)
            (root / f"seq/sq01/{shot}/comp/work/{shot}_main_v001.nk").write_text("set cut_paste_input 0\n" * 20)
            expected[str(d / "beauty.%04d.exr")] = frames
            expected[str(root / f"seq/sq01/{shot}/comp/work/{shot}_main_v001.nk")] = 0
            n += 1
            time.sleep(rnd.uniform(0.05, 0.4))

    w = threading.Thread(target=writer)
    w.start()
    kills = 0
    try:
        while w.is_alive() or kills < 10:
            p = agent(cfg)
            time.sleep(rnd.uniform(0.3, 2.5))
            p.kill()
            p.wait()
            kills += 1
        w.join()
        offset = (cfg.parent / "agent.log").stat().st_size
        p = agent(cfg)
        wait_for(lambda: started(cfg, offset), 30)
        s = Settings(tmp_path)
        wait_for(lambda: len([r for r in rows(s) if r.status == Status.PUBLISHED]) == len(expected), 90, 0.2)
        p.send_signal(signal.SIGTERM)
        assert p.wait(12) == 0
    finally:
        stop.set()
        w.join()
        if p.poll() is None:
            p.kill()
            p.wait()
    got = rows(Settings(tmp_path))
    assert kills >= 10
    assert sorted(r.publish.path for r in got) == sorted(expected), "missing or extra publishes"
    for r in got:
        n = expected[r.publish.path]
        if n:
            assert (r.publish.frames, r.publish.frame_count) == (f"1001-{1000 + n}", n), r.publish.path
    reg = registry(Settings(tmp_path))
    assert len(reg) == len(expected) and len({k for _, k, _, _ in reg}) == len(expected)
