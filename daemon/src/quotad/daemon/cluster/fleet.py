"""This daemon's membership of a fleet, as the runtime holds it (``Daemon.cluster``): the
:class:`~quotad.daemon.cluster.link.Link` to the fleet's Redis, the
:class:`~quotad.daemon.cluster.gates.FleetGates` behind the gates' windows, the tasks that
keep them running, and what status, ``/metrics`` and the heartbeat report of them.

Made by the runtime only when ``[cluster] redis_url`` is set (importing this module imports
the Redis client). Start order, in :meth:`Daemon.serve
<quotad.daemon.runtime.Daemon.serve>`: the store opens, then :meth:`Cluster.open` reaches
Redis and joins the fleet (a Redis that refuses this host's credentials is a
:class:`ClusterStartError`: exit 1; one that does not answer leaves the host serving degraded
until it does), then :meth:`Cluster.run` runs beside the servers, and :meth:`Cluster.close`
closes the client's connections after the servers have drained.

Other parts that share through the fleet (budgets) build on :attr:`Cluster.link` and add
their own loop with :meth:`Cluster.run_beside` and their own heartbeat figures with
:meth:`Cluster.report_load` before :meth:`Cluster.run` starts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Coroutine
from datetime import datetime, timedelta
from typing import Any, Final

import anyio
import anyio.abc

from quotad.daemon.clock import SYSTEM_CLOCK, Clock
from quotad.daemon.cluster.gates import FleetGates
from quotad.daemon.cluster.link import ClusterAuthError, Health, Link, LinkDown
from quotad.daemon.cluster.settings import ClusterSettings, ClusterStartError, resolve_settings
from quotad.daemon.config import ClusterConfig, ConfigError
from quotad.daemon.events import EventLog
from quotad.protocol.messages import ClusterHost, ClusterStatus, ClusterWindow

log = logging.getLogger("quotad.cluster")

MAX_HOSTS_SHOWN: Final = 64
Runner = Callable[..., Coroutine[Any, Any, None]]
"""A loop run beside the link (``run(*, task_status=...)``, until cancelled)."""


class Cluster:
    """The link, the fleet's gates, and their tasks (see the module docstring)."""

    def __init__(
        self,
        config: ClusterConfig,
        *,
        events: EventLog,
        timezone: str,
        clock: Clock = SYSTEM_CLOCK,
        settings: ClusterSettings | None = None,
    ) -> None:
        """``timezone``: ``daemon.timezone``, told to the fleet (budget periods are days and
        months in it, so every host must use the same one). A :class:`ConfigError` for a
        password that cannot be read or a URL the client refuses."""
        self.settings = settings or resolve_settings(config)
        self.timezone = timezone or system_zone()
        self.events = events
        try:
            self.link = Link(self.settings, clock=clock, events=events.add)
        except ValueError as error:  # what redis-py refuses in a URL our checks let through
            raise ConfigError("cluster", [f"cluster.redis_url: {error}"]) from None
        self.gates = FleetGates(self.link)
        self._runners: list[Runner] = []
        self._load_parts: list[Callable[[], dict[str, Any]]] = []
        self._timezone_warned: set[str] = set()
        self.link.load = self._load

    # ------------------------------------------------------------------ composition

    def run_beside(self, runner: Runner) -> None:
        """Run ``runner`` (e.g. ``FleetBudgets.run``) with the link, from :meth:`run` on."""
        self._runners.append(runner)

    def report_load(self, part: Callable[[], dict[str, Any]]) -> None:
        """Merge ``part()`` into this host's heartbeat (what other hosts see of it)."""
        self._load_parts.append(part)

    def _load(self) -> dict[str, Any]:
        load: dict[str, Any] = {"tz": self.timezone, "windows": len(self.gates.windows)}
        for part in self._load_parts:
            load.update(part())
        return load

    # ------------------------------------------------------------------ start, run, close

    async def open(self) -> None:
        """Reach Redis and join the fleet, within ``connect_timeout_s``. Redis refusing this
        host's credentials raises :class:`ClusterStartError`; a Redis that does not answer is
        an error event and the host serves degraded until it answers."""
        try:
            reached = await self.link.open()
        except ClusterAuthError as error:
            raise ClusterStartError(str(error)) from None
        if not reached:
            return
        with anyio.move_on_after(self.settings.connect_timeout_s):
            try:
                await self.link.join()
            except LinkDown as error:
                log.warning("cluster: could not join the fleet yet: %s", error)
        self.check_timezones()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """The link (heartbeat, pub/sub, re-sync), the fleet's gates and every runner added,
        until cancelled."""
        self.link.on_health(self._health_changed)
        async with anyio.create_task_group() as tasks:
            await tasks.start(self.link.run)
            await tasks.start(self.gates.run)
            for runner in self._runners:
                await tasks.start(runner)
            task_status.started()

    def _health_changed(self, health: Health) -> None:
        if health == "connected":
            self.check_timezones()

    async def close(self) -> None:
        """Close the client's connections (after the servers drained)."""
        await self.link.close()

    # ------------------------------------------------------------------ checks and status

    def check_timezones(self) -> list[str]:
        """Hosts whose ``daemon.timezone`` differs from this one's: an event for each new
        one (budget days and months would not line up across the fleet)."""
        others = sorted(
            f"{seen.name} ({seen.load.get('tz')})"
            for seen in self.link.hosts
            if seen.name != self.link.host
            and isinstance(seen.load.get("tz"), str)
            and seen.load.get("tz") != self.timezone
        )
        for other in others:
            if other not in self._timezone_warned and len(self._timezone_warned) < 256:
                self._timezone_warned.add(other)
                self.events.add(
                    "cluster_timezone",
                    f"host {other} uses another daemon.timezone than this one "
                    f"({self.timezone}): fleet budgets' days and months would not line up; "
                    "set the same daemon.timezone on every host",
                    logging.WARNING,
                )
        return others

    def problems(self) -> list[str]:
        """What keeps the fleet's sharing from working fully now, one line each."""
        link = self.link
        problems = []
        if link.health != "connected":
            problems.append(
                f"cluster: {link.health} for {link.clock.monotonic() - link.since:.0f} s: "
                f"{link.reason} (on_unreachable = {self.settings.on_unreachable})"
            )
        mismatched = self.check_timezones()
        if mismatched:
            problems.append(
                f"cluster: other daemon.timezone on {', '.join(mismatched[:5])}"
                + (" …" if len(mismatched) > 5 else "")
            )
        return problems

    def status(self) -> ClusterStatus:
        """What ``quotad status``, the TUI and ``/metrics`` show of the fleet."""
        link = self.link
        now = time.time()
        hosts = []
        for seen in sorted(link.hosts, key=lambda s: s.name)[:MAX_HOSTS_SHOWN]:
            load = seen.load
            hosts.append(
                ClusterHost(
                    name=seen.name,
                    seen_s_ago=_ago(seen.seen_at, link),
                    in_flight=_int(load.get("in_flight")),
                    queued=_int(load.get("queued")),
                    timezone=str(load.get("tz", ""))[:64],
                )
            )
        return ClusterStatus(
            host=link.host,
            redis_url=self.settings.redis_url,
            key_prefix=self.settings.key_prefix,
            health=link.health,
            reason=link.reason,
            since=now - (link.clock.monotonic() - link.since),
            on_unreachable=self.settings.on_unreachable,
            mode=_mode(link.health, link.ever_connected, self.settings.on_unreachable),
            hosts_seen=link.hosts_seen(),
            hosts=hosts,
            windows=[
                ClusterWindow(name=name, held=held, fleet_used=used, provider_external=external)
                for name, held, used, external in self.gates.held()
            ],
            rtt_ms=round(link.rtt_s * 1000, 3),
            redis_calls=link.calls,
            redis_failures=link.failures,
            borrows=self.gates.borrows,
            refused=self.gates.refused,
        )


def system_zone() -> str:
    """``daemon.timezone = ""`` (the system's zone) as hosts compare it: its UTC offset now."""
    offset = datetime.now().astimezone().utcoffset() or timedelta(0)
    minutes = int(offset.total_seconds() // 60)
    sign = "+" if minutes >= 0 else "-"
    return f"system (UTC{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d})"


def _ago(seen_at: float, link: Link) -> float:
    """Seconds since a heartbeat at server time ``seen_at`` (Unix s), on our clock."""
    if not link.time.known:
        return 0.0
    return round(max(0.0, link.clock.monotonic() - link.time.to_local(seen_at * 1e6)), 3)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and 0 <= value < 1 << 40 else 0


def _mode(health: str, ever_connected: bool, on_unreachable: str) -> str:
    """How the gates admit now: ``fleet`` (borrowing), or the fallback while Redis is away."""
    if health == "connected":
        return "fleet"
    if ever_connected or health == "resyncing":
        return on_unreachable
    return "closed"
