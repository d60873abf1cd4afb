"""Log output: readable lines on stderr, with ``<N>`` syslog priority prefixes under systemd
(journald reads them), or one JSON object per line with ``--log-format json``.

At the default level there is no line per request: requests are in the ledger and metrics.
"""

from __future__ import annotations

import logging
import os
import sys
import time

import msgspec

_SYSLOG_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}
_json = msgspec.json.Encoder()


class TextFormatter(logging.Formatter):
    """``level logger: message`` with a timestamp, or a ``<N>`` prefix for journald."""

    def __init__(self, journald: bool) -> None:
        super().__init__()
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        if self.journald:
            priority = _SYSLOG_PRIORITY.get(record.levelno, 6)
            return f"<{priority}>{record.name}: {message}"
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        return f"{stamp} {record.levelname.lower():7} {record.name}: {message}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and exception)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return _json.encode(entry).decode()


def configure_logging(log_format: str = "text", level: str = "info") -> None:
    """Send quotad's logs to stderr in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    under_journald = bool(os.environ.get("JOURNAL_STREAM"))
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter(under_journald))
    root = logging.getLogger("quotad")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    logging.getLogger("httpx").setLevel(logging.WARNING)
