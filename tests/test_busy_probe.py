"""A busy-writer probe per platform (#17 item 4), tested on Linux.

- Windows: ``ShareModeProbe`` opens the file without write sharing; a sharing or lock
  violation is busy. Reads for publishing open with read, write and delete sharing and map a
  sharing violation to a retry. Driven here through the real code with a fake kernel32 (the
  ``ctypes.WinDLL`` / ``ctypes.get_last_error`` the code looks up) and a fake ``msvcrt`` whose
  ``open_osfhandle`` hands back a real descriptor, so ``fstat``, containment and reading are real.
- macOS and polled Linux roots: ``OpenFilesProbe`` lists the open files of this user's processes
  (psutil); a real writer subprocess holds a file, then closes it.
- The settler asks the probe at each deadline (busy: another settle window; cannot tell: twice
  the settle window; held but untouched for ``max_wait``: taken), and the pipeline again as it
  journals; driven with explicit clocks. End to end: a polled root where a real writer holds its
  file open and pauses longer than the settle window is not published until it closes.
- The platform code type-checks as Windows and macOS code (mypy ``--platform``).
"""
from __future__ import annotations

import ctypes
import errno
import logging
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import psutil
import pytest

from watcher import host
from watcher.candidate import RootScope, Windows, candidate_key
from watcher.errors import PermanentError, RetryableError
from watcher.events import Kind
from watcher.host import (FILE_FLAG_OPEN_REPARSE_POINT, FILE_SHARE_DELETE, FILE_SHARE_READ, FILE_SHARE_WRITE,
                          GENERIC_READ, INVALID_HANDLE_VALUE, OPEN_EXISTING, OpenFilesProbe, ShareModeProbe,
                          Unknowable, Win32Error, WriterProbes)
from watcher.publish import tracker
from watcher.journal.base import Status
from watcher.publish.tracker import UnsafeFile, open_regular, read_error
from watcher.settle import BUSY_RECHECK, PROBED_FRESH, Settler

from .agent import rows, running, settings, wait_for
from .test_settle import M

REPO = Path(__file__).resolve().parent.parent


# ---- a fake kernel32 ------------------------------------------------------------------------------

class FakeKernel32:
    """What ``ctypes.WinDLL("kernel32", use_last_error=True)`` gives, scripted: ``refuse`` maps a
    path to the Windows error its ``CreateFileW`` fails with; every call is recorded. A handle
    is a number; ``fds`` maps it to a real descriptor once ``msvcrt.open_osfhandle`` made one."""

    def __init__(self, refuse: dict[str, int] | None = None) -> None:
        self.refuse = dict(refuse or {})
        self.calls: list[tuple] = []
        self.open_handles: dict[int, tuple[str, int]] = {}  # handle -> (path, flags)
        self.closed: list[int] = []
        self.last_error = 0
        self._next = 100
        self.loaded_with: dict = {}

        def create_file(path, access, share, security, disposition, flags, template):
            self.calls.append((path, access, share, security, disposition, flags, template))
            code = self.refuse.get(path)
            if code is not None:
                self.last_error = code
                return INVALID_HANDLE_VALUE
            if not os.path.lexists(path):
                self.last_error = host.ERROR_FILE_NOT_FOUND
                return INVALID_HANDLE_VALUE
            self._next += 1
            self.open_handles[self._next] = (path, flags)
            return self._next

        def close_handle(handle):
            self.closed.append(handle)
            self.open_handles.pop(handle, None)
            return 1

        self.CreateFileW = create_file  # plain functions: the loader sets argtypes/restype on them
        self.CloseHandle = close_handle


@pytest.fixture
def kernel32(monkeypatch):
    """Install a fake kernel32 where the code looks for it: ``ctypes.WinDLL`` and
    ``ctypes.get_last_error`` (absent on Linux)."""
    fake = FakeKernel32()

    def windll(name, use_last_error=False):
        assert name == "kernel32"
        fake.loaded_with = {"use_last_error": use_last_error}
        return fake

    monkeypatch.setattr(ctypes, "WinDLL", windll, raising=False)
    monkeypatch.setattr(ctypes, "get_last_error", lambda: fake.last_error, raising=False)
    return fake


@pytest.fixture
def windows_reads(kernel32, monkeypatch):
    """``open_regular`` takes its Windows path; ``msvcrt.open_osfhandle`` turns a fake handle
    into a real descriptor on the same file (``FILE_FLAG_OPEN_REPARSE_POINT``: a symlink itself,
    as Windows opens it)."""
    def open_osfhandle(handle, flags):
        path, cflags = kernel32.open_handles[handle]
        assert flags & os.O_RDONLY == os.O_RDONLY
        if cflags & FILE_FLAG_OPEN_REPARSE_POINT:
            return os.open(path, os.O_PATH | os.O_NOFOLLOW) if os.path.islink(path) else os.open(path, os.O_RDONLY)
        return os.open(path, os.O_RDONLY)

    monkeypatch.setitem(sys.modules, "msvcrt", types.SimpleNamespace(open_osfhandle=open_osfhandle))
    monkeypatch.setattr(tracker, "WINDOWS", True)
    return kernel32


# ---- Windows: the probe -------------------------------------------------------------------------

def test_share_mode_probe_sharing_violation_is_busy_success_is_not(kernel32, tmp_path):
    free, written, locked, denied = (str(tmp_path / n) for n in ("free.exr", "written.exr", "locked.exr", "denied.exr"))
    for p in (free, written, locked, denied):
        Path(p).write_bytes(b"x")
    kernel32.refuse = {written: host.ERROR_SHARING_VIOLATION, locked: host.ERROR_LOCK_VIOLATION,
                       denied: host.ERROR_ACCESS_DENIED}
    probe = ShareModeProbe()
    assert kernel32.loaded_with == {"use_last_error": True}
    assert kernel32.CreateFileW.restype is ctypes.c_void_p and len(kernel32.CreateFileW.argtypes) == 7

    assert probe.busy(free) is False
    [(path, access, share, _, disposition, _, _)] = kernel32.calls
    assert (path, access, disposition) == (free, GENERIC_READ, OPEN_EXISTING)
    assert share & FILE_SHARE_READ and not share & FILE_SHARE_WRITE  # a writer's handle makes it fail
    assert share & FILE_SHARE_DELETE  # the probe itself never fails a save-by-rename
    assert kernel32.closed == [101] and not kernel32.open_handles  # closed at once

    assert probe.busy(written) is True
    assert probe.busy(locked) is True
    assert probe.busy(denied) is None  # cannot tell
    assert probe.busy(str(tmp_path / "gone.exr")) is None


def test_probes_per_platform(kernel32, caplog):
    linux = WriterProbes("linux")
    assert linux.for_root(polled=False) is None  # inotify's close-write answers: no probe cost
    polled = linux.for_root(polled=True)
    assert isinstance(polled, OpenFilesProbe) and linux.for_root(polled=True) is polled  # one listing for all roots
    mac = WriterProbes("darwin")
    assert isinstance(mac.for_root(polled=False), OpenFilesProbe)
    assert mac.for_root(polled=True) is mac.for_root(polled=False)
    win = WriterProbes("win32")
    assert isinstance(win.for_root(polled=False), ShareModeProbe)
    assert win.for_root(polled=True) is win.for_root(polled=False)


def test_windows_probe_without_kernel32_cannot_tell(monkeypatch, caplog):
    monkeypatch.delattr(ctypes, "WinDLL", raising=False)
    with caplog.at_level(logging.WARNING, logger="watcher.host"):
        probe = WriterProbes("win32").for_root(polled=False)
    assert isinstance(probe, Unknowable) and probe.busy("C:\\x.exr") is None
    assert "quiet window" in caplog.text


# ---- Windows: reads for publishing ----------------------------------------------------------------

def test_windows_reads_share_read_write_and_delete(windows_reads, tmp_path):
    f = tmp_path / "shot.exr"
    f.write_bytes(b"frame data")
    with open_regular(str(f), "checksum", root=str(tmp_path)) as fh:
        assert fh.read() == b"frame data"
        [(path, access, share, _, disposition, flags, _)] = windows_reads.calls
        assert (path, access, disposition) == (str(f), GENERIC_READ, OPEN_EXISTING)
        assert share == FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE  # a re-render or rename goes through
        assert flags & FILE_FLAG_OPEN_REPARSE_POINT  # O_NOFOLLOW's counterpart
    assert not windows_reads.closed  # the descriptor owned the handle and closed it with the file


@pytest.mark.parametrize("code", [host.ERROR_SHARING_VIOLATION, host.ERROR_LOCK_VIOLATION])
def test_windows_sharing_violation_is_retryable_never_permanent(windows_reads, tmp_path, code):
    f = tmp_path / "shot.exr"
    f.write_bytes(b"x")
    windows_reads.refuse = {str(f): code}
    with pytest.raises(RetryableError, match=r"sharing or lock violation\); trying again later") as err:
        open_regular(str(f), "checksum", root=str(tmp_path))
    assert not isinstance(err.value, PermanentError)
    # the same error met while reading (a region locked by LockFileEx), as Python raises it on Windows
    exc = OSError(errno.EACCES, "The process cannot access the file because another process has locked a portion")
    exc.winerror = host.ERROR_LOCK_VIOLATION  # type: ignore[attr-defined]
    assert isinstance(read_error(str(f), "checksum", exc), RetryableError)
    plain = OSError(errno.EACCES, "Permission denied")  # no Windows code: still permanent
    assert isinstance(read_error(str(f), "checksum", plain), PermanentError)


def test_windows_read_of_a_vanished_file_is_permanent(windows_reads, tmp_path):
    with pytest.raises(PermanentError, match="vanished before it was published"):
        open_regular(str(tmp_path / "gone.exr"), "checksum", root=str(tmp_path))


def test_windows_read_never_follows_a_symlink(windows_reads, tmp_path):
    outside = tmp_path / "secret.txt"
    outside.write_text("not for the tracker")
    root = tmp_path / "root"
    root.mkdir()
    (root / "shot.exr").symlink_to(outside)
    with pytest.raises(UnsafeFile, match="a symlink"):
        open_regular(str(root / "shot.exr"), "checksum", root=str(root))


def test_win32_error_keeps_the_windows_code_on_every_os():
    e = Win32Error(host.ERROR_SHARING_VIOLATION, "P:\\shot.exr")
    assert e.winerror == 32 and e.errno == errno.EBUSY and e.filename == "P:\\shot.exr"
    assert "sharing violation" in str(e)


# ---- macOS and polled Linux roots: this user's open files ----------------------------------------

HOLDER = """
import sys
f = open(sys.argv[1], sys.argv[2])
if "w" in sys.argv[2] or "a" in sys.argv[2]:
    f.write(b"partial"); f.flush()
print("open", flush=True)
sys.stdin.readline()
f.close()
print("closed", flush=True)
sys.stdin.readline()
"""


class Holder:
    """A real process that opens ``path`` in ``mode``, keeps it open until ``close()``, then
    lives on without it (so only the open handle, not the process, can make it busy)."""

    def __init__(self, path: Path, mode: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), mode], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "open"

    def close(self) -> None:
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "closed"

    def end(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.proc.stdin.close()
        self.proc.stdout.close()


def test_open_files_probe_sees_a_writer_until_it_closes(tmp_path):
    f = tmp_path / "shot.exr"
    f.write_bytes(b"")
    probe = OpenFilesProbe(ttl=0)
    writer = Holder(f, "ab")
    try:
        assert probe.busy(str(f)) is True
        link = tmp_path / "link"  # a root reached through a symlink: the kernel reports the real path
        link.symlink_to(tmp_path)
        assert probe.busy(str(link / "shot.exr")) is True
        writer.close()
        assert probe.busy(str(f)) is False
    finally:
        writer.end()


def test_open_files_probe_ignores_readers_and_itself_on_linux(tmp_path):
    f = tmp_path / "shot.exr"
    f.write_bytes(b"done")
    probe = OpenFilesProbe(ttl=0)
    reader = Holder(f, "rb")  # a viewer: Linux says the mode, and reading is no writing
    try:
        with open(f, "ab"):  # watcher's own handles never count
            assert probe.busy(str(f)) is False
    finally:
        reader.end()


def test_open_files_probe_lists_once_per_ttl_and_within_its_budget(tmp_path):
    f = tmp_path / "shot.exr"
    f.write_bytes(b"")
    now = [0.0]
    probe = OpenFilesProbe(ttl=1.0, clock=lambda: now[0])
    writer = Holder(f, "ab")
    try:
        assert probe.busy(str(f)) is True
        writer.close()
        assert probe.busy(str(f)) is True and probe.listings == 1  # a sequence's frames share one listing
        now[0] = 1.5
        assert probe.busy(str(f)) is False and probe.listings == 2
    finally:
        writer.end()
    over_budget = OpenFilesProbe(ttl=0, budget=-1.0)  # stopped before the first process: cannot tell
    assert over_budget.busy(str(f)) is None


def test_open_files_probe_that_cannot_list_cannot_tell_and_says_so_once_per_ttl(tmp_path, monkeypatch):
    def refused(*args, **kwargs):
        raise psutil.AccessDenied()

    monkeypatch.setattr(psutil, "process_iter", refused)
    probe = OpenFilesProbe(ttl=1.0, clock=lambda: 0.0)
    assert probe.busy(str(tmp_path / "a.exr")) is None and probe.busy(str(tmp_path / "b.exr")) is None
    assert probe.listings == 1  # a thousand frames asked at one deadline: one failed listing, not a thousand


def test_open_files_probe_folds_case_where_the_volume_does(tmp_path):
    f = tmp_path / "Shot.exr"
    f.write_bytes(b"")
    writer = Holder(f, "ab")
    try:
        assert OpenFilesProbe(ttl=0, fold_case=True).busy(str(tmp_path / "SHOT.exr")) is True  # APFS, NTFS
        assert OpenFilesProbe(ttl=0, fold_case=False).busy(str(tmp_path / "SHOT.exr")) is False
    finally:
        writer.end()


# ---- the settler asks at each deadline, the pipeline again as it journals ------------------------

class ScriptedProbe:
    """Answers ``busy`` from ``answer`` (None: cannot tell) and counts the questions."""

    def __init__(self, answer: bool | None) -> None:
        self.answer = answer
        self.asked = 0

    def busy(self, path: str) -> bool | None:
        self.asked += 1
        return self.answer


W = Windows(settle=5, sequence=10, open_timeout=60, max_wait=3600)


@pytest.fixture
def settler(tmp_path):
    """A settler on explicit clocks whose candidates' root has ``probe``; one quiet file offered."""
    clock = {"mono": 1000.0, "wall": 1_700_000_000.0}
    probe = ScriptedProbe(False)
    s = Settler(monotonic=lambda: clock["mono"], wall=lambda: clock["wall"], probe_for=lambda cand: probe)
    f = tmp_path / "a.nk"
    f.write_bytes(b"x")
    os.utime(f, (clock["wall"], clock["wall"]))
    m = M("nk", {"Shot": "sh010", "version": 1})
    key = candidate_key("shows", m)
    s.offer(key, RootScope("shows", str(tmp_path)), m, W, str(f), Kind.MODIFIED)  # no close events here

    def advance(seconds: float) -> None:
        clock["mono"] += seconds
        clock["wall"] += seconds

    return s, probe, advance, key


def test_a_busy_file_waits_another_settle_window(settler):
    s, probe, advance, key = settler
    probe.answer = True
    advance(5.1)
    assert s.due() == [] and probe.asked == 1 and s.writer_waits == 1
    advance(4.9)
    assert s.due() == [] and probe.asked == 1  # a new quiet window started at the deadline
    advance(0.2)
    assert s.due() == [] and probe.asked == 2  # still held: again
    probe.answer = False
    advance(5.1)
    [cand] = s.due()
    assert cand.key == key


def test_a_busy_file_with_no_settle_window_is_asked_again_a_second_later_not_in_a_loop(tmp_path):
    clock = [1000.0]
    probe = ScriptedProbe(True)
    s = Settler(monotonic=lambda: clock[0], probe_for=lambda cand: probe)
    f = tmp_path / "a.nk"
    f.write_bytes(b"x")
    m = M("nk", {"Shot": "sh010", "version": 1})
    s.offer(candidate_key("shows", m), RootScope("shows", str(tmp_path)), m, Windows(0, 0, 60), str(f), Kind.MODIFIED)
    assert s.due() == [] and probe.asked == 1
    assert s.due() == [] and probe.asked == 1  # not asked again at once
    assert s.next_deadline() == pytest.approx(clock[0] + BUSY_RECHECK)
    probe.answer = False
    clock[0] += BUSY_RECHECK
    assert len(s.due()) == 1


def test_a_file_the_os_cannot_tell_about_waits_twice_the_settle_window(settler):
    s, probe, advance, key = settler
    probe.answer = None
    advance(5.1)
    assert s.due() == []
    advance(4.8)
    assert s.due() == []
    advance(0.2)  # quiet for 10.1 s = 2 x settle
    assert [c.key for c in s.due()] == [key]


def test_a_file_held_open_but_untouched_for_max_wait_is_taken(settler):
    s, probe, advance, key = settler
    probe.answer = True
    advance(W.max_wait - 10)
    assert s.due() == []  # held, but touched less than max_wait ago
    advance(10 + W.settle)
    assert [c.key for c in s.due()] == [key]


def test_the_pipeline_asks_again_as_it_journals_unless_just_asked(settler):
    s, probe, advance, key = settler
    advance(5.1)
    [cand] = s.due()
    assert probe.asked == 1
    assert s.writers_gone(cand) and probe.asked == 1  # the deadline asked a moment ago
    s.hold(cand, 0)  # held back (completion signals, the journal away): time passes
    [cand] = s.due()
    advance(PROBED_FRESH * 2)
    probe.answer = True  # the writer reopened it meanwhile
    assert not s.writers_gone(cand) and probe.asked == 3
    assert s.settling(key)  # back in the settler, waiting for its writer
    probe.answer = False
    advance(5.1)
    assert [c.key for c in s.due()] == [key]


def test_a_root_without_a_probe_settles_as_before(tmp_path):
    """Linux roots watched by inotify: nothing is asked, the quiet window alone decides."""
    clock = [1000.0]
    s = Settler(monotonic=lambda: clock[0], probe_for=lambda cand: None)
    f = tmp_path / "a.nk"
    f.write_bytes(b"x")
    m = M("nk", {"Shot": "sh010", "version": 1})
    s.offer(candidate_key("shows", m), RootScope("shows", str(tmp_path)), m, W, str(f), Kind.CLOSED)
    clock[0] += 5.1
    [cand] = s.due()
    assert s.writers_gone(cand)


# ---- end to end: a polled root and a real writer that pauses ------------------------------------

PAUSER = """
import sys
with open(sys.argv[1], "ab") as f:
    f.write(b"first half;"); f.flush()
    print("paused", flush=True)
    sys.stdin.readline()  # holds the file open, writing nothing, until told
    f.write(b" second half"); f.flush()
print("closed", flush=True)
"""


def test_a_polled_root_waits_for_a_writer_that_holds_its_file_open(tmp_path):
    """The writer writes half, then holds the file open without writing for more than five
    settle windows. Without the probe the quiet window ends mid-pause and half a file is
    published; with it, nothing is published until the writer closes the file."""
    s = settings(tmp_path, root_opts={"observer": "polling", "poll_interval": 0.2})
    work = s.roots[0].path / "seq/sq01/sh010/comp/work"
    work.mkdir(parents=True)
    script = work / "sh010_main_v001.nk"
    with running(s) as svc:
        settle = s.settle_for(s.roots[0])[0]
        time.sleep(0.3)  # the poller's first snapshot
        writer = subprocess.Popen([sys.executable, "-c", PAUSER, str(script)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert writer.stdout.readline().strip() == "paused"
            end = time.monotonic() + 6 * settle  # found within a poll, then quiet for five windows
            while time.monotonic() < end:
                assert rows(s) == [], "published while its writer still held it open"
                time.sleep(0.1)
            assert svc.settler.writer_waits >= 2  # its deadline came, and again: held by its writer
            writer.stdin.write("\n")
            writer.stdin.flush()
            assert writer.stdout.readline().strip() == "closed"
        finally:
            if writer.poll() is None:
                writer.kill()
            writer.wait()
            writer.stdin.close()
            writer.stdout.close()
        [row] = wait_for(lambda: [r for r in rows(s) if r.status == Status.PUBLISHED], 20)
    assert row.publish.size == len(b"first half; second half")


# ---- the platform code type-checks as Windows and macOS code -------------------------------------

@pytest.mark.parametrize("platform", ["win32", "darwin"])
def test_probe_and_reads_type_check_for_other_platforms(platform, tmp_path):
    done = subprocess.run([sys.executable, "-m", "mypy", "--platform", platform, "--follow-imports=silent",
                           "--cache-dir", str(tmp_path / "mypy"), "--no-error-summary", "watcher/host.py",
                           "watcher/publish/tracker.py"],
                          cwd=str(REPO), capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
