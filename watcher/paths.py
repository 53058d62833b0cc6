"""Paths on Linux, macOS and Windows: one model for every OS the agent runs on.

A file is known as (root, POSIX relative path in NFC). The root keeps the spelling the studio
configured for this OS: a mapped drive ``P:\\shows`` is never resolved into ``\\\\srv\\share\\shows``
(ShotGrid storages and artists know the drive), and a UNC root is never rewritten to a drive.
Everything here is a pure function or a frozen value, except the small, explicit probes (case
sensitivity, file system type, mount marker) and the single-instance lock; none keeps global
state, so every OS's rules can be exercised on any OS (the tests run Windows and macOS rules
on Linux with ``ntpath`` and pyfakefs)."""
from __future__ import annotations

import ctypes
import ctypes.util
import difflib
import errno
import fnmatch
import hashlib
import json
import ntpath
import os
import posixpath
import re
import secrets
import stat as stat_mod
import sys
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import PurePosixPath, PureWindowsPath
from types import ModuleType, TracebackType
from typing import Any, Callable, Iterable, Mapping

from platformdirs.api import PlatformDirsABC

from .errors import ConfigError, WatcherError
from .match.template import KEY_REF_RE, DefinitionError, expand_sections
from .names import nfc, shown

APP_NAME = "watcher"


class OSFamily(str, Enum):
    """The three path dialects. The values are the keys of a per-OS root mapping."""

    LINUX = "linux"
    DARWIN = "darwin"
    WINDOWS = "windows"

    @property
    def pathmod(self) -> ModuleType:
        """``ntpath`` or ``posixpath``: the string rules of this OS, usable on any OS."""
        return ntpath if self is OSFamily.WINDOWS else posixpath

    @property
    def case_insensitive_default(self) -> bool:
        """What a volume usually is when it cannot be probed: NTFS and APFS/HFS+ ignore case."""
        return self is not OSFamily.LINUX


def current_os() -> OSFamily:
    if sys.platform == "win32":
        return OSFamily.WINDOWS
    if sys.platform == "darwin":
        return OSFamily.DARWIN
    return OSFamily.LINUX


class RootPathError(ConfigError):
    """A root's ``path`` cannot give a spelling for an OS (missing key, relative path, typo)."""


class PathMappingError(WatcherError):
    """A file cannot be expressed relative to a tracker's storage, location or mount point."""


class InstanceLockError(WatcherError):
    """The single-instance lock file cannot be created (state dir not writable)."""


class InstanceLockedError(InstanceLockError):
    """Another agent already runs this configuration."""

    def __init__(self, message: str, *, pid: int | None) -> None:
        super().__init__(message)
        self.pid = pid


# ---- 1. one path model -------------------------------------------------------------------------

_WIN_DEVICE = re.compile(r"^[\\/]{2}[?.][\\/]")  # \\?\ and \\.\ (long-path and device prefixes)


def _win_plain(path: str) -> str:
    r"""``\\?\C:\x`` -> ``C:\x`` and ``\\?\UNC\srv\share\x`` -> ``\\srv\share\x``: the long-path
    prefix is a way of writing the same path, not another path. Other device paths are kept."""
    if not _WIN_DEVICE.match(path):
        return path
    rest = path[4:]
    if rest[:4].upper() in ("UNC\\", "UNC/"):
        return "\\\\" + rest[4:]
    if re.match(r"^[A-Za-z]:", rest):
        return rest
    return path


def _split_windows(path: str) -> tuple[str, list[str]] | None:
    """(anchor, names) of an absolute Windows path, lexically normalised as Win32 does (``/``
    and ``\\`` alike, ``.``/``..`` folded); None for a relative or drive-relative path."""
    p = _win_plain(path)
    if re.fullmatch(r"[A-Za-z]:", p):
        p += "\\"  # "P:" as a root means the drive's root, not its current directory
    drive, rest = ntpath.splitdrive(ntpath.normpath(p))
    if not drive or (not rest.startswith("\\") and not drive.startswith("\\\\")):
        return None
    if drive.startswith("\\\\") and drive.count("\\") < 3:
        return None  # "\\server" without a share
    return drive, [s for s in rest.split("\\") if s]


def _split_posix(path: str) -> list[str] | None:
    """Names of an absolute POSIX path; None when relative or when it holds ``..`` (with
    symlinks, ``..`` cannot be folded without the disk, and a root never needs it)."""
    if not path.startswith("/"):
        return None
    names = [s for s in path.split("/") if s and s != "."]
    return None if ".." in names else names


def _key(name: str, fold: bool) -> str:
    """How two names compare: always NFC (macOS writes NFD, people type NFC), folded on a
    case-insensitive volume."""
    n = nfc(name)
    return n.casefold() if fold else n


@dataclass(frozen=True)
class RootPath:
    r"""A root as configured for this OS (``spelling``, lexically normalised, never resolved)
    and how its volume compares names. ``relative`` and ``join`` are each other's inverse.

    >>> r = RootPath.of("P:\\", OSFamily.WINDOWS)
    >>> r.relative("p:\\Seq\\a.exr"), r.join("Seq/a.exr")
    ('Seq/a.exr', 'P:\\Seq\\a.exr')
    """

    spelling: str
    flavour: OSFamily
    case_insensitive: bool
    _anchor: str = field(init=False, repr=False, compare=False)
    _keys: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _prefix: str | None = field(init=False, repr=False, compare=False)  # POSIX: "<spelling>/", the fast path

    def __post_init__(self) -> None:
        if self.flavour is OSFamily.WINDOWS:
            split = _split_windows(self.spelling)
            if split is None:
                raise RootPathError(f"{shown(self.spelling)!s} is not an absolute Windows path: write a drive "
                                    "root such as P:\\shows or a share such as \\\\server\\share\\shows")
            drive, names = split
            spelling = drive + "\\" + "\\".join(names) if names else drive + "\\"
            anchor = drive.casefold()  # drive letters, servers and shares ignore case on every volume
        else:
            parts = _split_posix(self.spelling)
            if parts is None:
                raise RootPathError(f"{shown(self.spelling)!s} is not an absolute path without '..': "
                                    "write it from / (for example /mnt/shows)")
            names = parts
            spelling = "/" + "/".join(names)
            anchor = "/"
        object.__setattr__(self, "spelling", spelling)
        object.__setattr__(self, "_anchor", anchor)
        object.__setattr__(self, "_keys", tuple(_key(n, self.case_insensitive) for n in names))
        object.__setattr__(self, "_prefix", None if self.flavour is OSFamily.WINDOWS else spelling.rstrip("/") + "/")

    @classmethod
    def of(cls, spelling: str, flavour: OSFamily | None = None, *, case_insensitive: bool | None = None) -> RootPath:
        """A root with the OS's usual case rule (probe it with ``probed`` for the real one)."""
        f = flavour or current_os()
        return cls(spelling, f, f.case_insensitive_default if case_insensitive is None else case_insensitive)

    @classmethod
    def probed(cls, spelling: str, flavour: OSFamily | None = None) -> RootPath:
        """A root whose case rule comes from its volume (``probe_case_insensitive``). Probe once
        per root when the roots load: the answer is kept in the value."""
        root = cls.of(spelling, flavour)
        ci = probe_case_insensitive(root.spelling, root.flavour)
        return root if ci == root.case_insensitive else cls(root.spelling, root.flavour, ci)

    def _split(self, path: str) -> tuple[str, list[str]] | None:
        if self.flavour is OSFamily.WINDOWS:
            split = _split_windows(path)
            return None if split is None else (split[0].casefold(), split[1])
        names = _split_posix(path)
        return None if names is None else ("/", names)

    def relative(self, path: str, *, normalise: bool = True) -> str | None:
        """``path`` relative to the root as a POSIX path in NFC, or None when it is not below the
        root (the root itself, another volume, a relative path, a POSIX ``..``). Windows paths
        may mix ``/`` and ``\\`` and carry ``\\\\?\\``; drive and share roots lose nothing.
        ``normalise=False`` keeps the names below the root as ``path`` spells them (decomposed
        NFD stays NFD): what a normalisation-sensitive volume (Linux) must be asked to open."""
        fast = self._fast(path)
        if fast is not None:
            return nfc(fast) if normalise else fast
        split = self._split(path)
        if split is None:
            return None
        anchor, names = split
        n = len(self._keys)
        if anchor != self._anchor or len(names) <= n:
            return None
        fold = self.case_insensitive
        for want, got in zip(self._keys, names):
            if want != _key(got, fold):
                return None
        return "/".join(nfc(x) for x in names[n:]) if normalise else "/".join(names[n:])

    def _fast(self, path: str) -> str | None:
        """A POSIX path spelled with the root's own spelling and nothing to fold (the common
        case: every event and scan gives the root as configured): its tail, without splitting.
        None: ask the full rules."""
        prefix = self._prefix
        if prefix is None or not path.startswith(prefix) or len(path) == len(prefix):
            return None
        tail = path[len(prefix):]
        if tail[0] == "/" or tail[-1] == "/" or "//" in tail or "/./" in f"/{tail}/" or "/../" in f"/{tail}/":
            return None
        return tail

    def contains(self, path: str) -> bool:
        return self.relative(path) is not None

    def same(self, path: str) -> bool:
        """Whether ``path`` names the root itself (in any spelling the volume takes for it)."""
        split = self._split(path)
        return split is not None and split[0] == self._anchor and \
            tuple(_key(n, self.case_insensitive) for n in split[1]) == self._keys

    def join(self, rel: str) -> str:
        """The path of ``rel`` (POSIX, as ``relative`` gives it) in this OS's syntax under the
        configured spelling. The names stay NFC: on a normalisation-sensitive volume (Linux)
        open the path an event or scan gave, and keep this for identity and display."""
        names = [s for s in rel.split("/") if s and s != "."]
        if rel.startswith("/") or ".." in names or not names:
            raise ValueError(f"{shown(rel)!s} is not a relative path below a root")
        if self.flavour is OSFamily.WINDOWS and any("\\" in s or ":" in s for s in names):
            raise ValueError(f"{shown(rel)!s} holds a name Windows cannot store ('\\' or ':')")
        return str(self.flavour.pathmod.join(self.spelling, *names))


def relative(root: RootPath, path: str) -> str | None:
    """``root.relative(path)``: the POSIX, NFC path of ``path`` below ``root``, or None."""
    return root.relative(path)


def join(root: RootPath, rel: str) -> str:
    """``root.join(rel)``: the inverse of ``relative``."""
    return root.join(rel)


def probe_case_insensitive(directory: str, flavour: OSFamily | None = None, *, sample: int = 64) -> bool:
    """Whether the volume holding ``directory`` ignores case. First without writing: a name in
    the directory is looked up with its case swapped (the same file: insensitive; nothing or
    another file: sensitive). An empty directory gets a hidden probe file, removed at once (its
    name is hidden, so it is ignored as an event). When neither works the OS's usual rule."""
    f = flavour or current_os()
    pm = f.pathmod
    try:
        with os.scandir(directory) as it:
            for i, entry in enumerate(it):
                if i >= sample:
                    break
                twin = entry.name.swapcase()
                if twin == entry.name or not entry.name.isascii():
                    continue  # non-ASCII case rules differ per file system ("ß" has no one-letter upper case)
                answer = _same_file(pm.join(directory, entry.name), pm.join(directory, twin))
                if answer is not None:
                    return answer
    except OSError:
        return f.case_insensitive_default
    name = f".watcher-case-Probe-{secrets.token_hex(4)}"
    probe = pm.join(directory, name)
    try:
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except OSError:
        return f.case_insensitive_default
    try:
        os.close(fd)
        answer = _same_file(probe, pm.join(directory, name.swapcase()))
        return f.case_insensitive_default if answer is None else answer
    finally:
        try:
            os.unlink(probe)
        except OSError:
            pass


def _same_file(path: str, twin: str) -> bool | None:
    """True when ``twin`` is ``path`` (case ignored), False when it is absent or another file,
    None when ``path`` itself is gone (a race: ask another name)."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    try:
        other = os.lstat(twin)
    except FileNotFoundError:
        return False
    except OSError:
        return None
    return (st.st_dev, st.st_ino) == (other.st_dev, other.st_ino)


# ---- 2. per-OS roots ---------------------------------------------------------------------------

# Keys of a per-OS ``path:`` mapping: ours and Toolkit's roots.yml spellings.
OS_KEYS: Mapping[str, OSFamily] = {
    "linux": OSFamily.LINUX, "linux_path": OSFamily.LINUX,
    "darwin": OSFamily.DARWIN, "mac": OSFamily.DARWIN, "macos": OSFamily.DARWIN, "mac_path": OSFamily.DARWIN,
    "windows": OSFamily.WINDOWS, "win32": OSFamily.WINDOWS, "windows_path": OSFamily.WINDOWS,
}
# Toolkit roots.yml keys that are not spellings: accepted so an entry pastes unchanged.
TOOLKIT_EXTRAS = ("default", "shotgun_storage_id")


@dataclass(frozen=True)
class OSPaths:
    """One root's ``path:``: a spelling per OS, or one ``shared`` spelling for every OS (a plain
    string, as before). ``storage_id`` is Toolkit's ``shotgun_storage_id`` when given."""

    by_os: Mapping[OSFamily, str] = field(default_factory=dict)
    shared: str | None = None
    storage_id: int | None = None

    def get(self, flavour: OSFamily) -> str | None:
        return self.by_os.get(flavour) or self.shared

    def known(self) -> list[OSFamily]:
        return list(OSFamily) if self.shared else [f for f in OSFamily if f in self.by_os]


def parse_os_paths(root_name: str, value: Any, *, where: str | None = None) -> OSPaths:
    """A root's ``path:`` value (a string, or a mapping such as ``{linux: /mnt/shows, windows:
    'P:\\\\shows'}`` or Toolkit's ``linux_path``/``mac_path``/``windows_path``), checked: every
    spelling absolute in its own OS's syntax, no unknown or duplicate key. ``where`` names the
    setting in errors when it is not a root's path (``tracker.location_prefix``)."""
    where = where or f"root {root_name!r}: path"
    if isinstance(value, (str, os.PathLike)):
        return OSPaths(shared=str(value))
    if not isinstance(value, Mapping):
        raise RootPathError(f"{where} must be a path or a mapping of OS to path (linux, darwin, windows), "
                            f"not {type(value).__name__}")
    by_os: dict[OSFamily, str] = {}
    key_of: dict[OSFamily, str] = {}
    storage_id = None
    for key, spelling in value.items():
        k = str(key)
        if k in TOOLKIT_EXTRAS:
            if k == "shotgun_storage_id" and spelling is not None:
                if isinstance(spelling, bool) or not str(spelling).isdigit():
                    raise RootPathError(f"{where}.shotgun_storage_id must be a LocalStorage id (a whole number), "
                                        f"not {spelling!r}")
                storage_id = int(spelling)
            continue
        fam = OS_KEYS.get(k)
        if fam is None:
            near = difflib.get_close_matches(k, list(OS_KEYS), n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise RootPathError(f"{where}: unknown key {k!r}{hint}; use linux, darwin and windows "
                                "(or Toolkit's linux_path, mac_path, windows_path)")
        if spelling is None or str(spelling).strip() == "":
            continue  # Toolkit writes `mac_path: null` for an OS the studio does not use
        if fam in by_os:
            raise RootPathError(f"{where}: {key_of[fam]!r} and {k!r} both give the {fam.value} path; keep one")
        if not isinstance(spelling, (str, os.PathLike)):
            raise RootPathError(f"{where}.{k} must be a path, not {type(spelling).__name__}")
        text = str(spelling)
        try:
            RootPath.of(text, fam)
        except RootPathError as exc:
            raise RootPathError(f"{where}.{k}: {exc}") from None
        by_os[fam], key_of[fam] = text, k
    if not by_os:
        raise RootPathError(f"{where} gives no path for any OS; add linux, darwin and/or windows")
    return OSPaths(by_os=by_os, storage_id=storage_id)


def root_spelling(root_name: str, value: Any, flavour: OSFamily | None = None) -> str:
    """This OS's spelling of a root, or an error naming the root and the missing key."""
    f = flavour or current_os()
    paths = value if isinstance(value, OSPaths) else parse_os_paths(root_name, value)
    spelling = paths.get(f)
    if spelling is None:
        has = ", ".join(x.value for x in paths.known()) or "none"
        example = "'P:\\shows'" if f is OSFamily.WINDOWS else "/Volumes/shows" if f is OSFamily.DARWIN else "/mnt/shows"
        raise RootPathError(f"root {root_name!r}: path has no {f.value!r} entry, and this machine runs "
                            f"{f.value} (it has: {has}); add `{f.value}: {example}` under the root's path")
    return spelling


class FsKind(str, Enum):
    LOCAL = "local"
    NETWORK = "network"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Filesystem:
    """What a path is stored on. On NETWORK, native change events miss other clients' writes
    (poll instead) and SQLite's locking and WAL do not work (use PostgreSQL or a local path)."""

    kind: FsKind
    fstype: str
    mount_point: str

    @property
    def network(self) -> bool:
        return self.kind is FsKind.NETWORK


# Linux /proc/self/mountinfo types whose data lives on another machine (or another kernel).
LINUX_NETWORK_FS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "ncpfs", "9p", "afs", "coda", "ceph", "glusterfs", "lustre",
    "gpfs", "beegfs", "panfs", "wekafs", "quobyte", "davfs", "orangefs", "pvfs2",
    "fuse.sshfs", "fuse.glusterfs", "fuse.ceph", "fuse.cephfs", "fuse.s3fs", "fuse.rclone", "fuse.gcsfuse",
    "fuse.juicefs", "fuse.mfs", "fuse.lizardfs", "fuse.davfs2", "fuse.quobyte", "fuse.weka", "fuse.afpfs",
})
# macOS statfs f_fstypename values of network file systems.
# Where Linux tells this process its mounts (a constant, so a test can point it at a fake table).
LINUX_MOUNTINFO = "/proc/self/mountinfo"
DARWIN_NETWORK_FS = frozenset({"smbfs", "nfs", "afpfs", "webdav", "cifs", "ftp"})
MNT_LOCAL = 0x00001000  # macOS <sys/mount.h>: "filesystem is stored locally"
DRIVE_REMOTE = 4  # Windows GetDriveTypeW
DRIVE_NO_ROOT_DIR = 1


def _unescape_mount(field_: str) -> str:
    r"""mountinfo escapes space, tab, newline and backslash as ``\040`` style octal."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field_)


def linux_filesystem(path: str, mountinfo: str) -> Filesystem:
    """The mount holding ``path`` (an absolute real path) according to a mountinfo text: the
    longest mount point that contains it; the last one mounted wins on a tie (it hides the
    others)."""
    best: tuple[int, str, str] | None = None
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or not tail:
            continue
        mnt = _unescape_mount(fields[4])
        if mnt == "/" or path == mnt or path.startswith(mnt.rstrip("/") + "/"):
            if best is None or len(mnt) >= best[0]:
                best = (len(mnt), mnt, tail[0])
    if best is None:
        return Filesystem(FsKind.UNKNOWN, "", "")
    fstype = best[2]
    return Filesystem(FsKind.NETWORK if fstype in LINUX_NETWORK_FS else FsKind.LOCAL, fstype, best[1])


def darwin_filesystem(fstypename: str, flags: int, mount_point: str) -> Filesystem:
    """A macOS statfs answer: a network type name, or a mount without ``MNT_LOCAL``."""
    network = fstypename in DARWIN_NETWORK_FS or not flags & MNT_LOCAL
    return Filesystem(FsKind.NETWORK if network else FsKind.LOCAL, fstypename, mount_point)


def windows_filesystem(path: str, drive_type: Callable[[str], int]) -> Filesystem:
    r"""A UNC path is remote; a drive letter asks ``GetDriveTypeW`` (mapped drives are
    ``DRIVE_REMOTE``; ``DRIVE_NO_ROOT_DIR`` means the drive is not mapped in this session)."""
    split = _split_windows(path)
    if split is None:
        return Filesystem(FsKind.UNKNOWN, "", "")
    drive = split[0].upper()
    if drive.startswith("\\\\"):
        return Filesystem(FsKind.NETWORK, "unc", drive + "\\")
    kind = drive_type(drive + "\\")
    if kind == DRIVE_REMOTE:
        return Filesystem(FsKind.NETWORK, "remote", drive + "\\")
    if kind == DRIVE_NO_ROOT_DIR:
        return Filesystem(FsKind.UNKNOWN, "unmapped", drive + "\\")
    return Filesystem(FsKind.LOCAL, "local", drive + "\\")


class _Statfs(ctypes.Structure):
    """macOS ``struct statfs`` (64-bit inodes; ``sizeof`` 2168)."""

    _fields_ = [("f_bsize", ctypes.c_uint32), ("f_iosize", ctypes.c_int32), ("f_blocks", ctypes.c_uint64),
                ("f_bfree", ctypes.c_uint64), ("f_bavail", ctypes.c_uint64), ("f_files", ctypes.c_uint64),
                ("f_ffree", ctypes.c_uint64), ("f_fsid", ctypes.c_int32 * 2), ("f_owner", ctypes.c_uint32),
                ("f_type", ctypes.c_uint32), ("f_flags", ctypes.c_uint32), ("f_fssubtype", ctypes.c_uint32),
                ("f_fstypename", ctypes.c_char * 16), ("f_mntonname", ctypes.c_char * 1024),
                ("f_mntfromname", ctypes.c_char * 1024), ("f_flags_ext", ctypes.c_uint32),
                ("f_reserved", ctypes.c_uint32 * 7)]


def _darwin_statfs(path: str) -> Filesystem:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.dylib", use_errno=True)
    try:
        fn = libc["statfs$INODE64"]  # x86_64: the plain symbol is the old 32-bit-inode struct
    except AttributeError:
        fn = libc["statfs"]  # arm64: only the 64-bit-inode one exists
    fn.argtypes = [ctypes.c_char_p, ctypes.POINTER(_Statfs)]
    buf = _Statfs()
    if fn(os.fsencode(path), ctypes.byref(buf)) != 0:
        return Filesystem(FsKind.UNKNOWN, "", "")
    return darwin_filesystem(buf.f_fstypename.decode("utf-8", "replace"), buf.f_flags,
                             os.fsdecode(buf.f_mntonname))


def _windows_drive_type(root: str) -> int:
    if sys.platform == "win32":
        return int(ctypes.windll.kernel32.GetDriveTypeW(ctypes.c_wchar_p(root)))
    raise OSError(errno.ENOSYS, "GetDriveTypeW exists only on Windows")


def filesystem_of(path: str, flavour: OSFamily | None = None) -> Filesystem:
    """The file system holding ``path`` on this machine (UNKNOWN when it cannot be told)."""
    f = flavour or current_os()
    try:
        if f is OSFamily.WINDOWS:
            return windows_filesystem(path, _windows_drive_type)
        if f is OSFamily.DARWIN:
            return _darwin_statfs(path)
        with open(LINUX_MOUNTINFO, encoding="utf-8", errors="surrogateescape") as fh:
            return linux_filesystem(os.path.realpath(path), fh.read())
    except OSError:
        return Filesystem(FsKind.UNKNOWN, "", "")


def is_network_fs(path: str, flavour: OSFamily | None = None) -> bool:
    """True when ``path`` is on a network file system: default the root to polling, and refuse
    a SQLite journal there (SQLite's WAL needs shared memory that network file systems lack)."""
    return filesystem_of(path, flavour).network


class MountState(str, Enum):
    OK = "ok"
    ROOT_MISSING = "root missing"
    MARKER_MISSING = "marker missing"
    STALE = "stale"


@dataclass(frozen=True)
class MountCheck:
    state: MountState
    message: str

    @property
    def ok(self) -> bool:
        return self.state is MountState.OK


# errno values of a mount whose server went away (NFS ESTALE, FUSE ENOTCONN, SMB timeouts) and
# Windows' network errors (ERROR_BAD_NETPATH, _NETNAME_DELETED, _UNEXP_NET_ERR, _BAD_NET_NAME,
# _SEM_TIMEOUT, _NO_NETWORK).
_STALE_ERRNOS = frozenset({errno.ESTALE, errno.ENOTCONN, errno.EHOSTDOWN, errno.EHOSTUNREACH,
                           errno.ETIMEDOUT, errno.EIO})
_STALE_WINERRORS = frozenset({53, 59, 64, 67, 121, 1222})


def check_mount(root_name: str, root: RootPath, marker: str | None = None) -> MountCheck:
    """Whether a root is really there. Without a marker only the root folder is checked; with
    one (``marker: .watcher-root``, a file the studio puts at the top of the share), an empty
    mount point (the share not mounted, the folder below it visible instead) is caught too.
    A hung hard NFS mount can block here: call it from the supervisor, never the pipeline."""
    where = f"root {root_name!r} at {shown(root.spelling)}"
    try:
        try:
            st = os.stat(root.spelling)
        except FileNotFoundError:
            return MountCheck(MountState.ROOT_MISSING, f"{where} is missing: mount the share or fix the root's path")
        if not stat_mod.S_ISDIR(st.st_mode):
            return MountCheck(MountState.ROOT_MISSING, f"{where} is not a folder: fix the root's path")
        if marker is None:
            os.listdir(root.spelling)  # a stale handle shows on the first real access
            return MountCheck(MountState.OK, f"{where} is present")
        mpath = root.join(marker)
        try:
            os.stat(mpath)
        except FileNotFoundError:
            return MountCheck(MountState.MARKER_MISSING,
                              f"{where}: marker {shown(marker)} is missing, so the share is probably not mounted "
                              f"(an empty mount point); mount it, or create {shown(mpath)} if it is the right folder")
    except OSError as exc:
        if exc.errno in _STALE_ERRNOS or getattr(exc, "winerror", None) in _STALE_WINERRORS:
            return MountCheck(MountState.STALE, f"{where} is a stale or unreachable mount "
                                                f"({exc.strerror or exc}); remount it")
        return MountCheck(MountState.ROOT_MISSING, f"{where} cannot be read ({exc.strerror or exc})")
    return MountCheck(MountState.OK, f"{where} is mounted (marker {shown(marker)} present)")


# ---- 3. state and log dirs, single-instance lock -----------------------------------------------

def platform_dirs(flavour: OSFamily | None = None) -> PlatformDirsABC:
    """platformdirs for an OS's conventions (any OS's rules can be asked from any OS)."""
    f = flavour or current_os()
    if f is OSFamily.WINDOWS:
        from platformdirs.windows import Windows
        return Windows(appname=APP_NAME, appauthor=False)
    if f is OSFamily.DARWIN:
        from platformdirs.macos import MacOS
        return MacOS(appname=APP_NAME, appauthor=False)
    from platformdirs.unix import Unix
    return Unix(appname=APP_NAME, appauthor=False)


def config_tag(config_file: str, flavour: OSFamily | None = None) -> str:
    """``<name>-<hash of its path>``: one state folder per configuration file. On Linux and
    macOS the hash is the one ``default_state_dir`` always used; on Windows the path is
    case-folded first (``C:\\Users\\Ann`` and ``c:\\users\\ann`` are one file)."""
    f = flavour or current_os()
    key = ntpath.normcase(config_file) if f is OSFamily.WINDOWS else config_file
    stem = PureWindowsPath(config_file).stem if f is OSFamily.WINDOWS else PurePosixPath(config_file).stem
    digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{stem}-{digest}"


@dataclass(frozen=True)
class AgentDirs:
    r"""Where an agent keeps its state (status, default journal, lock) and its logs:
    Linux ``~/.local/state/watcher/…`` (``$XDG_STATE_HOME``) and ``…/log``; macOS
    ``~/Library/Application Support/watcher/…`` and ``~/Library/Logs/watcher/…``; Windows
    ``%LOCALAPPDATA%\watcher\…`` and ``%LOCALAPPDATA%\watcher\Logs\…``."""

    state: str
    logs: str


def agent_dirs(config_file: str | None = None, flavour: OSFamily | None = None) -> AgentDirs:
    f = flavour or current_os()
    dirs = platform_dirs(f)
    pm = f.pathmod
    state, logs = dirs.user_state_dir, dirs.user_log_dir
    if config_file is not None:
        tag = config_tag(config_file, f)
        state, logs = pm.join(state, tag), pm.join(logs, tag)
    return AgentDirs(state=pm.normpath(state), logs=pm.normpath(logs))


def lock_path(state_dir: str, config_file: str, flavour: OSFamily | None = None) -> str:
    f = flavour or current_os()
    return str(f.pathmod.join(state_dir, config_tag(config_file, f) + ".lock"))


class InstanceLock:
    """One agent per configuration: an exclusive OS lock on a file in the state dir, held for
    the agent's lifetime and released by the OS when the process dies (kill -9 included), so
    a stale file never blocks a restart. The file holds the holder's pid for the message.

    POSIX: ``flock`` on the whole file. Windows: ``msvcrt.locking`` of one byte past the text
    (a locked range cannot be read, and the pid must stay readable). The descriptor is not
    inherited by child processes (Python's default), so a hook cannot keep the lock alive."""

    _LOCK_OFFSET = 1 << 20  # Windows: the byte locked, far past the JSON text

    def __init__(self, path: str, config_file: str) -> None:
        self.path = path
        self.config_file = config_file
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> InstanceLock:
        if self._fd is not None:
            return self
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise InstanceLockError(f"cannot create the lock file {shown(self.path)}: {exc.strerror or exc}; "
                                    "give this user write access to the state dir, or set state_dir") from None
        try:
            taken = _lock_fd(fd, self._LOCK_OFFSET)
        except OSError as exc:
            os.close(fd)
            raise InstanceLockError(f"cannot lock {shown(self.path)}: {exc.strerror or exc}; put state_dir on a "
                                    "local disk (this file system does not support locks)") from None
        if not taken:
            os.close(fd)
            pid = self.holder()
            who = f"pid {pid}" if pid is not None else "a process that has not written its pid yet"
            raise InstanceLockedError(
                f"another watcher ({who}) already runs the configuration {shown(self.config_file)}: stop it first "
                f"(`watcher status` shows it), or give this one its own configuration (lock {shown(self.path)})",
                pid=pid) from None
        text = json.dumps({"pid": os.getpid(), "config": self.config_file, "since": time.time()}).encode()
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, text + b"\n")
        self._fd = fd
        return self

    def holder(self) -> int | None:
        """The pid the lock file names (the holder's, while the lock is held)."""
        try:
            with open(self.path, "rb") as fh:
                data = json.loads(fh.read(4096).split(b"\n", 1)[0] or b"{}")
        except (OSError, ValueError):
            return None
        pid = data.get("pid") if isinstance(data, dict) else None
        return pid if isinstance(pid, int) else None

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            _unlock_fd(fd, self._LOCK_OFFSET)
        finally:
            os.close(fd)  # the file stays: deleting it would let a third process lock a new inode

    def __enter__(self) -> InstanceLock:
        return self.acquire()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.release()


def _lock_fd(fd: int, offset: int) -> bool:
    """Take the lock at once (True), or say another process holds it (False): never wait, the
    caller reports the holder. Other failures (no lock support) raise OSError."""
    if sys.platform == "win32":
        import msvcrt
        os.lseek(fd, offset, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EDEADLK):  # the CRT's "locked by another process"
                return False
            raise
        return True
    import fcntl
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _unlock_fd(fd: int, offset: int) -> None:
    if sys.platform == "win32":
        import msvcrt
        os.lseek(fd, offset, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
    else:
        import fcntl
        fcntl.flock(fd, fcntl.LOCK_UN)


# ---- 4. junk names and the Windows name lint ---------------------------------------------------

# Files the OS shells and office tools leave beside real work (matched on the name, any case).
JUNK_GLOBS: tuple[str, ...] = (
    "*.TMP", "~$*", "~*.tmp", "Thumbs.db", "ehthumbs.db", "desktop.ini", ".DS_Store", "._*", "Icon\r",
    ".apdisk", ".localized",
)
# Folders of the same kind, never descended into.
JUNK_DIRS: tuple[str, ...] = (
    "$RECYCLE.BIN", "System Volume Information", ".Trashes", ".Spotlight-V100", ".fseventsd",
    ".TemporaryItems", ".DocumentRevisions-V100", "Network Trash Folder", "Temporary Items",
)
_JUNK_RE = re.compile("|".join(fnmatch.translate(g) for g in JUNK_GLOBS), re.IGNORECASE | re.DOTALL)
_JUNK_DIRS_FOLDED = frozenset(d.casefold() for d in JUNK_DIRS)


def is_junk(name: str) -> bool:
    """A file name from ``JUNK_GLOBS`` (``THUMBS.DB``, ``~$shot.docx``, ``._plate.exr``...)."""
    return _JUNK_RE.match(name) is not None


def is_junk_dir(name: str) -> bool:
    return name.casefold() in _JUNK_DIRS_FOLDED


MAX_WINDOWS_PATH = 259  # MAX_PATH (260) less the terminating NUL, without long-path support
WINDOWS_ILLEGAL = '<>:"|?*\\'
_RESERVED = frozenset({"CON", "PRN", "AUX", "NUL"} | {f"{p}{d}" for p in ("COM", "LPT") for d in "123456789¹²³"})


def windows_name_problems(name: str) -> list[str]:
    """Why one file or folder name cannot exist on Windows (empty when it can)."""
    out = []
    bad = sorted({c for c in name if c in WINDOWS_ILLEGAL or ord(c) < 32})
    if bad:
        out.append(f"{name!r} holds {', '.join(repr(c) for c in bad)}, which Windows forbids in names")
    if _reserved(name):
        out.append(f"{name!r} is a reserved device name on Windows")
    if name.endswith((".", " ")) and name not in (".", ".."):
        out.append(f"{name!r} ends with a dot or a space, which Windows drops")
    return out


def _reserved(name: str) -> bool:
    """``CON``, ``nul.txt``, ``COM1 .exr``: Windows opens the device instead of the file."""
    return name.split(".", 1)[0].rstrip(" ").upper() in _RESERVED


def windows_path_problems(rel: str, root: str | None = None) -> list[str]:
    """Why a path (POSIX, relative to ``root``, the root's Windows spelling) cannot be written
    on Windows: a bad name, or more than 259 characters in all."""
    out = [p for name in rel.split("/") if name for p in windows_name_problems(name)]
    total = (len(root.rstrip("\\/")) + 1 if root else 0) + len(rel)
    if total > MAX_WINDOWS_PATH:
        out.append(f"{total} characters{' with the root' if root else ''}, over Windows' limit of "
                   f"{MAX_WINDOWS_PATH} (without long-path support)")
    return out


@dataclass(frozen=True)
class LintProblem:
    template: str
    problem: str

    def __str__(self) -> str:
        return f"template {self.template!r}: {self.problem}"


def lint_template(template: str, definition: str, windows_root: str | None = None) -> list[LintProblem]:
    """Problems a Windows machine would have with the paths a ``paths:`` template describes:
    forbidden characters or a reserved name in its literal text, a folder or file ending in a
    dot or space, and, with the root's Windows spelling, a path that is over 259 characters
    even with every key one character long. Keys themselves are not judged (their values
    are not known here)."""
    try:
        longest = expand_sections(definition)[0]  # every optional section in: all the literal text
    except DefinitionError:
        return []  # the loader reports malformed brackets itself
    found: dict[str, None] = {}
    for seg in longest.split("/"):
        literal = KEY_REF_RE.sub("", seg)
        bad = sorted({c for c in literal if c in WINDOWS_ILLEGAL or ord(c) < 32})
        if bad:
            hint = " (write folders with /)" if "\\" in bad else ""
            found.setdefault(f"{seg!r} holds {', '.join(repr(c) for c in bad)}, which Windows forbids in names{hint}")
        head = seg.split(".", 1)[0]
        if head and not KEY_REF_RE.search(head) and _reserved(seg):
            found.setdefault(f"{seg!r} is a reserved device name on Windows")
        if seg.endswith((".", " ")):  # a key at the end is not judged: the segment ends with "}"
            found.setdefault(f"{seg!r} ends with a dot or a space, which Windows drops")
    total = (len(windows_root.rstrip("\\/")) + 1 if windows_root else 0) + len(KEY_REF_RE.sub("x", longest))
    if total > MAX_WINDOWS_PATH:
        found.setdefault(f"its paths are at least {total} characters{' with the root' if windows_root else ''} "
                         f"(every key one character long), over Windows' limit of {MAX_WINDOWS_PATH}")
    return [LintProblem(template, p) for p in found]


# ---- 5. tracker paths per OS -------------------------------------------------------------------

SHOTGRID_FIELDS: Mapping[OSFamily, str] = {
    OSFamily.LINUX: "linux_path", OSFamily.DARWIN: "mac_path", OSFamily.WINDOWS: "windows_path"}


def render_path(base: str, rel: str, flavour: OSFamily) -> str:
    """``rel`` (POSIX) under ``base`` in an OS's syntax, without touching the disk: what that
    OS's users see (``P:\\shows\\sq01\\a.exr``, ``/Volumes/shows/sq01/a.exr``)."""
    names = [nfc(s) for s in rel.split("/") if s]
    if flavour is OSFamily.WINDOWS:
        return str(PureWindowsPath(_win_plain(base), *names))
    return str(PurePosixPath(base, *names))


@dataclass(frozen=True)
class ShotGridPath:
    """A PublishedFile's ``path``: ``relative_path`` to the LocalStorage (POSIX, NFC, what is
    sent), and the file as each OS with a storage path sees it (to show and to check)."""

    relative_path: str
    local_paths: Mapping[OSFamily, str]


def _ci(flavour: OSFamily, case_insensitive: bool | None) -> bool:
    return flavour.case_insensitive_default if case_insensitive is None else case_insensitive


def shotgrid_path(storage: Mapping[str, Any], path: str, flavour: OSFamily | None = None, *,
                  case_insensitive: bool | None = None) -> ShotGridPath | None:
    """``path`` (this OS's absolute spelling) as ``{relative_path, local_storage}`` for a
    LocalStorage record (``linux_path``/``mac_path``/``windows_path``); None when the storage
    has no path for this OS or does not hold the file."""
    f = flavour or current_os()
    base = storage.get(SHOTGRID_FIELDS[f])
    if not base:
        return None
    rel = RootPath.of(str(base), f, case_insensitive=_ci(f, case_insensitive)).relative(path)
    if rel is None:
        return None
    local = {fam: render_path(str(storage[fld]), rel, fam) for fam, fld in SHOTGRID_FIELDS.items() if storage.get(fld)}
    return ShotGridPath(relative_path=rel, local_paths=local)


def shotgrid_storage_for(storages: Iterable[Mapping[str, Any]], root_name: str, root: OSPaths,
                         flavour: OSFamily | None = None, *,
                         case_insensitive: bool | None = None) -> Mapping[str, Any] | None:
    """The LocalStorage holding a root: its path for this OS is the root's spelling here or a
    parent of it (the deepest wins; among equals the last, the newest), and on every other OS
    where both have a path, the root sits at the same place below the storage. A storage that
    holds the root here but not there is an error: the other OSes' artists would be sent to
    the wrong folder. ``case_insensitive=True`` compares as Toolkit does (on every OS)."""
    f = flavour or current_os()
    here = root.get(f)
    if here is None:
        return None
    best: tuple[int, str, Mapping[str, Any]] | None = None
    for s in storages:
        base = s.get(SHOTGRID_FIELDS[f])
        if not base:
            continue
        st = RootPath.of(str(base), f, case_insensitive=_ci(f, case_insensitive))
        rel_here = _at_or_below(st, here)
        if rel_here is not None and (best is None or len(st._keys) >= best[0]):
            best = (len(st._keys), rel_here, s)
    if best is None:
        return None
    _, rel_here, storage = best
    for other in OSFamily:
        theirs, spath = root.by_os.get(other), storage.get(SHOTGRID_FIELDS[other])
        if other is f or not theirs or not spath:
            continue
        rel_there = _at_or_below(RootPath.of(str(spath), other, case_insensitive=_ci(other, case_insensitive)), theirs)
        if rel_there is None or rel_there.casefold() != rel_here.casefold():
            raise PathMappingError(
                f"LocalStorage {storage.get('code')!r} holds root {root_name!r} ({shown(here)}) on {f.value}, but its "
                f"{SHOTGRID_FIELDS[other]} {shown(str(spath))} does not hold the root's {other.value} path "
                f"{shown(theirs)} at the same place; fix one of them so every OS points at the same folder")
    return storage


def _at_or_below(root: RootPath, path: str) -> str | None:
    """``root.relative(path)``, or "" for the root itself."""
    rel = root.relative(path)
    if rel is not None:
        return rel
    return "" if root.same(path) else None


def ftrack_identifier(prefix: str, path: str, flavour: OSFamily | None = None, *,
                      case_insensitive: bool | None = None) -> str:
    """A resource identifier relative to a location's disk prefix for this OS (POSIX, NFC):
    the same identifier on every OS, each OS joining it to its own prefix."""
    f = flavour or current_os()
    rel = RootPath.of(prefix, f, case_insensitive=_ci(f, case_insensitive)).relative(path)
    if rel is None:
        raise PathMappingError(f"{shown(path)} is not under the ftrack location prefix {shown(prefix)} for "
                               f"{f.value}; set the location's {f.value} prefix to a folder that holds the root")
    return rel


def ftrack_path(prefix: str, identifier: str, flavour: OSFamily | None = None) -> str:
    """The file an identifier names on an OS (the inverse of ``ftrack_identifier``)."""
    return render_path(prefix, identifier, flavour or current_os())


def kitsu_path(mount_point: str, rel: str) -> str:
    """A Kitsu output file's ``path``: the studio's mount point and the root-relative POSIX
    path, one value whichever OS published it."""
    if not rel or rel.startswith("/") or ".." in rel.split("/"):
        raise PathMappingError(f"{shown(rel)} is not a relative path below a root")
    base = mount_point.replace("\\", "/").rstrip("/")
    return nfc(f"{base}/{rel}")


__all__ = [
    "APP_NAME", "OSFamily", "current_os", "RootPathError", "PathMappingError", "InstanceLockError",
    "InstanceLockedError", "RootPath", "relative", "join", "probe_case_insensitive", "OS_KEYS", "OSPaths",
    "parse_os_paths", "root_spelling", "FsKind", "Filesystem", "LINUX_NETWORK_FS", "DARWIN_NETWORK_FS",
    "linux_filesystem", "darwin_filesystem", "windows_filesystem", "filesystem_of", "is_network_fs", "MountState",
    "MountCheck", "check_mount", "platform_dirs", "config_tag", "AgentDirs", "agent_dirs", "lock_path", "InstanceLock",
    "JUNK_GLOBS", "JUNK_DIRS", "is_junk", "is_junk_dir", "MAX_WINDOWS_PATH", "windows_name_problems",
    "windows_path_problems", "LintProblem", "lint_template", "SHOTGRID_FIELDS", "render_path", "ShotGridPath",
    "shotgrid_path", "shotgrid_storage_for", "ftrack_identifier", "ftrack_path", "kitsu_path",
]
