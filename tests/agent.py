"""Helpers to run a real watcher agent (real observers, real files) inside a test."""
from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from watcher.config import Settings
from watcher.journal.base import Status
from watcher.journal.sqlite import SqliteJournal

DATA = Path(__file__).parent / "data"


def settings(tmp: Path, *, root: Path | None = None, templates: Path | None = None, root_opts: dict | None = None,
             **kw: Any) -> Settings:
    root = root or tmp / "root"
    root.mkdir(parents=True, exist_ok=True)
    opts = {"name": "shows", "path": root, "templates": templates or DATA / "pipeline.yml", **(root_opts or {})}
    base = {"roots": [opts], "settle_seconds": 0.4, "sequence_settle_seconds": 0.8,
            "journal": f"sqlite:///{tmp / 'journal.db'}", "state_dir": tmp / "state", "workers": 2,
            "retry_base_seconds": 0.05, "retry_cap_seconds": 0.2, "rescan_interval": 0}
    base.update(kw)
    return Settings(**base)


@contextmanager
def running(s: Settings, **kw: Any) -> Iterator[Any]:
    from watcher.service import Service

    svc = Service(s, **kw)
    svc.start()
    try:
        yield svc
    finally:
        svc.stop(grace=3)


def wait_for(pred: Callable[[], Any], timeout: float = 20.0, every: float = 0.05) -> Any:
    end = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > end:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(every)


def rows(s: Settings, status: Status | None = None):
    j = SqliteJournal(s.journal_url())
    try:
        return j.rows(status)
    finally:
        j.close()


def registry(s: Settings):
    from watcher.publish.local import Registry

    r = Registry(s.journal_url())
    try:
        return r.entries()
    finally:
        r.close()


def write_frames(directory: Path, name: str, frames: range, *, size: int = 1024, chunks: int = 1,
                 pause: float = 0.0, fmt: str = "{name}.{frame:04d}.exr") -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for f in frames:
        p = directory / fmt.format(name=name, frame=f)
        with open(p, "wb") as fh:
            for _ in range(chunks):
                fh.write(os.urandom(size // chunks))
                fh.flush()
                if pause:
                    time.sleep(pause)
        out.append(p)
    return out
