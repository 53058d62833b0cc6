"""The embedded default tracker: publishes are registered in a ``registry`` table of the journal's
own database, numbered as a tracker would (id, created_at), so a studio without a tracker (or a
test rig) gets the whole pipeline, `watcher publishes` and exactly-once, with nothing to set up."""
from __future__ import annotations

import time
from typing import Any

from ..errors import JournalError, PublishError, RetryableError
from ..journal import open_database
from ..journal.ledger import ensure_schema, insert_rows
from ..model import Job, TrackerRef
from .base import Backend, BackendContext, BackendSettings, CheckResult


class LocalSettings(BackendSettings):
    pass


class Registry:
    """One entry per idempotency key: a retry after a crash finds the entry it made before."""

    def __init__(self, journal_url: str) -> None:
        self.db = open_database(journal_url)
        ensure_schema(self.db)  # its table is part of the journal's schema
        self.url = self.db.url

    def add(self, key: str, payload: dict[str, Any]) -> tuple[int, float]:
        """Insert once per key (a second call updates the payload); returns (id, created_at)."""
        [entry] = self.add_many([(key, payload)])
        return entry

    def add_many(self, items: list[tuple[str, dict[str, Any]]]) -> list[tuple[int, float]]:
        """``add`` for a batch, in one transaction."""
        to_json = self.db.dialect.to_json

        def run(cur: Any) -> list[tuple[int, float]]:
            now = time.time()
            got: dict[str, tuple[int, float]] = {}
            latest = dict(items)  # a key twice in one batch: its last payload
            rows = insert_rows(cur, self.db.dialect, "INSERT INTO registry (key, created_at, payload)",
                               ("text", "real", "json"), [(k, now, to_json(p)) for k, p in latest.items()],
                               "ON CONFLICT (key) DO UPDATE SET payload=excluded.payload RETURNING key, id, created_at")
            got.update((k, (rid, at)) for k, rid, at in rows)
            return [got[key] for key, _ in items]

        return self.db.write(run)

    def entries(self) -> list[tuple[int, str, float, dict[str, Any]]]:
        load = self.db.dialect.from_json
        return [(i, k, t, load(p)) for i, k, t, p in self.db.read(lambda cur: cur.execute(
            "SELECT id, key, created_at, payload FROM registry ORDER BY id").fetchall())]

    def close(self) -> None:
        self.db.close()


class LocalBackend(Backend):
    name = "local"
    Settings = LocalSettings

    def __init__(self, settings: LocalSettings, context: BackendContext) -> None:
        super().__init__(settings, context)
        self.registry = Registry(context.journal_url)

    batch_size = 256
    max_workers = 1  # its writes are in-process: one thread with whole batches is the fastest

    def publish(self, job: Job) -> TrackerRef:
        reg_id, _created = self.registry.add(job.publish.key, job.publish.to_dict())
        return TrackerRef(id=str(reg_id))

    def publish_batch(self, jobs: list[Job]) -> list[TrackerRef | PublishError]:
        try:
            entries = self.registry.add_many([(j.publish.key, j.publish.to_dict()) for j in jobs])
        except JournalError as exc:
            return [RetryableError(f"local registry: {exc}") for _ in jobs]
        return [TrackerRef(id=str(reg_id)) for reg_id, _created in entries]

    def check(self) -> list[CheckResult]:
        return [CheckResult(True, "local registry", f"in the journal {self.registry.url}")]

    def close(self) -> None:
        self.registry.close()
