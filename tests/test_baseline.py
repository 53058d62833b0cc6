"""Adopting watcher on a tree that already holds years of work: `watcher baseline` and
`existing: baseline` record what is there as known and never publish it; what arrives later
publishes. Real files, real subprocesses (and a real `kill -9`)."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from watcher.journal.base import Status

from .agent import DATA, registry, rows, running, settings, wait_for, write_frames
from .test_cli import REPO, cli

DAY = 86400


def make_config(tmp: Path, root_extra: str = "") -> Path:
    (tmp / "root").mkdir(exist_ok=True)
    cfg = tmp / "watcher.yml"
    cfg.write_text(f"roots:\n  - {{name: shows, path: root, templates: {DATA / 'pipeline.yml'}{root_extra}}}\n"
                   f"settle_seconds: 0.2\nsequence_settle_seconds: 0.3\njournal: sqlite:///{tmp}/journal.db\n"
                   "state_dir: state\nrescan_interval: 0\n")
    return cfg


class S:  # what tests.agent.rows/registry read
    def __init__(self, tmp: Path):
        self.tmp = tmp

    def journal_url(self) -> str:
        return f"sqlite:///{self.tmp}/journal.db"


def age(paths, seconds: float) -> None:
    t = time.time() - seconds
    for p in paths:
        os.utime(p, (t, t))


def shot(root: Path, name: str, frames=range(1001, 1004), version: int = 1) -> list[Path]:
    files = write_frames(root / f"seq/sq01/{name}/comp/render/beauty/v{version:03d}", "beauty", frames, size=64)
    work = root / f"seq/sq01/{name}/comp/work"
    work.mkdir(parents=True, exist_ok=True)
    nk = work / f"{name}_main_v{version:03d}.nk"
    nk.write_text("Root {}\n")
    return files + [nk]


def by_status(tmp: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for r in rows(S(tmp)):
        out.setdefault(r.status.value, []).append(os.path.basename(r.publish.path))
    return {k: sorted(v) for k, v in out.items()}


def test_baseline_then_only_new_files_publish(tmp_path):
    cfg = make_config(tmp_path)
    root = tmp_path / "root"
    old = shot(root, "sh010") + shot(root, "sh020")
    age(old, 3 * DAY)

    check = cli("-c", str(cfg), "check")
    assert check.returncode == 0, check.stderr
    assert "warn root shows: 4 publish(es) (8 file(s)) already on disk and not journaled; the first start" in check.stdout
    dry = cli("-c", str(cfg), "baseline", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["roots"]["shows"]["candidates"] == 4
    assert not (tmp_path / "journal.db").exists()  # a dry run writes nothing

    r = cli("-c", str(cfg), "baseline")
    assert r.returncode == 0, r.stderr
    assert "root shows: 4 candidate(s), 8 file(s) recorded as baseline" in r.stdout
    assert by_status(tmp_path) == {"baseline": ["beauty.%04d.exr", "beauty.%04d.exr", "sh010_main_v001.nk",
                                                "sh020_main_v001.nk"]}
    listed = json.loads(cli("-c", str(cfg), "publishes", "--json", "--status", "baseline").stdout)
    assert len(listed) == 4 and {(p["status"], p["tracker"], p["tracker_id"]) for p in listed} == {("baseline", None, None)}
    assert "baseline 4" in cli("-c", str(cfg), "status").stdout

    new = shot(root, "sh030")  # new work...
    write_frames(root / "seq/sq01/sh010/comp/render/beauty/v001", "beauty", [1004], size=64)  # ...and a late frame
    scan = cli("-c", str(cfg), "scan")
    assert scan.returncode == 0, scan.stderr
    assert by_status(tmp_path)["published"] == ["beauty.%04d.exr", "sh030_main_v001.nk"]
    published = [r for r in rows(S(tmp_path)) if r.status is Status.PUBLISHED]
    assert {r.publish.path for r in published} == {str(root / "seq/sq01/sh030/comp/render/beauty/v001/beauty.%04d.exr"),
                                                   str(new[-1])}
    assert len(registry(S(tmp_path))) == 2  # the tracker got the new work only
    late = next(r for r in rows(S(tmp_path)) if "sh010/comp/render" in r.publish.path)
    assert late.status is Status.BASELINE  # a frame added to a baselined sequence stays known, unpublished
    assert ("shows", "seq/sq01/sh010/comp/render/beauty/v001/beauty.1004.exr") in \
        {k for k in _files_of(tmp_path, late.id)}
    again = cli("-c", str(cfg), "baseline")
    assert "0 candidate(s), 0 file(s) recorded as baseline; 13 file(s) already journaled" in again.stdout


def _files_of(tmp: Path, publish_id: int):
    from watcher.journal.sqlite import SqliteJournal

    j = SqliteJournal(S(tmp).journal_url())
    try:
        return j.files_of(publish_id)
    finally:
        j.close()


def test_older_than_baselines_only_what_was_written_before(tmp_path):
    cfg = make_config(tmp_path)
    root = tmp_path / "root"
    age(shot(root, "sh010"), 5 * DAY)
    age(shot(root, "sh020"), 3600)
    r = cli("-c", str(cfg), "baseline", "--older-than", "2d")
    assert r.returncode == 0, r.stderr
    assert "2 candidate(s), 4 file(s) recorded as baseline" in r.stdout and "2 candidate(s) written too recently" in r.stdout
    assert cli("-c", str(cfg), "scan").returncode == 0
    assert by_status(tmp_path) == {"baseline": ["beauty.%04d.exr", "sh010_main_v001.nk"],
                                   "published": ["beauty.%04d.exr", "sh020_main_v001.nk"]}
    bad = cli("-c", str(cfg), "baseline", "--older-than", "soon")
    assert bad.returncode == 2 and "neither a duration" in bad.stderr
    assert cli("-c", str(cfg), "baseline", "--root", "nope").returncode == 2


def test_existing_baseline_first_start_keeps_history_and_survives_losing_the_journal(tmp_path):
    cfg = make_config(tmp_path, ", existing: baseline")
    root = tmp_path / "root"
    age(shot(root, "sh010") + shot(root, "sh020"), 3 * DAY)
    check = cli("-c", str(cfg), "check")
    assert "ok   root shows: nothing already on disk waits to be published (existing: baseline)" in check.stdout and "4 candidate(s) on disk before watcher" in check.stdout

    assert cli("-c", str(cfg), "scan").returncode == 0  # the first start
    assert by_status(tmp_path) == {"baseline": ["beauty.%04d.exr", "beauty.%04d.exr", "sh010_main_v001.nk",
                                                "sh020_main_v001.nk"]}
    assert registry(S(tmp_path)) == []
    # arrived while the agent was down, copied with its old mtime kept (rsync -a): still new
    copied = shot(root, "sh030")
    age(copied, 10 * DAY)
    assert cli("-c", str(cfg), "scan").returncode == 0
    assert by_status(tmp_path)["published"] == ["beauty.%04d.exr", "sh030_main_v001.nk"]

    for p in tmp_path.glob("journal.db*"):  # the journal is lost: no history is published again
        p.unlink()
    assert cli("-c", str(cfg), "scan").returncode == 0
    assert set(by_status(tmp_path)) == {"baseline"} and len(rows(S(tmp_path))) == 6


def test_existing_baseline_with_a_running_agent_publishes_what_arrives(tmp_path):
    root = tmp_path / "root"
    age(shot(root, "sh010"), DAY)
    s = settings(tmp_path, root_opts={"existing": "baseline"})
    with running(s):
        wait_for(lambda: len(rows(s)) == 2)
        shot(root, "sh020")
        wait_for(lambda: len([r for r in rows(s) if r.status is Status.PUBLISHED]) == 2)
    assert by_status(tmp_path) == {"baseline": ["beauty.%04d.exr", "sh010_main_v001.nk"],
                                   "published": ["beauty.%04d.exr", "sh020_main_v001.nk"]}


def test_kill_9_mid_baseline_then_rerun_baselines_every_file_once(tmp_path):
    cfg = make_config(tmp_path)
    root = tmp_path / "root"
    files = []
    for s in range(150):
        d = root / f"seq/sq01/sh{s:03d}/comp/work"
        d.mkdir(parents=True)
        for v in range(1, 41):
            p = d / f"sh{s:03d}_main_v{v:03d}.nk"
            p.write_text("x")
            files.append(p)
    age(files, DAY)
    db = tmp_path / "journal.db"
    p = subprocess.Popen([sys.executable, "-m", "watcher", "-c", str(cfg), "baseline"], cwd=REPO,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def some() -> int:
            try:
                c = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.05)
                try:
                    return c.execute("SELECT count(*) FROM publishes").fetchone()[0]
                finally:
                    c.close()
            except sqlite3.Error:
                return 0
        wait_for(some, 60, 0.005)
        p.send_signal(signal.SIGKILL)
        p.wait(10)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    part = rows(S(tmp_path))
    assert 0 < len(part) < len(files), "the kill did not land mid-baseline"
    assert {r.status for r in part} == {Status.BASELINE}

    r = cli("-c", str(cfg), "baseline")
    assert r.returncode == 0, r.stderr
    assert f"{len(files) - len(part)} candidate(s)" in r.stdout and f"{len(part)} file(s) already journaled" in r.stdout
    done = rows(S(tmp_path))
    assert len(done) == len(files) and {r.status for r in done} == {Status.BASELINE}
    assert sorted(r.publish.path for r in done) == sorted(map(str, files))  # each once
    c = sqlite3.connect(db)
    assert c.execute("SELECT count(*), count(DISTINCT publish_id) FROM files").fetchone() == (len(files), len(files))
    c.close()
    assert "0 new candidate" in cli("-c", str(cfg), "scan").stdout


def test_init_explains_the_choice(tmp_path):
    root = tmp_path / "tree"
    shot(root, "sh010")
    r = cli("init", str(tmp_path / "conf"), "--root", str(root))
    assert r.returncode == 0, r.stderr
    text = (tmp_path / "conf/watcher.yml").read_text()
    assert "existing: publish" in text and "baseline = recorded as known, never published" in text
    assert "already holds files" in r.stdout and "baseline" in r.stdout
    assert "already holds files" not in cli("init", str(tmp_path / "empty")).stdout
