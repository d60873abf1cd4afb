"""Requests as they start and finish, for whoever watches the daemon live: counts in flight
and in total, each app's activity, the metrics, the last :data:`RECENT_REQUESTS` finished
requests (``Subscribe``'s tail, the TUI's request list), one debug log line per request, and
its :attr:`~LiveTail.watchers` (the fleet's shared spend, when there is a fleet).

The pipeline tells it when a request starts (:meth:`LiveTail.started`) and, once its ledger row
is committed and its reply sent, when it finished (:meth:`LiveTail.finished`)."""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import Callable, Iterable
from typing import Final

from quotad.daemon.activity import AppActivity, AppActivityLog
from quotad.daemon.declared_names import DeclaredNames
from quotad.daemon.guardrails.screening import decode_entities
from quotad.daemon.logs import REQUEST_LOG, log_request
from quotad.daemon.metrics import Metrics
from quotad.daemon.store.ledger import LedgerRow, live_record
from quotad.protocol.messages import RequestRecord

RECENT_REQUESTS: Final = 1000
"""Finished requests kept for subscribers."""


class LiveTail:
    """The daemon's live view of its requests (see the module docstring)."""

    __slots__ = (
        "activity",
        "declared",
        "finished_total",
        "in_flight",
        "metrics",
        "recent",
        "requests_total",
        "watchers",
    )

    def __init__(self) -> None:
        self.in_flight = 0
        self.requests_total = 0
        self.finished_total = 0
        self.recent: deque[RequestRecord] = deque(maxlen=RECENT_REQUESTS)
        self.activity = AppActivityLog()
        self.metrics = Metrics()
        self.declared = DeclaredNames()
        """The config's names (:meth:`declare`)."""
        self.watchers: list[Callable[[LedgerRow], None]] = []
        """Called with each finished row (the fleet's shared spend, when there is a fleet)."""

    def declare(self, names: DeclaredNames) -> None:
        """The config's names (at start and at each reload): the activity log and the metrics
        keep them apart past their bounds on names that clients choose."""
        self.declared = self.activity.declared = self.metrics.declared = names

    def started(self, app: str) -> AppActivity:
        """A request of ``app`` started; its app's activity, to hand back to :meth:`ended`."""
        self.in_flight += 1
        self.requests_total += 1
        activity = self.activity.of(app)
        activity.requests += 1
        activity.in_flight += 1
        return activity

    def ended(self, activity: AppActivity) -> None:
        """A request that :meth:`started` is no longer in flight (whatever its outcome)."""
        self.in_flight -= 1
        activity.in_flight -= 1

    def finished(self, row: LedgerRow) -> None:
        """A request's row is committed (run just after its reply, off the reply's path): its
        app's wait and spend (and what the guardrails found), the tail, metrics (a row's
        ``target`` is empty when the request reached none), and at debug level one log line
        (nothing is formatted otherwise)."""
        self.finished_total += 1
        self.activity.finished(row.app, row.wait_s, row.day, row.cost_usd)
        if row.entities or row.status == "blocked":  # what the guardrails found
            self.activity.found(row.app, decode_entities(row.entities), row.status == "blocked")
        record = live_record(row)
        self.recent.append(record)
        app = self.activity.tracked_name(row.app)
        self.metrics.observe_request(record, resolved=bool(row.target), app=app)
        for watcher in self.watchers:
            watcher(row)
        if REQUEST_LOG.isEnabledFor(logging.DEBUG):
            log_request(row)

    def recent_since(self, finished_seen: int) -> tuple[list[RequestRecord], int]:
        """Requests finished since a subscriber saw ``finished_seen`` of them (at most the
        last :data:`RECENT_REQUESTS`), and the new count to remember."""
        missed = min(self.finished_total - finished_seen, len(self.recent))
        records = list(itertools.islice(self.recent, len(self.recent) - missed, None))
        return records, self.finished_total

    def load_spend(self, spent: Iterable[tuple[str, float, float]], day: str) -> None:
        """Today's spend per app from the ledger (``(app, today, month)``), at start."""
        self.activity.load_spend(spent, day)
