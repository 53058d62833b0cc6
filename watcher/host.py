"""What the host OS can tell about processes, asked the same way on Linux, macOS and Windows:

- whether a process still runs and is the one that was asked about (portable liveness). Through
  psutil, never through ``os.kill(pid, 0)``: on Windows signal 0 is ``CTRL_C_EVENT``, sent to a
  whole console process group, and any other number terminates the process;
- whether a writer still holds a file (``WriterProbe``, one per platform: ``writer_probes``),
  asked at a file's settle deadline where no close-write event can say it;
- the Windows file opens both need (``Win32Files``: ``CreateFileW`` with an explicit share mode).

(What filesystem a path is on: ``watcher.paths``.)"""
from __future__ import annotations

import ctypes
import threading
import errno
import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import psutil

from .names import nfc, shown

log = logging.getLogger(__name__)

# A process that started more than this after the time it claims (an agent id's start, taken
# when the agent began) is another process that reuses the pid. Generous, because Linux derives
# a process's start from the boot time in today's wall clock: a clock stepped forward after the
# agent started moves it later, and an alive agent must never be taken for gone (its rows would
# be published twice). Recycled pids come much later (after a reboot, a pid wrap).
START_SLACK = 30.0


def process_alive(pid: int, started: float = 0.0) -> bool:
    """Whether process ``pid`` runs and is the one that was there at ``started`` (epoch
    seconds; 0: any process with that pid). A zombie is not alive; a recycled pid (a process
    created after ``started``) is not the one asked about. A process that exists but may not
    be inspected (another user's, on Windows) counts as alive: the caller's lease decides."""
    if pid <= 0:
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        created = proc.create_time()
    except psutil.NoSuchProcess:  # ZombieProcess is one too
        return False
    except psutil.AccessDenied:
        return True
    return not started or created <= started + START_SLACK


def process_started(pid: int | None = None) -> float:
    """When a process (default: this one) started, in epoch seconds."""
    return psutil.Process(os.getpid() if pid is None else pid).create_time()




# ---- Windows file opens -----------------------------------------------------------------------
# kernel32 values (winnt.h, fileapi.h, winerror.h).
GENERIC_READ = 0x80000000
FILE_SHARE_READ, FILE_SHARE_WRITE, FILE_SHARE_DELETE = 0x1, 0x2, 0x4
OPEN_EXISTING = 3
FILE_ATTRIBUTE_NORMAL = 0x80
FILE_FLAG_OPEN_REPARSE_POINT = 0x00200000  # a symlink is opened as itself (O_NOFOLLOW's part)
FILE_FLAG_SEQUENTIAL_SCAN = 0x08000000
ERROR_FILE_NOT_FOUND, ERROR_PATH_NOT_FOUND, ERROR_ACCESS_DENIED = 2, 3, 5
ERROR_SHARING_VIOLATION, ERROR_LOCK_VIOLATION = 32, 33
#: A writer (or an exclusive reader) holds the file: another try later may get through.
SHARING_ERRORS = frozenset({ERROR_SHARING_VIOLATION, ERROR_LOCK_VIOLATION})
INVALID_HANDLE_VALUE = ctypes.c_void_p(-1).value
_ERRNOS = {ERROR_FILE_NOT_FOUND: errno.ENOENT, ERROR_PATH_NOT_FOUND: errno.ENOENT, ERROR_ACCESS_DENIED: errno.EACCES,
           ERROR_SHARING_VIOLATION: errno.EBUSY, ERROR_LOCK_VIOLATION: errno.EBUSY}
_WORDS = {ERROR_FILE_NOT_FOUND: "the file does not exist", ERROR_PATH_NOT_FOUND: "the folder does not exist",
          ERROR_ACCESS_DENIED: "access is denied",
          ERROR_SHARING_VIOLATION: "another program has it open without sharing it (a sharing violation)",
          ERROR_LOCK_VIOLATION: "another program has locked part of it (a lock violation)"}


class Win32Error(OSError):
    """A failed ``CreateFileW``: ``winerror`` is the Windows error code (set on every OS, so the
    code that maps it runs in tests on Linux too), ``errno`` the nearest POSIX one."""

    def __init__(self, code: int, path: str) -> None:
        super().__init__(_ERRNOS.get(code, errno.EIO), _WORDS.get(code, f"Windows error {code}"), path)
        self.winerror = code


class ProbeUnavailable(Exception):
    """This host has no way to ask (kernel32 outside Windows); the message says why."""


class Win32Files:
    """``CreateFileW`` / ``CloseHandle`` from kernel32 through ctypes, with the share mode said
    explicitly (Python's ``open`` on Windows shares read and write but never delete, so a
    save-by-rename fails while it reads). ``kernel32`` and ``last_error`` default to
    ``ctypes.WinDLL("kernel32")`` and ``ctypes.get_last_error``, looked up when made, so tests on
    Linux pass or monkeypatch a fake."""

    def __init__(self, kernel32: Any = None, last_error: Callable[[], int] | None = None) -> None:
        if kernel32 is None:
            windll = getattr(ctypes, "WinDLL", None)
            if windll is None:
                raise ProbeUnavailable("kernel32 exists only on Windows")
            kernel32 = windll("kernel32", use_last_error=True)
            kernel32.CreateFileW.argtypes = [ctypes.c_wchar_p, ctypes.c_uint32, ctypes.c_uint32, ctypes.c_void_p,
                                             ctypes.c_uint32, ctypes.c_uint32, ctypes.c_void_p]
            kernel32.CreateFileW.restype = ctypes.c_void_p  # a HANDLE; INVALID_HANDLE_VALUE on failure
            kernel32.CloseHandle.argtypes = [ctypes.c_void_p]
            kernel32.CloseHandle.restype = ctypes.c_int
        self._k = kernel32
        self._last_error: Callable[[], int] = last_error or getattr(ctypes, "get_last_error")

    def open(self, path: str, share: int, *, access: int = GENERIC_READ, flags: int = FILE_ATTRIBUTE_NORMAL) -> int:
        """A handle on the existing file ``path``; ``Win32Error`` when it cannot be opened."""
        handle = self._k.CreateFileW(path, access, share, None, OPEN_EXISTING, flags, None)
        if handle is None or handle == INVALID_HANDLE_VALUE:
            raise Win32Error(int(self._last_error()), path)
        return int(handle)

    def close(self, handle: int) -> None:
        self._k.CloseHandle(handle)


# ---- is a writer still at work? -----------------------------------------------------------------

class WriterProbe(Protocol):
    """Whether a writer still holds a file: True (busy: wait), False (no writer this host can
    see), None (this host cannot tell). Asked only at a file's settle deadline, never per event."""

    def busy(self, path: str) -> bool | None: ...


class ShareModeProbe:
    """Windows: open the file for reading without write sharing (``FILE_SHARE_READ |
    FILE_SHARE_DELETE``). A handle that holds write access (a render, a copy, Explorer's
    preallocated copy) or that shares no reading makes it fail with a sharing or lock violation:
    busy. Success: nobody writes it; the handle is closed at once. SMB servers enforce share modes
    across clients, so a writer on another workstation is seen on a share too.

    Delete sharing is granted so that the probe's own, very short open never makes a
    save-by-rename fail; a program opening the file for writing in that instant is refused once
    (the cost of asking the only question Windows answers)."""

    def __init__(self, files: Win32Files | None = None) -> None:
        self._files = files or Win32Files()

    def busy(self, path: str) -> bool | None:
        try:
            handle = self._files.open(path, FILE_SHARE_READ | FILE_SHARE_DELETE)
        except Win32Error as exc:
            if exc.winerror in SHARING_ERRORS:
                return True
            log.debug("%s: cannot tell whether a writer holds it (%s)", shown(path), exc.strerror)
            return None
        self._files.close(handle)
        return False


@dataclass(frozen=True)
class _OpenFiles:
    """One listing of the files this user's processes hold open (normalised, see ``_same``)."""

    taken: float  # monotonic
    held: frozenset[str]
    complete: bool  # every process of this user was asked within the budget


class OpenFilesProbe:
    """macOS, and Linux roots that are polled: the files this user's processes hold open, as
    psutil reads them (``proc_pidinfo`` on macOS, ``/proc/<pid>/fd`` on Linux). On Linux only
    handles open for writing count; macOS does not say a handle's mode, so any open by another
    process counts (a viewer keeping a file open holds it back too, up to ``max_wait``). This
    process's own handles never count.

    What it cannot see: other users' processes (not listed, by design: asking costs a syscall
    per process and would mostly be refused) and, above all, writers on other hosts. A file on
    NFS or SMB written by a render node or a file server's own client is held by a process
    nothing on this machine can list: for those the quiet window alone decides, as before.

    One listing serves every question for ``ttl`` seconds (a sequence's frames are asked
    together at its deadline), and a listing stops after ``budget`` seconds: then a path found
    is still busy, any other cannot be told (None), as every path when listing failed."""

    def __init__(self, *, ttl: float = 1.0, budget: float = 2.0, fold_case: bool | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.budget = budget
        # APFS/HFS+ and NTFS compare names without case; the kernel may report another spelling
        self.fold_case = sys.platform in ("darwin", "win32") if fold_case is None else fold_case
        self._clock = clock
        self._last: _OpenFiles | None = None
        self._dirs: dict[str, str] = {}  # folder -> its real path, for the current listing
        self.listings = 0  # how many times the processes were listed (tests, metrics)

    def busy(self, path: str) -> bool | None:
        snap = self._listing()
        if self._same(self._real(path)) in snap.held:
            return True
        return False if snap.complete else None

    def _real(self, path: str) -> str:
        """``path`` as the kernel reports open files: every symlink of its folder resolved (once
        per folder and listing: the frames of a sequence share it). The file itself is no link:
        admission refuses links."""
        folder, name = os.path.split(path)
        real = self._dirs.get(folder)
        if real is None:
            real = self._dirs[folder] = os.path.realpath(folder)
        return os.path.join(real, name)

    def _same(self, path: str) -> str:
        p = nfc(path)
        return p.casefold() if self.fold_case else p

    def _listing(self) -> _OpenFiles:
        now = self._clock()
        if self._last is not None and now - self._last.taken < self.ttl:
            return self._last
        self._dirs.clear()
        try:
            self._last = self._list(now)
        except (psutil.Error, OSError) as exc:  # kept for the ttl too: not retried per file
            log.debug("cannot list the files this user's processes hold open: %s", exc)
            self._last = _OpenFiles(now, frozenset(), complete=False)
        return self._last

    def _list(self, now: float) -> _OpenFiles:
        self.listings += 1
        attr, me = _owner()
        mine = os.getpid()
        held: set[str] = set()
        complete = True
        started = time.monotonic()
        for proc in psutil.process_iter(["pid", attr]):
            owner = proc.info.get(attr)
            if proc.info["pid"] == mine or owner is None or (owner.real if attr == "uids" else owner) != me:
                continue
            if time.monotonic() - started > self.budget:
                complete = False
                break
            try:
                files = proc.open_files()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue  # gone, or a process that hides its descriptors (not a render)
            for f in files:
                if getattr(f, "mode", "w") != "r":  # Linux says the mode; elsewhere any open counts
                    held.add(self._same(f.path))
        # none listed (a service user running watcher alone) is a complete answer: no local writer
        return _OpenFiles(now, frozenset(held), complete)


def _owner() -> tuple[str, Any]:
    """The psutil attribute that names a process's user, and this process's value of it."""
    if sys.platform == "win32":
        return "username", psutil.Process().username()
    return "uids", os.getuid()


class Unknowable:
    """A probe that cannot be had here (kernel32 failed to load): every answer is None."""

    def busy(self, path: str) -> bool | None:
        return None


class WriterProbes:
    """Which probe answers for a root, made on first use and shared by every root that needs the
    same one (one open-file listing per second for all of them). Owned by one thread (the
    pipeline's).

    - Linux, native observer (inotify): none. Close-write events answer, and a file with a real
      create and no close already waits for its close (``open_timeout``); nothing is asked.
    - Linux, polled root: ``OpenFilesProbe`` (no events come at all, so nothing says a local
      writer is done; a remote writer cannot be seen).
    - macOS: ``OpenFilesProbe`` (FSEvents sends no close events).
    - Windows: ``ShareModeProbe`` (ReadDirectoryChangesW sends no close events)."""

    def __init__(self, platform: str | None = None, *, files: Win32Files | None = None) -> None:
        self.platform = platform or sys.platform
        self._files = files
        self._made: dict[str, WriterProbe] = {}

    def for_root(self, *, polled: bool) -> WriterProbe | None:
        if self.platform == "win32":
            return self._get("share mode", self._share_mode)
        if self.platform == "darwin" or polled:
            return self._get("open files", OpenFilesProbe)
        return None

    def _get(self, kind: str, make: Callable[[], WriterProbe]) -> WriterProbe:
        probe = self._made.get(kind)
        if probe is None:
            probe = self._made[kind] = make()
        return probe

    def _share_mode(self) -> WriterProbe:
        try:
            return ShareModeProbe(self._files)
        except (ProbeUnavailable, OSError, AttributeError) as exc:
            log.warning("cannot ask Windows whether a writer holds a file (%s); files settle on the quiet window "
                        "alone, counted twice", exc)
            return Unknowable()


__all__ = ["process_alive", "process_started", "START_SLACK", "WriterProbe", "ShareModeProbe", "OpenFilesProbe",
           "Unknowable", "WriterProbes", "Win32Files", "Win32Error", "ProbeUnavailable", "SHARING_ERRORS",
           "GENERIC_READ", "FILE_SHARE_READ", "FILE_SHARE_WRITE", "FILE_SHARE_DELETE", "OPEN_EXISTING",
           "FILE_ATTRIBUTE_NORMAL", "FILE_FLAG_OPEN_REPARSE_POINT", "FILE_FLAG_SEQUENTIAL_SCAN",
           "ERROR_SHARING_VIOLATION", "ERROR_LOCK_VIOLATION", "INVALID_HANDLE_VALUE"]


# ---- stopping as Windows asks -------------------------------------------------------------------

CTRL_EVENTS = {0: "CTRL_C_EVENT", 1: "CTRL_BREAK_EVENT", 2: "CTRL_CLOSE_EVENT", 5: "CTRL_LOGOFF_EVENT",
               6: "CTRL_SHUTDOWN_EVENT"}
CLOSE_GRACE = 4.5  # Windows ends the process 5 s after a close/logoff/shutdown event's handler starts


class ConsoleStop:
    """Windows console control events (Ctrl+C, Ctrl+Break, the console window closed, logoff,
    shutdown) fed into the agent's one stop path. POSIX signals never see a closed console or a
    logoff, and Windows kills the process once the handler returns, so for those the handler
    waits (up to ``CLOSE_GRACE``) until ``stopped`` is set by the shutdown it started.

    ``kernel32`` defaults to ``ctypes.WinDLL("kernel32")``; tests on Linux pass a fake. The
    callback object is kept on the instance: ctypes must not free it while Windows holds it."""

    def __init__(self, on_stop: Callable[[str], None], stopped: threading.Event, kernel32: Any = None,
                 functype: Any = None) -> None:
        if kernel32 is None:
            windll = getattr(ctypes, "WinDLL", None)
            if windll is None:
                raise ProbeUnavailable("console control events exist only on Windows")
            kernel32 = windll("kernel32", use_last_error=True)
        if functype is None:
            functype = getattr(ctypes, "WINFUNCTYPE")(ctypes.c_int, ctypes.c_uint32)
        self._k = kernel32
        self._on_stop = on_stop
        self._stopped = stopped
        self._routine = functype(self._handle)

    def install(self) -> bool:
        return bool(self._k.SetConsoleCtrlHandler(self._routine, 1))

    def remove(self) -> None:
        self._k.SetConsoleCtrlHandler(self._routine, 0)

    def _handle(self, event: int) -> int:
        name = CTRL_EVENTS.get(event)
        if name is None:
            return 0  # not ours: the next handler (or Windows' default) decides
        self._on_stop(name)
        if event in (2, 5, 6):  # the process ends when we return: let the shutdown finish first
            self._stopped.wait(CLOSE_GRACE)
        return 1
