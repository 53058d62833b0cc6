"""Agent identity and liveness. An agent is one running `watcher run`/`scan` process; its id,
``host:pid:start``, is written on every row it claims, so any agent sharing the journal can tell
whether the owner of a ``publishing`` row is still there."""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Callable

from .host import process_alive

if TYPE_CHECKING:  # pragma: no cover
    from .journal.ledger import Journal

log = logging.getLogger("watcher")

AGENT_TIMEOUT = 30.0  # `agent_timeout_seconds`: an agent silent this long is gone; it beats every third of it


@dataclass(frozen=True)
class AgentId:
    host: str
    pid: int
    started: int  # epoch seconds: tells a reused pid from the original process

    def __str__(self) -> str:
        return f"{self.host}:{self.pid}:{self.started}"

    @classmethod
    def parse(cls, text: str) -> "AgentId | None":
        host, _, rest = text.partition(":")
        pid, _, started = rest.partition(":")
        try:
            return cls(host, int(pid), int(started or 0))
        except ValueError:
            return None


class Fence(Enum):
    """May this agent journal what it saw in a root now."""

    FREE = "free"  # yes: it watches the root (or every agent does)
    EXPIRED = "expired"  # not yet: its watch ran out before a heartbeat renewed it (frozen, cut off)
    TAKEN = "taken"  # no: another agent watches the root


def new_agent_id() -> str:
    """The id of this process."""
    return str(AgentId(socket.gethostname(), os.getpid(), int(time.time())))


def alive(agent: str) -> bool:
    """Whether an agent may still be running. Only this host's processes can be checked (by pid
    and start time, so a recycled pid is not taken for the agent, on every OS); another host's
    agent is trusted until its lease expires."""
    a = AgentId.parse(agent)
    if a is None or a.host != socket.gethostname():
        return a is not None
    return process_alive(a.pid, a.started)


class Heartbeat(threading.Thread):
    """Tells the journal every third of ``timeout`` that this agent is alive and which roots it
    has (``watcher agents``), and keeps the watch of its ``watched_by: one`` roots: one agent
    sharing the journal watches such a root; the others stand by and take it over once its
    watcher stopped or went silent for ``timeout`` seconds. Marks the agent stopped (and its
    roots free) on a clean shutdown.

    The watch is a lease: held until ``timeout`` after the last heartbeat the journal took. An
    agent that was frozen or cut off past it may no longer journal what it saw there
    (``fence``) until a heartbeat says whether the root is still its own."""

    def __init__(self, journal: "Journal", agent: str, roots: Callable[[], list[str]],
                 shared: Callable[[], list[str]] = lambda: [], timeout: float = AGENT_TIMEOUT,
                 on_change: Callable[[], None] = lambda: None, clock: Callable[[], float] = time.time) -> None:
        super().__init__(name="heartbeat", daemon=True)
        self.journal, self.agent, self.roots, self.shared = journal, agent, roots, shared
        self.timeout, self.interval = timeout, timeout / 3
        self.on_change, self._clock = on_change, clock
        a = AgentId.parse(agent)
        self._who = (a.host, a.pid, float(a.started)) if a else (socket.gethostname(), os.getpid(), time.time())
        self._halt = threading.Event()
        self._failing = False
        self._lock = threading.Lock()
        self._beating = threading.Lock()  # one beat at a time (this thread's, or a reload's)
        self._holders: dict[str, str] = {}  # shared root -> its watcher, as the last heartbeat found it
        self._until = 0.0  # our watches hold until then (wall clock: the journal's time)

    # -- what other threads ask ------------------------------------------------------------
    def holder(self, root: str) -> str | None:
        """The other agent that watches ``root`` (None: this agent watches it, or should)."""
        with self._lock:
            who = self._holders.get(root)
        return who if who is not None and who != self.agent else None

    def fence(self, root: str) -> Fence:
        """Whether this agent may journal what it saw in ``root`` now."""
        with self._lock:
            if root not in self._holders:
                return Fence.FREE  # `watched_by: every`, or not known to the journal yet
            if self._holders[root] != self.agent:
                return Fence.TAKEN
            return Fence.EXPIRED if self._clock() > self._until else Fence.FREE

    # -- the beat --------------------------------------------------------------------------
    def beat(self) -> None:
        with self._beating:
            self._beat()

    def _beat(self) -> None:
        host, pid, started = self._who
        t0 = self._clock()
        try:
            shared = self.shared()
            self.journal.heartbeat(self.agent, host, pid, started, self.roots(), shared)
            holders = self.journal.take_watches(self.agent, shared, self.timeout, alive) if shared else {}
        except Exception as exc:  # the journal may be away for a while: say so once, keep trying
            if not self._failing:
                log.warning("journal: cannot record this agent's heartbeat: %s", exc)
            self._failing = True
            return
        self._failing = False
        with self._lock:
            before = {r: h for r, h in self._holders.items() if r in holders}
            self._holders, self._until = holders, t0 + self.timeout
        changed = False
        for root, who in sorted(holders.items()):
            was = before.get(root)
            if was == who:
                continue
            changed = True
            if who == self.agent:
                log.info("root %s: this agent watches it%s", root, f" (taken over from {was})" if was else "")
            else:
                log.info("root %s: agent %s watches it; this agent stands by (it publishes, and takes the root over if "
                         "that agent stops or goes silent for %.0f s)", root, who, self.timeout)
        if changed:
            self.on_change()

    def run(self) -> None:
        if self._until == 0.0:  # the service beats once before it starts this thread
            self.beat()
        while not self._halt.wait(self.interval):
            self.beat()

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(5.0)
        try:
            self.journal.agent_stopped(self.agent)
        except Exception as exc:
            log.warning("journal: cannot mark agent %s stopped: %s", self.agent, exc)
