"""Publisher workers: a bounded pool that claims due rows from the journal, hands them to the
backend and records the outcome. Each outcome is one guarded journal transition, so a crash at
any point leaves a row that the next start resumes (``publishing`` rows come back
``uncertain`` and the backend looks before it creates).

The pool owns its claims: a keeper thread renews the leases of what it holds and takes back rows
whose agent died (a killed process here, another machine sharing a PostgreSQL journal)."""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import TYPE_CHECKING, Callable

from ..errors import PermanentError, PublishError
from ..agent import alive
from ..journal.base import Row, TransitionError
from ..journal.ledger import Journal, Then
from ..model import Job, Publish
from .base import Backend
from .retry import backoff_delay

if TYPE_CHECKING:  # pragma: no cover
    from ..metrics import Metrics

log = logging.getLogger("watcher.publish")


class Publishers:
    def __init__(self, journal: Journal, backend: Backend, agent: str, *, workers: int = 4, max_attempts: int = 8,
                 retry_base: float = 2.0, retry_cap: float = 600.0, lease_seconds: float = 900.0,
                 clock: Callable[[], float] = time.time, agent_alive: Callable[[str], bool] = alive,
                 metrics: "Metrics | None" = None, on_published: "Then | None" = None,
                 after_published: Callable[[], None] = lambda: None) -> None:
        self.journal, self.backend, self.agent = journal, backend, agent
        self.max_attempts, self.retry_base, self.retry_cap = max_attempts, retry_base, retry_cap
        self.lease_seconds = lease_seconds
        self._clock = clock
        self._cv = threading.Condition()
        self._halt = False
        self._inflight: dict[int, str] = {}  # row id -> serialize key
        self._serial: Counter[str] = Counter()
        self.published = 0
        self.failed = 0
        self._alive = agent_alive
        self.metrics = metrics  # counters for /metrics (watcher/metrics.py)
        self.on_published = on_published  # runs in the transaction that records a publish (webhooks)
        self.after_published = after_published
        self.threads = [threading.Thread(target=self._run, name=f"publisher-{i}", daemon=True) for i in range(workers)]
        self._keeper = threading.Thread(target=self._keep_leases, name="publisher-leases", daemon=True)

    def start(self) -> None:
        """Take back what a dead agent left mid-flight, then start claiming."""
        recovered = self.journal.recover(self.agent, self._clock(), self._alive)
        if recovered:
            log.warning("journal: %d publish(es) were interrupted mid-flight; resuming them (the backend looks "
                        "for what they may have created first)", recovered)
        for t in self.threads:
            t.start()
        self._keeper.start()

    def _keep_leases(self) -> None:
        """Renew our leases well before they run out, and recover rows of dead agents."""
        while True:
            with self._cv:
                if self._halt or self._cv.wait_for(lambda: self._halt, self.lease_seconds / 6):
                    return
            now = self._clock()
            for row_id in self.inflight():
                try:
                    self.journal.renew(row_id, self.agent, now + self.lease_seconds)
                except TransitionError:
                    if row_id in self.inflight():  # not finished: our lease ran out and another agent took it
                        log.warning("lost the claim on publish %d: its lease (%.0f s) ran out while this agent was "
                                    "frozen or cut off, and another agent took it over", row_id, self.lease_seconds)
                except Exception:
                    log.warning("journal: cannot renew the lease of publish %d", row_id, exc_info=True)
            try:
                if self.journal.recover(self.agent, now, self._alive):
                    self.wake()
            except Exception:
                log.warning("journal: recovery of stale publishes failed", exc_info=True)

    def wake(self) -> None:
        with self._cv:
            self._cv.notify_all()

    def inflight(self) -> list[int]:
        with self._cv:
            return list(self._inflight)

    @property
    def busy(self) -> int:
        with self._cv:
            return len(self._inflight)

    def stop(self, grace: float) -> list[int]:
        """Stop claiming; give in-flight publishes ``grace`` seconds, then park the rest as
        pending/uncertain (the next start looks before it creates). Returns parked ids."""
        with self._cv:
            self._halt = True
            self._cv.notify_all()
        deadline = time.monotonic() + grace
        for t in self.threads:
            if t.is_alive():
                t.join(max(0.0, deadline - time.monotonic()))
        if self._keeper.is_alive():
            self._keeper.join(2.0)
        parked = []
        with self._cv:
            stuck = list(self._inflight)
        for row_id in stuck:
            try:
                self.journal.release(row_id, self.agent)
                parked.append(row_id)
            except TransitionError:
                pass  # it finished after all
        if parked:
            log.warning("shutdown: %d publish(es) still running after %.0f s, parked for the next start: %s",
                        len(parked), grace, parked)
        return parked

    # -- worker ------------------------------------------------------------------------------
    def _run(self) -> None:
        batch = max(1, int(getattr(self.backend, "batch_size", 1)))
        while True:
            with self._cv:
                if self._halt:
                    return
            try:
                rows = self.journal.claim_many(self.agent, self._clock(), self.lease_seconds, batch)
            except Exception:
                log.exception("journal: claim failed; retrying in 5 s")
                with self._cv:
                    self._cv.wait(5)
                continue
            if not rows:
                self._idle_wait()
                continue
            jobs = [self._job(r) for r in rows]
            keys = [self.backend.serialize_key(j) for j in jobs]
            with self._cv:
                for row, skey in zip(rows, keys):
                    while skey in self._serial and not self._halt:
                        self._cv.wait(0.5)  # another worker publishes the same tracker key: wait for it
                    self._serial[skey] += 1
                    self._inflight[row.id] = skey
            try:
                self._publish(rows, jobs)
            except Exception:  # a journal outage mid-publish: the rows stay leased, recover() brings them back
                log.exception("publish: could not record the outcome of %d publish(es) in the journal", len(rows))
            finally:
                with self._cv:
                    for row, skey in zip(rows, keys):
                        self._inflight.pop(row.id, None)
                        self._serial[skey] -= 1
                        if self._serial[skey] <= 0:
                            del self._serial[skey]
                    self._cv.notify_all()

    def _idle_wait(self) -> None:
        """Nothing could be claimed: sleep until the next row is due (or the pipeline wakes us).
        A row already due that we could not claim is being taken by another worker or agent
        right now: look again shortly, not in a spin."""
        due = self.journal.next_due()
        wait = 2.0 if due is None else min(2.0, max(0.2, due - self._clock()))
        with self._cv:
            if not self._halt:
                self._cv.wait(wait)

    def _job(self, row: Row) -> Job:
        return Job(id=row.id, publish=row.publish, attempts=row.attempts, uncertain=row.uncertain,
                   state=dict(row.state), save_state=lambda st, rid=row.id: self.journal.save_state(rid, st),
                   amend=row.tracker_id is not None, previous_id=row.tracker_id)

    def _publish(self, rows: list[Row], jobs: list[Job]) -> None:
        """Publish a claimed batch, then record every success in one journal transaction and
        each failure on its own."""
        t0 = time.monotonic()
        try:
            results = self.backend.publish_batch(jobs)
        except Exception as exc:  # a backend bug: keep the rows, retry later, show the error
            log.exception("publish: unexpected error in backend %s", self.backend.name)
            results = [PublishError(f"{type(exc).__name__}: {exc}") for _ in jobs]
            for row, res in zip(rows, results):
                self._failed(row, res, retryable=True)
            return
        took = time.monotonic() - t0
        done = [(row, res) for row, res in zip(rows, results) if not isinstance(res, PublishError)]
        for row, res in zip(rows, results):
            if isinstance(res, PublishError):
                self._failed(row, res)
        lost = set(self.journal.published_many(self.agent, self.backend.name, [(r.id, ref) for r, ref in done],
                                                    then=self.on_published))
        if len(lost) < len(done):
            self.after_published()
        for row, ref in done:
            p = row.publish
            if row.id in lost:
                log.warning("publish %s: lost the claim on publish %d while it ran (lease expired or parked); not "
                            "recorded here: the agent that took it over finds %s %s", p.path, row.id,
                            self.backend.name, ref.id)
                continue
            self.published += 1
            latency = max(0.0, time.time() - p.mtime) if p.mtime else 0.0
            if self.metrics is not None:
                self.metrics.published(self.backend.name, latency)
            ent = f"{p.entity.type} {p.entity.name}" if p.entity else "-"
            log.info("%s%s%s %s v%s %s %s %s (%.0f ms after last write, %.0f ms in tracker)",
                     "" if ref.adopted else "published ", p.path, _frames_text(p), ent,
                     p.version if p.version is not None else "-", "adopted existing" if ref.adopted else "as",
                     self.backend.name, ref.id, latency * 1000, took * 1000,
                     extra={"publish": {"id": row.id, "path": p.path, "frames": p.frames, "entity": ent,
                                        "version": p.version, "tracker_id": ref.id, "adopted": ref.adopted,
                                        "latency_ms": round(latency * 1000)}})

    def _failed(self, row: Row, exc: PublishError, *, retryable: bool | None = None) -> None:
        retry = exc.retryable if retryable is None else retryable
        attempts = row.attempts + 1
        if self.metrics is not None:
            self.metrics.failed(self.backend.name, type(exc).__name__, retry=retry and attempts < self.max_attempts)
        try:
            if retry and attempts < self.max_attempts:
                delay = backoff_delay(attempts - 1, base=self.retry_base, cap=self.retry_cap, retry_after=exc.retry_after)
                self.journal.retry_later(row.id, self.agent, exc.message, self._clock() + delay)
                log.warning("publish %s: %s (attempt %d of %d; next in %.0f s)", row.publish.path, exc.message,
                            attempts, self.max_attempts, delay)
            else:
                self.journal.fail(row.id, self.agent, exc.message)
                self.failed += 1
                why = "refused" if isinstance(exc, PermanentError) else f"gave up after {attempts} attempts"
                log.error("publish %s: %s: %s (parked as failed; `watcher retry %d` once fixed)",
                          row.publish.path, why, exc.message, row.id)
        except TransitionError:
            log.warning("publish %s: row %d was parked meanwhile", row.publish.path, row.id)


def _frames_text(p: Publish) -> str:
    """`` [1001-1024, missing 1013]``: holes are said where the publish is announced."""
    if not p.frames:
        return ""
    return f" [{p.frames}" + (f", missing {p.missing_frames}]" if p.missing_frames else "]")
