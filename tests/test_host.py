"""What the host OS tells (#17 item 5): agent liveness by pid and process start time through
psutil, on every OS. A recycled pid is not the agent; a zombie is not alive; on Windows
``os.kill(pid, 0)`` (which sends CTRL_C_EVENT to a console group there) is never called. Real
processes."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time

import psutil
import pytest

from watcher import agent as agent_mod
from watcher.agent import AgentId, alive, new_agent_id
from watcher.health import agent_running
from watcher.host import process_alive, process_started

HOST = socket.gethostname()


def sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])


def test_this_agent_is_alive_and_a_dead_one_is_not():
    assert alive(new_agent_id())
    p = sleeper()
    me = str(AgentId(HOST, p.pid, int(time.time())))
    assert alive(me)
    p.kill()
    p.wait()
    assert not alive(me)


def test_a_zombie_is_not_alive():
    p = sleeper()
    try:
        p.kill()  # not reaped: the pid still exists, as a zombie
        deadline = time.monotonic() + 5
        while psutil.Process(p.pid).status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not process_alive(p.pid)
    finally:
        p.wait()


def test_a_recycled_pid_is_not_the_agent():
    """The agent that wrote this id started an hour before the process that holds its pid now."""
    p = sleeper()
    try:
        started = psutil.Process(p.pid).create_time()
        assert alive(str(AgentId(HOST, p.pid, int(started))))
        assert not alive(str(AgentId(HOST, p.pid, int(started) - 3600)))
        # status.json left by an agent before a reboot names a pid another process has now
        status = {"agent": str(AgentId(HOST, p.pid, int(started) - 3600)), "time": time.time()}
        running, why = agent_running(status)
        assert not running and "gone" in why
    finally:
        p.kill()
        p.wait()


def test_another_hosts_agent_is_trusted_until_its_lease_expires():
    assert alive("elsewhere:1:1")
    assert not alive("not an agent id")


def test_liveness_on_windows_never_calls_os_kill(monkeypatch):
    """On Windows os.kill(pid, 0) sends CTRL_C_EVENT to the target's console group (and any
    other signal number terminates it): liveness must never call it there."""
    calls = []

    def kill(pid, sig):
        calls.append((pid, sig))
        raise AssertionError(f"os.kill({pid}, {sig}) called")

    @contextlib.contextmanager
    def on_windows():  # undone before pytest (pathlib) or the test (Popen.kill) use os again
        with monkeypatch.context() as m:
            m.setattr(sys, "platform", "win32")
            m.setattr(os, "name", "nt")
            m.setattr(os, "kill", kill)
            yield

    p = sleeper()
    try:
        me = str(AgentId(HOST, os.getpid(), int(process_started())))
        other = str(AgentId(HOST, p.pid, int(time.time())))
        with on_windows():
            answers = [alive(me), alive(other), agent_running({"agent": me, "time": time.time()})[0]]
        p.kill()
        p.wait()
        with on_windows():
            answers += [alive(other), alive(str(AgentId(HOST, 2 ** 22 + 12345, 1)))]  # gone; no such pid
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert answers == [True, True, True, False, False]
    assert calls == []
    assert agent_mod.process_alive is process_alive


@pytest.mark.parametrize("pid", [0, -1])
def test_nonsense_pids_are_not_alive(pid):
    assert not process_alive(pid)


def test_windows_console_close_logoff_shutdown_stop_the_agent_and_wait_for_it():
    """Console control events reach the one stop path; for close/logoff/shutdown the handler
    returns only once the agent has stopped (Windows ends the process when it returns)."""
    import threading

    from watcher.host import ConsoleStop

    class Kernel32:
        def __init__(self):
            self.handlers = []

        def SetConsoleCtrlHandler(self, routine, add):  # noqa: N802 - the Win32 name
            (self.handlers.append if add else self.handlers.remove)(routine)
            return 1

    k = Kernel32()
    seen: list[str] = []
    stopped = threading.Event()
    cs = ConsoleStop(seen.append, stopped, kernel32=k, functype=lambda fn: fn)
    assert cs.install() and len(k.handlers) == 1
    routine = k.handlers[0]
    assert routine(0) == 1 and seen == ["CTRL_C_EVENT"]  # Ctrl+C: returns at once
    assert routine(7) == 0 and seen == ["CTRL_C_EVENT"]  # not a control event we handle
    threading.Timer(0.3, stopped.set).start()  # the agent finishes stopping a moment later
    t0 = time.monotonic()
    assert routine(2) == 1 and seen[-1] == "CTRL_CLOSE_EVENT"
    assert 0.25 <= time.monotonic() - t0 < 3, "the close handler must wait for the stop, not for ever"
    cs.remove()
    assert k.handlers == []
