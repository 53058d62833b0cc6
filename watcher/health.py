"""The one health verdict, shared by `watcher status` (exit 0/1) and ``/healthz`` (200/503).

Checks, each named in the JSON with ``ok`` and a ``reason``:

- ``agent``: an agent is running for this configuration. Same host: its pid is alive. Any
  host: its status file was written within ``STALE_AFTER`` (3 supervisor intervals).
- ``roots``: every root is up (watched).
- ``publishes``: no publish is parked as ``failed``.
- ``backlog``: the oldest publish not yet published is younger than ``health.max_pending_age``.
- ``webhooks``: no webhook delivery is parked as ``failed``.
- ``journal``: the running agent can write its journal (not locked by another process, full,
  read-only or unreachable); while it cannot, settled files wait in memory.
"""
from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .errors import JournalError

from .agent import AgentId, alive
from .supervise import CHECK_INTERVAL

if TYPE_CHECKING:  # pragma: no cover
    from .journal.ledger import Database, Journal

STALE_AFTER = 3 * CHECK_INTERVAL + 0.5


class Check(str, Enum):
    AGENT = "agent"
    ROOTS = "roots"
    PUBLISHES = "publishes"
    BACKLOG = "backlog"
    WEBHOOKS = "webhooks"
    JOURNAL = "journal"


@dataclass(frozen=True)
class Result:
    check: Check
    ok: bool
    reason: str


def read_status(state_dir: Path) -> dict[str, Any] | None:
    """The running agent's ``status.json`` (None when there is none or it is unreadable)."""
    try:
        data = json.loads((state_dir / "status.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def agent_running(status: dict[str, Any] | None, now: float | None = None) -> tuple[bool, str]:
    """Whether the agent that wrote ``status`` is still running, and why we think so."""
    if not status or not status.get("agent"):
        return False, "no agent has written a status for this configuration"
    now = time.time() if now is None else now
    aid = AgentId.parse(str(status["agent"]))
    age = now - float(status.get("time", 0))
    if status.get("stopped"):
        return False, f"agent {status['agent']} stopped {age:.0f} s ago"
    if aid is not None and aid.host == socket.gethostname() and not alive(str(status["agent"])):
        return False, f"agent {status['agent']} is gone (pid {aid.pid} is not running; killed or crashed)"
    if age > STALE_AFTER:
        return False, f"agent {status['agent']} has not written its status for {age:.0f} s (hung, or its host is down)"
    return True, f"agent {status['agent']} is running"


def journal_figures(journal: "Journal", webhooks_summary: "Callable[[Database], dict[str, Any]]") -> tuple[
        dict[str, int], float | None, dict[str, Any] | None]:
    """(counts, oldest pending, webhook summary) for ``verdict``; empty when the journal cannot be
    read now (the agent's status then says why, in the ``journal`` check)."""
    try:
        return journal.counts(), journal.oldest_pending(), webhooks_summary(journal.db)
    except JournalError:
        return {}, None, None


def journal_result(state: Any, now: float) -> Result | None:
    """The ``journal`` check from the agent's status (None: an agent that does not say)."""
    if not isinstance(state, dict) or "ok" not in state:
        return None
    if state.get("ok"):
        return Result(Check.JOURNAL, True, "the journal takes writes")
    parts = []
    since = state.get("since")
    if isinstance(since, (int, float)):
        parts.append(f"for {max(0.0, now - since):.0f} s")
    if state.get("candidates_waiting"):
        parts.append(f"{state['candidates_waiting']} settled candidate(s) kept in memory")
    if state.get("outcomes_waiting"):
        parts.append(f"{state['outcomes_waiting']} publish outcome(s) to record")
    parts.append("retried with backoff")
    return Result(Check.JOURNAL, False,
                  f"journal unavailable: {state.get('reason') or state.get('fault')} ({'; '.join(parts)})")


def verdict(status: dict[str, Any] | None, counts: dict[str, int], oldest_pending: float | None,
            webhooks: dict[str, Any] | None, max_pending_age: float, *, fail_on_failed: bool = True,
            now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    results: list[Result] = []
    running, why = agent_running(status, now)
    results.append(Result(Check.AGENT, running, why))
    if running and status is not None:
        down = [n for n, r in (status.get("roots") or {}).items() if not r.get("up")]
        results.append(Result(Check.ROOTS, not down, f"root(s) down: {', '.join(down)}" if down else "every root is up"))
        journal = journal_result(status.get("journal"), now)
        if journal is not None:
            results.append(journal)
    failed = counts.get("failed", 0)
    results.append(Result(Check.PUBLISHES, failed == 0 or not fail_on_failed,
                          f"{failed} publish(es) failed; see `watcher publishes --status failed`, then `watcher retry`"
                          if failed else "no failed publishes"))
    age = None if oldest_pending is None else now - oldest_pending
    results.append(Result(Check.BACKLOG, age is None or age <= max_pending_age,
                          "nothing pending" if age is None else
                          f"oldest pending publish is {age:.0f} s old (limit {max_pending_age:.0f} s)"))
    if webhooks is not None:
        wf = webhooks.get("failed", 0)
        results.append(Result(Check.WEBHOOKS, wf == 0 or not fail_on_failed,
                              f"{wf} webhook delivery(ies) failed; `watcher retry --webhooks` once the receiver works"
                              if wf else "no failed webhook deliveries"))
    bad = [r for r in results if not r.ok]
    return {"ok": not bad, "failed": [r.check.value for r in bad],
            "checks": {r.check.value: {"ok": r.ok, "reason": r.reason} for r in results}}


__all__ = ["Check", "Result", "verdict", "read_status", "agent_running", "journal_figures", "journal_result",
           "STALE_AFTER"]
