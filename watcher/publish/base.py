"""The backend plug-in interface. Adding a tracker = one module defining a ``Backend`` subclass
(plus its ``Settings`` model) and its tests; nothing in the pipeline changes.

A backend is found by the ``tracker.backend`` name: built-ins in ``watcher.publish.BUILTIN``,
others through the ``watcher.backends`` entry-point group."""
from __future__ import annotations

import logging
import traceback
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from ..errors import PublishError, RetryableError
from ..model import Job, Publish, TrackerRef
from ..paths import OSPaths

log = logging.getLogger(__name__)


class BackendSettings(BaseModel):
    """Base of each backend's settings (the ``tracker:`` section minus ``backend``).
    Unknown keys are errors so that a typo never silently falls back to a default."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class BackendContext:
    """What the service gives a backend besides its settings."""

    config_dir: Path  # relative paths in the tracker section resolve against it
    roots: dict[str, Path]  # root name -> absolute path on this OS (for local storages, unmanaged locations)
    publish_types: tuple[str, ...] = ()  # every type the templates' publishes rules name (`watcher check`)
    journal_url: str = ""  # the local registry keeps its table in the journal's database
    # root name -> its spelling on every OS the configuration gives (a per-OS `path:` mapping):
    # ShotGrid checks that a storage holds the root at the same place on every OS
    root_paths: dict[str, OSPaths] = field(default_factory=dict)

    def os_paths(self, name: str, fallback: str) -> OSPaths:
        """Root ``name``'s per-OS spellings; a root known by one path has it on every OS."""
        return self.root_paths.get(name) or OSPaths(shared=str(self.roots.get(name) or fallback))


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
    # More publisher threads than this gain nothing: a backend that works in-process (the local
    # registry) holds the GIL throughout, so extra threads only contend and split its batches.
    max_workers: ClassVar[int | None] = None

    def publish_batch(self, jobs: list[Job]) -> list[TrackerRef | PublishError]:
        """``publish`` for several jobs; each result is a ref or the error of that job alone.

        This is the backend's boundary: every error leaving it has passed through ``scrub``
        (its text is journaled, logged, listed by `watcher publishes`), and an unexpected
        exception of one job (a bug) costs that job one retry, not the batch."""
        out: list[TrackerRef | PublishError] = []
        for job in jobs:
            try:
                out.append(self.publish(job))
            except PublishError as exc:
                out.append(self.scrubbed(exc))
            except Exception as exc:  # a bug: one line at ERROR, the (scrubbed) traceback at DEBUG
                text = self.scrub(f"internal error in backend {self.name}: {type(exc).__name__}: {exc}")
                log.error("publish %d: %s (a bug: please report it; --log-level DEBUG shows where)", job.id, text)
                log.debug("%s", self.scrub("".join(traceback.format_exception(exc))))
                out.append(RetryableError(text))
        return out

    def scrub(self, value: Any) -> Any:
        """``value`` (text, or a list/dict of texts) with this backend's secrets masked. A
        backend holding credentials overrides it (the HTTP trackers pass their ``Scrubber``)."""
        return value

    def scrubbed(self, exc: PublishError) -> PublishError:
        """``exc`` with its message scrubbed (in place: the error is this job's own)."""
        exc.message = self.scrub(exc.message)
        exc.args = (exc.message,)
        return exc

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
