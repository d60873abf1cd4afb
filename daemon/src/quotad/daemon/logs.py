"""Log output: readable lines on stderr, with ``<N>`` syslog priority prefixes when stderr is
the journal (journald reads them), or one JSON object per line (``daemon.log_format = "json"``
or ``--log-format json``).

Stderr is the journal when ``$JOURNAL_STREAM`` (``DEVICE:INODE``) names it: the variable alone
is inherited by children whose stderr may go elsewhere. At the default level there is no line
per request: requests are in the ledger and metrics. At ``debug``, :func:`log_request` writes
one line per finished request on the ``quotad.requests`` logger (its id, app, target, status,
tokens, cost, wait, latency; never a prompt, a reply or a key), with the same fields as a
``request`` object in the JSON format.

An event any local client can repeat at will (a refused request, a connection closed to make
room) is logged the first time, then once every thousand, with the count so far
(:mod:`quotad.daemon.net.log_rate`): a client sending thousands a second grows the log by a few
lines, not by one each.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from typing import Final

import msgspec

from quotad.daemon.store.ledger import LedgerRow
from quotad.protocol.figures import usd

_SYSLOG_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}
_json = msgspec.json.Encoder()
REQUEST_LOG: Final = logging.getLogger("quotad.requests")
_BARE: Final = re.compile(r"[\w./:@+-]+")


class TextFormatter(logging.Formatter):
    """``level logger: message`` with a timestamp, or a ``<N>`` prefix for journald."""

    def __init__(self, journald: bool) -> None:
        super().__init__()
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        if self.journald:  # journald reads each line apart: each carries the priority
            priority = _SYSLOG_PRIORITY.get(record.levelno, 6)
            first, *rest = message.split("\n")
            return "\n".join(
                [f"<{priority}>{record.name}: {first}", *(f"<{priority}>  {line}" for line in rest)]
            )
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        return f"{stamp} {record.levelname.lower():7} {record.name}: {message}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and exception). For journald
    the line starts with the ``<N>`` priority, which journald takes off: the journal's message
    is the JSON object, at the right priority."""

    def __init__(self, journald: bool = False) -> None:
        super().__init__()
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        fields = getattr(record, "request", None)
        if fields is not None:  # a finished request (log_request): its fields, as they are
            entry["request"] = fields
        line = _json.encode(entry).decode()
        if self.journald:
            return f"<{_SYSLOG_PRIORITY.get(record.levelno, 6)}>{line}"
        return line


def stderr_is_journal(journal_stream: str | None = None) -> bool:
    """Whether stderr is the journal stream ``$JOURNAL_STREAM`` (``DEVICE:INODE``) names."""
    value = os.environ.get("JOURNAL_STREAM", "") if journal_stream is None else journal_stream
    device, _, inode = value.partition(":")
    if not device.isdigit() or not inode.isdigit():
        return False
    try:
        info = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (info.st_dev, info.st_ino) == (int(device), int(inode))


def configure_logging(log_format: str = "text", level: str = "info") -> None:
    """Send quotad's logs to stderr in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    journald = stderr_is_journal()
    formatter = JsonFormatter(journald) if log_format == "json" else TextFormatter(journald)
    handler.setFormatter(formatter)
    root = logging.getLogger("quotad")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    logging.getLogger("httpx").setLevel(logging.WARNING)


def _word(value: str) -> str:
    """``value`` as one word of a log line: as is when plain, else JSON-quoted (an app name
    is the client's to choose: spaces or a newline must not forge a field or a line)."""
    return value if _BARE.fullmatch(value) else _json.encode(value).decode()


def log_request(row: LedgerRow) -> None:
    """One line for a finished request, at debug level on ``quotad.requests``. The caller
    checks ``REQUEST_LOG.isEnabledFor(logging.DEBUG)`` first, so that nothing here runs at the
    default level."""
    fields = {
        "id": row.request_id,
        "kind": row.kind,
        "app": row.app,
        "model": row.model,
        "target": row.target,
        "status": row.status,
        "attempts": row.attempts,
        "prompt_tokens": row.prompt_tokens,
        "completion_tokens": row.completion_tokens,
        "cached": row.cached,
        "cost_usd": row.cost_usd,
        "wait_s": round(row.wait_s, 6),
        "latency_s": round(row.latency_s, 6),
    }
    REQUEST_LOG.debug(
        "request %s app=%s target=%s status=%s tokens=%d+%d cost=%s wait=%.0fms "
        "latency=%.0fms attempts=%d%s",
        row.request_id,
        _word(row.app),
        _word(row.target or "-"),
        row.status,
        row.prompt_tokens,
        row.completion_tokens,
        usd(row.cost_usd),
        row.wait_s * 1000,
        row.latency_s * 1000,
        row.attempts,
        " cache=hit" if row.cached else "",
        extra={"request": fields},
    )
