"""When is a candidate complete? Quiet windows (``settle.py``) say when nothing has changed for a
while; the signals here say whether what is there is all that is coming: the frames the shot
expects (a range, template fields, or the tracker's cut), a done marker the farm writes last, and
what to do about holes. A candidate is held while a signal is missing, up to ``max_wait``, then
decided (published, or refused naming what is missing), never forgotten.

The rule options are spelled as in ``publishes:`` (``expect_frames``, ``done_marker``, ``holes``,
``max_wait`` and the window overrides); every candidate gets a ``Signals`` from its rule."""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable

from fileseq import FrameSet
from pydantic import BaseModel, ConfigDict, Field, field_validator

from .errors import PublishError
from .model import Publish, format_ranges, parse_frames, subtract

log = logging.getLogger("watcher")


class Holes(str, Enum):
    PUBLISH = "publish"  # publish with the holes (they show in the log, `publishes`, the desk)
    HOLD = "hold"  # wait for them to be filled, up to max_wait; then publish with a warning
    REFUSE = "refuse"  # park the publish as failed naming the missing frames (`watcher retry`)


class RuleCompletion(BaseModel):
    """Completion options of one ``publishes:`` rule; unset ones take the root's or global value."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    settle_seconds: float | None = Field(None, ge=0)
    sequence_settle_seconds: float | None = Field(None, ge=0)
    first_frame_wait: float | None = Field(None, ge=0)
    pace_factor: float | None = Field(None, ge=1)
    max_wait: float | None = Field(None, gt=0)
    amend_window: float | None = Field(None, ge=0)
    expect_frames: str | None = None  # "1001-1100", "{first}-{last}" (template fields) or "tracker"
    done_marker: str | None = None  # relative to the sequence's folder: ".done", "{name}_v{version}.done"
    holes: Holes | None = None

    @field_validator("expect_frames")
    @classmethod
    def _frames(cls, v: str | None) -> str | None:
        if v is None or v == "tracker" or "{" in v:
            return v
        try:
            FrameSet(v)
        except Exception:
            raise ValueError(f"{v!r} is not a frame range (1001-1100), a '{{first}}-{{last}}' field expression "
                             "or 'tracker'") from None
        return v

    @field_validator("done_marker")
    @classmethod
    def _marker(cls, v: str | None) -> str | None:
        if v is not None and (v.startswith("/") or ".." in v.split("/")):
            raise ValueError(f"{v!r} must be a path relative to the sequence's folder, inside it")
        return v


COMPLETION_KEYS = frozenset(RuleCompletion.model_fields)


@dataclass(frozen=True)
class Signals:
    """What a candidate waits for besides quiet, resolved for its rule."""

    expect_frames: str | None = None
    done_marker: str | None = None
    holes: Holes = Holes.PUBLISH
    max_wait: float = 4 * 3600.0
    amend_window: float = 300.0

    @property
    def any(self) -> bool:
        return bool(self.expect_frames or self.done_marker or self.holes is not Holes.PUBLISH)


class Decision(Enum):
    READY = "ready"
    HOLD = "hold"
    REFUSE = "refuse"


@dataclass(frozen=True)
class Verdict:
    decision: Decision
    reason: str = ""  # what it waits for, or why it is refused
    delay: float = 0.0  # HOLD: ask again after this long


READY = Verdict(Decision.READY)


def _fmt(template: str, fields: dict[str, Any]) -> str:
    try:
        return template.format(**fields)
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"'{template}' names {exc} which the template does not give") from None


def marker_path(signals: Signals, publish: Publish) -> str | None:
    """Where the done marker of a sequence is expected (None: the rule wants none)."""
    if not signals.done_marker:
        return None
    folder = os.path.dirname(publish.path)
    return os.path.normpath(os.path.join(folder, _fmt(signals.done_marker, {**publish.fields, "name": publish.name,
                                                                           "version": publish.version})))


def decide(signals: Signals, publish: Publish, *, born: float, now: float,
           tracker_range: Callable[[Publish], Answer]) -> Verdict:
    """Whether a settled candidate (as ``publish``) may be journaled now. ``born`` is the wall
    time of its oldest file: ``max_wait`` counts from it, so a restart does not reset it."""
    expired = now - born >= signals.max_wait
    waits: list[str] = []
    missing: list[tuple[int, int]] = []  # expected frames absent, as ranges (never expanded)
    if publish.is_sequence and signals.expect_frames:
        spec = signals.expect_frames
        if spec == "tracker":
            ans = tracker_range(publish)
            if ans.pending:
                waits.append("the tracker's frame range")
            elif ans.error:
                waits.append(f"the tracker's frame range ({ans.error})")
            elif ans.value is not None:
                spec = f"{ans.value[0]}-{ans.value[1]}"
            else:
                spec = ""  # the tracker has no range for this entity: holes alone decide
        elif "{" in spec:
            try:
                spec = _fmt(spec, {**publish.fields, "version": publish.version})
            except ValueError as exc:
                return Verdict(Decision.REFUSE, f"expect_frames: {exc}")
        if spec and spec != "tracker" and not waits:
            try:
                expected = parse_frames(spec)
            except Exception:
                return Verdict(Decision.REFUSE, f"expect_frames: {spec!r} is not a frame range")
            present = list(subtract(parse_frames(publish.frames or ""),
                                    parse_frames(publish.missing_frames) if publish.missing_frames else []))
            missing = list(subtract(expected, present))
            if missing:
                waits.append(f"frames {format_ranges(missing)} of {spec}")
    marker = marker_path(signals, publish) if publish.is_sequence or signals.done_marker else None
    if marker and not os.path.exists(marker):
        waits.append(f"the done marker {os.path.basename(marker)}")
    holes = bool(publish.missing_frames)
    if holes and signals.holes is Holes.REFUSE:
        return Verdict(Decision.REFUSE, f"missing frames {publish.missing_frames} (holes: refuse); "
                                        "`watcher retry` once they are rendered")
    if holes and signals.holes is Holes.HOLD:
        waits.append(f"holes {publish.missing_frames} to be filled")
    if not waits:
        return READY
    if not expired:
        return Verdict(Decision.HOLD, "waiting for " + ", ".join(waits), delay=2.0)
    # max_wait passed: decided now, and said
    if missing and signals.holes is Holes.REFUSE:
        return Verdict(Decision.REFUSE, f"after max_wait ({signals.max_wait:.0f} s) still missing frames "
                                        f"{format_ranges(missing)}")
    if signals.holes is Holes.REFUSE and marker and not os.path.exists(marker):
        return Verdict(Decision.REFUSE, f"after max_wait ({signals.max_wait:.0f} s) no done marker "
                                        f"{os.path.basename(marker)}")
    log.warning("%s: max_wait (%.0f s) passed while %s; publishing it as it is", publish.path, signals.max_wait,
                "waiting for " + ", ".join(waits))
    return READY


@dataclass(frozen=True)
class Answer:
    """What a ``TrackerLookup`` knows now: the value, or that it is being asked, or why not."""

    value: Any = None
    pending: bool = False
    error: str | None = None


class TrackerLookup(threading.Thread):
    """A tracker question per key (an entity's frame range, the versions of a publish stream)
    asked once by a thread of its own, so the pipeline never waits on the network: ``get``
    answers from the cache, or says pending and asks."""

    def __init__(self, fetch: Callable[[Publish], Any], key: Callable[[Publish], tuple], *, what: str,
                 ttl: float = 300.0, retry: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(name=f"tracker-{what}", daemon=True)
        self.fetch, self.key, self.what = fetch, key, what
        self.ttl, self.retry, self._clock = ttl, retry, clock
        self._cache: dict[tuple, tuple[float, Answer]] = {}
        self._asked: set[tuple] = set()
        self._queue: "queue.Queue[tuple[tuple, Publish] | None]" = queue.Queue()
        self._lock = threading.Lock()

    def get(self, publish: Publish) -> Answer:
        key = self.key(publish)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and self._clock() < hit[0]:
                return hit[1]
            if key not in self._asked:
                self._asked.add(key)
                self._queue.put((key, publish))
        return Answer(pending=True) if hit is None else hit[1]

    def forget(self, publish: Publish) -> None:
        """Ask again next time (what we just did changed the answer)."""
        with self._lock:
            self._cache.pop(self.key(publish), None)

    def run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            key, publish = item
            try:
                ans = Answer(value=self.fetch(publish))
                until = self._clock() + self.ttl
            except PublishError as exc:
                ans, until = Answer(error=exc.message), self._clock() + self.retry
            except Exception as exc:  # a backend bug: say it, ask again later
                log.exception("%s of %s: unexpected error", self.what, publish.path)
                ans, until = Answer(error=f"{type(exc).__name__}: {exc}"), self._clock() + self.retry
            with self._lock:
                self._cache[key] = (until, ans)
                self._asked.discard(key)

    def stop(self) -> None:
        self._queue.put(None)
        if self.is_alive():
            self.join(5.0)


def entity_key(p: Publish) -> tuple:
    """One frame range per entity."""
    return (p.project, p.entity.type if p.entity else None, p.entity.name if p.entity else None)


def stream_key(p: Publish) -> tuple:
    """The versions of one publish stream: same entity, name and type."""
    return (*entity_key(p), p.name, p.publish_type)
