"""systemd's notify protocol (``Type=notify``): one datagram per message to ``$NOTIFY_SOCKET``.
A no-op outside systemd. ``WATCHDOG_USEC`` (set by ``WatchdogSec=``) says how often systemd
expects ``WATCHDOG=1``; `watcher run` sends it at half that period, and only while its threads
are alive and the supervisor is still checking roots."""
from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Mapping

log = logging.getLogger("watcher")


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        addr = env.get("NOTIFY_SOCKET", "")
        self.address = "\0" + addr[1:] if addr.startswith("@") else addr
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        self.watchdog_interval = int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 and mine else None

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, *lines: str) -> bool:
        if not self.address:
            return False
        if sys.platform != "linux":  # systemd is Linux-only, and so is SOCK_CLOEXEC (AF_UNIX too on Windows)
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.connect(self.address)
                s.sendall("\n".join(lines).encode())
            return True
        except OSError as exc:
            log.warning("systemd: cannot notify %s: %s", self.address.lstrip("\0"), exc.strerror or exc)
            return False

    def ready(self, status: str = "") -> bool:
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def reloading(self) -> bool:
        return self.send("RELOADING=1")

    def stopping(self) -> bool:
        return self.send("STOPPING=1")

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")


__all__ = ["Notifier"]
