"""Shared fixtures. Every test fails if it leaves one of watcher's threads running: a thread
without an owner and a clean shutdown is a bug."""
from __future__ import annotations

import sys
import threading
import time
from typing import Iterable

import pytest

OUR_THREADS = ("publisher-", "pipeline", "scanner", "supervisor", "poll-", "webhooks", "http-listener")
LINUX_ONLY = "linux_only"


def linux_only_skips(items: Iterable[pytest.Item], platform: str) -> int:
    """Mark ``linux_only`` items skipped unless ``platform`` is Linux (they need PostgreSQL, Zou,
    Chromium, inotify or systemd, which this project's macOS/Windows matrix does not have). On
    Linux nothing is skipped: a missing service there still fails the test hard. Returns how
    many were skipped."""
    if platform.startswith("linux"):
        return 0
    skip = pytest.mark.skip(reason=f"linux_only: needs Linux, and this is {platform}")
    skipped = 0
    for item in items:
        if item.get_closest_marker(LINUX_ONLY) is not None:
            item.add_marker(skip)
            skipped += 1
    return skipped


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    linux_only_skips(items, sys.platform)


@pytest.fixture(autouse=True)
def no_leaked_threads():
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5
    while True:
        leaked = [t for t in threading.enumerate()
                  if t not in before and t.is_alive() and t.name.startswith(OUR_THREADS)]
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not leaked, f"threads left running: {[t.name for t in leaked]}"
