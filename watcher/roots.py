"""The watched roots as the running agent knows them: configuration, templates, ignore rules and
health. ``RootRuntime.admit`` is the one admission check that `watcher run`, `scan --dry-run`
and `explain` share: nothing that fails it is ever published."""
from __future__ import annotations

import logging
import os
import stat as stat_mod
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

from .candidate import RootScope, Windows
from .completion import Signals
from .config import RootSettings, Settings
from .ignore import Ignorer, inside
from .match import TemplateSet, load_templates
from .model import Entity

log = logging.getLogger("watcher")


class Refusal(Enum):
    """Why a path never becomes a candidate (the words `explain` shows)."""

    IGNORED = "ignored: a hidden, temporary or partial name, or a root `ignore` glob"
    ESCAPES = "a symlink resolving outside the root: never published"
    SYMLINK = "a symbolic link: never published itself (its target, when in a root, publishes under its own name)"
    NOT_A_FILE = "not a regular file (a directory, FIFO, device or socket), or gone"


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
    signals: Signals = field(default_factory=Signals)  # the root's defaults; rules may override
    observer: Any = None
    up: bool = True
    rescans: int = 0
    last_rescan_reason: str | None = None
    escaped: set[str] = field(default_factory=set)
    _completion: dict[str, tuple[Windows, Signals]] = field(default_factory=dict, repr=False)

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
        """The path relative to the root, or None when it is not below it."""
        return path[len(self.path) + 1:] if path.startswith(self.path + "/") else None

    def admit(self, rel: str, path: str) -> os.stat_result | Refusal:
        """The stat of a file that may become a candidate, or why not: ignored names, anything
        gone or not a regular file, and symlinks (those resolving outside the root are warned
        about once). A link is never published itself: its target, when it is in a root, is
        published under its own name, and the backends read only what they were given (they
        never follow a link)."""
        if self.ignorer.ignored(rel):
            return Refusal.IGNORED
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
        return st if stat_mod.S_ISREG(st.st_mode) else Refusal.NOT_A_FILE


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
        settle, seq = settings.settle_for(rc)
        path = str(rc.path).rstrip("/")
        roots.append(RootRuntime(
            cfg=rc, templates=ts, ignorer=Ignorer(rc.ignore),
            scope=RootScope(rc.name, path, rc.project, Entity(rc.entity.type, rc.entity.name) if rc.entity else None,
                            tracker_project=tracker_project(settings), existing=rc.existing),
            windows=Windows(settle, seq, open_timeout=max(60.0, 6 * settle), first_frame_wait=settings.first_frame_wait,
                            pace_factor=settings.pace_factor, max_wait=settings.max_wait),
            signals=Signals(max_wait=settings.max_wait, amend_window=settings.amend_window),
            path=path, real=os.path.realpath(path)))
    return roots
