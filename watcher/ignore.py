"""What never becomes a candidate: hidden files, temp and partial names that editors, copy
tools and renderers leave while writing, what the OS shells and office tools leave beside real
work (``Thumbs.db``, ``~$shot.docx``, ``$RECYCLE.BIN``: ``paths.is_junk``, any case), per-root
globs, and anything whose real location is outside its root (symlinks, ``..``)."""
from __future__ import annotations

import fnmatch
import os
import re

import pathspec

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
    """``ignored(relpath)`` answers for a path relative to its root (POSIX separators). The
    root's globs are gitignore patterns (``pathspec``): a pattern without ``/`` matches a name at
    any depth, one with ``/`` is anchored at the root, ``**`` crosses folders, a trailing ``/``
    matches a folder and everything in it, ``!`` takes a path back. On a case-insensitive
    volume (NTFS, APFS, SMB shares) they ignore case as its names do: ``*.bak`` also ignores
    ``PLATE.BAK``."""

    def __init__(self, globs: list[str] | tuple[str, ...] = (), *, case_insensitive: bool = False) -> None:
        self.globs = tuple(globs)
        self.case_insensitive = case_insensitive
        lines = [g.strip() for g in globs if g.strip()]
        if case_insensitive:
            lines = [g.lower() for g in lines]
        self._user = pathspec.GitIgnoreSpec.from_lines(lines) if lines else None

    def _matches(self, relpath: str) -> bool:
        if self._user is None:
            return False
        return self._user.match_file(relpath.lower() if self.case_insensitive else relpath)

    def ignored(self, relpath: str) -> bool:
        head, _, name = relpath.rpartition("/")
        # Hidden anywhere in the path: covers rsync's ".name.XXXXXX", ".nfs*", ".DS_Store", cookies.
        if name.startswith(".") or "/." in relpath or relpath.startswith("."):
            return True
        if _TEMP_RE.match(name) or is_junk(name):
            return True
        if head and any(is_junk_dir(d) for d in head.split("/")):  # an event from inside $RECYCLE.BIN
            return True
        return self._matches(relpath)

    def ignored_dir(self, reldir: str) -> bool:
        """Directories not to descend into while scanning."""
        name = reldir.rsplit("/", 1)[-1]
        return name.startswith(".") or is_junk_dir(name) or self._matches(reldir + "/")


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
