"""The watched roots as the running agent knows them: configuration, templates, ignore rules and
health. ``RootRuntime.admit`` is the one admission check that `watcher run`, `scan --dry-run`
and `explain` share: nothing that fails it is ever published."""
from __future__ import annotations

import logging
import os
import stat as stat_mod
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any, Callable

from cachetools import LRUCache

from .candidate import RootScope, Windows
from .completion import Signals
from .config import RootSettings, Settings, resolve_observer
from .errors import JournalError
from .ignore import Ignorer, inside
from .match import TemplateSet, load_templates
from .match.keys import PLACEHOLDER_NOTE
from .model import Entity
from .names import decodable, nfc
from .paths import OSFamily, RootPath, current_os, lint_template

log = logging.getLogger("watcher")


class Refusal(Enum):
    """Why a path never becomes a candidate (the words `explain` and `watcher unmatched` show)."""

    IGNORED = ("ignored: a hidden, temporary or partial name, a file the OS leaves (Thumbs.db, desktop.ini, "
               "~$ office locks), or a root `ignore` glob")
    ESCAPES = "a symlink resolving outside the root: never published"
    SYMLINK = "a symbolic link: never published itself (its target, when in a root, publishes under its own name)"
    NOT_A_FILE = "gone (deleted or moved away), or not a file"
    NOT_REGULAR = "not a regular file (a directory, FIFO, device or socket): never opened, never published"
    NOT_UTF8 = ("its name is not valid UTF-8, so it cannot be stored or sent to a tracker: never published; "
                "rename it (e.g. `convmv -f latin1 -t utf8`)")
    PLACEHOLDER = PLACEHOLDER_NOTE
    SPELLING = ("the same name as another file or folder in another Unicode spelling (composed NFC / decomposed "
                "NFD), which is published under it: not published twice; rename or remove one of the two")

    @property
    def listed(self) -> bool:
        """Shown in `watcher unmatched` (a file someone should look at, not one that went away)."""
        return self in _LISTED


_LISTED = frozenset({Refusal.IGNORED, Refusal.NOT_REGULAR, Refusal.NOT_UTF8, Refusal.PLACEHOLDER})


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words (``explain``)."""
    for test, what in ((stat_mod.S_ISDIR, "a directory"), (stat_mod.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat_mod.S_ISCHR, "a character device"), (stat_mod.S_ISBLK, "a block device"),
                       (stat_mod.S_ISSOCK, "a socket"), (stat_mod.S_ISLNK, "a symbolic link")):
        if test(mode):
            return what
    return "not a regular file"


def spellings(published: str, path: str) -> str:
    """Which of two paths that look alike is spelled how (``Refusal.SPELLING``'s detail)."""
    def form(p: str) -> str:
        return "composed, NFC" if nfc(p) == p else "decomposed, NFD"

    return f"published as {published} ({form(published)}); this one is {form(path)}"


@dataclass
class RootRuntime:
    """One root. Its health (``observer``, ``up``, rescans) is the supervisor's to change."""

    cfg: RootSettings
    templates: TemplateSet
    ignorer: Ignorer
    scope: RootScope
    windows: Windows
    path: str
    real: str
    # the configured spelling on this OS (never resolved: P:\\ stays P:\\) and how its volume
    # compares names (case probed when the roots load)
    root: RootPath
    signals: Signals = field(default_factory=Signals)  # the root's defaults; rules may override
    observer: Any = None
    up: bool = True
    rescans: int = 0
    last_rescan_reason: str | None = None
    escaped: set[str] = field(default_factory=set)
    _completion: dict[str, tuple[Windows, Signals]] = field(default_factory=dict, repr=False)
    # candidate key -> the spelling on disk its publish has (pipeline thread only; see other_spelling)
    _spellings: LRUCache = field(default_factory=lambda: LRUCache(maxsize=20_000), repr=False)
    # (folder, reason) refusals said at WARNING (pipeline thread only; see refused)
    _said: LRUCache = field(default_factory=lambda: LRUCache(maxsize=10_000), repr=False)

    @property
    def name(self) -> str:
        return self.cfg.name

    def completion_for(self, template: str) -> tuple[Windows, Signals]:
        """The windows and signals of a template's candidates: its publishes rule's options over
        the root's. Worked out once per template."""
        hit = self._completion.get(template)
        if hit is None:
            rule = self.templates.publish_rule(template)
            c = rule.completion if rule is not None else None
            if c is None:
                hit = (self.windows, self.signals)
            else:
                w, g = self.windows, self.signals
                settle = w.settle if c.settle_seconds is None else c.settle_seconds
                w = replace(w, settle=settle, open_timeout=max(w.open_timeout, 6 * settle),
                            sequence=w.sequence if c.sequence_settle_seconds is None else c.sequence_settle_seconds,
                            first_frame_wait=w.first_frame_wait if c.first_frame_wait is None else c.first_frame_wait,
                            pace_factor=w.pace_factor if c.pace_factor is None else c.pace_factor,
                            max_wait=w.max_wait if c.max_wait is None else c.max_wait)
                g = replace(g, expect_frames=c.expect_frames or g.expect_frames,
                            done_marker=c.done_marker or g.done_marker, holes=c.holes or g.holes,
                            max_wait=w.max_wait, amend_window=g.amend_window if c.amend_window is None
                            else c.amend_window)
                hit = (w, g)
            self._completion[template] = hit
        return hit

    def relative(self, path: str) -> str | None:
        """The path relative to the root with ``/`` separators, or None when it is not below it.
        Whether it is below follows the volume's rules (``\\`` and ``/``, drive and share roots,
        case on a case-insensitive volume, NFC against NFD); the names keep the spelling the
        event or scan gave, so a normalisation-sensitive volume (Linux) is asked for the file it
        holds (keys compare in NFC: ``match``, ``other_spelling``)."""
        return self.root.relative(path, normalise=False)

    def admit(self, rel: str, path: str) -> os.stat_result | Refusal:
        """The stat of a file that may become a candidate, or why not: ignored names, names that
        are not UTF-8 (nothing downstream can store or send them), anything gone or not a regular
        file (an ``lstat``: a FIFO or device is never opened), and symlinks (those resolving
        outside the root are warned about once). A link is never published itself: its target,
        when it is in a root, is published under its own name, and the backends read only what
        they were given (they never follow a link)."""
        if self.ignorer.ignored(rel):
            return Refusal.IGNORED
        if not decodable(rel):
            return Refusal.NOT_UTF8
        try:
            st = os.lstat(path)
            if stat_mod.S_ISLNK(st.st_mode):
                if not inside(self.real, path):
                    if path not in self.escaped:
                        self.escaped.add(path)
                        log.warning("%s: symlink to %s, outside root %s; never published", path,
                                    os.path.realpath(path), self.name)
                    return Refusal.ESCAPES
                return Refusal.SYMLINK
        except OSError:
            return Refusal.NOT_A_FILE
        return st if stat_mod.S_ISREG(st.st_mode) else Refusal.NOT_REGULAR

    def refused(self, path: str, why: Refusal, detail: str = "") -> tuple[None, str]:
        """The entry `watcher unmatched` lists for a refused file (no closest template, the
        reason), called once per file and run by ``UnmatchedLog.note``. Said in the log too when
        someone must act on it: at WARNING for the first file of a folder, at INFO for the next
        (a folder of a thousand frames is one warning). The log's formatters escape the names
        (control characters, bytes that are not UTF-8)."""
        reason = why.value + (f" ({detail})" if detail else "")
        if why is not Refusal.IGNORED:
            self._say(path, why, reason)
        return None, reason

    def unmatched_nfd(self, path: str, miss: Any) -> tuple[str | None, str]:
        """The entry of a decomposed (NFD) name that matches no template even composed (a key's
        check refused it), said in the log too (as ``refused``): such names come from copies off a
        Mac, and are easy to miss when they are only listed."""
        self._say(path, None, f"decomposed (NFD) Unicode name, matched as composed (NFC), matches no template: "
                              f"{miss.reason}")
        return miss.closest, miss.reason

    def _say(self, path: str, why: Refusal | None, text: str) -> None:
        """``why`` None: an NFD name that matches no template."""
        said = (os.path.dirname(path), why)
        first = said not in self._said
        self._said[said] = True
        log.log(logging.WARNING if first else logging.INFO, "%s: %s%s", path, text,
                "; other files of this folder like it are listed by `watcher unmatched`" if first else "")

    def other_spelling(self, key: str, path: str, journaled: Callable[[str], Any], *,
                       sequence: bool = False) -> str | None:
        """The path, spelled otherwise in Unicode (NFC against NFD) but the same once composed,
        under which candidate ``key`` is settling or published, when that one is still on disk;
        None when ``path`` may go on. Names are keyed in NFC, so a shot folder copied from a Mac
        next to its typed twin would otherwise join (or republish over) the other's publish.
        ``path`` is the publish path (``candidate.publish_path``: a sequence's is its pattern, whose
        folder is looked for); ``journaled(key)`` is the journal's row of the key or None. Only
        names that are not ASCII can differ so."""
        first = self._spellings.get(key)
        if first is None:
            try:
                row = journaled(key)
            except JournalError:
                return None  # cannot tell now; the journal's own error is reported where it is written
            first = row.publish.path if row is not None else path
        if first != path and nfc(first) == nfc(path) \
                and os.path.lexists(os.path.dirname(first) if sequence else first):  # the other is still there
            self._spellings[key] = first
            return first
        self._spellings[key] = path
        return None


def tracker_project(settings: Settings) -> str | None:
    """``tracker.project`` as a publish's project: a name or an id; None when unset or when it
    names a template key (Kitsu's ``"{Project}"``: the rule's ``Project`` field gives it)."""
    value = settings.tracker.options.get("project")
    if value is None or isinstance(value, bool) or str(value).strip() == "":
        return None
    text = str(value).strip()
    return None if text.startswith("{") else text


def load_roots(settings: Settings, *, log_warnings: bool = True) -> list[RootRuntime]:
    """``log_warnings=False`` when the caller reports template warnings itself (`check`)."""
    roots = []
    for rc in settings.roots:
        ts = load_templates(rc.templates)
        for w in ts.warnings if log_warnings else ():
            log.warning("templates %s: %s", rc.templates, w)
        resolve_observer(rc)  # `auto` decided once (load_settings did it for a configuration file)
        if log_warnings and rc.observer_note:  # a network root polled is news; a local one watched natively is not
            log.log(logging.INFO if rc.observer == "polling" else logging.DEBUG, "%s", rc.observer_note)
        if log_warnings and rc.watch_note:
            log.warning("%s", rc.watch_note)
        settle, seq = settings.settle_for(rc)
        root = RootPath.probed(str(rc.path))  # the spelling as configured: `P:\\` keeps its separator
        path = root.spelling
        for problem in _windows_lint(rc, ts):
            ts.warnings.append(problem)
            if log_warnings:
                log.warning("templates %s", problem)
        roots.append(RootRuntime(
            cfg=rc, templates=ts, ignorer=Ignorer(rc.ignore, case_insensitive=root.case_insensitive),
            scope=RootScope(rc.name, path, rc.project, Entity(rc.entity.type, rc.entity.name) if rc.entity else None,
                            tracker_project=tracker_project(settings), existing=rc.existing),
            windows=Windows(settle, seq, open_timeout=max(60.0, 6 * settle), first_frame_wait=settings.first_frame_wait,
                            pace_factor=settings.pace_factor, max_wait=settings.max_wait),
            signals=Signals(max_wait=settings.max_wait, amend_window=settings.amend_window),
            path=path, real=os.path.realpath(path), root=root))
    return roots


def _windows_lint(rc: RootSettings, ts: TemplateSet) -> list[str]:
    """What a Windows machine could not write of a root's templates (forbidden characters,
    reserved names, paths over 259 characters under the root's Windows spelling), when the root
    is used from Windows: it has a Windows spelling, or this agent runs there. `check` lists
    them with the template warnings."""
    windows = rc.os_paths.get(OSFamily.WINDOWS) if rc.os_paths.by_os or current_os() is OSFamily.WINDOWS else None
    if windows is None:
        return []
    return [f"{rc.templates}: {p} (on Windows)" for name, t in ts.templates.items()
            for p in lint_template(name, t.definition, windows)]
