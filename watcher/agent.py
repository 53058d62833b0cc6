"""Agent identity and liveness. An agent is one running `watcher run`/`scan` process; its id,
``host:pid:start``, is written on every row it claims, so any agent sharing the journal can tell
whether the owner of a ``publishing`` row is still there."""
from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass


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
    """Whether an agent may still be running. Only this host's processes can be checked; another
    host's agent is trusted until its lease expires."""
    a = AgentId.parse(agent)
    if a is None or a.host != socket.gethostname():
        return a is not None
    try:
        os.kill(a.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
