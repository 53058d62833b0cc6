"""The composition root for `watcher run` and `watcher scan`: build the stages, start them, stop
them in a safe order. It holds no logic of its own::

    observers ─┐
    scanner ───┼─► queue ─► pipeline (match → group → settle → journal) ─► publishers ─► backend
    poller ────┘
    supervisor: root health, observer restarts, lost events → rescan, periodic rescans, status
"""
from __future__ import annotations

import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any, Sequence

from pydantic import ValidationError

from . import health as health_mod
from . import webhooks
from .agent import Heartbeat, new_agent_id
from .config import Settings, env_overrides, format_validation, load_settings, parse_http_address
from .errors import ConfigError
from .journal import open_journal
from .journal.ledger import Journal
from .journal.base import JournalError
from .match import TemplateSet
from .completion import TrackerLookup, entity_key, stream_key
from .pipeline import Pipeline
from .publish import Backend, BackendContext, load_backend
from .publish.workers import Publishers
from .listener import Listener, WSGIApp
from .metrics import CountingQueue, Metrics
from .paths import InstanceLock, InstanceLockError, lock_path
from .roots import RootRuntime, load_roots
from .scan import Scanner
from .settle import Settler
from .supervise import CHECK_INTERVAL, Supervisor

log = logging.getLogger("watcher")

QUEUE_SIZE = 50_000


def _env_keys() -> dict[tuple[str, ...], str]:
    return {keys: var for keys, (var, _) in env_overrides(os.environ).items()}


def check_state_dir(path: Path) -> None:
    """The state directory must be writable before anything starts (status.json lives there)."""
    probe = path / f".write-test-{uuid.uuid4().hex[:8]}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"state_dir: cannot write {path}: {exc.strerror or exc}; give this user write access, "
                          "or set state_dir (or StateDirectory= under systemd) to a folder it may write") from None


def instance_lock(settings: Settings) -> InstanceLock | None:
    """The agent's single-instance lock on its configuration file, acquired (``release()`` it
    once the agent has stopped), or None without a configuration file (an embedded service).
    Taken before anything else opens: a second agent touches no journal, port or status file.
    Another agent holding it is a ``ConfigError`` naming that agent's pid (exit 2)."""
    if settings.config_file is None:
        return None
    assert settings.state_dir is not None
    cfg = str(settings.config_file)
    try:
        return InstanceLock(lock_path(str(settings.state_dir), cfg), cfg).acquire()
    except InstanceLockError as exc:
        raise ConfigError(str(exc)) from None


def backend_settings(settings: Settings) -> tuple[type[Backend], Any]:
    """The backend class and its validated settings (``ConfigError`` naming the key)."""
    cls = load_backend(settings.tracker.backend)
    try:
        return cls, cls.Settings.model_validate(settings.tracker.options)
    except ValidationError as exc:
        raise ConfigError(format_validation(str(settings.config_file or "config"), exc, prefix="tracker",
                                            env=_env_keys(), model=cls.Settings)) from None


def make_backend(settings: Settings, roots: dict[str, Path], templates: Sequence[TemplateSet] = ()) -> Backend:
    cls, bs = backend_settings(settings)
    config_dir = settings.config_file.parent if settings.config_file else Path.cwd()
    types = tuple(dict.fromkeys(t for ts in templates for t in ts.publish_types()))
    return cls(bs, BackendContext(config_dir=config_dir, roots=roots, publish_types=types,
                                  journal_url=settings.journal_url(),
                                  root_paths={r.name: r.os_paths for r in settings.roots}))


class Service:
    def __init__(self, settings: Settings, *, watch: bool = True, journal: Journal | None = None,
                 backend: Backend | None = None, verify: bool = False,
                 apps: dict[str, WSGIApp] | None = None) -> None:
        self.settings = settings
        self.watch = watch
        self.verify = verify  # the start-up scan also stats files the journal knows
        assert settings.state_dir is not None
        check_state_dir(settings.state_dir)
        self.roots = {r.name: r for r in load_roots(settings)}
        self.journal = journal or open_journal(settings.journal_url())
        # journal outages are retried on the publish retry pace, capped low: nothing waits long
        self.journal.health.configure(base=min(1.0, settings.retry_base_seconds),
                                      cap=min(30.0, settings.retry_cap_seconds))
        self.backend = backend or make_backend(settings, {n: Path(r.path) for n, r in self.roots.items()},
                                               [r.templates for r in self.roots.values()])
        self.agent = new_agent_id()
        self.heartbeat = Heartbeat(self.journal, self.agent, lambda: sorted(self.roots),
                                   shared=lambda: sorted(n for n, r in self.roots.items()
                                                         if watch and r.cfg.watched_by == "one"),
                                   timeout=settings.agent_timeout_seconds, on_change=self._watches_changed)
        self.metrics = Metrics()
        self.queue = CountingQueue(maxsize=QUEUE_SIZE)
        self.settler = Settler()
        self.scanner = Scanner(self.queue, self.journal.known_files)
        for r in self.roots.values():
            self.scanner.add_root(r.name, r.path, r.ignorer)
        self.deliverer = webhooks.Deliverer(self.journal.db, self.agent, key=settings.webhook_key(),
                                            timeout=settings.webhook_timeout,
                                            max_attempts=settings.webhook_max_attempts,
                                            retry_base=settings.retry_base_seconds, retry_cap=settings.retry_cap_seconds)
        self.publishers = Publishers(self.journal, self.backend, self.agent, workers=settings.workers,
                                     max_attempts=settings.max_attempts, retry_base=settings.retry_base_seconds,
                                     retry_cap=settings.retry_cap_seconds, lease_seconds=settings.lease_seconds,
                                     metrics=self.metrics,
                                     on_published=webhooks.enqueuer(self.journal.db, self._hooks_for, self._any_hooks),
                                     after_published=self.deliverer.wake)
        ttl = float(getattr(self.backend.settings, "cache_ttl", 300))
        self.ranges = TrackerLookup(self.backend.frame_range, entity_key, what="frame-ranges", ttl=ttl)
        self.versions = TrackerLookup(self.backend.versions_used, stream_key, what="versions", ttl=ttl)
        self.pipeline = Pipeline(self.roots, self.queue, self.settler, self.scanner, self.journal,
                                 on_journaled=self.publishers.wake, max_settling=settings.max_settling_files,
                                 ranges=self.ranges, versions=self.versions, fence=self.heartbeat.fence)
        self.supervisor = Supervisor(self.roots, self.queue, self.scanner, rescan_interval=settings.rescan_interval,
                                     holder=self.heartbeat.holder,
                                     status_file=settings.state_dir / "status.json", status=self.status)
        self.metrics.attach(self)
        self.listener: Listener | None = None
        if settings.http:
            host, port = parse_http_address(settings.http)
            if apps is None:  # the I/O desk page at /, beside /metrics and /healthz
                from .desk import DeskApp

                apps = {"/": DeskApp(settings, self.journal, read_only=False, token=settings.http_token(),
                                     on_requeue=self.publishers.wake)}
            self.listener = Listener(host, port, metrics=self.metrics.render, health=self.health,
                                     token=settings.http_token(), apps=apps)
        self.started = False
        self.reloads = 0
        self.lingering: list[str] = []  # threads that outlived stop() (none, normally)

    @property
    def committed(self) -> int:
        return self.pipeline.committed

    def _any_hooks(self) -> bool:
        return bool(self.settings.on_publish or any(r.on_publish for r in self.settings.roots))

    def _hooks_for(self, root: str) -> list[str]:
        return self.settings.hooks_for(root)  # the settings in force: a reload may change them

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        if self.listener is not None:
            self.listener.start()  # first: a port in use stops start-up before any thread runs
        self.publishers.start()
        self.heartbeat.beat()  # which shared roots this agent watches, before any observer starts
        self.heartbeat.start()
        self.deliverer.start()
        self.ranges.start()
        self.versions.start()
        self.pipeline.start()
        self.scanner.start()
        if self.watch:
            self.supervisor.start_observers()
            self.supervisor.start()
            self.supervisor.write_status()  # `watcher status` sees the agent at once
        for r in self.roots.values():
            if self.heartbeat.holder(r.name) is None:  # a root another agent watches is its to scan
                self.scanner.request(r.name, verify=self.verify)
        self.started = True
        log.info("watcher started: %d root(s), journal %s, tracker %s, agent %s, state %s", len(self.roots),
                 self.journal.url, self.backend.name, self.agent, self.settings.state_dir)

    def _watches_changed(self) -> None:
        """The heartbeat found that another agent took a root, or that we may take one."""
        if self.started and self.watch:
            self.supervisor.check_now()

    def threads(self) -> list[Any]:
        out: list[Any] = [self.supervisor, self.scanner, self.pipeline, self.ranges, self.versions, self.deliverer,
                          self.heartbeat,
                          *self.publishers.threads]
        if self.listener is not None and self.listener.thread is not None:
            out.append(self.listener.thread)
        return out

    def stop(self, grace: float = 8.0) -> None:
        """Ordered shutdown: the supervisor first (so no check restarts an observer behind our
        back), then the observers it owns, the scanner and the pipeline; publishers get what is
        left of ``grace`` before their rows are parked; webhook deliveries and the HTTP listener
        stop; the journal closes last. Every thread is joined and checked; one that outlives its
        join is logged and listed in ``lingering``."""
        t0 = time.monotonic()
        self.supervisor.stop()  # waits for a check in progress, then stops every observer
        self.scanner.stop()
        self.pipeline.stop()
        self.ranges.stop()
        self.versions.stop()
        self.deliverer.stop()
        threads = [self.supervisor, self.scanner, self.pipeline, self.deliverer]
        for t in threads:
            if t.is_alive():
                t.join(2.0)
        self.publishers.stop(max(0.5, grace - (time.monotonic() - t0)))
        if self.deliverer.ident is not None:
            self.deliverer.close()
        if self.listener is not None:
            self.listener.stop()
        if self.watch and self.started:
            self.supervisor.write_status({"stopped": True})  # `watcher status`: not running, at once
        self.heartbeat.stop()
        self.backend.close()
        self.journal.close()
        self.lingering = [t.name for t in self.threads() + [self.publishers._keeper]
                          + [r.observer for r in self.roots.values() if r.observer is not None] if t.is_alive()]
        if self.lingering:
            log.error("shutdown: thread(s) %s did not stop", ", ".join(self.lingering))
        log.info("watcher stopped in %.1f s", time.monotonic() - t0)

    def working(self) -> bool:
        """For the systemd watchdog: every thread is alive and the supervisor still checks."""
        if not all(t.is_alive() for t in self.threads()):
            return False
        return not self.watch or time.monotonic() - self.supervisor.last_check < 3 * CHECK_INTERVAL + 5

    # -- reload (SIGHUP) ---------------------------------------------------------------------
    def reload(self, config: str | os.PathLike[str] | None = None) -> bool:
        """Re-read the configuration and the templates. Roots added, removed or changed take
        effect at once (a changed root gets a new observer and a rescan); candidates settling
        stay with the pipeline. An invalid new configuration is refused, the reason logged, and
        the running one kept. Returns whether the new configuration is in force."""
        path = config or self.settings.config_file
        try:
            new = load_settings(path)
            assert new.state_dir is not None
            roots = {r.name: r for r in load_roots(new)}
            new.webhook_key()
        except ConfigError as exc:
            log.error("reload refused, the running configuration is kept: %s", str(exc).replace("\n", "; "))
            return False
        except Exception as exc:  # noqa: BLE001 - a reload must never take the agent down
            log.exception("reload refused, the running configuration is kept: %s", exc)
            return False
        old = self.settings
        fixed = [k for k in ("journal", "tracker", "workers", "state_dir", "http", "http_token_file")
                 if getattr(old, k) != getattr(new, k)]
        if fixed:
            log.warning("reload: %s changed; these take effect at the next restart", ", ".join(fixed))
            for k in fixed:  # keep what is running consistent with what `status` shows
                setattr(new, k, getattr(old, k))
        added = [n for n in roots if n not in self.roots]
        removed = [n for n in self.roots if n not in roots]
        changed = []
        for name in [n for n in roots if n in self.roots]:
            cur, nxt = self.roots[name], roots[name]
            if (cur.path, cur.cfg.observer, cur.cfg.poll_interval) != (nxt.path, nxt.cfg.observer, nxt.cfg.poll_interval):
                self._replace_root(name, nxt)
                changed.append(name)
            else:  # same tree, same observer: new rules in place (the pipeline reads them per file)
                cur.cfg, cur.templates, cur.ignorer, cur.scope, cur.windows = (nxt.cfg, nxt.templates, nxt.ignorer,
                                                                               nxt.scope, nxt.windows)
                self.scanner.add_root(name, cur.path, cur.ignorer)
                self.scanner.request(name)  # new templates or ignores may match files seen before
        for name in removed:
            self.supervisor.remove_root(name)
            self.scanner.remove_root(name)
            self.roots.pop(name, None)
        if removed and self.watch:
            self.heartbeat.beat()  # the shared roots it no longer has are free for other agents at once
        for name in added:
            self._add_root(roots[name])
        self.settings = new
        self.supervisor.rescan_interval = new.rescan_interval
        self.deliverer.key = new.webhook_key()
        self.deliverer.max_attempts = new.webhook_max_attempts
        logging.getLogger().setLevel(new.log_level)
        self.reloads += 1
        log.info("reload: configuration %s in force: %d root(s)%s%s%s", path, len(self.roots),
                 f"; added {', '.join(added)}" if added else "", f"; removed {', '.join(removed)}" if removed else "",
                 f"; changed {', '.join(changed)}" if changed else "")
        return True

    def _add_root(self, r: RootRuntime) -> None:
        self.roots[r.name] = r
        self.scanner.add_root(r.name, r.path, r.ignorer)
        if self.watch:
            self.heartbeat.beat()  # another agent may watch it already: then we stand by
            self.supervisor.add_root(r)
        if self.heartbeat.holder(r.name) is None:
            self.scanner.request(r.name)

    def _replace_root(self, name: str, r: RootRuntime) -> None:
        old = self.supervisor.remove_root(name)  # stops its observer
        if old is not None:
            r.rescans = old.rescans
        self._add_root(r)
        self.request_rescan(name, "configuration reloaded")

    # -- queries -----------------------------------------------------------------------------
    def idle(self) -> bool:
        """Nothing left to do now: no scan running, no event queued, no candidate settling,
        nothing due in the journal, no publish in flight."""
        if not self.scanner.idle() or self.queue.unfinished_tasks or len(self.settler) or self.pipeline.grouped:
            return False
        if self.publishers.busy:
            return False
        try:
            due = self.journal.next_due()
        except JournalError:  # a journal that cannot be read has work waiting
            return False
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

    def health(self) -> dict[str, Any]:
        """The `watcher status` verdict for this agent (``/healthz``)."""
        h = self.settings.health
        counts, oldest, hooks = health_mod.journal_figures(self.journal, webhooks.summary)
        return health_mod.verdict(self.status(), counts, oldest, hooks, h.max_pending_age,
                                  fail_on_failed=h.fail_on_failed)

    def _watching(self, root: str) -> dict[str, Any]:
        """What watches a root now: ``watching`` ("inotify", "fsevents", "windows", "polling"; empty
        while nothing does), why a native root is polled, and how often its directory was replaced."""
        w = self.supervisor.watching.get(root) if self.watch else None
        if w is None:
            return {"watching": "", "observer_fallback": None, "replaced": 0, "down_reason": None, "standby_for": None}
        return {"watching": "standby" if w.standby else w.kind, "observer_fallback": w.fallback,
                "replaced": w.replaced, "down_reason": w.down, "standby_for": w.standby}

    def status(self) -> dict[str, Any]:
        return {
            "agent": self.agent, "time": time.time(), "pid": os.getpid(),
            "config_file": str(self.settings.config_file) if self.settings.config_file else None,
            "http": (f"{self.listener.host}:{self.listener.port}" if self.listener is not None else None),
            "queue": self.queue.qsize(),
            "settling_candidates": len(self.settler), "settling_files": self.settler.pending_files,
            "held": list(self.pipeline.held_view),
            "journal": {**self.journal.health.snapshot(), "candidates_waiting": self.pipeline.journal_waiting,
                        "outcomes_waiting": self.publishers.unrecorded},
            "parked": list(self.pipeline.parked_view),
            "publishing": self.publishers.busy, "published_this_run": self.publishers.published,
            "reloads": self.reloads, "webhooks_this_run": dict(self.deliverer.outcomes),
            "roots": {n: {"path": r.path, "up": r.up, "observer": r.cfg.observer, "rescans": r.rescans,
                          "last_rescan_reason": r.last_rescan_reason,
                          "unmatched_files": self.pipeline.unmatched[n], **self._watching(n)}
                      for n, r in list(self.roots.items())},
        }


__all__ = ["Service", "make_backend", "check_state_dir", "instance_lock", "QUEUE_SIZE"]
