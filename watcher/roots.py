"""The watched roots as the running agent knows them: configuration, templates, ignore rules and
health. ``RootRuntime.admit`` is the one admission check that `watcher run`, `scan --dry-run`
and `explain` share: nothing that fails it is ever published."""
from __future__ import annotations

import logging
import os
import stat as stat_mod
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from .candidate import RootScope, Windows
from .config import RootSettings, Settings
from .ignore import Ignorer, inside
from .match import TemplateSet, load_templates
from .model import Entity

log = logging.getLogger("watcher")


class Refusal(Enum):
    """Why a path never becomes a candidate (the words `explain` shows)."""

    IGNORED = "ignored: a hidden, temporary or partial name, or a root `ignore` glob"
    ESCAPES = "a symlink resolving outside the root: never published"
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
    observer: Any = None
    up: bool = True
    rescans: int = 0
    last_rescan_reason: str | None = None
    escaped: set[str] = field(default_factory=set)

    @property
    def name(self) -> str:
        return self.cfg.name

    def relative(self, path: str) -> str | None:
        """The path relative to the root, or None when it is not below it."""
        return path[len(self.path) + 1:] if path.startswith(self.path + "/") else None

    def admit(self, rel: str, path: str) -> os.stat_result | Refusal:
        """The stat of a file that may become a candidate, or why not: ignored names, anything
        gone or not a regular file, and symlinks resolving outside the root (warned about once)."""
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
                st = os.stat(path)
        except OSError:
            return Refusal.NOT_A_FILE
        return st if stat_mod.S_ISREG(st.st_mode) else Refusal.NOT_A_FILE


def load_roots(settings: Settings) -> list[RootRuntime]:
    roots = []
    for rc in settings.roots:
        ts = load_templates(rc.templates)
        for w in ts.warnings:
            log.warning("templates %s: %s", rc.templates, w)
        settle, seq = settings.settle_for(rc)
        path = str(rc.path).rstrip("/")
        roots.append(RootRuntime(
            cfg=rc, templates=ts, ignorer=Ignorer(rc.ignore),
            scope=RootScope(rc.name, path, rc.project, Entity(rc.entity.type, rc.entity.name) if rc.entity else None),
            windows=Windows(settle, seq, open_timeout=max(60.0, 6 * settle)),
            path=path, real=os.path.realpath(path)))
    return roots
