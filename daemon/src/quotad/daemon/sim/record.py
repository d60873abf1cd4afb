"""What the simulated provider records of the requests it answers: :class:`Arrival` (what is
known of one when it comes), the counts by outcome and by path that ``GET /sim/stats`` answers,
and the ``--log`` file, one JSON line (:class:`LogLine`) per request."""

from __future__ import annotations

import os
from typing import Any

import msgspec

_json = msgspec.json.Encoder()


class LogLine(msgspec.Struct, omit_defaults=True):
    """One line of the ``--log`` file: a request, and how it was answered."""

    t: float
    mono: float
    path: str
    model: str
    status: int
    tokens: int
    app: str | None
    fault: str = ""
    body: str = ""
    """The request's body, with ``--log-bodies`` (what a provider received)."""


class Arrival(msgspec.Struct):
    """What is known of a request when it arrives."""

    t: float
    mono: float
    path: str
    app: str | None
    model: str = ""
    tokens: int = 0
    body: str = ""


class RequestRecord:
    """One sim's counts of its requests, by outcome and by path, and its ``--log`` file."""

    def __init__(self) -> None:
        self._counts = {"requests": 0, "ok": 0, "rate_limited": 0, "failed": 0, "client_errors": 0}
        self._by_path: dict[str, int] = {}
        self._log_fd = -1

    def open_log(self, path: str) -> None:
        """Append a line per request answered to ``path`` (created if absent) from now on."""
        self._log_fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def close_log(self) -> None:
        """Stop logging (nothing when no log is open)."""
        if self._log_fd >= 0:
            os.close(self._log_fd)
            self._log_fd = -1

    def arrived(self, path: str) -> None:
        """Count a request to ``path`` (one of the provider's, not ``/sim/``)."""
        self._counts["requests"] += 1
        self._by_path[path] = self._by_path.get(path, 0) + 1

    def answered(self, arrival: Arrival, status: int, fault: str = "") -> None:
        """Count how ``arrival`` was answered (``status`` 0: not at all; ``fault``: the one
        injected), and log it."""
        counts = self._counts
        if fault:
            counts["failed"] += 1
        elif status == 200:
            counts["ok"] += 1
        elif status == 429:
            counts["rate_limited"] += 1
        else:
            counts["client_errors"] += 1
        if self._log_fd >= 0:
            line = LogLine(
                t=arrival.t,
                mono=arrival.mono,
                path=arrival.path,
                model=arrival.model,
                status=status,
                tokens=arrival.tokens,
                app=arrival.app,
                fault=fault,
                body=arrival.body,
            )
            os.write(self._log_fd, _json.encode(line) + b"\n")

    def stats(self) -> dict[str, Any]:
        """The counts, as ``GET /sim/stats`` answers them."""
        return {**self._counts, "by_path": dict(self._by_path)}
