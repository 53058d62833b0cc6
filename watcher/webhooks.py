"""Webhooks: ``on_publish:`` URLs are told about every publish, durably.

A delivery is a row of the journal's ``deliveries`` table, written in the same transaction that
marks its publish ``published`` (``enqueue``), so it exists exactly when the publish does: a
webhook outage, a restart or a ``kill -9`` loses none. The ``Deliverer`` thread POSTs each one
(the publish as ``watcher publishes --json`` shows it), signed with HMAC-SHA256 over the body::

    X-Watcher-Delivery: 3f2a...        the same on every retry: receivers drop repeats
    X-Watcher-Event: publish
    X-Watcher-Signature: sha256=<hex>  hmac(secret, body, sha256); absent without a secret

Failures are retried with capped, jittered exponential backoff; after ``max_attempts`` the
delivery is parked as ``failed`` (shown by `watcher status`, which then exits 1) until
`watcher retry --webhooks`. A claimed delivery carries a short lease, so one that an agent
dropped mid-send (crash) is sent again, with the same delivery id."""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable

import requests

from .agent import alive
from .journal.base import JournalError, JournalUnavailable, Row
from .journal.ledger import Cursor, Database
from .logs import hide_url_password
from .publish.retry import backoff_delay

log = logging.getLogger("watcher.webhooks")

SIGNATURE_HEADER = "X-Watcher-Signature"
DELIVERY_HEADER = "X-Watcher-Delivery"
EVENT_HEADER = "X-Watcher-Event"
IDLE_POLL = 2.0


class DeliveryStatus(str, Enum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


@dataclass(frozen=True)
class Delivery:
    id: int
    delivery_id: str
    publish_id: int
    url: str
    payload: dict[str, Any]
    attempts: int


def body_of(payload: dict[str, Any]) -> bytes:
    """The exact bytes sent (and signed): the same for every attempt of a delivery."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sign(key: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def verify(key: bytes, body: bytes, header: str | None) -> bool:
    """For receivers (and the tests): does ``header`` sign ``body`` with ``key``?"""
    return header is not None and hmac.compare_digest(sign(key, body), header)


def enqueuer(db: Database, urls_for: Callable[[str], list[str]], any_hooks: Callable[[], bool] = lambda: True,
             clock: Callable[[], float] = time.time) -> Callable[[Cursor, int, Callable[[], Row]], None]:
    """The hook the publishers pass to ``Journal.published``: one delivery per URL of the
    publish's root, in the transaction that marks it published. Without any webhook configured
    it reads nothing (the row is fetched only when a delivery may be made)."""
    to_json = db.dialect.to_json

    def enqueue(cur: Cursor, row_id: int, fetch: Callable[[], Row]) -> None:
        if not any_hooks():
            return
        row = fetch()
        urls = urls_for(row.publish.root)
        if not urls:
            return
        now = clock()
        payload = to_json(row.to_json())
        cur.executemany("INSERT INTO deliveries (delivery_id, publish_id, url, payload, status, next_attempt_at, "
                        "created_at) VALUES (?,?,?,?,?,?,?)",
                        [(uuid.uuid4().hex, row.id, url, payload, DeliveryStatus.PENDING.value, now, now)
                         for url in urls])

    return enqueue


def summary(db: Database) -> dict[str, Any]:
    """Counts by status and the latest error of a delivery not yet delivered."""
    counts = {s.value: 0 for s in DeliveryStatus}
    for status, n in db.read(lambda cur: cur.execute(
            "SELECT status, COUNT(*) FROM deliveries GROUP BY status").fetchall()):
        counts[status] = n
    last = db.read(lambda cur: cur.execute(
        "SELECT id, url, attempts, last_error FROM deliveries WHERE status<>? AND last_error IS NOT NULL "
        "ORDER BY id DESC LIMIT 1", (DeliveryStatus.DELIVERED.value,)).fetchone())
    out: dict[str, Any] = dict(counts)
    out["last_error"] = ({"delivery": last[0], "url": hide_url_password(last[1]), "attempts": last[2],
                          "error": hide_url_password(last[3])} if last else None)
    return out


def requeue_failed(db: Database, clock: Callable[[], float] = time.time) -> int:
    """``failed → pending`` for every parked delivery (`watcher retry --webhooks`)."""
    return db.write(lambda cur: cur.execute(
        "UPDATE deliveries SET status=?, attempts=0, next_attempt_at=?, agent=NULL, lease_until=NULL WHERE status=?",
        (DeliveryStatus.PENDING.value, clock(), DeliveryStatus.FAILED.value)).rowcount)


class Deliverer(threading.Thread):
    """One thread sending due deliveries, oldest first."""

    def __init__(self, db: Database, agent: str, *, key: bytes | None, timeout: float = 10.0,
                 max_attempts: int = 20, retry_base: float = 2.0, retry_cap: float = 600.0,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(name="webhooks", daemon=True)
        self.db, self.agent, self.key = db, agent, key
        self.timeout, self.max_attempts = timeout, max_attempts
        self.retry_base, self.retry_cap = retry_base, retry_cap
        self.lease_seconds = timeout * 3 + 5
        self._clock = clock
        self._wake = threading.Event()
        self._halt = threading.Event()
        self._session = requests.Session()
        self.outcomes: Counter[str] = Counter()  # delivered / retry / failed (this run; metrics)

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._halt.set()
        self._wake.set()

    def close(self) -> None:
        """After the thread has ended: hand back any delivery still leased to us."""
        try:
            self.db.write(lambda cur: cur.execute(
                "UPDATE deliveries SET agent=NULL, lease_until=NULL WHERE agent=? AND status=?",
                (self.agent, DeliveryStatus.PENDING.value)))
        except Exception:
            log.warning("webhooks: could not release leased deliveries; they are sent again once the lease "
                        "runs out")
            log.debug("release failure", exc_info=True)
        self._session.close()

    # -- the thread --------------------------------------------------------------------------
    def run(self) -> None:
        try:
            self._recover()
        except Exception:
            log.warning("webhooks: recovery of deliveries left by stopped agents failed; their leases run out instead")
            log.debug("recovery failure", exc_info=True)
        while not self._halt.is_set():
            try:
                d = self._claim()
            except JournalUnavailable:  # the journal says it is down (once); its backoff paces us
                self._halt.wait(max(1.0, self.db.health.retry_in()))
                continue
            except Exception as exc:
                log.error("webhooks: claim failed: %s; retrying in 5 s", exc)
                log.debug("claim failure", exc_info=True)
                self._halt.wait(5)
                continue
            if d is None:
                self._wake.wait(self._idle_wait())
                self._wake.clear()
                continue
            self._send(d)

    def _idle_wait(self) -> float:
        try:
            due = self._next_due()
        except JournalError:  # the claim that follows says so, paced by the journal's backoff
            return IDLE_POLL
        return IDLE_POLL if due is None else min(IDLE_POLL, max(0.01, due - self._clock()))

    def _next_due(self) -> float | None:
        return self.db.read(lambda cur: cur.execute(
            "SELECT MIN(next_attempt_at) FROM deliveries WHERE status=?",
            (DeliveryStatus.PENDING.value,)).fetchone()[0])

    def _recover(self) -> None:
        """Leases of agents that are gone (this host) are handed back at once."""
        owners = self.db.read(lambda cur: cur.execute(
            "SELECT DISTINCT agent FROM deliveries WHERE agent IS NOT NULL AND status=?",
            (DeliveryStatus.PENDING.value,)).fetchall())
        for (owner,) in owners:
            if owner != self.agent and not alive(owner):
                def release(cur: Cursor, o: str = owner) -> Any:
                    return cur.execute("UPDATE deliveries SET agent=NULL, lease_until=NULL WHERE agent=?", (o,))
                self.db.write(release)

    def _claim(self) -> Delivery | None:
        now = self._clock()
        lock = self.db.dialect.lock_rows

        def run(cur: Cursor) -> Any:
            return cur.execute(
                "UPDATE deliveries SET agent=?, lease_until=? WHERE id = (SELECT id FROM deliveries "
                "WHERE status=? AND next_attempt_at<=? AND (lease_until IS NULL OR lease_until<?) "
                f"ORDER BY next_attempt_at, id LIMIT 1{lock}) "
                "RETURNING id, delivery_id, publish_id, url, payload, attempts",
                (self.agent, now + self.lease_seconds, DeliveryStatus.PENDING.value, now, now)).fetchone()

        r = self.db.write(run)
        if r is None:
            return None
        return Delivery(r[0], r[1], r[2], r[3], self.db.dialect.from_json(r[4]), r[5])

    def _send(self, d: Delivery) -> None:
        body = body_of(d.payload)
        headers = {"Content-Type": "application/json", DELIVERY_HEADER: d.delivery_id, EVENT_HEADER: "publish",
                   "User-Agent": "watcher-webhooks"}
        if self.key:
            headers[SIGNATURE_HEADER] = sign(self.key, body)
        error: str | None = None
        try:
            resp = self._session.post(d.url, data=body, headers=headers, timeout=self.timeout)
            if resp.status_code >= 300:
                error = hide_url_password(f"HTTP {resp.status_code}: {resp.text[:200]}")
        except requests.exceptions.SSLError as exc:
            error = f"TLS certificate check failed ({type(exc).__name__}); the receiver needs a certificate " \
                    "this machine trusts"
        except requests.RequestException as exc:
            error = f"{type(exc).__name__}: cannot reach {hide_url_password(d.url)}"
        now = self._clock()
        attempts = d.attempts + 1
        if error is None:
            self._finish(d, "status=?, delivered_at=?, last_error=NULL", (DeliveryStatus.DELIVERED.value, now), attempts)
            self.outcomes["delivered"] += 1
            log.info("webhook %s: delivered publish %d (delivery %s)", d.url, d.publish_id, d.delivery_id)
        elif attempts >= self.max_attempts:
            self._finish(d, "status=?, last_error=?, next_attempt_at=NULL", (DeliveryStatus.FAILED.value, error),
                         attempts)
            self.outcomes["failed"] += 1
            log.error("webhook %s: publish %d not delivered after %d attempts: %s (parked; "
                      "`watcher retry --webhooks` once the receiver is fixed)", d.url, d.publish_id, attempts, error)
        else:
            delay = backoff_delay(attempts - 1, base=self.retry_base, cap=self.retry_cap)
            self._finish(d, "last_error=?, next_attempt_at=?", (error, now + delay), attempts)
            self.outcomes["retry"] += 1
            log.warning("webhook %s: publish %d: %s (attempt %d of %d; next in %.1f s)", d.url, d.publish_id,
                        error, attempts, self.max_attempts, delay)

    def _finish(self, d: Delivery, sets: str, params: tuple[Any, ...], attempts: int) -> None:
        self.db.write(lambda cur: cur.execute(
            f"UPDATE deliveries SET {sets}, attempts=?, agent=NULL, lease_until=NULL WHERE id=? AND agent=?",
            (*params, attempts, d.id, self.agent)))


__all__ = ["Deliverer", "DeliveryStatus", "enqueuer", "summary", "requeue_failed", "sign", "verify", "body_of",
           "SIGNATURE_HEADER", "DELIVERY_HEADER"]
