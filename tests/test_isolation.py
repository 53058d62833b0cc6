"""One bad candidate never costs another: a candidate whose own step fails while it is committed
(building its publish, journaling its row) is logged with its path, escaped, and retried alone
with backoff, or parked after a few tries (listed in `watcher unmatched` and the status); every
other candidate settled in the same step is journaled and published at once.

Real agents, real files, real observers; the failure itself is injected into one candidate
(the real ones it stands for, an unencodable name or a frame range that blows up, are fixed
where they arise, so nothing on disk triggers them any more)."""
from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

from watcher.journal.base import Status
from watcher.model import Publish

from .agent import DATA, registry, rows, settings, wait_for

REPO = Path(__file__).resolve().parents[1]
POISON = "poison"


def start(s: Any) -> Any:
    from watcher.service import Service

    svc = Service(s)
    svc.pipeline.fault_base = 0.1  # the candidate's own backoff: 0.1, 0.2, 0.4 s...
    svc.pipeline.max_tries = 3
    svc.start()
    return svc


def drop(root: Path, names: list[str]) -> list[Path]:
    d = root / "drop"
    d.mkdir(parents=True, exist_ok=True)
    out = []
    for n in names:
        (d / n).write_text(n)
        out.append(d / n)
    return out


def good_names(n: int) -> list[str]:
    return [f"sh{i:03d}_comp_good_v001.nk" for i in range(n)]


def published(s: Any) -> list[Any]:
    return [r for r in rows(s) if r.status == Status.PUBLISHED]


def test_a_candidate_that_fails_to_build_is_retried_alone_and_costs_no_other(tmp_path, monkeypatch, caplog):
    import watcher.pipeline as pipeline

    real = pipeline.build_publish
    failures = []

    def flaky(cand: Any, **kw: Any) -> Publish:
        if any(POISON in p for p in cand.files) and len(failures) < 2:
            failures.append(1)
            raise RuntimeError("template field\nforged: log line")
        return real(cand, **kw)

    monkeypatch.setattr(pipeline, "build_publish", flaky)
    s = settings(tmp_path)
    root = s.roots[0].path
    svc = start(s)
    try:
        files = drop(root, good_names(20) + [f"sh999_comp_{POISON}_v001.nk"])
        wait_for(lambda: len(published(s)) == 21, 30)
    finally:
        svc.stop(grace=3)
    assert len(failures) == 2
    assert sorted(r.publish.path for r in rows(s)) == sorted(str(p) for p in files)
    assert len(registry(s)) == 21
    said = [r.getMessage() for r in caplog.records if "cannot be journaled" in r.getMessage()]
    assert len(said) == 2 and all(POISON in m and "tried again in" in m for m in said)
    assert all("\n" not in m and "field\\nforged" in m for m in said)  # the error text is escaped too


def test_a_candidate_the_journal_cannot_take_is_parked_and_its_batch_journaled(tmp_path, monkeypatch, caplog):
    """Its row cannot be written (the batch's transaction fails on it): the batch is split, every
    other candidate journaled and published; it is tried again alone, then parked: listed with
    its reason in `watcher unmatched` and the agent's status."""
    real = Publish.to_dict

    def to_dict(self: Publish) -> dict[str, Any]:
        if POISON in self.path:
            raise ValueError("cannot encode this payload")
        return real(self)

    monkeypatch.setattr(Publish, "to_dict", to_dict)
    caplog.set_level(logging.WARNING)
    s = settings(tmp_path)
    root = s.roots[0].path
    svc = start(s)
    try:
        bad = f"sh999_comp_{POISON}_v001.nk"
        files = drop(root, good_names(30) + [bad])
        wait_for(lambda: len(published(s)) == 30, 30)
        parked = wait_for(lambda: svc.status()["parked"], 10)
        assert parked[0]["path"].endswith(bad) and "not journaled after 3 attempts" in parked[0]["reason"]
        assert "ValueError: cannot encode this payload" in parked[0]["reason"]
        assert len(svc.settler) == 0  # parked: nothing is retried for ever
        svc.pipeline.unmatched_log.flush()
        cfg = tmp_path / "watcher.yml"
        cfg.write_text(f"roots:\n  - {{name: shows, path: {root}, templates: {DATA / 'pipeline.yml'}}}\n"
                       f"journal: {s.journal_url()}\nstate_dir: {s.state_dir}\n")
        listed = subprocess.run([sys.executable, "-m", "watcher", "-c", str(cfg), "unmatched"], cwd=REPO,
                                capture_output=True, text=True, timeout=60)
        assert bad in listed.stdout and "parked: not journaled after 3 attempts" in listed.stdout, listed.stdout
    finally:
        svc.stop(grace=3)
    assert sorted(r.publish.path for r in rows(s)) == sorted(str(p) for p in files[:30])
    said = [r.getMessage() for r in caplog.records]
    assert sum("cannot be journaled" in m and POISON in m for m in said) == 2
    assert sum("parked, not journaled" in m and POISON in m for m in said) == 1
    assert not [r for r in caplog.records if r.exc_info and r.levelno >= logging.WARNING]  # no traceback


def test_a_parked_candidate_is_tried_anew_when_its_file_changes(tmp_path, monkeypatch):
    import watcher.pipeline as pipeline

    real = pipeline.build_publish
    broken = [True]

    def build(cand: Any, **kw: Any) -> Publish:
        if broken[0] and any(POISON in p for p in cand.files):
            raise RuntimeError("broken for now")
        return real(cand, **kw)

    monkeypatch.setattr(pipeline, "build_publish", build)
    s = settings(tmp_path)
    root = s.roots[0].path
    svc = start(s)
    try:
        [bad] = drop(root, [f"sh999_comp_{POISON}_v001.nk"])
        wait_for(lambda: svc.status()["parked"], 20)
        assert rows(s) == []
        broken[0] = False  # fixed (a template, a tracker mapping...)
        bad.write_text("saved again\n")
        wait_for(lambda: len(published(s)) == 1, 20)
    finally:
        svc.stop(grace=3)
