"""Logging set-up: human text by default, one JSON object per line for log shippers."""
from __future__ import annotations

import json
import logging
import re
import sys
import time
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .names import shown
from .paths import agent_dirs

# ``scheme://user:password@`` anywhere in a text (a tracker or webhook URL with credentials)
_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@'\"<>]*):[^@\s/'\"<>]+@")


def hide_url_password(text: str) -> str:
    """Every ``scheme://user:password@host`` in ``text`` as ``scheme://user:***@host``. Applied
    to every log line, and by `watcher check`, the desk and the trackers' error messages: a URL
    with credentials is shown everywhere with its password masked."""
    return _URL_PASSWORD.sub(r"\1:***@", text) if "@" in text else text


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": hide_url_password(record.getMessage()).encode("utf-8", "surrogateescape").decode(
                "utf-8", "backslashreplace"),
        }
        extra = getattr(record, "publish", None)
        if extra:
            out["publish"] = extra
        if record.exc_info:
            out["exception"] = hide_url_password(self.formatException(record.exc_info))
        return json.dumps(out, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """One event, one line: a file name holding a newline cannot forge log lines, and undecodable
    bytes are shown escaped instead of crashing the handler. Tracebacks (DEBUG) stay multi-line."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = shown(hide_url_password(record.message))
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:
        return hide_url_password(super().formatException(ei))


# A log file rolls over at this size, keeping this many old ones (watcher.log.1 ...): an agent
# that runs for months on a workstation never fills its disk.
LOG_FILE_BYTES = 10 * 1024 * 1024
LOG_FILE_BACKUPS = 5
LOG_FILE_NAME = "watcher.log"


def default_log_file(config_file: str | None = None) -> Path:
    """Where the log goes when there is no stderr to write to (``pythonw``, a logon task): the
    OS's log folder, one per configuration (``paths.agent_dirs``)."""
    return Path(agent_dirs(config_file).logs) / LOG_FILE_NAME


def _file_handler(path: Path, configured: bool) -> logging.Handler:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return RotatingFileHandler(path, maxBytes=LOG_FILE_BYTES, backupCount=LOG_FILE_BACKUPS, encoding="utf-8",
                                   errors="backslashreplace")
    except OSError as exc:
        if not configured:
            return logging.NullHandler()  # no console and no log folder: nowhere left to say it
        raise ConfigError(f"log_file: cannot write {shown(str(path))}: {exc.strerror or exc}; give this user write "
                          "access to its folder, or set log_file to another file") from None


def setup(level: str = "INFO", fmt: str = "text", stream: Any = None, *, log_file: Path | None = None,
          config_file: str | None = None) -> Path | None:
    """Log to ``stream`` (default stderr), or to ``log_file``, rotated, when it is set (then only
    there: a service manager that also captures stderr would get every line twice). Without a
    stderr (``pythonw``: ``sys.stderr`` is None) the log goes to ``default_log_file``. Returns
    the file logged to, None for a stream."""
    target = log_file
    if target is None and stream is None and sys.stderr is None:
        target = default_log_file(config_file)
    handler: logging.Handler
    if target is not None:
        handler = _file_handler(Path(target), configured=log_file is not None)
    else:
        handler = logging.StreamHandler(stream or sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
        if isinstance(h, logging.FileHandler):
            h.close()  # a reload or a second set-up must not leak the old file's descriptor
    root.addHandler(handler)
    root.setLevel(level)
    # watchdog's own chatter is noise at INFO; its warnings (overflows) stay visible.
    logging.getLogger("watchdog").setLevel(max(logging.WARNING, logging.getLevelName(level)))
    return Path(target) if target is not None and not isinstance(handler, logging.NullHandler) else None
