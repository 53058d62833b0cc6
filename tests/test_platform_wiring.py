"""Issue #17, the platform layer (``watcher/paths.py``) wired into the running agent: per-OS root
paths, ``observer: auto`` on network file systems, the mount marker, state and log folders per
OS, ``log_file``, the single-instance lock, SQLite refused on network file systems, tracker
paths per OS (ShotGrid storages, ftrack location prefixes, Kitsu mount point) and the
``linux_only`` marker. Real files, real agents and processes, the trackers' HTTP fakes; where a
real macOS or Windows would be needed, ``paths.current_os`` says which OS's rules apply and
network file systems come from a mountinfo table (the real parser reads it)."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import time
import unicodedata
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from pydantic import SecretStr, ValidationError

from tests.agent import DATA, rows, running, wait_for, write_frames
from tests.conftest import linux_only_skips
from tests.fake_ftrack import FakeFtrack
from tests.fake_kitsu import FakeZou
from tests.fake_kitsu import nuke_script as kitsu_script
from tests.fake_shotgrid import FakeShotGrid, standard_site
from tests.test_ftrack import World
from tests.test_shotgrid import KEY, nuke_script
from watcher import cli, logs, paths
from watcher.config import default_state_dir, load_settings
from watcher.errors import ConfigError, PermanentError
from watcher.journal.base import Status
from watcher.model import Job
from watcher.paths import OSFamily
from watcher.publish import ftrack as ftrack_mod
from watcher.publish import shotgrid as shotgrid_mod
from watcher.publish.base import BackendContext
from watcher.publish.kitsu import KitsuBackend, KitsuSettings
from watcher.service import make_backend

REPO = Path(__file__).resolve().parents[1]
RENDER = "seq/sq01/sh010/comp/render/beauty/v003"
L, D, W = OSFamily.LINUX, OSFamily.DARWIN, OSFamily.WINDOWS


def write_config(tmp: Path, roots: list[dict[str, Any]], **top: Any) -> Path:
    """A configuration file with quick windows; roots get the test templates unless they say."""
    data: dict[str, Any] = {
        "roots": [{"templates": str(DATA / "pipeline.yml"), **r} for r in roots],
        "settle_seconds": 0.4, "sequence_settle_seconds": 0.8, "journal": f"sqlite:///{tmp / 'journal.db'}",
        "state_dir": str(tmp / "state"), "workers": 2, "retry_base_seconds": 0.05, "retry_cap_seconds": 0.2,
        "rescan_interval": 0, **top}
    cfg = tmp / "watcher.yml"
    cfg.write_text(yaml.safe_dump(data), encoding="utf-8")
    return cfg


def network_at(monkeypatch: pytest.MonkeyPatch, tmp: Path, *folders: Path, fstype: str = "nfs4") -> None:
    """This machine's mount table, as Linux gives it, with ``folders`` mounted from a filer."""
    lines = ["22 1 252:0 / / rw,relatime shared:1 - ext4 /dev/vda rw"]
    lines += [f"{98 + i} 22 0:{77 + i} / {os.path.realpath(f)} rw,relatime shared:{2 + i} - {fstype} "
              f"filer:/export{i} rw,vers=4.2" for i, f in enumerate(folders)]
    table = tmp / "mountinfo"
    table.write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(paths, "LINUX_MOUNTINFO", str(table))


def status(tmp: Path) -> dict[str, Any]:
    """The agent's status.json in ``tmp/state`` ({} until it is written)."""
    try:
        return json.loads((tmp / "state" / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def published(s: Any) -> list[Any]:
    return [r for r in rows(s) if r.status == Status.PUBLISHED]


def run_agent(cfg: Path, *, env: dict[str, str] | None = None, code: str | None = None) -> subprocess.Popen[str]:
    argv = [sys.executable, "-c", code, str(cfg)] if code else [sys.executable, "-m", "watcher", "-c", str(cfg), "run"]
    return subprocess.Popen(argv, cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


def stop(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    return proc.returncode, out, err


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """``logs.setup`` replaces the root logger's handlers: give the next test pytest's back."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
        if h not in handlers:
            h.close()
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


# -- per-OS roots --------------------------------------------------------------------------------
def test_a_per_os_root_path_runs_on_this_os_spelling_and_keeps_every_os(tmp_path, monkeypatch):
    root = tmp_path / "shows"
    root.mkdir()
    per_os = {"linux": str(root), "darwin": "/Volumes/shows", "windows": "P:\\shows"}
    cfg = write_config(tmp_path, [{"name": "shows", "path": per_os}])
    s = load_settings(cfg)
    r = s.roots[0]
    assert r.path == root
    assert r.os_paths.by_os == {L: str(root), D: "/Volumes/shows", W: "P:\\shows"}
    # the backends get every OS's spelling (ShotGrid checks a storage against all of them)
    backend = make_backend(s, {r.name: r.path})
    assert backend.context.root_paths["shows"].get(W) == "P:\\shows"
    backend.close()
    # on Windows the same file gives the Windows spelling, as written (a mapped drive is kept)
    monkeypatch.setattr(paths, "current_os", lambda: W)
    win = type(r).model_validate({"name": "shows", "path": per_os, "templates": str(DATA / "pipeline.yml")})
    assert str(win.path) == "P:\\shows" and win.os_paths.get(D) == "/Volumes/shows"
    monkeypatch.undo()
    # Toolkit's roots.yml entry pastes unchanged: its keys, a null for an unused OS, the storage id
    tk = {"linux_path": str(root), "mac_path": None, "windows_path": "\\\\filer\\shows", "shotgun_storage_id": 3,
          "default": True}
    cfg = write_config(tmp_path, [{"name": "shows", "path": tk}])
    r = load_settings(cfg).roots[0]
    assert r.path == root and r.os_paths.storage_id == 3 and r.os_paths.get(W) == "\\\\filer\\shows"


def test_a_root_without_this_os_entry_stops_start_up_with_one_line(tmp_path):
    cfg = write_config(tmp_path, [{"name": "shows", "path": {"darwin": "/Volumes/shows", "windows": "P:\\shows"}}])
    done = subprocess.run([sys.executable, "-m", "watcher", "-c", str(cfg), "run"], capture_output=True, text=True,
                          cwd=str(REPO), timeout=60)
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert "roots[0].path" in line and "root 'shows'" in line and "no 'linux' entry" in line
    assert "add `linux: /mnt/shows`" in line and "Traceback" not in done.stderr
    cfg = write_config(tmp_path, [{"name": "shows", "path": {"linux": "/mnt/shows", "windwos": "P:\\shows"}}])
    with pytest.raises(ConfigError, match=r"roots\[0\]\.path: root 'shows': path: unknown key 'windwos' "
                                          r"\(did you mean 'windows'\?\)"):
        load_settings(cfg)


@pytest.mark.parametrize("marker", ["../outside", "/etc/marker", "C:\\marker", "", "a//b"])
def test_a_marker_must_name_a_file_inside_the_root(tmp_path, marker):
    (tmp_path / "shows").mkdir()
    cfg = write_config(tmp_path, [{"name": "shows", "path": str(tmp_path / "shows"), "marker": marker}])
    with pytest.raises(ConfigError, match=r"roots\[0\]\.marker: .* is not a path inside the root"):
        load_settings(cfg)


# -- observer: auto --------------------------------------------------------------------------------
def test_observer_auto_polls_a_network_root_and_watches_a_local_one_natively(tmp_path, monkeypatch):
    local, filer = tmp_path / "local", tmp_path / "filer"
    local.mkdir()
    filer.mkdir()
    network_at(monkeypatch, tmp_path, filer)
    cfg = write_config(tmp_path, [{"name": "local", "path": str(local)},
                                  {"name": "filer", "path": str(filer), "poll_interval": 0.2},
                                  {"name": "forced", "path": str(tmp_path / "forced"), "observer": "native"}])
    (tmp_path / "forced").mkdir()
    s = load_settings(cfg)
    by = {r.name: r for r in s.roots}
    assert (by["local"].observer, by["filer"].observer, by["forced"].observer) == ("native", "polling", "native")
    assert "nfs4" in (by["filer"].observer_note or "") and "polling every 0.2 s" in (by["filer"].observer_note or "")
    assert "ext4" in (by["local"].observer_note or "") and by["forced"].observer_note is None
    assert s.settle_for(by["filer"])[0] == pytest.approx(0.6)  # patient: 3 polls, as for `observer: polling`
    with running(s) as svc:
        shown = svc.status()["roots"]
        assert shown["filer"]["watching"] == "polling" and shown["local"]["watching"] == "inotify"
        time.sleep(0.3)
        write_frames(filer / RENDER, "beauty", range(1001, 1003))
        wait_for(lambda: [r for r in published(s) if r.publish.root == "filer"], 20)


def test_a_native_network_root_watched_by_one_agent_is_warned_about(tmp_path, monkeypatch):
    """`observer: native` on a network share sees only this machine's writes: one agent watching
    it for all (`watched_by: one`) would miss the others', so start-up says what to set."""
    filer, other = tmp_path / "filer", tmp_path / "filer2"
    filer.mkdir()
    other.mkdir()
    network_at(monkeypatch, tmp_path, filer, other)
    cfg = write_config(tmp_path, [{"name": "one", "path": str(filer), "observer": "native"},
                                  {"name": "every", "path": str(other), "observer": "native", "watched_by": "every"}])
    by = {r.name: r for r in load_settings(cfg).roots}
    assert "set `watched_by: every`" in (by["one"].watch_note or "")
    assert by["every"].watch_note is None


def test_a_sqlite_journal_on_a_network_file_system_is_refused(tmp_path, monkeypatch, capsys, restore_logging):
    (tmp_path / "shows").mkdir()
    (tmp_path / "state").mkdir()
    network_at(monkeypatch, tmp_path, tmp_path / "state", fstype="cifs")  # a network home folder
    cfg = write_config(tmp_path, [{"name": "shows", "path": str(tmp_path / "shows")}], journal=None)
    assert cli.main(["-c", str(cfg), "check"]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line == (f"watcher: {cfg.resolve()}: journal: {tmp_path / 'state' / 'journal.db'} is on a network file "
                    f"system (cifs at {tmp_path / 'state'}); SQLite's locking and WAL do not work there: set "
                    "state_dir to a local folder or use a postgresql:// journal")
    # the read-only commands still open it (to look, or to move away from it)
    assert load_settings(cfg, check_paths=False).journal_url().endswith("journal.db")
    # PostgreSQL is fine there, and so is SQLite on a local disk
    load_settings(write_config(tmp_path, [{"name": "shows", "path": str(tmp_path / "shows")}],
                               journal="postgresql://watcher@db.example/watcher"))
    local = tmp_path / "local"
    local.mkdir()
    load_settings(write_config(tmp_path, [{"name": "shows", "path": str(tmp_path / "shows")}],
                               journal=f"sqlite:///{local / 'journal.db'}"))


# -- state and log folders -------------------------------------------------------------------------
def test_the_default_state_dir_is_the_os_place_for_it(tmp_path, monkeypatch):
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    cfg = tmp_path / "conf" / "show.yml"
    # Linux: exactly the folder agents have always used (their journals stay where they are)
    import hashlib

    digest = hashlib.sha256(str(cfg).encode()).hexdigest()[:8]
    assert default_state_dir(cfg) == tmp_path / "xdg" / "watcher" / f"show-{digest}"
    assert default_state_dir(None) == tmp_path / "xdg" / "watcher"
    # macOS: Application Support (not ~/.local/state)
    monkeypatch.setattr(paths, "current_os", lambda: D)
    monkeypatch.delenv("XDG_STATE_HOME")  # platformdirs honours it on macOS too when it is set
    assert default_state_dir(cfg) == tmp_path / "home" / "Library" / "Application Support" / "watcher" / f"show-{digest}"
    # a SQLite journal's folder and systemd's StateDirectory= still win, on every OS
    assert default_state_dir(cfg, "sqlite:////srv/j/journal.db") == Path("/srv/j")
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/watcher:/other")
    assert default_state_dir(cfg) == Path("/var/lib/watcher")


def test_log_file_takes_the_agents_log_and_rotates(tmp_path, monkeypatch, restore_logging):
    (tmp_path / "shows").mkdir()
    cfg = write_config(tmp_path, [{"name": "shows", "path": str(tmp_path / "shows")}], log_file="logs/agent.log")
    assert load_settings(cfg).log_file == tmp_path / "logs" / "agent.log"  # relative to the file
    proc = run_agent(cfg)
    log_file = tmp_path / "logs" / "agent.log"
    wait_for(lambda: log_file.exists() and "watcher started" in log_file.read_text(), 30)
    rc, _, err = stop(proc)
    assert rc == 0 and "watcher started" not in err  # the file instead of stderr, not both
    assert "watcher stopped" in log_file.read_text()
    # `check` and the other commands keep talking to the person running them
    done = subprocess.run([sys.executable, "-m", "watcher", "-c", str(cfg), "--log-level", "DEBUG", "check"],
                          capture_output=True, text=True, cwd=str(REPO), timeout=60)
    assert "watcher started" not in log_file.read_text().split("watcher stopped")[-1]
    assert done.returncode in (0, 1), done.stderr
    # rotated: a month of logs never fills the disk
    monkeypatch.setattr(logs, "LOG_FILE_BYTES", 4000)
    rotating = tmp_path / "rot" / "watcher.log"
    assert logs.setup("INFO", log_file=rotating) == rotating
    for i in range(200):
        logging.getLogger("watcher").info("line %d of a long-running agent", i)
    assert rotating.exists() and (tmp_path / "rot" / "watcher.log.1").exists()
    assert rotating.stat().st_size <= 4000
    # an unwritable log file is a configuration error naming the key, not a traceback
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro" / "x.log").mkdir()  # a folder where the file should be
    with pytest.raises(ConfigError, match=r"log_file: cannot write .*x\.log"):
        logs.setup("INFO", log_file=tmp_path / "ro" / "x.log")


PYTHONW = """\
import sys
sys.stderr = None  # what pythonw (a Windows logon task, no console) gives the process
from watcher.cli import main
sys.exit(main(["-c", sys.argv[1], "run"]))
"""


def test_without_a_console_the_log_goes_to_the_os_log_folder(tmp_path):
    (tmp_path / "shows").mkdir()
    cfg = write_config(tmp_path, [{"name": "shows", "path": str(tmp_path / "shows")}])
    xdg = tmp_path / "xdg"
    proc = run_agent(cfg, env={"XDG_STATE_HOME": str(xdg)}, code=PYTHONW)
    tag = paths.config_tag(str(cfg.resolve()))
    log_file = xdg / "watcher" / "log" / tag / "watcher.log"  # Linux's user_log_dir; Windows: %LOCALAPPDATA%
    wait_for(lambda: log_file.exists() and "watcher started" in log_file.read_text(), 30)
    rc, _, err = stop(proc)
    assert rc == 0 and err == ""
    assert "received SIGTERM; shutting down" in log_file.read_text()


# -- one agent per configuration ----------------------------------------------------------------
def test_a_second_agent_on_the_same_configuration_exits_2_naming_the_first(tmp_path):
    (tmp_path / "shows").mkdir()
    cfg = write_config(tmp_path, [{"name": "shows", "path": str(tmp_path / "shows")}])
    first = run_agent(cfg)
    try:
        wait_for(lambda: status(tmp_path).get("pid") == first.pid, 30)
        second = subprocess.run([sys.executable, "-m", "watcher", "-c", str(cfg), "run"], capture_output=True,
                                text=True, cwd=str(REPO), timeout=60)
        assert second.returncode == 2
        [line] = second.stderr.strip().splitlines()
        assert f"another watcher (pid {first.pid}) already runs the configuration {cfg.resolve()}" in line
        assert first.poll() is None  # the first one runs on, untouched
    finally:
        rc, _, err = stop(first)
    assert rc == 0, err
    # released at stop: the next agent starts
    third = run_agent(cfg)
    try:
        wait_for(lambda: third.poll() is not None or status(tmp_path).get("pid") == third.pid, 30)
        assert third.poll() is None
    finally:
        rc, _, err = stop(third)
    assert rc == 0 and "another watcher" not in err


def test_run_installs_its_stop_handlers_on_an_os_without_sighup(monkeypatch):
    """Windows has no SIGHUP: `watcher run` used to die at start-up there with AttributeError."""
    import threading

    hup = signal.SIGHUP
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, hup)}
    monkeypatch.delattr(signal, "SIGHUP")
    stop = threading.Event()
    try:
        cli._install_signals(stop, threading.Event())
        assert signal.getsignal(hup) is saved[hup]  # nothing installed for a signal that is not there
        signal.raise_signal(signal.SIGTERM)
        assert stop.is_set()
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


# -- mount marker -----------------------------------------------------------------------------------
def test_a_missing_marker_takes_the_root_down_and_its_return_rescans(tmp_path, capsys, restore_logging):
    root = tmp_path / "shows"
    root.mkdir()
    marker = root / ".watcher-root"
    marker.write_text("")
    cfg = write_config(tmp_path, [{"name": "shows", "path": str(root), "marker": ".watcher-root"}])
    s = load_settings(cfg)
    with running(s) as svc:
        assert svc.status()["roots"]["shows"]["up"]
        marker.unlink()  # the share went away: its empty mount point is left
        shown = wait_for(lambda: (r := svc.status()["roots"]["shows"]) and not r["up"] and r, 10)
        assert "marker .watcher-root is missing" in shown["down_reason"] and shown["watching"] == ""
        svc.supervisor.write_status()
        assert cli.main(["-c", str(cfg), "status"]) == 1
        out = capsys.readouterr().out
        assert "root shows: DOWN" in out and "marker .watcher-root is missing" in out
        write_frames(root / RENDER, "beauty", range(1001, 1003))  # lands while nobody watches
        time.sleep(0.5)
        assert not published(s)
        marker.write_text("")  # mounted again
        shown = wait_for(lambda: (r := svc.status()["roots"]["shows"]) and r["up"] and r, 10)
        assert shown["down_reason"] is None and shown["last_rescan_reason"] == "root came back"
        wait_for(lambda: published(s), 20)


# -- roots: the configured spelling, the volume's rules -------------------------------------------
def test_a_windows_drive_root_loses_no_character_and_follows_the_volume(fs, monkeypatch):
    """Windows by emulation: pyfakefs with Windows semantics (drive letters, ``\\``, names that
    ignore case) and Windows' path rules for the roots."""
    from pyfakefs.fake_filesystem import OSType

    from watcher.config import Settings
    from watcher.ignore import inside
    from watcher.roots import load_roots

    fs.os = OSType.WINDOWS
    fs.add_real_file(str(DATA / "pipeline.yml"), target_path="C:\\cfg\\pipeline.yml")
    monkeypatch.setattr(paths, "current_os", lambda: W)
    fs.create_file("P:\\seq\\sq01\\sh010\\comp\\work\\sh010_slap_v002.nk")
    fs.pause()  # pydantic's Path type cannot be built on pyfakefs' Windows flavour
    s = Settings(roots=[{"name": "p", "path": "P:\\", "templates": "C:\\cfg\\pipeline.yml", "ignore": ["*.bak"]}],
                 state_dir="C:\\state")
    fs.resume()
    [r] = load_roots(s)
    assert r.path == "P:\\" and r.root.case_insensitive  # kept as written; probed on its volume
    nk = "P:\\seq\\sq01\\sh010\\comp\\work\\sh010_slap_v002.nk"
    assert r.relative(nk) == "seq/sq01/sh010/comp/work/sh010_slap_v002.nk"  # no lost first character
    assert r.relative("p:/seq\\a.nk") == "seq/a.nk" and r.relative("Q:\\seq\\a.nk") is None
    assert r.templates.match(r.relative(nk))  # templates see `/` paths
    # junk the shells leave, in any case, and the root's globs ignore case on this volume
    for junk in ("seq/Thumbs.db", "seq/DESKTOP.INI", "seq/~$notes.docx", "seq/render.TMP", "$RECYCLE.BIN/x.nk",
                 "seq/PLATE.BAK"):
        assert r.ignorer.ignored(junk), junk
    assert r.ignorer.ignored_dir("System Volume Information") and not r.ignorer.ignored("seq/plate.exr")
    assert inside("P:\\", nk) and not inside("P:\\seq", "P:\\seq2\\a.nk")


def test_a_case_sensitive_root_keeps_case_and_names_as_the_disk_spells_them(tmp_path):
    from watcher.config import Settings
    from watcher.ignore import Ignorer
    from watcher.roots import load_roots

    root = tmp_path / "shows"
    (root / "seq").mkdir(parents=True)
    s = Settings(roots=[{"name": "shows", "path": f"{root}/", "templates": DATA / "pipeline.yml",
                         "ignore": ["*.bak"]}], state_dir=tmp_path / "state")
    [r] = load_roots(s)
    assert r.path == str(root) and not r.root.case_insensitive  # ext4: probed, case matters
    nfd = unicodedata.normalize("NFD", "seq/étude.nk")
    assert r.relative(f"{root}/{nfd}") == nfd  # the disk's spelling: Linux opens exactly that name
    assert r.relative(f"{str(root).upper()}/seq/a.nk") is None and r.relative(f"{root}2/a.nk") is None
    assert not r.ignorer.ignored("seq/PLATE.BAK") and r.ignorer.ignored("seq/plate.bak")
    assert Ignorer(["*.bak"], case_insensitive=True).ignored("seq/PLATE.BAK")
    assert r.ignorer.ignored("seq/Thumbs.db") and r.ignorer.ignored("seq/~$shot.docx")  # junk, on every OS


def test_windows_lint_and_the_auto_choice_reach_check_and_the_log(tmp_path, capsys, restore_logging):
    root = tmp_path / "shows"
    root.mkdir()
    templates = tmp_path / "templates.yml"
    templates.write_text((DATA / "pipeline.yml").read_text().replace(
        "paths:\n", "paths:\n  notes: 'seq/{Sequence}/notes: {name}.txt'\n  aux: 'seq/{Sequence}/AUX.{name}.nk'\n"))
    cfg = write_config(tmp_path, [{"name": "shows", "path": {"linux": str(root), "windows": "P:\\shows"},
                                   "templates": str(templates)}])
    assert cli.main(["-c", str(cfg), "check"]) == 0
    out = capsys.readouterr().out
    assert "warn root shows:" in out and "template 'notes': 'notes: {name}.txt' holds ':'" in out
    assert "template 'aux': 'AUX.{name}.nk' is a reserved device name on Windows" in out
    # without a Windows spelling (and not on Windows) nobody is warned about Windows
    cfg = write_config(tmp_path, [{"name": "shows", "path": str(root), "templates": str(templates)}])
    assert cli.main(["-c", str(cfg), "check"]) == 0
    assert "Windows" not in capsys.readouterr().out
    # a local root watched natively is not news at INFO (every command would say it); at DEBUG it is said once
    from watcher.roots import load_roots

    load_roots(load_settings(cfg))  # logging as `check` set it up: to stderr, INFO
    assert "watching it natively" not in capsys.readouterr().err
    logging.getLogger().setLevel(logging.DEBUG)
    load_roots(load_settings(cfg))
    said = [line for line in capsys.readouterr().err.splitlines() if "watching it natively" in line]
    assert len(said) == 1 and said[0].endswith(f"DEBUG   watcher: root shows: {root} is on a local file system "
                                                "(ext4): watching it natively")


# -- ShotGrid: storages through the per-OS roots ---------------------------------------------------
@pytest.fixture
def studio(tmp_path: Path) -> Path:
    root = tmp_path / "studio"
    (root / "demo").mkdir(parents=True)
    return root


@pytest.fixture
def site(studio: Path) -> Iterator[FakeShotGrid]:
    fake = FakeShotGrid().start()
    fake.seed = standard_site(fake, str(studio))  # primary: linux <studio>, mac /Volumes/studio, windows P:\studio
    yield fake
    fake.stop()


def shotgrid_config(tmp: Path, site: FakeShotGrid, path: Any, **tracker: Any) -> Path:
    return write_config(tmp, [{"name": "projects", "path": path}],
                        tracker={"backend": "shotgrid", "url": site.url, "script_name": "watcher", "script_key": KEY,
                                 "project": "Demo Project", "retries": 1, "backoff_base": 0.01, **tracker})


def test_shotgrid_matches_the_storage_through_every_os_spelling_of_the_root(tmp_path, studio, site):
    here = str(studio / "demo")
    good = {"linux": here, "darwin": "/Volumes/studio/demo", "windows": "p:\\STUDIO\\demo"}  # Windows ignores case
    s = load_settings(shotgrid_config(tmp_path, site, good))
    backend = make_backend(s, {r.name: r.path for r in s.roots})
    try:
        backend.publish(Job(id=1, publish=nuke_script(studio)))
        [pf] = site.records("PublishedFile")
        assert pf["path_cache_storage"] == site.seed["storage"]
        assert pf["path_cache"] == "demo/sequences/sq01/sh010/comp/publish/nuke/sh010_comp_v003.nk"
        checked = {c.what: c for c in backend.check()}["local storage for root 'projects'"]
        assert checked.ok and "windows_path P:\\\\studio\\\\demo" in checked.detail  # escaped, as every name shown
    finally:
        backend.close()
    # a storage that holds the root here but elsewhere on Windows would send Windows artists
    # to the wrong folder: refused, naming both
    bad = {**good, "windows": "P:\\other\\demo"}
    s = load_settings(shotgrid_config(tmp_path, site, bad))
    backend = make_backend(s, {r.name: r.path for r in s.roots})
    try:
        with pytest.raises(PermanentError, match=r"LocalStorage 'primary' holds root 'projects' .* its windows_path "
                                                 r".*P:\\\\studio.* does not hold the root's windows path"):
            backend.publish(Job(id=2, publish=nuke_script(studio, version=4)))
    finally:
        backend.close()


def test_shotgrid_on_windows_uses_windows_path_and_a_toolkit_storage_id(tmp_path, studio, site, monkeypatch):
    deep = site.add("LocalStorage", code="deeper", linux_path=str(studio / "demo"), windows_path="P:\\studio\\demo")
    roots = {"projects": paths.OSPaths(by_os={L: str(studio / "demo"), W: "P:\\studio\\demo"})}
    monkeypatch.setattr(shotgrid_mod, "current_os", lambda: W)
    from watcher.publish.shotgrid import ShotGridBackend, ShotGridSettings

    settings = ShotGridSettings(url=site.url, script_name="watcher", script_key=KEY, project="Demo Project")
    b = ShotGridBackend(settings, BackendContext(config_dir=tmp_path, roots={}, root_paths=roots))
    p = dataclasses.replace(nuke_script(studio), root_path="P:\\studio\\demo",
                            path="P:\\studio\\demo\\sequences\\sq01\\Sh010\\comp\\sh010_comp_v003.nk")
    try:
        storage, rel = b._storage(p)
        assert storage["id"] == deep["id"]  # the deepest storage holding P:\studio\demo
        assert rel == "sequences/sq01/Sh010/comp/sh010_comp_v003.nk"  # `/`, the file's own case
        # Toolkit's roots.yml gives the storage id: that storage, not the deepest
        pinned = {"projects": dataclasses.replace(roots["projects"], storage_id=site.seed["storage"]["id"])}
        b.context.root_paths = pinned
        storage, rel = b._storage(p)
        assert storage["id"] == site.seed["storage"]["id"]
        assert rel == "demo/sequences/sq01/Sh010/comp/sh010_comp_v003.nk"
    finally:
        b.close()


# -- ftrack: a location prefix per OS ------------------------------------------------------------
@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    fake = FakeFtrack().start()
    yield World(fake, tmp_path)
    fake.stop()


def test_ftrack_identifiers_are_relative_to_this_os_location_prefix(world, monkeypatch):
    loc = world.fake.add_location("studio.projects")
    prefix = {"linux": str(world.tmp), "windows": "P:\\projects"}
    name = unicodedata.normalize("NFD", "sh010_étude_v003.nk")  # as macOS spells it
    p = world.single(f"sh010/comp/{name}")
    world.backend(location="studio.projects", location_prefix=prefix).publish(world.job(p))
    [comp] = world.fake.records("Component")
    [cl] = world.locations_of(comp["id"])
    assert cl["location_id"] == loc
    assert cl["resource_identifier"] == "proj/sh010/comp/sh010_étude_v003.nk"  # below the prefix, NFC
    # the same file seen from Windows under its prefix gives the same identifier
    monkeypatch.setattr(ftrack_mod, "current_os", lambda: W)
    b = world.backend(location="studio.projects", location_prefix=prefix)
    assert b._resource_identifier(p, "p:\\Projects\\proj\\sh010\\comp\\sh010_étude_v003.nk") == \
        "proj/sh010/comp/sh010_étude_v003.nk"
    with pytest.raises(PermanentError, match=r"not under the ftrack location prefix P:\\\\projects for windows"):
        b._resource_identifier(p, "Q:\\elsewhere\\x.nk")
    monkeypatch.undo()
    with pytest.raises(ValidationError, match=r"location_prefix\n.*no 'linux' entry.*it has: windows"):
        world.backend(location_prefix={"windows": "P:\\projects"})
    with pytest.raises(ValidationError, match="remove resource_identifier: absolute"):
        world.backend(location_prefix=prefix, resource_identifier="absolute")


# -- Kitsu: the mount point --------------------------------------------------------------------------
def test_kitsu_output_path_is_the_mount_point_and_the_posix_path_below_the_root(tmp_path):
    fake = FakeZou().start()
    try:
        settings = KitsuSettings(url=fake.url, token=SecretStr(FakeZou.BOT_TOKEN), project="Fake Show",
                                 task_types={"comp": "Compositing"}, output_types={"nk": "Nuke"}, retries=1,
                                 timeout=2, mount_point="/mnt/prod/")
        b = KitsuBackend(settings, BackendContext(config_dir=tmp_path, roots={}))
        p = dataclasses.replace(kitsu_script(tmp_path), root_path=str(tmp_path))
        b.publish(Job(id=1, publish=p))
        [of] = fake.output_files()
        assert of["path"] == "/mnt/prod/SQ01/SH010/comp/work/sh010_comp_v003.nk"
        assert of["data"]["path"] == of["path"]
        b.close()
    finally:
        fake.stop()
    with pytest.raises(ValidationError, match="mount_point\n.*is empty"):
        KitsuSettings(url="http://x", token=SecretStr("t"), mount_point=" / ")


# -- the linux_only marker --------------------------------------------------------------------------
class _Item:
    def __init__(self, marked: bool) -> None:
        self.marked = marked
        self.added: list[Any] = []

    def get_closest_marker(self, name: str) -> Any:
        return object() if self.marked and name == "linux_only" else None

    def add_marker(self, mark: Any) -> None:
        self.added.append(mark)


@pytest.mark.parametrize("platform", ["darwin", "win32"])
def test_linux_only_items_skip_elsewhere_and_never_on_linux(platform):
    items = [_Item(True), _Item(False)]
    assert linux_only_skips(items, platform) == 1  # type: ignore[arg-type]
    assert [m.name for m in items[0].added] == ["skip"] and "linux_only" in items[0].added[0].kwargs["reason"]
    assert items[1].added == []
    linux = [_Item(True)]
    assert linux_only_skips(linux, "linux") == 0 and linux[0].added == []  # type: ignore[arg-type]
