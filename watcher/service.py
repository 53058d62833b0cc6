"""The composition root for `watcher run` and `watcher scan`: build the stages, start them, stop
them in a safe order. It holds no logic of its own::

    observers ─┐
    scanner ───┼─► queue ─► pipeline (match → group → settle → journal) ─► publishers ─► backend
    poller ────┘
    supervisor: root health, observer restarts, lost events → rescan, periodic rescans, status
"""
from __future__ import annotations

import logging
import queue
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .agent import new_agent_id
from .config import Settings, format_validation
from .errors import ConfigError
from .events import Event
from .journal import open_journal
from .journal.ledger import Journal
from .match import TemplateSet
from .pipeline import Pipeline
from .publish import Backend, BackendContext, load_backend
from .publish.workers import Publishers
from .roots import load_roots
from .scan import Scanner
from .settle import Settler
from .supervise import Supervisor

log = logging.getLogger("watcher")

QUEUE_SIZE = 50_000
LEASE_SECONDS = 900.0  # a publishing row is ours this long without renewal


def make_backend(settings: Settings, roots: dict[str, Path], templates: list[TemplateSet] = ()) -> Backend:
    cls = load_backend(settings.tracker.backend)
    try:
        bs = cls.Settings.model_validate(settings.tracker.options)
    except ValidationError as exc:
        raise ConfigError(format_validation(str(settings.config_file or "config"), exc, prefix="tracker")) from None
    config_dir = settings.config_file.parent if settings.config_file else Path.cwd()
    types = tuple(dict.fromkeys(t for ts in templates for t in ts.publish_types()))
    return cls(bs, BackendContext(config_dir=config_dir, roots=roots, publish_types=types,
                                  journal_url=settings.journal_url()))


class Service:
    def __init__(self, settings: Settings, *, watch: bool = True, journal: Journal | None = None,
                 backend: Backend | None = None, verify: bool = False) -> None:
        self.settings = settings
        self.watch = watch
        self.verify = verify  # the start-up scan also stats files the journal knows
        self.roots = {r.name: r for r in load_roots(settings)}
        self.journal = journal or open_journal(settings.journal_url())
        self.backend = backend or make_backend(settings, {n: Path(r.path) for n, r in self.roots.items()},
                                               [r.templates for r in self.roots.values()])
        self.agent = new_agent_id()
        self.queue: queue.Queue[Event] = queue.Queue(maxsize=QUEUE_SIZE)
        self.settler = Settler()
        self.scanner = Scanner(self.queue, self.journal.known_files)
        for r in self.roots.values():
            self.scanner.add_root(r.name, r.path, r.ignorer)
        self.publishers = Publishers(self.journal, self.backend, self.agent, workers=settings.workers,
                                     max_attempts=settings.max_attempts, retry_base=settings.retry_base_seconds,
                                     retry_cap=settings.retry_cap_seconds, lease_seconds=LEASE_SECONDS)
        self.pipeline = Pipeline(self.roots, self.queue, self.settler, self.scanner, self.journal,
                                 on_journaled=self.publishers.wake)
        self.supervisor = Supervisor(self.roots, self.queue, self.scanner, rescan_interval=settings.rescan_interval,
                                     status_file=settings.state_dir / "status.json", status=self.status)
        self.started = False
        self.lingering: list[str] = []  # threads that outlived stop() (none, normally)

    @property
    def committed(self) -> int:
        return self.pipeline.committed

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self.publishers.start()
        self.pipeline.start()
        self.scanner.start()
        if self.watch:
            self.supervisor.start_observers()
            self.supervisor.start()
        for r in self.roots.values():
            self.scanner.request(r.name, verify=self.verify)
        self.started = True
        log.info("watcher started: %d root(s), journal %s, tracker %s, agent %s", len(self.roots),
                 self.journal.url, self.backend.name, self.agent)

    def stop(self, grace: float = 8.0) -> None:
        """Ordered shutdown: the supervisor first (so no check restarts an observer behind our
        back), then the observers it owns, the scanner and the pipeline; publishers get what is
        left of ``grace`` before their rows are parked; the journal closes last. Every thread is
        joined and checked; one that outlives its join is logged and listed in ``lingering``."""
        t0 = time.monotonic()
        self.supervisor.stop()  # waits for a check in progress, then stops every observer
        self.scanner.stop()
        self.pipeline.stop()
        threads = [self.supervisor, self.scanner, self.pipeline]
        for t in threads:
            if t.is_alive():
                t.join(2.0)
        self.publishers.stop(max(0.5, grace - (time.monotonic() - t0)))
        self.backend.close()
        self.journal.close()
        self.lingering = [t.name for t in threads + self.publishers.threads
                          + [r.observer for r in self.roots.values() if r.observer is not None] if t.is_alive()]
        if self.lingering:
            log.error("shutdown: thread(s) %s did not stop", ", ".join(self.lingering))
        log.info("watcher stopped in %.1f s", time.monotonic() - t0)

    def idle(self) -> bool:
        """Nothing left to do now: no scan running, no event queued, no candidate settling,
        nothing due in the journal, no publish in flight."""
        if not self.scanner.idle() or self.queue.unfinished_tasks or len(self.settler):
            return False
        if self.publishers.busy:
            return False
        due = self.journal.next_due()
        return due is None or due > time.time()

    def wait_idle(self, timeout: float | None = None, poll: float = 0.05) -> bool:
        end = None if timeout is None else time.monotonic() + timeout
        streak = 0
        while end is None or time.monotonic() < end:
            streak = streak + 1 if self.idle() else 0
            if streak >= 3:
                return True
            time.sleep(poll)
        return False

    def sync(self, root: str, timeout: float = 10.0) -> bool:
        """Return once the pipeline has handled every event of ``root`` queued before now."""
        return self.pipeline.sync(self.roots[root], timeout)

    def request_rescan(self, root: str, reason: str) -> None:
        self.supervisor.request_rescan(root, reason)

    def status(self) -> dict[str, Any]:
        return {
            "agent": self.agent, "time": time.time(), "queue": self.queue.qsize(),
            "settling_candidates": len(self.settler), "settling_files": self.settler.pending_files,
            "publishing": self.publishers.busy, "published_this_run": self.publishers.published,
            "roots": {n: {"path": r.path, "up": r.up, "observer": r.cfg.observer, "rescans": r.rescans,
                          "last_rescan_reason": r.last_rescan_reason,
                          "unmatched_files": self.pipeline.unmatched[n]}
                      for n, r in self.roots.items()},
        }


__all__ = ["Service", "make_backend", "QUEUE_SIZE"]
