"""The watch pipeline end to end: real watchdog observers, real files, the local registry."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from watcher.journal.base import Status

from .agent import registry, rows, running, settings, wait_for, write_frames

RENDER = "seq/sq01/sh010/comp/render/beauty/v003"


def published(s):
    return [r for r in rows(s) if r.status == Status.PUBLISHED]


def test_frames_written_in_chunks_publish_once_when_done(tmp_path):
    s = settings(tmp_path)
    root = s.roots[0].path
    with running(s) as svc:
        done = threading.Event()

        def writer():
            write_frames(root / RENDER, "beauty", range(1001, 1021), chunks=4, pause=0.04)
            done.set()

        t = threading.Thread(target=writer)
        t.start()
        while not done.is_set():
            assert rows(s) == [], "published before the writer finished"
            time.sleep(0.05)
        t.join()
        [row] = wait_for(lambda: published(s))
        svc.sync("shows")
        assert svc.wait_idle(10)
    p = row.publish
    assert p.path == str(root / RENDER / "beauty.%04d.exr")
    assert (p.frames, p.missing_frames, p.frame_count) == ("1001-1020", None, 20)
    assert (p.entity.type, p.entity.name, p.version, p.task) == ("Shot", "sh010", 3, "comp")
    assert p.size == 20 * 1024
    assert len(registry(s)) == 1


def test_holes_are_reported(tmp_path):
    s = settings(tmp_path)
    root = s.roots[0].path
    with running(s):
        write_frames(root / RENDER, "beauty", [1001, 1002, 1003, 1007, 1008])
        [row] = wait_for(lambda: published(s))
    assert (row.publish.frames, row.publish.missing_frames) == ("1001-1008", "1004-1006")


@pytest.mark.parametrize("policy", ["never", "new_version", "update"])
def test_sequence_extended_after_publish_follows_policy(tmp_path, policy):
    s = settings(tmp_path, root_opts={"republish": policy})
    root = s.roots[0].path
    with running(s) as svc:
        write_frames(root / RENDER, "beauty", range(1001, 1011))
        wait_for(lambda: published(s))
        write_frames(root / RENDER, "beauty", range(1011, 1016))
        if policy == "never":
            svc.sync("shows")
            wait_for(lambda: svc.idle() and not len(svc.settler), 10)
            time.sleep(1.0)  # give a wrong second publish every chance to appear
            assert [r.publish.frames for r in rows(s)] == ["1001-1010"]
        elif policy == "new_version":
            rs = wait_for(lambda: len(published(s)) == 2 and published(s))
            assert [(r.publish.version, r.publish.frames) for r in rs] == [(3, "1001-1010"), (4, "1001-1015")]
        else:
            wait_for(lambda: [r.publish.frames for r in published(s)] == ["1001-1015"])
            assert len(registry(s)) == 1 and registry(s)[0][3]["frames"] == "1001-1015"


def test_temp_then_rename_publishes_final_name_once(tmp_path):
    s = settings(tmp_path)
    work = s.roots[0].path / "seq/sq01/sh010/comp/work"
    work.mkdir(parents=True)
    with running(s) as svc:
        for i in range(3):  # three saves of the same script, each through a temp file
            tmp = work / f".sh010_slap_v001.nk.tmp{i}"
            tmp.write_text(f"# nuke script save {i}\n" * 50)
            os.replace(tmp, work / "sh010_slap_v001.nk")
            time.sleep(0.05)
        [row] = wait_for(lambda: published(s))
        svc.sync("shows")
        assert svc.wait_idle(10)
    assert row.publish.path == str(work / "sh010_slap_v001.nk") and row.publish.frames is None
    assert len(rows(s)) == 1


def test_file_deleted_before_settling_is_not_published(tmp_path):
    s = settings(tmp_path, settle_seconds=1.0)
    work = s.roots[0].path / "seq/sq01/sh010/comp/work"
    work.mkdir(parents=True)
    with running(s) as svc:
        (work / "sh010_gone_v001.nk").write_text("x")
        (work / "sh010_kept_v001.nk").write_text("y")
        svc.sync("shows")
        (work / "sh010_gone_v001.nk").unlink()
        wait_for(lambda: published(s))
        assert svc.wait_idle(10)
    assert [r.publish.name for r in rows(s)] != [] and all("gone" not in r.publish.path for r in rows(s))


def test_rsync_into_drop_folder(tmp_path):
    if not shutil.which("rsync"):
        pytest.fail("rsync is not installed: run the tests with tests/run.sh, which installs it")
    s = settings(tmp_path)
    src = tmp_path / "vendor"
    write_frames(src, "sh020_comp_plate_v002", range(1, 25), size=200_000)
    (src / "sh020_comp_plate_v002.nk").write_text("nuke")
    dest = s.roots[0].path / "drop"
    dest.mkdir()
    with running(s) as svc:
        subprocess.run(["rsync", "-a", "--bwlimit=20000", f"{src}/", f"{dest}/"], check=True)
        wait_for(lambda: len(published(s)) == 2)
        svc.sync("shows")
        assert svc.wait_idle(10)
    by_type = {r.publish.template: r.publish for r in rows(s)}
    assert set(by_type) == {"drop_render", "drop_nuke"}
    assert by_type["drop_render"].frames == "1-24" and by_type["drop_render"].frame_count == 24
    assert by_type["drop_render"].entity.name == "sh020"


def test_tree_created_while_stopped_is_published_once_across_restarts(tmp_path):
    s = settings(tmp_path)
    root = s.roots[0].path
    with running(s):
        pass
    write_frames(root / RENDER, "beauty", range(1001, 1051))
    write_frames(root / "seq/sq01/sh020/lgt/render/spec/v001", "spec", range(1, 11))
    with running(s) as svc:
        wait_for(lambda: len(published(s)) == 2)
        assert svc.wait_idle(10)
    with running(s) as svc:  # a second start publishes nothing twice
        assert svc.wait_idle(10)
        assert svc.committed == 0
    assert len(rows(s)) == 2 and len(registry(s)) == 2


def test_symlinks_outside_the_root_are_never_published(tmp_path):
    s = settings(tmp_path)
    root = s.roots[0].path
    outside = tmp_path / "outside"
    write_frames(outside, "beauty", range(1001, 1004))
    (outside / "sh010_evil_v001.nk").write_text("x")
    work = root / "seq/sq01/sh010/comp/work"
    work.mkdir(parents=True)
    (work / "sh010_evil_v001.nk").symlink_to(outside / "sh010_evil_v001.nk")
    (root / "seq/sq01/sh010/comp/render").mkdir(parents=True)
    (root / "seq/sq01/sh010/comp/render/beauty").symlink_to(outside, target_is_directory=True)
    (work / "sh010_inside_v001.nk").symlink_to(root / "seq")  # a link to a dir inside: not a file
    (work / "sh010_real_v001.nk").write_text("ok")
    with running(s) as svc:
        wait_for(lambda: published(s))
        (work / "sh010_late_v001.nk").symlink_to(outside / "sh010_evil_v001.nk")
        svc.sync("shows")
        assert svc.wait_idle(10)
    assert [r.publish.path for r in rows(s)] == [str(work / "sh010_real_v001.nk")]


def test_burst_into_new_directories_loses_nothing_even_when_the_queue_overflows(tmp_path, monkeypatch):
    import watcher.service as service

    monkeypatch.setattr(service, "QUEUE_SIZE", 64)  # force "queue full → rescan this root"
    s = settings(tmp_path)
    root = s.roots[0].path
    with running(s) as svc:
        svc.pipeline.pause()  # the pipeline stalls (a slow disk, a busy core) while the burst lands
        for shot in range(10):
            write_frames(root / f"seq/sq01/sh{shot:03d}/comp/render/beauty/v001", "beauty", range(1, 201), size=64)
        wait_for(lambda: svc.roots["shows"].rescans >= 1, 10)
        svc.pipeline.resume()
        wait_for(lambda: len(published(s)) == 10, timeout=60)
        assert svc.wait_idle(20)
    assert sorted(r.publish.frame_count for r in rows(s)) == [200] * 10
    assert svc.roots["shows"].last_rescan_reason == "event queue full"


def test_polling_root(tmp_path):
    s = settings(tmp_path, root_opts={"observer": "polling", "poll_interval": 0.2})
    root = s.roots[0].path
    with running(s) as svc:
        time.sleep(0.3)
        write_frames(root / RENDER, "beauty", range(1001, 1006))
        wait_for(lambda: published(s))
        assert svc.roots["shows"].observer.cycles > 0
    assert rows(s)[0].publish.frames == "1001-1005"


def test_root_that_vanishes_and_comes_back_is_watched_again(tmp_path):
    s = settings(tmp_path)
    root = s.roots[0].path
    with running(s) as svc:
        away = tmp_path / "unmounted"
        root.rename(away)
        wait_for(lambda: not svc.roots["shows"].up, 10)
        write_frames(away / RENDER, "beauty", range(1001, 1004))  # written while "unmounted"
        away.rename(root)
        wait_for(lambda: svc.roots["shows"].up, 10)
        wait_for(lambda: published(s), 15)
        write_frames(root / "seq/sq01/sh030/comp/render/beauty/v001", "beauty", range(1, 3))
        wait_for(lambda: len(published(s)) == 2, 15)


def test_permission_denied_subdirectory_is_reported_and_the_rest_published(tmp_path):
    """Root reads everything, so the agent runs as `nobody` in a forked child (everything it
    needs is imported before the fork: nobody cannot read this interpreter's install)."""
    import pwd
    import tempfile
    import traceback

    import watcher.cli
    import watcher.publish.local  # noqa: F401  (imported lazily by name otherwise)
    import watcher.service  # noqa: F401

    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.fail("no 'nobody' user to run the unprivileged agent as")
    base = Path(tempfile.mkdtemp(prefix="watcher-perm-"))
    try:
        os.chmod(base, 0o755)
        s = settings(base)
        root = s.roots[0].path
        write_frames(root / RENDER, "beauty", range(1001, 1004))
        write_frames(root / "seq/sq01/sh099/comp/render/beauty/v001", "beauty", range(1, 3))
        tpl = base / "templates.yml"
        shutil.copy(s.roots[0].templates, tpl)
        cfg = base / "watcher.yml"
        cfg.write_text(f"roots:\n  - {{name: shows, path: {root}, templates: {tpl}}}\n"
                       f"settle_seconds: 0.2\njournal: sqlite:///{base}/journal.db\nstate_dir: {base}/state\n")
        for dirpath, _dirs, files in os.walk(base):
            for name in [dirpath, *(os.path.join(dirpath, f) for f in files)]:
                os.chown(name, nobody.pw_uid, nobody.pw_gid)
        os.chmod(root / "seq/sq01/sh099", 0o000)
        log = base / "stderr.txt"
        pid = os.fork()
        if pid == 0:  # the child: drop privileges, run `watcher scan`, never return into pytest
            rc = 99
            try:
                fd = os.open(log, os.O_WRONLY | os.O_CREAT, 0o666)
                os.dup2(fd, 2)
                sys.stderr = os.fdopen(2, "w", buffering=1)
                os.setgroups([])
                os.setgid(nobody.pw_gid)
                os.setuid(nobody.pw_uid)
                rc = watcher.cli.main(["-c", str(cfg), "scan", "--timeout", "60"])
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(rc)
        _, status = os.waitpid(pid, 0)
        err = log.read_text()
        assert "cannot read" in err and "sh099" in err, err
        assert os.waitstatus_to_exitcode(status) == 0, err
        assert [x.publish.frames for x in rows(s)] == ["1001-1003"]
    finally:
        os.chmod(base / "root/seq/sq01/sh099", 0o755)
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("policy", ["never", "new_version"])
def test_single_file_changed_after_publish(tmp_path, policy):
    """Outside the amend window the root's republish policy decides."""
    s = settings(tmp_path, amend_window=0, root_opts={"republish": policy})
    work = s.roots[0].path / "seq/sq01/sh010/comp/work"
    work.mkdir(parents=True)
    script = work / "sh010_main_v004.nk"
    with running(s) as svc:
        script.write_text("first")
        wait_for(lambda: published(s))
        script.write_text("second, longer")
        if policy == "never":
            svc.sync("shows")
            wait_for(lambda: svc.idle() and not len(svc.settler), 10)
            time.sleep(1.0)
            assert len(rows(s)) == 1
            assert "not republished" in (svc.journal.events(rows(s)[0].id)[-1][2] or "")
        else:
            rs = wait_for(lambda: len(published(s)) == 2 and published(s))
            assert [r.publish.version for r in rs] == [4, 5] and rs[1].publish.path == str(script)


def test_periodic_rescan_finds_a_file_rewritten_in_place_on_a_polling_root(tmp_path):
    """Polling sees new and vanished names only (one stat per directory); a file rewritten in
    place is found by the periodic rescan, which stats what the journal knows."""
    s = settings(tmp_path, rescan_interval=3, amend_window=0, root_opts={"observer": "polling", "poll_interval": 0.2,
                                                                          "republish": "new_version"})
    work = s.roots[0].path / "seq/sq01/sh010/comp/work"
    work.mkdir(parents=True)
    script = work / "sh010_main_v001.nk"
    script.write_text("first")
    with running(s):
        wait_for(lambda: published(s))
        with open(script, "a") as f:  # same name, same directory mtime: only a stat can tell
            f.write(" and more")
        rs = wait_for(lambda: len(published(s)) == 2 and published(s), 20)
    assert [r.publish.version for r in rs] == [1, 2]


@pytest.mark.linux_only  # a real inotify queue overflow
def test_kernel_queue_overflow_triggers_a_rescan_loses_nothing_and_does_not_loop(tmp_path):
    """A real IN_Q_OVERFLOW: the kernel queue is made tiny for the agent's inotify instance (the
    sysctl applies to instances created while it is set), then a burst overflows it. watchdog's
    own recovery (remove and re-add every watch) floods such a queue with IN_IGNORED and
    overflows forever; ours must settle, rescan, and publish every sequence whole."""
    knob = Path("/proc/sys/fs/inotify/max_queued_events")
    old = knob.read_text().strip()
    s = settings(tmp_path)
    root = s.roots[0].path
    for shot in range(6):  # more directories than the queue has slots
        (root / f"seq/sq01/sh{shot:03d}/comp/render/beauty/v001").mkdir(parents=True)
    try:
        knob.write_text("16\n")
        with running(s) as svc:
            knob.write_text(old + "\n")  # only our observer's instance keeps the tiny queue
            [emitter] = list(svc.roots["shows"].observer.emitters)
            with emitter._inotify._lock:  # stall watchdog's reader: the kernel queue must overflow
                for shot in range(6):
                    write_frames(root / f"seq/sq01/sh{shot:03d}/comp/render/beauty/v001", "beauty",
                                 range(1, 151), size=64)
            wait_for(lambda: len(published(s)) == 6, 60)
            r = svc.roots["shows"]
            assert r.rescans >= 1 and r.last_rescan_reason == "inotify queue overflow"
            before = r.rescans
            time.sleep(1.5)
            assert r.rescans == before, "overflows go on after the burst ended (a rebuild loop)"
    finally:
        knob.write_text(old + "\n")
    assert sorted(r.publish.frame_count for r in rows(s)) == [150] * 6


def test_stop_while_the_supervisor_is_mid_check_leaves_no_thread_behind(tmp_path):
    """stop() used to stop the observers first; a supervisor check running at that moment saw
    no observer and started a new one that nothing stopped. Every thread the service started
    (observers and their emitters included) must be gone when stop() returns."""
    s = settings(tmp_path)
    before = set(threading.enumerate())
    svc = __import__("watcher.service", fromlist=["Service"]).Service(s)
    svc.start()
    entered = threading.Event()
    check = svc.supervisor._check_root

    def slow_check(*args):  # the check is slow (a hung NFS stat) and stop() arrives meanwhile
        entered.set()
        time.sleep(0.5)
        return check(*args)

    svc.supervisor._check_root = slow_check
    assert entered.wait(10)
    svc.stop(grace=3)
    assert svc.lingering == []
    left = [t for t in set(threading.enumerate()) - before if t.is_alive()]
    assert left == [], f"threads outlived stop(): {left}"
    assert all(r.observer is None for r in svc.roots.values())


def test_a_drop_larger_than_the_settling_cap_is_published_whole_in_bounded_memory(tmp_path, caplog):
    """Beyond max_settling_files the pipeline leaves new files on disk and rescans their folders
    once the backlog drains: memory stays bounded, nothing is lost, no sequence is split."""
    s = settings(tmp_path, max_settling_files=100)
    root = s.roots[0].path
    peak = [0]
    with running(s) as svc:
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                peak[0] = max(peak[0], svc.settler.pending_files)
                time.sleep(0.005)

        t = threading.Thread(target=sample)
        t.start()
        work = [root / f"seq/sq01/sh{i:03d}/comp/work" for i in range(10)]
        for d in work:
            d.mkdir(parents=True)
        for i in range(40):
            for d in work:
                (d / f"{d.parent.parent.name}_n{i}_v001.nk").write_text("x")
        write_frames(root / RENDER, "beauty", range(1001, 1301), size=16)
        wait_for(lambda: len(published(s)) == 401, 90)
        assert svc.wait_idle(20)
        stop.set()
        t.join()
    assert peak[0] <= 100 + 300  # the cap, plus frames joining the one sequence already settling
    [seq] = [r for r in rows(s) if r.publish.frames]
    assert (seq.publish.frames, seq.publish.frame_count, seq.publish.missing_frames) == ("1001-1300", 300, None)
    assert len({r.publish.path for r in rows(s)}) == 401
    assert "max_settling_files" in caplog.text


def test_a_steady_burst_is_journaled_in_groups_not_one_transaction_per_candidate(tmp_path):
    """Group commit: 300 scripts written 2 ms apart settle 2 ms apart too; the pipeline journals
    them at most once per group window, so the journal sees a few dozen transactions, not one
    per file (a trickle of tiny transactions once cost PostgreSQL half its throughput)."""
    s = settings(tmp_path, settle_seconds=0.2)
    root = s.roots[0].path
    work = root / "seq/sq01/sh010/comp/work"
    work.mkdir(parents=True)
    with running(s) as svc:
        calls: list[int] = []
        add_many = svc.journal.add_many

        def counting(items, **kw):
            calls.append(len(items))
            return add_many(items, **kw)

        svc.journal.add_many = counting  # type: ignore[method-assign]
        for i in range(300):
            (work / f"sh010_n{i}_v001.nk").write_bytes(b"x")
            time.sleep(0.002)
        wait_for(lambda: len(published(s)) == 300, 20)
    assert sum(calls) == 300
    # ~0.6 s of settling at one commit per 20 ms at most, plus stragglers: far below 300
    assert len(calls) <= 60, f"{len(calls)} journal transactions for 300 candidates"
