"""The embedded default tracker: publishes are registered in the journal's own database,
numbered as a tracker would (id, created_at), so a studio without a tracker (or a test rig)
gets the whole pipeline, `watcher publishes` and exactly-once, with nothing to set up."""
from __future__ import annotations

from ..model import Job, TrackerRef
from .base import Backend, BackendSettings, CheckResult


class LocalSettings(BackendSettings):
    pass


class LocalBackend(Backend):
    name = "local"
    Settings = LocalSettings

    def publish(self, job: Job) -> TrackerRef:
        # One entry per idempotency key: a retry after a crash finds the entry it made before.
        reg_id, _created = self.context.journal.registry_add(job.publish.key, job.publish.to_dict())
        return TrackerRef(id=str(reg_id))

    def check(self) -> list[CheckResult]:
        return [CheckResult(True, "local registry", f"in the journal {self.context.journal.url}")]
