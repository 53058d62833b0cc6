"""What never becomes a candidate: hidden files, temp and partial names that editors, copy
tools and renderers leave while writing, what the OS shells and office tools leave beside real
work (``Thumbs.db``, ``~$shot.docx``, ``$RECYCLE.BIN``: ``paths.is_junk``, any case), per-root
globs, and anything whose real location is outside its root (symlinks, ``..``)."""
from __future__ import annotations

import fnmatch
import os
import re

from .paths import RootPath, RootPathError, is_junk, is_junk_dir

# Names writers use while a file is incomplete. A save that writes one of these and renames it
# into place is published once, under its final name (the rename arrives as a move).
TEMP_GLOBS = (
    "*.tmp", "*.temp", "*.part", "*.partial", "*.filepart", "*~", "*.crdownload", "*.swp", "*.swx",
    "#*#", ".nfs*", ".~lock.*", "*.lock", "*.lck",
)
_TEMP_RE = re.compile("|".join(fnmatch.translate(g) for g in TEMP_GLOBS))
COOKIE_PREFIX = ".watcher-cookie-"


class Ignorer:
    """``ignored(relpath)`` answers for a path relative to its root (POSIX separators). On a
    case-insensitive volume (NTFS, APFS, SMB shares) the root's globs ignore case as its names
    do: ``*.bak`` also ignores ``PLATE.BAK``."""

    def __init__(self, globs: list[str] | tuple[str, ...] = (), *, case_insensitive: bool = False) -> None:
        self.globs = tuple(globs)
        self.case_insensitive = case_insensitive
        flags = re.IGNORECASE if case_insensitive else 0
        self._user = re.compile("|".join(_glob_re(g) for g in globs), flags) if globs else None

    def ignored(self, relpath: str) -> bool:
        head, _, name = relpath.rpartition("/")
        # Hidden anywhere in the path: covers rsync's ".name.XXXXXX", ".nfs*", ".DS_Store", cookies.
        if name.startswith(".") or "/." in relpath or relpath.startswith("."):
            return True
        if _TEMP_RE.match(name) or is_junk(name):
            return True
        if head and any(is_junk_dir(d) for d in head.split("/")):  # an event from inside $RECYCLE.BIN
            return True
        return bool(self._user and self._user.match(relpath))

    def ignored_dir(self, reldir: str) -> bool:
        """Directories not to descend into while scanning."""
        name = reldir.rsplit("/", 1)[-1]
        return name.startswith(".") or is_junk_dir(name) or bool(self._user and self._user.match(reldir + "/"))


def _glob_re(glob: str) -> str:
    """Globs on the relative path: ``*`` stays within a segment, ``**`` crosses them, a glob
    without ``/`` matches the file name at any depth, a trailing ``/`` matches a directory."""
    g = glob.strip()
    anchored = "/" in g.rstrip("/")
    out = ""
    i = 0
    while i < len(g):
        c = g[i]
        if g.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
            continue
        if g.startswith("**", i):
            out += ".*"
            i += 2
            continue
        out += {"*": "[^/]*", "?": "[^/]"}.get(c, re.escape(c))
        i += 1
    if g.endswith("/"):
        out += ".*"
    return ("" if anchored else "(?:.*/)?") + out + r"\Z"


def inside(root_real: str, path: str) -> bool:
    """True when ``path`` (following every symlink) lies inside ``root_real``: separator- and
    drive-aware (``P:\\`` holds ``P:\\a``; ``/mnt/shows`` does not hold ``/mnt/shows2``), case
    ignored where this OS's volumes ignore it."""
    real = os.path.realpath(path)
    if real == root_real:
        return True
    try:
        root = RootPath.of(root_real)
    except RootPathError:
        return False
    return root.same(real) or root.contains(real)
