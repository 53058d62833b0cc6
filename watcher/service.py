"""Wire the stages for `watcher run` and `watcher scan`:

    observers ─┐
    scanner ───┼─► queue ─► pipeline thread (match → group → settle) ─► journal ─► publishers ─► backend
    poller ────┘                                                          ▲
    supervisor: root health, observer restarts, overflow → rescan, periodic rescans

The pipeline thread owns all candidate state; nothing else touches it."""
from __future__ import annotations

import json
import logging
import os
import queue
import random
import stat as stat_mod
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .config import RootSettings, Settings, format_validation
from .errors import ConfigError
from .group import Candidate, RootScope, build_publish, candidate_key
from .ignore import COOKIE_PREFIX, Ignorer, inside
from .journal.base import FileRecord, Journal, Status, TransitionError, open_journal
from .journal.sqlite import agent_id
from .match import TemplateSet, load_templates
from .model import Entity
from .observe import DirPoller, FsEvent, Translator, native_observer
from .publish import Backend, BackendContext, load_backend
from .publish.workers import Publishers
from .scan import Scanner
from .settle import Settler, Windows

log = logging.getLogger("watcher")

QUEUE_SIZE = 50_000
# watchdog reports the files it finds when it walks a brand-new directory as plain "created"
# events, indistinguishable from real ones; creates this soon after their directory appeared
# are treated as synthetic: no close event may ever follow them.
NEW_DIR_WINDOW = 2.0
LEASE_SECONDS = 900.0  # a publishing row is ours this long without renewal


@dataclass
class RootRuntime:
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
    unmatched: int = 0
    escaped: set[str] = field(default_factory=set)

    @property
    def name(self) -> str:
        return self.cfg.name

    def admit(self, rel: str, path: str) -> os.stat_result | None:
        """The stat of a file that may become a candidate, or None: ignored names, anything gone
        or not a regular file, and symlinks resolving outside the root (warned about once)."""
        if self.ignorer.ignored(rel):
            return None
        try:
            st = os.lstat(path)
            if stat_mod.S_ISLNK(st.st_mode):
                if not inside(self.real, path):
                    if path not in self.escaped:
                        self.escaped.add(path)
                        log.warning("%s: symlink to %s, outside root %s; never published", path,
                                    os.path.realpath(path), self.name)
                    return None
                st = os.stat(path)
        except OSError:
            return None
        return st if stat_mod.S_ISREG(st.st_mode) else None


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


def make_backend(settings: Settings, journal: Journal, roots: dict[str, Path]) -> Backend:
    cls = load_backend(settings.tracker.backend)
    try:
        bs = cls.Settings.model_validate(settings.tracker.options)
    except ValidationError as exc:
        raise ConfigError(format_validation(str(settings.config_file or "config"), exc, prefix="tracker")) from None
    config_dir = settings.config_file.parent if settings.config_file else Path.cwd()
    return cls(bs, BackendContext(journal=journal, config_dir=config_dir, roots=roots))


def pid_alive(agent: str) -> bool:
    """Agents are host:pid:start. Another host's agent is trusted until its lease expires."""
    import socket

    host, _, rest = agent.partition(":")
    if host != socket.gethostname():
        return True
    try:
        os.kill(int(rest.split(":")[0]), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


class Service:
    def __init__(self, settings: Settings, *, watch: bool = True, journal: Journal | None = None,
                 backend: Backend | None = None, verify: bool = False) -> None:
        self.settings = settings
        self.watch = watch
        self.verify = verify  # the start-up scan also stats files the journal knows
        self.roots = {r.name: r for r in load_roots(settings)}
        self.journal = journal or open_journal(settings.journal_url())
        self.backend = backend or make_backend(settings, self.journal, {n: Path(r.path) for n, r in self.roots.items()})
        self.agent = agent_id()
        self.queue: queue.Queue[FsEvent] = queue.Queue(maxsize=QUEUE_SIZE)
        self.settler = Settler()
        self.scanner = Scanner(self.queue, self.journal.known_files, lambda root, kind, p: FsEvent(root, "seen" if kind == "file" else kind, p))
        for r in self.roots.values():
            self.scanner.add_root(r.name, r.path, r.ignorer)
        self.publishers = Publishers(self.journal, self.backend, self.agent, workers=settings.workers,
                                     max_attempts=settings.max_attempts, retry_base=settings.retry_base_seconds,
                                     retry_cap=settings.retry_cap_seconds, lease_seconds=LEASE_SECONDS)
        self._halt = threading.Event()
        self._pipeline = threading.Thread(target=self._pipeline_loop, name="pipeline", daemon=True)
        self._supervisor = threading.Thread(target=self._supervise, name="supervisor", daemon=True)
        self._cookies: dict[str, threading.Event] = {}
        self._cookie_n = 0
        self._new_dirs: dict[str, float] = {}
        self._listing: set[str] = set()  # directories whose scan listing is still streaming in
        self._lock = threading.Lock()
        self._keys: dict[tuple, str] = {}
        self.committed = 0
        self.started = False

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        recovered = self.journal.recover(self.agent, time.time(), pid_alive)
        if recovered:
            log.warning("journal: %d publish(es) were interrupted mid-flight; resuming them (the backend looks "
                        "for what they may have created first)", recovered)
        self.publishers.start()
        self._pipeline.start()
        self.scanner.start()
        if self.watch:
            for r in self.roots.values():
                self._start_observer(r)
            self._supervisor.start()
        for r in self.roots.values():
            self.scanner.request(r.name, verify=self.verify)
        self.started = True
        log.info("watcher started: %d root(s), journal %s, tracker %s, agent %s", len(self.roots),
                 _redact(self.journal.url), self.backend.name, self.agent)

    def stop(self, grace: float = 8.0) -> None:
        """Ordered shutdown: observers, scanner, pipeline, then publishers get ``grace`` seconds
        before their rows are parked; the journal closes last. Every thread is joined."""
        t0 = time.monotonic()
        self._halt.set()
        for r in self.roots.values():
            self._stop_observer(r)
        self.scanner.stop()
        for t in (self.scanner, self._pipeline, self._supervisor):
            if t.is_alive():
                t.join(2.0)
        self.publishers.stop(max(0.5, grace - (time.monotonic() - t0)))
        self.backend.close()
        self.journal.close()
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
            if self._halt.wait(poll):
                return False
        return False

    def sync(self, root: str, timeout: float = 10.0) -> bool:
        """Cookie barrier: write a cookie file in the root and wait until the pipeline has seen
        it, so that every event before it has been handled (tests, `scan --wait`)."""
        r = self.roots[root]
        with self._lock:
            self._cookie_n += 1
            name = f"{COOKIE_PREFIX}{os.getpid()}-{self._cookie_n}"
            ev = self._cookies[name] = threading.Event()
        path = os.path.join(r.path, name)
        with open(path, "w"):
            pass
        try:
            return ev.wait(timeout)
        finally:
            with self._lock:
                self._cookies.pop(name, None)
            try:
                os.unlink(path)
            except OSError:
                pass

    # -- observers ---------------------------------------------------------------------------
    def request_rescan(self, root: str, reason: str) -> None:
        r = self.roots.get(root)
        if r is None:
            return
        r.rescans += 1
        r.last_rescan_reason = reason
        log.warning("root %s: %s; rescanning it (rescan #%d)", root, reason, r.rescans)
        self.scanner.request(root, lost_events=True)

    def _start_observer(self, r: RootRuntime) -> None:
        if not os.path.isdir(r.path):
            r.up = False
            log.error("root %s: %s is missing; waiting for it to come back", r.name, r.path)
            return
        try:
            if r.cfg.observer == "polling":
                obs: Any = DirPoller(r.name, r.path, r.cfg.poll_interval, self.queue, r.ignorer.ignored_dir)
            else:
                obs = native_observer(r.name, r.path, Translator(r.name, self.queue, self.request_rescan),
                                      self.request_rescan)
            obs.start()
        except OSError as exc:
            r.up = False
            hint = " (raise fs.inotify.max_user_watches, or use observer: polling)" if exc.errno == 28 else ""
            log.error("root %s: cannot watch %s: %s%s; retrying", r.name, r.path, exc.strerror or exc, hint)
            return
        r.observer = obs
        r.up = True

    def _stop_observer(self, r: RootRuntime) -> None:
        obs, r.observer = r.observer, None
        if obs is None:
            return
        try:
            obs.stop()
            obs.join(3.0)
        except Exception:
            log.debug("root %s: observer stop failed", r.name, exc_info=True)

    def _supervise(self) -> None:
        interval = self.settings.rescan_interval
        next_full = {n: time.monotonic() + interval * random.uniform(0.75, 1.25) for n in self.roots}
        next_lease = time.monotonic()
        while not self._halt.wait(2.0):
            if time.monotonic() >= next_lease:
                next_lease = time.monotonic() + LEASE_SECONDS / 6
                self._leases()
            for r in self.roots.values():
                try:
                    self._check_root(r, next_full, interval)
                except Exception:
                    log.exception("root %s: supervisor check failed", r.name)
            self._write_status()

    def _leases(self) -> None:
        """Keep our in-flight publishes leased, and take back rows whose agent died (another
        machine sharing a PostgreSQL journal, or a killed process on this one)."""
        now = time.time()
        for row_id in self.publishers.inflight():
            try:
                self.journal.renew(row_id, self.agent, now + LEASE_SECONDS)
            except TransitionError:
                pass  # it finished meanwhile
            except Exception:
                log.warning("journal: cannot renew the lease of publish %d", row_id, exc_info=True)
        try:
            if self.journal.recover(self.agent, now, pid_alive):
                self.publishers.wake()
        except Exception:
            log.warning("journal: recovery of stale publishes failed", exc_info=True)

    def _check_root(self, r: RootRuntime, next_full: dict[str, float], interval: float) -> None:
        present = os.path.isdir(r.path)
        if not present:
            if r.up:
                log.error("root %s: %s vanished (unmounted?); waiting for it to come back", r.name, r.path)
                self._stop_observer(r)
                r.up = False
            return
        if not r.up or r.observer is None or not r.observer.is_alive():
            # back after an unmount or a failed watch, or its observer thread died: a new
            # observer, then a rescan for whatever happened while nobody watched
            reason = "observer restarted" if r.up and r.observer is not None else "root came back"
            self._stop_observer(r)
            self._start_observer(r)  # logs why when it cannot, and is tried again in 2 s
            if r.up:
                self.request_rescan(r.name, reason)
            return
        if interval and time.monotonic() >= next_full[r.name]:
            next_full[r.name] = time.monotonic() + interval * random.uniform(0.75, 1.25)
            log.info("root %s: periodic rescan (stats known files too: finds files rewritten in place)", r.name)
            self.scanner.request(r.name, verify=True)

    def status(self) -> dict[str, Any]:
        return {
            "agent": self.agent, "time": time.time(), "queue": self.queue.qsize(),
            "settling_candidates": len(self.settler), "settling_files": self.settler.pending_files,
            "publishing": self.publishers.busy, "published_this_run": self.publishers.published,
            "roots": {n: {"path": r.path, "up": r.up, "observer": r.cfg.observer, "rescans": r.rescans,
                          "last_rescan_reason": r.last_rescan_reason, "unmatched_files": r.unmatched}
                      for n, r in self.roots.items()},
        }

    def _write_status(self) -> None:
        path = self.settings.state_dir / "status.json"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.status(), indent=1))
            os.replace(tmp, path)
        except OSError:
            log.debug("cannot write %s", path, exc_info=True)

    # -- pipeline ----------------------------------------------------------------------------
    def _pipeline_loop(self) -> None:
        while not self._halt.is_set():
            try:
                self._pipeline_step()
            except Exception:
                log.exception("pipeline: unexpected error; continuing")

    def _pipeline_step(self) -> None:
        nxt = self.settler.next_deadline()
        timeout = 0.5 if nxt is None else min(0.5, max(0.0, nxt - time.monotonic()))
        try:
            ev = self.queue.get(timeout=timeout)
        except queue.Empty:
            ev = None
        if ev is not None:
            n = 0
            while True:
                try:
                    self._handle(ev)
                finally:
                    self.queue.task_done()
                n += 1
                if n >= 2000:
                    break
                try:
                    ev = self.queue.get_nowait()
                except queue.Empty:
                    break
        for cand in self.settler.due():
            self.commit(cand)

    def _handle(self, ev: FsEvent) -> None:
        r = self.roots.get(ev.root)
        if r is None:
            return
        k = ev.kind
        if k in ("created", "closed", "seen"):
            if k == "seen":
                self._listing.add(os.path.dirname(ev.path))
            self._file(r, ev.path, k, ev.synthetic)
        elif k == "dir_done":
            self._listing.discard(ev.path)
        elif k == "scan_done":
            self.scanner.synced(r.name, int(ev.path))
        elif k == "moved":
            self.settler.remove(ev.path)
            if ev.dest and self._under(r, ev.dest):
                self._file(r, ev.dest, "moved", False)
        elif k == "deleted":
            if self.settler.remove(ev.path) is not None:
                log.debug("%s deleted before it settled", ev.path)
        elif k == "dir_created":
            self._note_new_dir(ev.path)
            self.scanner.request(r.name, ev.path)
        elif k == "dir_moved":
            self.settler.remove_under(ev.path)
            if ev.dest and self._under(r, ev.dest):
                self._note_new_dir(ev.dest)
                self.scanner.request(r.name, ev.dest)
        elif k == "dir_deleted":
            self.settler.remove_under(ev.path)

    def _note_new_dir(self, path: str) -> None:
        now = time.monotonic()
        if len(self._new_dirs) > 10_000:
            self._new_dirs = {d: t for d, t in self._new_dirs.items() if now - t < NEW_DIR_WINDOW}
        self._new_dirs[path] = now

    def _in_new_dir(self, r: RootRuntime, path: str) -> bool:
        if not self._new_dirs:
            return False
        now = time.monotonic()
        d = os.path.dirname(path)
        while len(d) > len(r.path):
            t = self._new_dirs.get(d)
            if t is not None and now - t < NEW_DIR_WINDOW:
                return True
            d = os.path.dirname(d)
        return False

    @staticmethod
    def _under(r: RootRuntime, path: str) -> bool:
        return path.startswith(r.path + "/")

    def _file(self, r: RootRuntime, path: str, kind: str, synthetic: bool) -> None:
        if not self._under(r, path):
            return
        rel = path[len(r.path) + 1:]
        if rel.startswith(COOKIE_PREFIX):
            with self._lock:
                ev = self._cookies.get(rel)
            if ev is not None:
                ev.set()
            return
        st = r.admit(rel, path)
        if st is None:
            self.settler.remove(path)  # gone, or no longer a file we may publish
            return
        cand = self.settler.candidate_of(path)
        if cand is None:
            m = r.templates.match(rel)
            if not m:
                r.unmatched += 1
                log.debug("%s: no template: %s", path, m)  # the reason is worked out only if logged
                return
            if m.publish is None:
                return
            key = self._key(r.name, m)
            cand = self.settler.candidates.get(key) or Candidate(key, r.scope, m)
            frame = m.frame if cand.is_sequence else None
        else:
            frame = cand.files[path].frame
        if kind == "created" and not synthetic:
            synthetic = self._in_new_dir(r, path)
        self.settler.touch(cand, r.windows, path, frame, kind, synthetic=synthetic, st=st)

    def _key(self, root: str, m: Any) -> str:
        """candidate_key() costs a json.dumps per file; the frames of one sequence share it."""
        fk = (root, m.template, m.padding, m.frame is None,
              tuple(sorted((k, v) for k, v in m.fields.items() if k != m.frame_key)))
        key = self._keys.get(fk)
        if key is None:
            if len(self._keys) > 10_000:
                self._keys.clear()
            key = self._keys[fk] = candidate_key(root, m)
        return key

    def commit(self, cand: Candidate) -> None:
        """A settled candidate goes into the journal (before anything is sent), or, when its
        key is journaled already, through the root's republish policy."""
        if cand.is_sequence and self._incomplete_view(cand):
            self._hold(cand, 0.05)
            return
        files = [FileRecord(os.path.dirname(p), os.path.basename(p), f.size, f.mtime_ns) for p, f in cand.files.items()]
        try:
            row = self.journal.by_key(cand.key)
            if row is None:
                _, created = self.journal.add(build_publish(cand), files)
                self.committed += created
                self.publishers.wake()
                return
            known = self.journal.files_of(row.id)
            changed = [p for p, f in cand.files.items() if known.get(p) != (f.size, f.mtime_ns)]
            if not changed:
                return  # seen again (rescan, duplicate event): already journaled as it is
            if row.status == Status.PUBLISHING:
                self._hold(cand, 1.0)  # decide once the running publish has ended
                return
            extra = {p: v for p, v in known.items() if p not in cand.files and os.path.exists(p)}
            if row.status == Status.PENDING:
                self.journal.replace(row.id, build_publish(cand, extra_files=extra), files)
                self.publishers.wake()
                return
            self._republish(row, cand, files, extra, changed)
        except TransitionError:
            self._hold(cand, 1.0)

    def _hold(self, cand: Candidate, delay: float) -> None:
        self.settler.hold(cand, self.roots[cand.scope.name].windows, delay)

    def _incomplete_view(self, cand: Candidate) -> bool:
        """More frames of this sequence may be on their way: a scan is still listing its
        directory, or a rescan is queued because events were lost. Publishing now could
        publish half of it."""
        dirs = {os.path.dirname(p) for p in cand.files}
        if self._listing and dirs & self._listing:
            return True
        return any(self.scanner.pending_for(cand.scope.name, d) for d in dirs)

    def _republish(self, row: Any, cand: Candidate, files: list[FileRecord], extra: dict[str, tuple[int, int]],
                   changed: list[str]) -> None:
        policy = self.roots[cand.scope.name].cfg.republish
        what = (f"{len(changed)} new or changed frame(s)" if cand.is_sequence else "the file changed")
        if policy == "never":
            log.warning("%s: %s after it was published (%s %s); republish: never, so not published again",
                        row.publish.path, what, row.tracker or "", row.tracker_id or "")
            self.journal.remember_files(row.id, files, f"{what} after publish; not republished (republish: never)")
        elif policy == "update":
            log.warning("%s: %s after it was published; republishing it (republish: update)", row.publish.path, what)
            self.journal.replace(row.id, build_publish(cand, extra_files=extra), files)
            self.publishers.wake()
        else:
            revisions = self.journal.keys_like(cand.key + "#r")
            version = max([row.publish.version or 0] + [x.publish.version or 0 for x in revisions]) + 1
            key = f"{cand.key}#r{len(revisions) + 2}"
            log.warning("%s: %s after it was published; publishing it as version %d (republish: new_version)",
                        row.publish.path, what, version)
            self.journal.add(build_publish(cand, key=key, version=version, extra_files=extra), files)
            self.publishers.wake()


def _redact(url: str) -> str:
    """Never log a password inside a journal URL."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}" if ":" in creds else url
    return url
