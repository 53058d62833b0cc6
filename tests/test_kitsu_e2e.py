"""End to end: files dropped into a watched root -> a running watcher agent -> a REAL Zou.
(Zou from tests/zou_server.py, the agent from tests/agent.py: real observers, real files.)"""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.agent import rows, running, settings, wait_for, write_frames
from tests.zou_server import PROJECT, ZouServer, zou, zou_server  # noqa: F401
from watcher.journal.base import Status
from watcher.journal.sqlite import SqliteJournal

pytestmark = [pytest.mark.kitsu, pytest.mark.linux_only, pytest.mark.timeout(600)]  # the first test may install Zou (~90 s)

SHOT = "seq/sq01/sh010/comp"


def kitsu_settings(tmp_path: Path, zou: ZouServer, **kw):
    tracker = {"backend": "kitsu", "url": zou.url, "token": zou.bot_token, "project": PROJECT,
               "task_types": {"comp": "Compositing"}, "output_types": {"exr": "EXR", "nk": "Nuke"},
               "retries": 1, "backoff_base": 0.05, "timeout": 10}
    return settings(tmp_path, tracker=tracker, max_attempts=500, retry_base_seconds=0.1, retry_cap_seconds=0.4, **kw)


def nuke(root: Path, shot: str, name: str, version: int) -> Path:
    d = root / f"seq/sq01/{shot}/comp/work"
    d.mkdir(parents=True, exist_ok=True)
    p = d / f"{shot}_{name}_v{version:03d}.nk"
    p.write_text(f"#! nuke\nRoot {{ name {p} }}\n")
    return p


def by_status(s, status: Status):
    return [r for r in rows(s) if r.status == status]


def test_nuke_script_and_48_frames_then_a_second_agent_publishes_nothing_twice(zou, tmp_path):
    s = kitsu_settings(tmp_path, zou)
    root = s.roots[0].path
    shot = zou.seed["shots"]["SH010"]
    with running(s) as svc:
        script = nuke(root, "sh010", "main", 3)
        frames = write_frames(root / SHOT / "render/beauty/v003", "beauty", range(1001, 1049))
        wait_for(lambda: len(by_status(s, Status.PUBLISHED)) == 2, timeout=30)
        assert svc.wait_idle(10)
    files = {of["representation"]: of for of in zou.output_files(shot)}
    assert set(files) == {"nk", "exr"}
    nk, exr = files["nk"], files["exr"]
    assert (nk["revision"], nk["nb_elements"], nk["path"]) == (3, 1, str(script))
    assert (exr["revision"], exr["nb_elements"], exr["name"]) == (3, 48, "beauty")
    assert exr["path"] == str(frames[0].parent / "beauty.%04d.exr") and exr["data"]["frames"] == "1001-1048"
    for of in (nk, exr):
        assert of["task_type_id"] == zou.seed["task_types"]["Compositing"]
    tracker_ids = {r.tracker_id for r in rows(s)}
    assert tracker_ids == {nk["id"], exr["id"]}

    with running(s) as svc:  # a second start: the tree is rescanned, nothing is new
        svc.sync("shows")
        assert svc.wait_idle(10)
    assert len(zou.output_files(shot)) == 2
    assert len(rows(s)) == 2


def test_zou_stopped_mid_burst_every_file_published_once(zou, tmp_path):
    s = kitsu_settings(tmp_path, zou)
    root = s.roots[0].path
    try:
        with running(s) as svc:
            for i in range(6):
                nuke(root, "sh010", f"a{i}", 1)
            wait_for(lambda: len(by_status(s, Status.PUBLISHED)) >= 2, timeout=30)
            zou.stop_api()  # the API goes away while the burst is being published
            for i in range(6):
                nuke(root, "sh010", f"b{i}", 1)
            wait_for(lambda: any(r.last_error and "cannot connect" in r.last_error for r in rows(s)), timeout=30)
            assert len(by_status(s, Status.PUBLISHED)) < 12
            zou.start_api()
            wait_for(lambda: len(by_status(s, Status.PUBLISHED)) == 12, timeout=60)
            assert svc.wait_idle(10)
    finally:
        if zou._gunicorn is None:
            zou.start_api()
    names = sorted(of["name"] for of in zou.output_files(zou.seed["shots"]["SH010"]))
    assert len(names) == 12 and len(set(names)) == 12
    assert by_status(s, Status.FAILED) == []


def test_missing_shot_fails_then_retry_publishes_it(zou, tmp_path):
    s = kitsu_settings(tmp_path, zou)
    root = s.roots[0].path
    with running(s) as svc:
        nuke(root, "sh099", "main", 1)
        [row] = wait_for(lambda: by_status(s, Status.FAILED), timeout=30)
        assert "Shot sq01/sh099 not found in Kitsu project 'Watcher Test'" in row.last_error
        shot = zou.create_shot(zou.seed["project"]["id"], zou.seed["sequences"]["SQ01"], "SH099")
        zou.create_tasks(zou.seed["project"]["id"], zou.seed["task_types"]["Compositing"], "shots", [shot["id"]])
        j = SqliteJournal(s.journal_url())  # what `watcher retry --failed` does
        try:
            assert j.requeue() == [row.id]
        finally:
            j.close()
        wait_for(lambda: by_status(s, Status.PUBLISHED), timeout=30)
        assert svc.wait_idle(10)
    [of] = zou.output_files(shot["id"])
    assert of["revision"] == 1 and of["representation"] == "nk"
    assert rows(s)[0].tracker_id == of["id"]
