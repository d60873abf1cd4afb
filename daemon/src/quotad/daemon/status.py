"""What the daemon reports of itself: :class:`~quotad.protocol.messages.StatusReply`
(``quotad status``, ``/healthz``, the TUI's snapshots) assembled from every part — targets and
groups (routing), gates and queues, apps (policy and live activity), the cache, budgets, the
event log — and :class:`~quotad.protocol.messages.SpendReply` (``quotad spend``: a ledger
report with the budgets' use; with ``--fleet``, every host's); and for the HTTP front door,
the model names a request may use and whether the cache answers at all."""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING, Final, Protocol

import msgspec

from quotad.daemon.activity import AppActivity
from quotad.daemon.clock import Clock
from quotad.daemon.config import Config
from quotad.daemon.errors import RequestError
from quotad.daemon.events import EventLog
from quotad.daemon.gates import Gates
from quotad.daemon.live_tail import LiveTail
from quotad.daemon.routing import Router
from quotad.daemon.store import Store
from quotad.protocol.messages import (
    AppStatus,
    BudgetStatus,
    ClusterStatus,
    Spend,
    SpendReply,
    StatusReply,
)

if TYPE_CHECKING:
    from quotad.daemon.cluster.shared_budgets import SharedBudgets

DAEMON_VERSION: Final = "0.1.0"


class FleetReports(Protocol):
    """What status asks of the daemon's fleet membership (``[cluster]``:
    :class:`~quotad.daemon.cluster.fleet.Cluster`, which imports the Redis client)."""

    def status(self) -> ClusterStatus:
        """The fleet as this host sees it."""
        ...

    def problems(self) -> list[str]:
        """What keeps sharing through the fleet from working fully now."""
        ...


class StatusReports:
    """Assembles the daemon's status and spend reports (see the module docstring)."""

    def __init__(
        self,
        config: Config,
        router: Router,
        gates: Gates,
        store: Store,
        tail: LiveTail,
        events: EventLog,
        clock: Clock,
    ) -> None:
        self.config = config
        self.router = router
        """The current config and router (a reload replaces both)."""
        self.gates = gates
        self.cache = store.cache
        self.ledger = store.ledger
        self.budgets = store.budgets
        self.prices = store.prices
        self.tail = tail
        self.events = events
        self.clock = clock
        self.started_at = clock.monotonic()
        self.cluster: FleetReports | None = None
        """Set by the runtime when ``[cluster]`` is configured."""
        self.fleet_budgets: SharedBudgets | None = None
        """With ``[cluster]``: the fleet's budgets and spend (``quotad spend --fleet``)."""

    def status(self) -> StatusReply:
        """The daemon's state now."""
        router = self.router
        gates, queues, queued_by_app = self.gates.status()
        targets = [router.target_status(target) for target in router.targets.values()]
        for target_status in targets:
            target_status.unpriced = self.prices.for_target(target_status.name) is None
            target_status.paused_until = self.gates.paused_until(target_status.name)
        return StatusReply(
            daemon_version=DAEMON_VERSION,
            pid=os.getpid(),
            uptime_s=self.clock.monotonic() - self.started_at,
            config_path=self.config.source,
            in_flight=self.tail.in_flight,
            requests_total=self.tail.requests_total,
            targets=targets,
            groups=[
                router.group_status(route, self.prices.input_and_output)
                for route in router.groups.values()
            ],
            gates=gates,
            queues=queues,
            apps=self._apps(queued_by_app),
            cache=self.cache.status(),
            budgets=self._budgets(),
            events=self.events.recent(),
            permits=len(self.gates.permits),
            cluster=self.cluster.status() if self.cluster is not None else None,
            problems=[
                *self.ledger.problems(),
                *(self.cluster.problems() if self.cluster is not None else ()),
            ],
        )

    def _budgets(self) -> list[BudgetStatus]:
        """Each budget's use now: in a fleet, the fleet's as this host last heard it (no
        round trip), or this host's own when it has not heard them freshly."""
        now = self.clock.time()
        if self.fleet_budgets is not None:
            return self.fleet_budgets.budget_status(now)
        return self.budgets.status(now)

    @property
    def cache_enabled(self) -> bool:
        """Whether the cache answers requests at all (``[cache] mode``)."""
        return self.cache.enabled

    def model_owners(self) -> list[tuple[str, str]]:
        """``(name, owner)`` of every model name a request may use (``GET /v1/models``)."""
        return self.router.model_owners()

    def model_owner(self, name: str) -> str:
        """Who a model name is; ``unknown_model`` naming what exists."""
        return self.router.owner_of(name)

    async def spend(self, request: Spend) -> SpendReply:
        """A ledger report, with the budgets' use: this host's, or with ``fleet`` every
        host's (``bad_request`` with no ``[cluster]``). By host, this host's report is one
        row: its own."""
        now = self.clock.time()
        if request.fleet:
            if self.fleet_budgets is None:
                raise RequestError(
                    "bad_request",
                    "quotad spend --fleet: this daemon has no [cluster] (cluster.redis_url "
                    f"in {self.config.source}): it is one host; `quotad spend` reports it",
                )
            reply = await self.fleet_budgets.report(request.period, request.by, now)
        else:
            by_host = request.by == "host"
            reply = await self.ledger.report(request.period, "app" if by_host else request.by, now)
            if by_host:
                reply.by = "host"
                reply.rows = [msgspec.structs.replace(reply.total, key=self.host_name)]
            reply.budgets = self.budgets.status(now)
        reply.id = request.id
        return reply

    @property
    def host_name(self) -> str:
        """This host's name: its name in the fleet, else the machine's."""
        if self.fleet_budgets is not None:
            return self.fleet_budgets.link.host
        return socket.gethostname()

    def _apps(self, queued_by_app: dict[str, int]) -> list[AppStatus]:
        """Each app the config names or that was seen: its policy, queue and activity."""
        today = self.ledger.calendar.day(self.clock.time())
        activity_log = self.tail.activity
        apps = []
        for name in sorted(set(self.config.apps) | set(queued_by_app) | activity_log.names()):
            policy = self.gates.app_policy(name)
            activity = activity_log.get(name) or AppActivity()
            apps.append(
                AppStatus(
                    name=name,
                    priority=policy.priority,
                    share=policy.share,
                    requests=activity.requests,
                    in_flight=activity.in_flight,
                    queued=queued_by_app.get(name, 0),
                    wait_s_total=activity.wait_s_total,
                    spend_today_usd=activity.spend_today_usd if activity.day == today else 0.0,
                    blocked=activity.blocked,
                    entities=dict(activity.entities),
                )
            )
        return apps
