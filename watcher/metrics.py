"""Prometheus metrics of one running agent, on a registry of its own (no global state).

Two kinds: counters and a histogram incremented where things happen (publish outcomes, tracker
errors, the last write → published latency: ``Metrics`` is passed to the publishers), and
values read from their owners at scrape time (``StateCollector``: events by kind, candidates
settling, journal rows by status, rescans by reason, unmatched files, webhook deliveries)."""
from __future__ import annotations

import logging
import queue
import threading
from collections import Counter
from typing import TYPE_CHECKING, Any, Iterator

from prometheus_client import CollectorRegistry, Counter as PromCounter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .events import FsEvent

if TYPE_CHECKING:  # pragma: no cover
    from .service import Service

log = logging.getLogger("watcher")

LATENCY_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900, 3600)


class CountingQueue(queue.Queue):
    """The pipeline's event queue, counting what the pipeline takes off it by kind (so the
    pipeline itself needs no metrics code)."""

    def __init__(self, maxsize: int = 0) -> None:
        super().__init__(maxsize)
        self.kinds: Counter[str] = Counter()

    def _get(self) -> Any:  # runs under the queue's own lock
        ev = super()._get()
        if isinstance(ev, FsEvent):
            self.kinds[ev.kind.value] += 1
        return ev

    def counts(self) -> dict[str, int]:
        with self.mutex:
            return dict(self.kinds)


class Metrics:
    """What the publishers report as it happens."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.publishes = PromCounter("watcher_publishes", "Publish attempts by backend and outcome "
                                     "(published, retry, failed).", ["backend", "outcome"], registry=self.registry)
        self.tracker_errors = PromCounter("watcher_tracker_errors", "Errors from the tracker by kind "
                                          "(the error class: RetryableError, HttpError, PermanentError...).",
                                          ["backend", "kind"], registry=self.registry)
        self.latency = Histogram("watcher_publish_latency_seconds", "Last write of a file → published in the "
                                 "tracker.", ["backend"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self._lock = threading.Lock()

    def published(self, backend: str, latency: float) -> None:
        self.publishes.labels(backend, "published").inc()
        self.latency.labels(backend).observe(latency)

    def failed(self, backend: str, kind: str, *, retry: bool) -> None:
        self.publishes.labels(backend, "retry" if retry else "failed").inc()
        self.tracker_errors.labels(backend, kind).inc()

    def attach(self, service: "Service") -> None:
        self.registry.register(StateCollector(service))

    def render(self) -> bytes:
        with self._lock:  # one scrape at a time: the collectors read the journal
            return generate_latest(self.registry)


class StateCollector(Collector):
    """Values owned by the stages, read at scrape time."""

    def __init__(self, service: "Service") -> None:
        self.svc = service

    def describe(self) -> list[Metric]:
        return []  # not known before the first collect: no describe-time journal reads

    def collect(self) -> Iterator[Metric]:
        svc = self.svc
        ev = CounterMetricFamily("watcher_events", "File-system events taken by the pipeline, by kind.",
                                 labels=["kind"])
        for kind, n in sorted(svc.queue.counts().items()):
            ev.add_metric([kind], n)
        yield ev
        g = GaugeMetricFamily("watcher_candidates", "Candidates not yet journaled.", labels=["state"])
        held = len(svc.pipeline.held_view)
        g.add_metric(["settling"], len(svc.settler) - held)
        g.add_metric(["held"], held)  # settled, waiting for a completion signal (expected frames, a marker...)
        yield g
        yield GaugeMetricFamily("watcher_settling_files", "Files of candidates not yet journaled.",
                                value=svc.settler.pending_files)
        yield CounterMetricFamily("watcher_candidates_held", "Times a settled candidate was held back (scan still "
                                  "listing its directory, a rescan pending, its publish running).",
                                  value=getattr(svc.settler, "holds", 0))
        yield GaugeMetricFamily("watcher_queue_depth", "Events waiting for the pipeline.", value=svc.queue.qsize())
        yield GaugeMetricFamily("watcher_publishing", "Publishes in flight in this agent.", value=svc.publishers.busy)
        rows = GaugeMetricFamily("watcher_journal_rows", "Journal rows by status.", labels=["status"])
        try:
            for status, n in svc.journal.counts().items():
                rows.add_metric([status], n)
        except Exception:
            log.warning("metrics: cannot read the journal counts", exc_info=True)
        yield rows
        resc = CounterMetricFamily("watcher_rescans", "Rescans by root and reason.", labels=["root", "reason"])
        for (root, reason), n in sorted(svc.supervisor.rescan_reasons.items()):
            resc.add_metric([root, reason], n)
        yield resc
        um = CounterMetricFamily("watcher_unmatched_files", "Files that matched no template, by root.",
                                 labels=["root"])
        for root, n in sorted(svc.pipeline.unmatched.items()):
            um.add_metric([root], n)
        yield um
        wh = CounterMetricFamily("watcher_webhook_deliveries", "Webhook delivery attempts by outcome "
                                 "(delivered, retry, failed).", labels=["outcome"])
        for outcome in ("delivered", "retry", "failed"):
            wh.add_metric([outcome], svc.deliverer.outcomes[outcome])
        yield wh
        up = GaugeMetricFamily("watcher_root_up", "1 when the root is watched.", labels=["root"])
        for name, r in list(svc.roots.items()):
            up.add_metric([name], 1 if r.up else 0)
        yield up
        yield GaugeMetricFamily("watcher_healthy", "1 when /healthz says ok.", value=1 if svc.health()["ok"] else 0)


__all__ = ["Metrics", "CountingQueue", "StateCollector"]
