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
from typing import TYPE_CHECKING, Callable

from .host import process_alive

if TYPE_CHECKING:  # pragma: no cover
    from .journal.ledger import Journal

log = logging.getLogger("watcher")

HEARTBEAT_SECONDS = 10.0  # an agent silent for three of these is taken as gone (`watcher agents`)


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
    """Tells the journal every ``interval`` seconds that this agent is alive and which roots it
    watches (``watcher agents``); marks it stopped on a clean shutdown."""

    def __init__(self, journal: "Journal", agent: str, roots: Callable[[], list[str]],
                 interval: float = HEARTBEAT_SECONDS) -> None:
        super().__init__(name="heartbeat", daemon=True)
        self.journal, self.agent, self.roots, self.interval = journal, agent, roots, interval
        a = AgentId.parse(agent)
        self._who = (a.host, a.pid, float(a.started)) if a else (socket.gethostname(), os.getpid(), time.time())
        self._halt = threading.Event()
        self._failing = False

    def beat(self) -> None:
        host, pid, started = self._who
        try:
            self.journal.heartbeat(self.agent, host, pid, started, self.roots())
        except Exception as exc:  # the journal may be away for a while: say so once, keep trying
            if not self._failing:
                log.warning("journal: cannot record this agent's heartbeat: %s", exc)
            self._failing = True
        else:
            self._failing = False

    def run(self) -> None:
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
