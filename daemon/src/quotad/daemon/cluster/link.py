"""The link to the fleet's Redis (or Valkey): one redis-py asyncio client, the scripts
registered once (redis-py's script objects load a script again when the server answers
NOSCRIPT, as a restarted Redis does), the server's clock as seen from here (sampled into a
:class:`~.server_time.ServerTime`), the heartbeat (this host's load out; the hosts seen and
the fleet's epoch back, parsed by :mod:`.heartbeat`), the pub/sub channel (a
:class:`~.channel.FleetChannel`), and the health of it all:

::

    connecting ──first heartbeat──▶ resyncing ──re-sync pushed, window over──▶ connected
        │                               ▲                                         │
        └──────────(fails)─────▶ degraded ◀──a call fails or is slower than timeout_s
                                        └──a heartbeat answers again──▶ resyncing

Only ``connected`` borrows from the fleet; in every other state the gates and budgets fall
back on what this host holds (see :mod:`.window` and :mod:`.budgets`). Each change of health
is an event. A Redis that lost the fleet's state (restarted empty) is noticed by its epoch:
the heartbeat creates a new one, every host pushes its own state back (``resyncers``) and
borrows nothing until the new epoch's re-sync window is over. A host back from an outage
(Redis kept its state) opens such a window too: the other hosts may still be serving on their
share, their admissions not in the fleet's log until their next heartbeat pushes them, so
nobody borrows (Redis refuses) until every host running has had a heartbeat to push. A
:data:`~.settings.ClusterSettings.timeout_s` before a window ends, each host *seals*
(``sealers``): it stops admitting on its share and pushes what it admitted meanwhile, so all
of it is in the log when borrowing starts again.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

import anyio
import anyio.abc
import msgspec
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, RedisError, ResponseError

from quotad.daemon.clock import SYSTEM_CLOCK, Clock
from quotad.daemon.cluster.channel import FleetChannel
from quotad.daemon.cluster.heartbeat import (
    HEARTBEAT_MALFORMED,
    MAX_LOAD_BYTES,
    HostSeen,
    parse_heartbeat,
)
from quotad.daemon.cluster.keys import FleetKeys
from quotad.daemon.cluster.redis_failures import PLAIN_FAILURES, unreadable
from quotad.daemon.cluster.scripts import SCRIPTS
from quotad.daemon.cluster.server_time import ServerTime
from quotad.daemon.cluster.settings import ClusterSettings

log = logging.getLogger("quotad.cluster")

Health = Literal["connecting", "connected", "resyncing", "degraded"]
EventSink = Callable[[str, str, int], None]
"""``(kind, message, level)``: :meth:`quotad.daemon.events.EventLog.add`."""

FORGET_HOSTS_S: Final = 86400.0
"""A host unseen this long is dropped from the hosts set."""
MALFORMED: Final = (ValueError, TypeError, IndexError, KeyError, AttributeError)
"""What parsing a reply of the wrong shape raises."""


class LinkDown(Exception):
    """Redis cannot be used now: the link is degraded (or never connected)."""


class ClusterAuthError(Exception):
    """Redis refused this host's credentials (a start-up error)."""


@dataclass(frozen=True, slots=True)
class Reply:
    """A script's reply and when, on our monotonic clock, it was sent and received."""

    value: Any
    sent: float
    received: float


class Link:
    """The connection to the fleet's Redis, its health, heartbeat and pub/sub."""

    def __init__(
        self,
        settings: ClusterSettings,
        *,
        clock: Clock = SYSTEM_CLOCK,
        events: EventSink | None = None,
    ) -> None:
        self.settings = settings
        self.host = settings.host
        self.keys = FleetKeys(settings.key_prefix)
        self.clock = clock
        self.time = ServerTime()
        self.health: Health = "connecting"
        self.reason = "Redis not reached yet"
        self.since = clock.monotonic()
        self.epoch: str | None = None
        """The epoch this host's state in Redis belongs to (None: not pushed yet)."""
        self.fleet_epoch: str | None = None
        """The fleet's epoch at the last heartbeat."""
        self.resync_until_us = 0
        """The fleet's re-sync window ends then (server time), as the last heartbeat saw it."""
        self.sealed = False
        """This host has sealed in the re-sync window: it admits only from its leases."""
        self.hosts: tuple[HostSeen, ...] = ()
        self.ever_connected = False
        self.load: Callable[[], dict[str, Any]] = dict
        """What this host reports of its load at each heartbeat."""
        self.rtt_s = 0.0
        self.calls = 0
        self.failures = 0
        self._events = events
        self._resyncers: list[Callable[[bool], Awaitable[None]]] = []
        self._sealers: list[Callable[[], Awaitable[None]]] = []
        self._health_listeners: list[Callable[[Health], None]] = []
        self._hosts_listeners: list[Callable[[int], None]] = []
        self._hosts_count = 1
        self._wake = anyio.Event()
        self._resyncing = False
        self._tasks: anyio.abc.TaskGroup | None = None
        self._redis = aioredis.Redis.from_url(
            settings.redis_url,
            password=settings.password,
            socket_timeout=max(settings.timeout_s, 1.0),
            socket_connect_timeout=max(settings.timeout_s, 1.0),
            retry=Retry(NoBackoff(), 1),
            max_connections=32,
        )
        self._scripts = {name: self._redis.register_script(text) for name, text in SCRIPTS.items()}
        self.channel = FleetChannel(
            self._redis,
            self.keys.channel,
            settings,
            listening=lambda: self.health in ("connected", "resyncing"),
        )
        """The fleet's pub/sub channel, listened to while :meth:`run` runs."""

    # ------------------------------------------------------------------ listeners

    @property
    def resync_until(self) -> float:
        """The latest local time the fleet's re-sync window can end (as the last heartbeat
        saw it)."""
        return self.time.to_local(self.resync_until_us)

    def add_resyncer(self, resync: Callable[[bool], Awaitable[None]]) -> None:
        """``resync(epoch_changed)`` pushes a part's own state back after an outage (or,
        when ``epoch_changed``, after Redis restarted empty); it may call :meth:`call`."""
        self._resyncers.append(resync)

    def add_sealer(self, seal: Callable[[], Awaitable[None]]) -> None:
        """``seal()`` near the end of a re-sync window: stop admitting on the share (the
        health listeners see :attr:`sealed`) and push what was admitted; may call
        :meth:`call`."""
        self._sealers.append(seal)

    def on_health(self, listener: Callable[[Health], None]) -> None:
        """``listener(health)`` on every change of health."""
        self._health_listeners.append(listener)

    def on_hosts(self, listener: Callable[[int], None]) -> None:
        """``listener(hosts_seen)`` after a heartbeat that changed :meth:`hosts_seen` (a host
        joined or went quiet), whatever the health."""
        self._hosts_listeners.append(listener)

    @property
    def usable(self) -> bool:
        """Whether borrowing from the fleet is possible now."""
        return self.health == "connected"

    def hosts_seen(self) -> int:
        """Hosts with a recent heartbeat, this one included (at least 1)."""
        names = {seen.name for seen in self.hosts}
        names.add(self.host)
        return len(names)

    # ------------------------------------------------------------------ calls

    async def call(self, name: str, keys: list[str], args: list[Any]) -> Reply:
        """Run script ``name``; :class:`LinkDown` when the link is degraded or the call
        fails or takes longer than ``timeout_s`` (which degrades the link)."""
        if self.health not in ("connected", "resyncing"):
            raise LinkDown(self.reason)
        return await self._call(name, keys, args)

    async def _call(self, name: str, keys: list[str], args: list[Any]) -> Reply:
        sent = self.clock.monotonic()
        self.calls += 1
        try:
            with anyio.fail_after(self.settings.timeout_s):
                value = await self._scripts[name](keys=keys, args=args)
        except TimeoutError:
            self._down(f"Redis did not answer within {self.settings.timeout_s:g} s")
            raise LinkDown(self.reason) from None
        except AuthenticationError as error:
            self._down(f"Redis refused this host's credentials: {error}")
            raise LinkDown(self.reason) from None
        except ResponseError as error:
            self._down(f"Redis refused script {name}: {error}")
            raise LinkDown(self.reason) from None
        except (RedisError, OSError) as error:
            self._down(f"Redis unreachable: {error or type(error).__name__}")
            raise LinkDown(self.reason) from None
        except Exception as error:  # redis-py on an answer no Redis gives (redis_failures)
            self._down(unreadable(error))
            raise LinkDown(self.reason) from None
        received = self.clock.monotonic()
        self.rtt_s = received - sent
        return Reply(value, sent, received)

    async def read_hash_page(self, key: str, cursor: int, count: int) -> tuple[int, dict[Any, Any]]:
        """One ``HSCAN key cursor COUNT count`` (a read for reports, a page at a time so that
        a huge hash is never held whole): ``(next cursor, fields)``, cursor 0 when done;
        :class:`LinkDown` as :meth:`call`."""
        if self.health not in ("connected", "resyncing"):
            raise LinkDown(self.reason)
        try:
            with anyio.fail_after(self.settings.timeout_s * 4):
                next_cursor, fields = await self._redis.hscan(key, cursor, count=count)
        except TimeoutError:
            raise LinkDown("Redis did not answer in time") from None
        except (RedisError, OSError) as error:
            raise LinkDown(f"Redis unreachable: {error or type(error).__name__}") from None
        except Exception as error:  # as in _call
            raise LinkDown(unreadable(error)) from None
        return int(next_cursor), fields if isinstance(fields, dict) else {}

    def malformed(self, name: str, error: Exception) -> LinkDown:
        """A reply of script ``name`` did not have the shape it must: Redis is not one this
        host can trust now (degraded, logged); the :class:`LinkDown` to raise."""
        log.error("cluster: malformed reply of %s: %r", name, error)
        self._down(f"malformed reply of {name} ({type(error).__name__}: {str(error)[:160]})")
        return LinkDown(self.reason)

    def sample_time(self, server_us: int, reply: Reply) -> None:
        """Learn the server's clock from a reply that carried ``TIME``."""
        self.time.sample(server_us, reply.sent, reply.received)

    def epoch_mismatch(self) -> None:
        """A script said our epoch is not the fleet's: Redis lost its state. Heartbeat now."""
        log.info("cluster: the fleet's epoch changed; re-syncing")
        self._set_health("resyncing", "Redis lost the fleet's state; re-syncing")
        self._wake.set()

    def _down(self, reason: str) -> None:
        self.failures += 1
        if self.health == "degraded" and self.reason == reason:
            return
        was = self.health
        self._set_health("degraded", reason)
        if was != "connecting":
            self._event(
                "cluster_degraded",
                f"{reason}; serving on this host's share ({self.settings.on_unreachable})",
                logging.WARNING,
            )
        self.channel.interrupt()
        self._wake.set()

    def _set_health(self, health: Health, reason: str) -> None:
        changed = health != self.health
        self.health = health
        self.reason = reason
        if changed:
            self.since = self.clock.monotonic()
            for listener in self._health_listeners:
                listener(health)

    def _event(self, kind: str, message: str, level: int = logging.INFO) -> None:
        if self._events is not None:
            self._events(kind, message, level)
        else:
            log.log(level, "%s: %s", kind, message)

    # ------------------------------------------------------------------ start, run, close

    async def open(self) -> bool:
        """At start-up: reach Redis within ``connect_timeout_s``. True when reached (the
        re-sync then starts with :meth:`run`); False when not, and the host serves degraded
        (an error event) until it is. :class:`ClusterAuthError` when Redis refuses this
        host's credentials: a start-up error, not something to wait out."""
        deadline = self.clock.monotonic() + self.settings.connect_timeout_s
        while True:
            try:
                with anyio.fail_after(self.settings.timeout_s * 2):
                    await self._redis.ping()
            except AuthenticationError as error:
                raise ClusterAuthError(
                    f"Redis at {self.settings.redis_url} refused this host's credentials "
                    f"({error}); check cluster.redis_password_env or redis_password_file"
                ) from None
            except ResponseError as error:
                if "NOAUTH" in str(error) or "WRONGPASS" in str(error):
                    raise ClusterAuthError(f"Redis refused this host: {error}") from None
                raise ClusterAuthError(f"Redis at {self.settings.redis_url}: {error}") from None
            except Exception as error:  # away, or an answer no Redis gives: as in _call
                if self.clock.monotonic() >= deadline:
                    why = error if isinstance(error, PLAIN_FAILURES) else unreadable(error)
                    self.reason = f"Redis unreachable at start: {why or type(error).__name__}"
                    self._event(
                        "cluster_unreachable",
                        f"{self.reason} ({self.settings.redis_url}); serving degraded "
                        "(closed: nothing borrowed yet) until it answers",
                        logging.ERROR,
                    )
                    return False
                await anyio.sleep(0.2)
                continue
            return True

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Heartbeat (reconnecting with backoff while degraded) and listen to the
        :attr:`channel`, until cancelled."""
        async with anyio.create_task_group() as tasks:
            self._tasks = tasks
            tasks.start_soon(self.channel.listen)
            task_status.started()
            await self._beat_forever()

    async def close(self) -> None:
        """Close the client's connections."""
        with anyio.CancelScope(shield=True):
            with contextlib.suppress(RedisError, OSError):
                await self._redis.aclose()

    async def join(self) -> None:
        """Heartbeat and, when needed, re-sync now (start-up, tests); :class:`LinkDown` when
        Redis cannot be reached."""
        needed = await self.heartbeat()
        if needed is not None:
            self._resyncing = True
            await self._resync(*needed)
            if self.health != "connected":
                raise LinkDown(self.reason)

    async def _beat_forever(self) -> None:
        backoff = 0.05
        while True:
            try:
                needed = await self.heartbeat()
                if needed is not None and self._tasks is not None:
                    self._resyncing = True
                    self._tasks.start_soon(self._resync, *needed)
                backoff = 0.05
            except LinkDown:
                backoff = min(backoff * 2, self.settings.heartbeat_s)
            interval = self.settings.heartbeat_s if self.health != "degraded" else backoff
            with anyio.move_on_after(interval):
                await self._wake.wait()
            self._wake = anyio.Event()

    async def heartbeat(self) -> tuple[str, bool] | None:
        """Say this host is alive; learn the hosts seen and the epoch. Returns ``(epoch,
        changed)`` when this host's state in Redis is not current and must be re-synced
        (after an outage, at the first contact, or Redis restarted empty), else None."""
        load = msgspec.json.encode(self.load())
        if len(load) > MAX_LOAD_BYTES:
            load = b"{}"
        others = any(seen.name != self.host for seen in self.hosts)
        # back from an outage: the others may be serving on their share, open a window
        reopen = self.ever_connected and self.health == "degraded" and not self._resyncing
        keys = self.keys
        reply = await self._call(
            "heartbeat",
            [keys.hosts, keys.load, keys.epoch],
            [
                self.host,
                load,
                int(self.settings.host_ttl_s * 1e6),
                os.urandom(8).hex(),
                int(self.settings.resync_s * 1e6) if others else 0,
                int(FORGET_HOSTS_S * 1e6),
                int(reopen),
            ],
        )
        try:
            now_us, epoch, hosts = parse_heartbeat(reply.value)
        except HEARTBEAT_MALFORMED as error:
            raise LinkDown(f"malformed heartbeat reply: {error}") from None
        self.sample_time(now_us, reply)
        self.hosts = hosts
        count = self.hosts_seen()
        if count != self._hosts_count:
            self._hosts_count = count
            for hosts_listener in self._hosts_listeners:
                hosts_listener(count)
        epoch_id, _, resync_until_us = epoch
        self.resync_until_us = resync_until_us
        self.fleet_epoch = epoch_id
        if self._resyncing or (self.health == "connected" and self.epoch == epoch_id):
            return None
        return epoch_id, self.epoch is not None and self.epoch != epoch_id

    async def _resync(self, epoch_id: str, changed: bool) -> None:
        """Push this host's state back under ``epoch_id``, wait out the re-sync window, then
        borrow again."""
        try:
            self._set_health(
                "resyncing",
                "Redis restarted empty: re-syncing" if changed else "reconnected: re-syncing",
            )
            if changed:
                self._event(
                    "cluster_epoch",
                    "Redis lost the fleet's state (restarted empty?): each host pushes its own "
                    "back from its ledger and leases",
                    logging.WARNING,
                )
            previous = self.epoch
            self.epoch = epoch_id
            self.sealed = False
            try:
                for resync in self._resyncers:
                    await resync(changed or previous is None)
            except LinkDown:
                self.epoch = previous  # pushed again, whole, at the next attempt
                return
            if not await self._seal(epoch_id):
                return
            # a window another host opened since is seen at each heartbeat (and Redis
            # refuses borrows until it ends whatever this host believes)
            until_us = self.resync_until_us
            while (wait := self.time.to_local(until_us) - self.clock.monotonic()) > 0:
                await anyio.sleep(wait)
                if self.resync_until_us <= until_us or self.health != "resyncing":
                    break
                until_us = self.resync_until_us  # extended meanwhile
            if self.health != "resyncing" or self.epoch != epoch_id:
                return
            self.sealed = False
            first = not self.ever_connected
            self.ever_connected = True
            self._set_health("connected", "connected")
            self._event(
                "cluster_connected",
                f"{'joined' if first else 'back in'} the fleet at {self.settings.redis_url} as "
                f"{self.host!r}: {self.hosts_seen()} host(s) seen",
            )
        finally:
            self._resyncing = False
            self._wake.set()

    async def _seal(self, epoch_id: str) -> bool:
        """A timeout before the re-sync window ends (server time, its earliest local time):
        seal. False when the re-sync is over for another reason (degraded, a new epoch)."""
        seal_at = self.time.to_local_early(self.resync_until_us) - self.settings.timeout_s
        wait = seal_at - self.clock.monotonic()
        if wait > 0:
            await anyio.sleep(wait)
        if self.health != "resyncing" or self.epoch != epoch_id:
            return False
        self.sealed = True
        try:
            for seal in self._sealers:
                await seal()
        except LinkDown:
            return False
        return self.health == "resyncing" and self.epoch == epoch_id
