"""The backend plug-in interface. Adding a tracker = one module defining a ``Backend`` subclass
(plus its ``Settings`` model) and its tests; nothing in the pipeline changes.

A backend is found by the ``tracker.backend`` name: built-ins in ``watcher.publish.BUILTIN``,
others through the ``watcher.backends`` entry-point group."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from ..errors import PublishError
from ..model import Job, Publish, TrackerRef

class BackendSettings(BaseModel):
    """Base of each backend's settings (the ``tracker:`` section minus ``backend``).
    Unknown keys are errors so that a typo never silently falls back to a default."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class BackendContext:
    """What the service gives a backend besides its settings."""

    config_dir: Path  # relative paths in the tracker section resolve against it
    roots: dict[str, Path]  # root name -> absolute path (for local storages, unmanaged locations)
    publish_types: tuple[str, ...] = ()  # every type the templates' publishes rules name (`watcher check`)
    journal_url: str = ""  # the local registry keeps its table in the journal's database


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    what: str  # "credentials", "project 'My Show'", "publish type 'Rendered Image'"...
    detail: str = ""

    def __str__(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'} {self.what}{': ' + self.detail if self.detail else ''}"


class Backend(ABC):
    """One tracker. Instances are shared by the publisher workers: ``publish`` must be
    thread-safe (keep per-thread HTTP sessions or lock around shared caches)."""

    name: ClassVar[str]
    Settings: ClassVar[type[BackendSettings]] = BackendSettings

    def __init__(self, settings: Any, context: BackendContext) -> None:
        self.settings = settings
        self.context = context

    @abstractmethod
    def publish(self, job: Job) -> TrackerRef:
        """Register ``job.publish``. Raise ``RetryableError`` for transient failures and
        ``PermanentError`` (with the tracker's own words) for refusals. Must never create a
        second record for the same publish: when ``job.uncertain``, find before create."""

    #: rows a worker claims at once. HTTP trackers take one (a slow call must not hold rows
    #: that another worker could publish); the local registry writes a batch in one transaction.
    batch_size: ClassVar[int] = 1

    def publish_batch(self, jobs: list[Job]) -> list[TrackerRef | PublishError]:
        """``publish`` for several jobs; each result is a ref or the error of that job alone."""
        out: list[TrackerRef | PublishError] = []
        for job in jobs:
            try:
                out.append(self.publish(job))
            except PublishError as exc:
                out.append(exc)
        return out

    def frame_range(self, publish: Publish) -> tuple[int, int] | None:
        """The frame range the tracker expects for the publish's entity (``expect_frames:
        tracker``), or None when it has none. Raise ``PublishError`` when it cannot be read now."""
        return None

    def versions_used(self, publish: Publish) -> set[int]:
        """Version numbers the tracker already holds for this publish's stream (same entity,
        name and type): ``republish: new_version`` never takes one of them. Read only."""
        return set()

    def check(self) -> list[CheckResult]:
        """Verify credentials and what the configuration names (``watcher check``)."""
        return [CheckResult(True, f"backend {self.name}", "nothing to check")]

    def serialize_key(self, job: Job) -> str:
        """Publishes with the same serialize key never run concurrently (Kitsu needs this
        because the server checks duplicates only in Python). Default: the idempotency key."""
        return job.publish.key

    def close(self) -> None:
        """Release sessions and connections."""
