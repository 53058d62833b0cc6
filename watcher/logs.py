"""Logging set-up: human text by default, one JSON object per line for log shippers."""
from __future__ import annotations

import json
import logging
import sys
import time

from .names import shown


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage().encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace"),
        }
        extra = getattr(record, "publish", None)
        if extra:
            out["publish"] = extra
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """One event, one line: a file name holding a newline cannot forge log lines, and undecodable
    bytes are shown escaped instead of crashing the handler. Tracebacks (DEBUG) stay multi-line."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = shown(record.message)
        return super().formatMessage(record)


def setup(level: str = "INFO", fmt: str = "text", stream=None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level)
    # watchdog's own chatter is noise at INFO; its warnings (overflows) stay visible.
    logging.getLogger("watchdog").setLevel(max(logging.WARNING, logging.getLevelName(level)))
