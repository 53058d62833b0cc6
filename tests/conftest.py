"""Shared fixtures. Every test fails if it leaves one of watcher's threads running: a thread
without an owner and a clean shutdown is a bug."""
from __future__ import annotations

import threading
import time

import pytest

OUR_THREADS = ("publisher-", "pipeline", "scanner", "supervisor", "poll-", "webhooks", "http-listener")


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
