"""Files that matched no template, or that the ignore rules skipped, kept in the journal with
their reason so that the I/O desk and `watcher unmatched` can say which files and why.

A dropped file that matches nothing leaves no INFO line; this is where it is found. The list is
per file, not per event (a file's ten events make one entry), bounded per root (the oldest
entries are dropped and counted), and cheap on the pipeline's hot path: the reason (closest
template, where matching stopped) is worked out only when an entry is new to this run or its
root's templates changed, and writes are batched into one transaction per ``flush()``. A name
that is not UTF-8 is stored escaped (``names.stored``: nothing else can hold it).

``UnmatchedLog`` belongs to the pipeline thread (no locks); the read functions below are for
anyone holding a ``Database``."""
from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Collection

from .journal.ledger import Cursor, Database
from .names import stored

DEFAULT_LIMIT = 10_000  # entries kept per root
Reason = Callable[[], "tuple[str | None, str]"]


@dataclass(frozen=True)
class Entry:
    """One unmatched or ignored file as `watcher unmatched --json` shows it."""

    root: str
    path: str
    arrived_at: float  # when this file was first noted
    updated_at: float  # when its reason was last worked out
    closest: str | None  # the closest template, when there is one
    reason: str  # where matching stopped (the words of `watcher explain`), or "ignored: ..."

    @property
    def ignored(self) -> bool:
        return self.reason.startswith("ignored")

    def to_json(self) -> dict[str, Any]:
        from .journal.base import _iso

        return {"root": self.root, "path": self.path, "arrived_at": _iso(self.arrived_at),
                "closest": self.closest, "reason": self.reason, "ignored": self.ignored,
                "updated_at": _iso(self.updated_at)}


class UnmatchedLog:
    """The pipeline's record of files that became no candidate.

    ``note`` per file event (cheap when the file is already listed), ``forget`` when a file
    vanishes or now matches, ``flush`` after each batch. ``templates_changed(root)`` makes the
    next ``note`` of each of that root's files work its reason out again (after a reload)."""

    def __init__(self, db: Database, *, roots: Collection[str] | None = None, limit: int = DEFAULT_LIMIT,
                 clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.limit = limit
        self._clock = clock
        # path -> root for every entry of this agent's roots (agents sharing a PostgreSQL journal
        # watch other roots: theirs are left alone), so that forget() on a file that was never
        # listed costs a dict lookup, not a DELETE.
        mine = None if roots is None else set(roots)
        self._known: dict[str, str] = {p: r for p, r in db.read(
            lambda c: c.execute("SELECT path, root FROM unmatched").fetchall()) if mine is None or r in mine}
        self._counts: Counter[str] = Counter(self._known.values())  # root -> entries (read by other threads)
        self._fresh: set[str] = set()  # entries whose reason was worked out by this run
        self._upserts: dict[str, tuple[str, float, str | None, str]] = {}  # path -> (root, at, closest, reason)
        self._deletes: set[str] = set()
        self._dir_deletes: list[str] = []
        self._pruned = False

    # -- the pipeline thread -----------------------------------------------------------------
    def note(self, root: str, path: str, reason: Reason) -> None:
        """``path`` of ``root`` became no candidate; ``reason()`` -> (closest template or None,
        why) is called only if the entry is new to this run or its templates changed."""
        if path in self._fresh and self._known.get(path) == root:
            return
        closest, why = reason()
        old = self._known.get(path)
        if old != root:
            if old is not None:
                self._counts[old] -= 1
            self._counts[root] += 1
        self._known[path] = root
        self._fresh.add(path)
        self._deletes.discard(path)
        self._upserts[path] = (root, self._clock(), closest, why)

    def forget(self, path: str) -> None:
        """The file vanished, or it matches now."""
        root = self._known.pop(path, None)
        if root is None and path not in self._upserts:
            return
        if root is not None:
            self._counts[root] -= 1
        self._fresh.discard(path)
        self._upserts.pop(path, None)
        self._deletes.add(path)

    def forget_under(self, directory: str) -> None:
        """A directory vanished or moved away: forget every entry below it."""
        prefix = directory.rstrip("/") + "/"
        gone = [p for p in self._known if p.startswith(prefix)]
        if not gone:
            return
        for p in gone:
            self._counts[self._known.pop(p)] -= 1
            self._fresh.discard(p)
            self._upserts.pop(p, None)
            self._deletes.discard(p)
        self._dir_deletes.append(prefix)

    def templates_changed(self, root: str | None = None) -> None:
        """Templates were reloaded: work out the reasons of ``root``'s entries (all roots when
        None) again at their next ``note``."""
        self._fresh = {p for p in self._fresh if root is not None and self._known.get(p) != root}

    def count(self, root: str) -> int:
        """Files of ``root`` listed now (for the status file: counted per file, not per event).
        Safe to call from another thread (the supervisor's status writer)."""
        return self._counts.get(root, 0)

    def flush(self) -> None:
        """Write what changed since the last flush in one transaction, then keep each root
        within ``limit`` (dropping the oldest entries and counting them). The first flush also
        forgets entries of files that vanished while no agent was watching."""
        if not self._pruned:
            self._pruned = True
            for p in [p for p in self._known if p not in self._fresh and not os.path.lexists(p)]:
                self.forget(p)
        if not (self._upserts or self._deletes or self._dir_deletes):
            return
        upserts, deletes, dirs = self._upserts, self._deletes, self._dir_deletes
        self._upserts, self._deletes, self._dir_deletes = {}, set(), []
        roots = {u[0] for u in upserts.values()}

        def run(c: Cursor) -> list[str]:
            for prefix in map(stored, dirs):  # '/' + 1 is '0': the range is exactly the paths below prefix
                c.execute("DELETE FROM unmatched WHERE path >= ? AND path < ?", (prefix, prefix[:-1] + "0"))
            if deletes:
                c.executemany("DELETE FROM unmatched WHERE path=?", sorted((stored(p),) for p in deletes))
            if upserts:
                c.executemany(
                    "INSERT INTO unmatched (path, root, arrived_at, updated_at, closest, reason) VALUES (?,?,?,?,?,?) "
                    "ON CONFLICT (path) DO UPDATE SET root=excluded.root, updated_at=excluded.updated_at, "
                    "closest=excluded.closest, reason=excluded.reason",
                    sorted(((stored(p), r, at, at, closest, stored(why))
                            for p, (r, at, closest, why) in upserts.items()), key=lambda row: row[0]))
            dropped: list[str] = []
            for root in sorted(roots):
                n = c.execute("SELECT COUNT(*) FROM unmatched WHERE root=?", (root,)).fetchone()[0]
                if n <= self.limit:
                    continue
                old = [r[0] for r in c.execute("SELECT path FROM unmatched WHERE root=? ORDER BY arrived_at, path "
                                               "LIMIT ?", (root, n - self.limit)).fetchall()]
                c.executemany("DELETE FROM unmatched WHERE path=?", [(p,) for p in old])
                c.execute("INSERT INTO unmatched_dropped (root, dropped, last_at) VALUES (?,?,?) "
                          "ON CONFLICT (root) DO UPDATE SET dropped=unmatched_dropped.dropped+excluded.dropped, "
                          "last_at=excluded.last_at", (root, len(old), self._clock()))
                dropped += old
            return dropped

        try:
            dropped = self.db.write(run)
        except Exception:
            # keep what was not written, for the next flush (a journal hiccup loses no entry)
            for p, u in upserts.items():
                self._upserts.setdefault(p, u)
            self._deletes |= deletes - set(self._upserts)
            self._dir_deletes = dirs + self._dir_deletes
            raise
        for p in dropped:
            root = self._known.pop(p, None)
            if root is not None:
                self._counts[root] -= 1
            self._fresh.discard(p)


# -- reads (the desk, the CLI) ---------------------------------------------------------------
def entries(db: Database, *, root: str | None = None, since: float | None = None, search: str | None = None,
            limit: int | None = None) -> list[Entry]:
    """Listed files, newest arrival first; ``since`` is a timestamp, ``search`` a case-insensitive
    substring of the path or the reason."""
    sql = "SELECT root, path, arrived_at, updated_at, closest, reason FROM unmatched"
    args: list[Any] = []
    cond: list[str] = []
    if root is not None:
        cond.append("root=?")
        args.append(root)
    if since is not None:
        cond.append("arrived_at>=?")
        args.append(since)
    if search:
        esc = search.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        cond.append("(LOWER(path) LIKE ? ESCAPE '\\' OR LOWER(reason) LIKE ? ESCAPE '\\')")
        args += [f"%{esc}%"] * 2
    if cond:
        sql += " WHERE " + " AND ".join(cond)
    sql += " ORDER BY arrived_at DESC, path"
    if limit:
        sql += f" LIMIT {int(limit)}"
    return db.read(lambda c: [Entry(*r) for r in c.execute(sql, args).fetchall()])


def summary(db: Database) -> dict[str, dict[str, int]]:
    """root -> {"files": listed now, "ignored": of which ignored, "dropped": dropped to stay bounded}."""
    def run(c: Cursor) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for root, n, ign in c.execute("SELECT root, COUNT(*), SUM(CASE WHEN reason LIKE 'ignored%' THEN 1 ELSE 0 END) "
                                      "FROM unmatched GROUP BY root").fetchall():
            out[root] = {"files": int(n), "ignored": int(ign or 0), "dropped": 0}
        for root, dropped in c.execute("SELECT root, dropped FROM unmatched_dropped").fetchall():
            out.setdefault(root, {"files": 0, "ignored": 0, "dropped": 0})["dropped"] = int(dropped)
        return out

    return db.read(run)


__all__ = ["Entry", "UnmatchedLog", "entries", "summary", "DEFAULT_LIMIT"]
