"""What never becomes a candidate: hidden files, temp and partial names that editors, copy
tools and renderers leave while writing, per-root globs, and anything whose real location is
outside its root (symlinks, ``..``)."""
from __future__ import annotations

import fnmatch
import os
import re

# Names writers use while a file is incomplete. A save that writes one of these and renames it
# into place is published once, under its final name (the rename arrives as a move).
TEMP_GLOBS = (
    "*.tmp", "*.temp", "*.part", "*.partial", "*.filepart", "*~", "*.crdownload", "*.swp", "*.swx",
    "#*#", ".nfs*", ".~lock.*", "*.lock", "*.lck",
)
_TEMP_RE = re.compile("|".join(fnmatch.translate(g) for g in TEMP_GLOBS))
COOKIE_PREFIX = ".watcher-cookie-"


class Ignorer:
    """``ignored(relpath)`` answers for a path relative to its root (POSIX separators)."""

    def __init__(self, globs: list[str] | tuple[str, ...] = ()) -> None:
        self.globs = tuple(globs)
        self._user = re.compile("|".join(_glob_re(g) for g in globs)) if globs else None

    def ignored(self, relpath: str) -> bool:
        name = relpath.rsplit("/", 1)[-1]
        # Hidden anywhere in the path: covers rsync's ".name.XXXXXX", ".nfs*", ".DS_Store", cookies.
        if name.startswith(".") or "/." in relpath or relpath.startswith("."):
            return True
        if _TEMP_RE.match(name):
            return True
        return bool(self._user and self._user.match(relpath))

    def ignored_dir(self, reldir: str) -> bool:
        """Directories not to descend into while scanning."""
        name = reldir.rsplit("/", 1)[-1]
        return name.startswith(".") or bool(self._user and self._user.match(reldir + "/"))


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
    """True when ``path`` (following every symlink) lies inside ``root_real``."""
    real = os.path.realpath(path)
    return real == root_real or real.startswith(root_real.rstrip("/") + "/")
