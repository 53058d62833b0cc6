"""Publisher workers: a bounded pool that claims due rows from the journal, hands them to the
backend and records the outcome. Each outcome is one guarded journal transition, so a crash at
any point leaves a row that the next start resumes (``publishing`` rows come back
``uncertain`` and the backend looks before it creates).

The pool owns its claims: a keeper thread renews the leases of what it holds and takes back rows
whose agent died (a killed process here, another machine sharing a PostgreSQL journal). An
outcome the journal cannot take now (locked, full, read-only) is kept in memory, its row's
lease renewed, and recorded once the journal takes writes again: the publish is not made twice
and the row does not stay ``publishing`` for the agent's lifetime."""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Callable

from ..errors import JournalError, PermanentError, PublishError
from ..agent import alive
from ..journal.base import JournalUnavailable, Row, TransitionError
from ..journal.ledger import Journal, Then
from ..model import Job, Publish, TrackerRef
from ..names import shown
from .base import Backend
from .retry import backoff_delay

if TYPE_CHECKING:  # pragma: no cover
    from ..metrics import Metrics

log = logging.getLogger("watcher.publish")
LOG_EACH_UP_TO = 8  # a batch this small gets one INFO line per publish; a larger one a summary

# A row this agent claimed but holds nowhere (its claim's commit failed as far as we know, yet
# landed) is taken back once it has been left alone this long; far above a claim's own duration.
ORPHANED_AFTER = 30.0


@dataclass
class Outcome:
    """What the backend did with a claimed row, kept until the journal has recorded it."""

    row: Row
    ref: TrackerRef | None = None  # published as this
    error: PublishError | None = None  # or failed with this
    retryable: bool | None = None  # overrides error.retryable (a backend bug: always retried)
    took: float = 0.0  # seconds in the tracker


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
        self._claimed: set[int] = set()  # claimed, not yet in flight (waiting for a serialize key)
        self._unrecorded: dict[int, Outcome] = {}  # outcomes the journal could not take yet
        self._serial: Counter[str] = Counter()
        self.published = 0
        self.failed = 0
        self._alive = agent_alive
        self.metrics = metrics  # counters for /metrics (watcher/metrics.py)
        self.on_published = on_published  # runs in the transaction that records a publish (webhooks)
        self.after_published = after_published
        self.orphaned_after = ORPHANED_AFTER
        workers = min(workers, getattr(backend, "max_workers", None) or workers)
        self.threads = [threading.Thread(target=self._run, name=f"publisher-{i}", daemon=True) for i in range(workers)]
        self._keeper = threading.Thread(target=self._keep_leases, name="publisher-leases", daemon=True)

    def start(self) -> None:
        """Start claiming; the keeper first takes back what a dead agent left mid-flight (in its
        thread: a journal locked by another process must not hold up the agent's start)."""
        for t in self.threads:
            t.start()
        self._keeper.start()

    def _recover_at_start(self) -> None:
        try:
            recovered = self.journal.recover(self.agent, self._clock(), self._alive)
        except JournalUnavailable:
            return  # said once by the journal; the keeper's rounds recover them later
        except JournalError as exc:
            log.error("journal: cannot look for interrupted publishes now: %s; tried again later", exc)
            return
        if recovered:
            log.warning("journal: %d publish(es) were interrupted mid-flight; resuming them (the backend looks "
                        "for what they may have created first)", recovered)
            self.wake()

    def holding(self) -> set[int]:
        """Rows this agent works on now: claimed, in flight, or with an outcome to record."""
        with self._cv:
            return set(self._claimed) | set(self._inflight) | set(self._unrecorded)

    @property
    def unrecorded(self) -> int:
        """Outcomes waiting for the journal (shown in the status)."""
        with self._cv:
            return len(self._unrecorded)

    def _keep_leases(self) -> None:
        """Renew our leases well before they run out, record outcomes the journal could not take,
        and recover rows of dead agents (and our own that nobody holds)."""
        self._recover_at_start()
        every = self.lease_seconds / 6
        renew_at = time.monotonic() + every
        while True:
            period = every
            if self._unrecorded or self.journal.health.down:  # outcomes to record: look more often
                period = min(period, max(0.05, self.journal.health.retry_in(), min(self.retry_base, 1.0)))
            with self._cv:
                if self._halt or self._cv.wait_for(lambda: self._halt, period):
                    return
            now = self._clock()
            if time.monotonic() < renew_at:
                self._record_unrecorded()
                continue
            renew_at = time.monotonic() + every
            for row_id in self.holding():
                try:
                    self.journal.renew(row_id, self.agent, now + self.lease_seconds)
                except TransitionError:
                    if row_id in self.holding():  # not finished: our lease ran out and another agent took it
                        log.warning("lost the claim on publish %d: its lease (%.0f s) ran out while this agent was "
                                    "frozen or cut off, and another agent took it over", row_id, self.lease_seconds)
                        with self._cv:
                            self._unrecorded.pop(row_id, None)
                except JournalUnavailable:
                    break  # said once by the journal; tried again at the next tick
                except JournalError as exc:
                    log.warning("journal: cannot renew the lease of publish %d: %s", row_id, exc)
            self._record_unrecorded()
            try:
                if self.journal.recover(self.agent, now, self._alive, holding=self.holding,
                                        orphaned_after=self.orphaned_after):
                    self.wake()
            except JournalUnavailable:
                pass
            except JournalError as exc:
                log.warning("journal: recovery of stale publishes failed: %s", exc)

    def wake(self) -> None:
        with self._cv:
            self._cv.notify_all()

    def inflight(self) -> list[int]:
        with self._cv:
            return list(self._inflight)

    @property
    def busy(self) -> int:
        with self._cv:
            return len(self._inflight) + len(self._unrecorded)

    def stop(self, grace: float) -> list[int]:
        """Stop claiming; give in-flight publishes ``grace`` seconds, then park the rest as
        pending/uncertain (the next start looks before it creates). Returns parked ids.
        Outcomes the journal still cannot take stay ``publishing`` under this agent: the next
        start takes them back (agent gone) and the backend finds what was created."""
        with self._cv:
            self._halt = True
            self._cv.notify_all()
        deadline = time.monotonic() + grace
        for t in self.threads:
            if t.is_alive():
                t.join(max(0.0, deadline - time.monotonic()))
        if self._keeper.is_alive():
            self._keeper.join(2.0)
        self._record_unrecorded()
        parked = []
        with self._cv:
            stuck = list(self._inflight)
            left = len(self._unrecorded)
        for row_id in stuck:
            try:
                self.journal.release(row_id, self.agent)
                parked.append(row_id)
            except TransitionError:
                pass  # it finished after all
            except JournalError as exc:
                log.warning("shutdown: publish %d could not be parked (%s); the next start resumes it", row_id, exc)
        if parked:
            log.warning("shutdown: %d publish(es) still running after %.0f s, parked for the next start: %s",
                        len(parked), grace, parked)
        if left:
            log.warning("shutdown: the outcome of %d publish(es) could not be recorded (the journal takes no writes); "
                        "the next start resumes them and the backend finds what they created", left)
        return parked

    # -- worker ------------------------------------------------------------------------------
    def _run(self) -> None:
        batch = max(1, int(getattr(self.backend, "batch_size", 1)))
        while True:
            with self._cv:
                if self._halt:
                    return
            wait = self.journal.health.retry_in()
            if wait > 0:  # this thread found the journal unavailable: its backoff first
                with self._cv:
                    if not self._halt:
                        self._cv.wait(wait)
                continue
            try:
                rows = self.journal.claim_many(self.agent, self._clock(), self.lease_seconds, batch)
            except JournalUnavailable:
                continue  # said once by the journal; this thread's backoff applies
            except Exception as exc:  # noqa: BLE001 - a worker must outlive any one failure
                log.error("journal: claim failed: %s; retrying in 5 s", exc)
                log.debug("claim failure", exc_info=True)
                with self._cv:
                    self._cv.wait(5)
                continue
            if not rows:
                self._idle_wait()
                continue
            with self._cv:
                self._claimed.update(r.id for r in rows)
            try:
                jobs = [self._job(r) for r in rows]
                keys = [self.backend.serialize_key(j) for j in jobs]
            except Exception as exc:  # noqa: BLE001 - a bad row must not stop the worker
                log.error("publish: cannot prepare %d claimed publish(es): %s; they are released and tried again",
                          len(rows), exc)
                self._release_claimed(rows)
                continue
            with self._cv:
                for row, skey in zip(rows, keys):
                    while skey in self._serial and not self._halt:
                        self._cv.wait(0.5)  # another worker publishes the same tracker key: wait for it
                    self._serial[skey] += 1
                    self._inflight[row.id] = skey
                    self._claimed.discard(row.id)
            try:
                self._publish(rows, jobs)
            except Exception as exc:  # noqa: BLE001 - a bug here: the rows are taken back by recover()
                log.error("publish: unexpected error with %d publish(es): %s", len(rows), exc)
                log.debug("publish failure", exc_info=True)
            finally:
                with self._cv:
                    for row, skey in zip(rows, keys):
                        self._inflight.pop(row.id, None)
                        self._serial[skey] -= 1
                        if self._serial[skey] <= 0:
                            del self._serial[skey]
                    self._cv.notify_all()

    def _release_claimed(self, rows: list[Row]) -> None:
        for row in rows:
            try:
                self.journal.release(row.id, self.agent)
            except JournalError:
                pass  # left to recover(): the row is not held, so it comes back after ORPHANED_AFTER
        with self._cv:
            self._claimed.difference_update(r.id for r in rows)

    def _idle_wait(self) -> None:
        """Nothing could be claimed: sleep until the next row is due (or the pipeline wakes us).
        A row already due that we could not claim is being taken by another worker or agent
        right now: look again shortly, not in a spin."""
        try:
            due = self.journal.next_due()
        except JournalError:
            due = None
        wait = 2.0 if due is None else min(2.0, max(0.2, due - self._clock()))
        with self._cv:
            if not self._halt:
                self._cv.wait(wait)

    def _job(self, row: Row) -> Job:
        return Job(id=row.id, publish=row.publish, attempts=row.attempts, uncertain=row.uncertain,
                   state=dict(row.state), save_state=partial(self.journal.save_state, row.id),
                   amend=row.tracker_id is not None, previous_id=row.tracker_id)

    def _publish(self, rows: list[Row], jobs: list[Job]) -> None:
        """Publish a claimed batch, then record every success in one journal transaction and
        each failure on its own; what the journal cannot take now is kept for the keeper."""
        t0 = time.monotonic()
        try:
            results = self.backend.publish_batch(jobs)
        except Exception as exc:  # noqa: BLE001 - a backend bug: keep the rows, retry later, show the error
            log.error("publish: unexpected error in backend %s: %s: %s", self.backend.name, type(exc).__name__, exc)
            log.debug("backend failure", exc_info=True)
            outcomes = [Outcome(row, error=PublishError(f"{type(exc).__name__}: {exc}"), retryable=True)
                        for row in rows]
        else:
            took = time.monotonic() - t0
            outcomes = [Outcome(row, error=res, took=took) if isinstance(res, PublishError)
                        else Outcome(row, ref=res, took=took) for row, res in zip(rows, results)]
        self._record(outcomes)

    def _record(self, outcomes: list[Outcome]) -> None:
        """Record outcomes in the journal: successes in one transaction, failures one by one.
        Those it cannot take now wait in ``_unrecorded`` (their rows stay held and leased)."""
        keep: list[Outcome] = []
        for o in [o for o in outcomes if o.error is not None]:
            try:
                self._failed(o.row, o.error, retryable=o.retryable)  # type: ignore[arg-type]
            except TransitionError:
                log.warning("publish %s: row %d was parked meanwhile", shown(o.row.publish.path), o.row.id)
            except JournalError as exc:
                self._note_unrecorded(exc)
                keep.append(o)
        done = [o for o in outcomes if o.ref is not None]
        if done:
            try:
                lost = set(self.journal.published_many(self.agent, self.backend.name,
                                                       [(o.row.id, o.ref) for o in done],  # type: ignore[misc]
                                                       then=self.on_published))
            except JournalError as exc:
                self._note_unrecorded(exc)
                keep += done
            else:
                self._announce(done, lost)
        with self._cv:
            for o in outcomes:
                self._unrecorded.pop(o.row.id, None)
            for o in keep:
                self._unrecorded[o.row.id] = o

    def _note_unrecorded(self, exc: JournalError) -> None:
        if not isinstance(exc, JournalUnavailable):  # the journal's own faults are said once, by it
            log.error("journal: cannot record a publish outcome: %s; kept and recorded later", exc)

    def _record_unrecorded(self) -> None:
        with self._cv:
            waiting = list(self._unrecorded.values())
        if waiting:
            self._record(waiting)

    def _announce(self, done: list[Outcome], lost: set[int]) -> None:
        if len(lost) < len(done):
            self.after_published()
        # A burst publishes thousands a second: one INFO line per publish would cost more than the
        # publish itself and nobody reads it. Small batches (an artist's save) keep a line each;
        # a large batch says one line at INFO and the details at DEBUG (the journal has them all).
        level = logging.INFO if len(done) <= LOG_EACH_UP_TO else logging.DEBUG
        each = log.isEnabledFor(level)
        count = 0
        for o in done:
            row, ref = o.row, o.ref
            assert ref is not None
            p = row.publish
            if row.id in lost:
                log.warning("publish %s: lost the claim on publish %d while it ran (lease expired or parked); not "
                            "recorded here: the agent that took it over finds %s %s", shown(p.path), row.id,
                            self.backend.name, ref.id)
                continue
            count += 1
            latency = max(0.0, time.time() - p.mtime) if p.mtime else 0.0
            if self.metrics is not None:
                self.metrics.published(self.backend.name, latency)
            if each:
                self._say(level, o, latency)
        self.published += count
        if count and level != logging.INFO:
            log.info("published %d publishes as %s in %.0f ms (%s … %s); `watcher publishes` lists them", count,
                     self.backend.name, done[0].took * 1000, done[0].row.publish.path, done[-1].row.publish.path)

    def _say(self, level: int, o: Outcome, latency: float) -> None:
        row, ref, p = o.row, o.ref, o.row.publish
        assert ref is not None
        ent = f"{p.entity.type} {p.entity.name}" if p.entity else "-"
        log.log(level, "%s%s%s %s v%s %s %s %s (%.0f ms after last write, %.0f ms in tracker)",
                "" if ref.adopted else "published ", p.path, _frames_text(p), ent,
                p.version if p.version is not None else "-", "adopted existing" if ref.adopted else "as",
                self.backend.name, ref.id, latency * 1000, o.took * 1000,
                extra={"publish": {"id": row.id, "path": p.path, "frames": p.frames, "entity": ent,
                                   "version": p.version, "tracker_id": ref.id, "adopted": ref.adopted,
                                   "latency_ms": round(latency * 1000)}})

    def _failed(self, row: Row, exc: PublishError, *, retryable: bool | None = None) -> None:
        """Record a failed attempt (retry later, or park as failed); raises the journal's error
        when it cannot be recorded (the caller keeps the outcome)."""
        retry = exc.retryable if retryable is None else retryable
        attempts = row.attempts + 1
        if retry and attempts < self.max_attempts:
            delay = backoff_delay(attempts - 1, base=self.retry_base, cap=self.retry_cap, retry_after=exc.retry_after)
            self.journal.retry_later(row.id, self.agent, exc.message, self._clock() + delay)
            log.warning("publish %s: %s (attempt %d of %d; next in %.0f s)", shown(row.publish.path), exc.message,
                        attempts, self.max_attempts, delay)
        else:
            self.journal.fail(row.id, self.agent, exc.message)
            self.failed += 1
            why = "refused" if isinstance(exc, PermanentError) else f"gave up after {attempts} attempts"
            log.error("publish %s: %s: %s (parked as failed; `watcher retry %d` once fixed)",
                      shown(row.publish.path), why, exc.message, row.id)
        if self.metrics is not None:
            self.metrics.failed(self.backend.name, type(exc).__name__, retry=retry and attempts < self.max_attempts)


def _frames_text(p: Publish) -> str:
    """`` [1001-1024, missing 1013]``: holes are said where the publish is announced."""
    if not p.frames:
        return ""
    return f" [{p.frames}" + (f", missing {p.missing_frames}]" if p.missing_frames else "]")
