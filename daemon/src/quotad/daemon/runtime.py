"""The running daemon: builds providers, router, store, gates, broker and servers (the Unix
socket, and the HTTP front door unless ``[http] listen = ""``) from a config, opens the store
(``quotad.db``), serves until SIGTERM/SIGINT, then drains requests in flight on both (bounded by
``daemon.drain_s``), closes the store and exits 0. A store that cannot be opened exits 1.

With ``[cluster] redis_url`` set, :attr:`Daemon.cluster` joins the fleet (DESIGN §10) after the
store opened and before the servers bind: a Redis that refuses this host's credentials exits 1,
one that does not answer leaves the host serving degraded until it does. Without it nothing of
the cluster (nor the Redis client) is imported.

SIGHUP reloads the config in place (:meth:`Daemon.reload`): connections, requests in flight and
the state of every component live on. Under systemd the daemon serves on the socket
quotad.socket passes, and tells the manager READY, RELOADING, STOPPING, STATUS and WATCHDOG
(:mod:`quotad.daemon.systemd`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import signal
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final, Protocol

import anyio
import anyio.abc
import msgspec
from anyio.streams.memory import MemoryObjectReceiveStream

from quotad.daemon.access import AccessPolicy
from quotad.daemon.broker import Broker
from quotad.daemon.clock import SYSTEM_CLOCK
from quotad.daemon.cluster.settings import ClusterStartError
from quotad.daemon.config import (
    Config,
    ConfigError,
    ProviderConfig,
    RateLimits,
    find_and_load_config,
    format_path,
    state_dir,
)
from quotad.daemon.errors import RequestError
from quotad.daemon.events import EventLog
from quotad.daemon.exit_codes import EXIT_FAILURE, EXIT_OK, EXIT_USAGE
from quotad.daemon.front_door import FrontDoor, HttpListenError
from quotad.daemon.gates import Gates
from quotad.daemon.gates.saved import read_saved, saved_path
from quotad.daemon.hints import config_hints
from quotad.daemon.logs import configure_logging
from quotad.daemon.providers import build_provider, resolve_api_keys
from quotad.daemon.providers.base import Provider
from quotad.daemon.request_memory import RequestMemory
from quotad.daemon.routing import HealthChecks, Router
from quotad.daemon.server import ConnectionLimits, SocketInUseError, SocketServer
from quotad.daemon.store import Store, StoreError
from quotad.daemon.store.ledger import interrupted_message
from quotad.daemon.systemd import ActivationError, Notifier, activated_socket
from quotad.protocol.paths import daemon_socket_path

if TYPE_CHECKING:
    from quotad.daemon.cluster.fleet import Cluster
    from quotad.daemon.cluster.shared_budgets import SharedBudgets

log = logging.getLogger("quotad")

STOP_GRACE_S: Final = 5.0
"""Asked of the service manager on top of ``drain_s`` to close down after draining."""

RESTART_ONLY: Final = ("socket", "state_dir", "timezone", "max_db_mb", "log_format")
"""``[daemon]`` keys a reload cannot apply to a running daemon: the running value is kept, and
a change is warned of."""


class Reconfigurable(Protocol):
    """A component that keeps state across config reloads (SIGHUP).

    ``reconfigure`` gets a config that is already validated (keys resolved, references
    checked) and must apply it without failing and without losing state: gate windows and
    reservations, breakers, budgets, open connections. It is called after the new router and
    broker config are in place; requests in flight finish as they began.
    """

    def reconfigure(self, config: Config) -> None:
        """Apply a reloaded config."""
        ...


GATE_AND_ROUTER_KEYS: Final = (
    *(field.name for field in msgspec.structs.fields(RateLimits)),
    "models",
    "breaker",
    "health_check_s",
)
"""Keys of ``[providers.X]`` that the gates and the router read, not the provider: a reload
that changes only these keeps the running provider and its connections. Each limit changed
rebuilt it, a new pool of connections to the provider (new TLS handshakes) at every reload
that tuned a limit."""


def _provider_identity(config: ProviderConfig, key: str | None) -> tuple[object, bytes]:
    """What a reload compares to know a provider must be built again: its table but for
    :data:`GATE_AND_ROUTER_KEYS`, and a digest of its key (the key itself is not kept)."""
    defaults = ProviderConfig(kind=config.kind)
    table = msgspec.structs.replace(
        config, **{name: getattr(defaults, name) for name in GATE_AND_ROUTER_KEYS}
    )
    return table, _key_digest(key)


def _key_digest(key: str | None) -> bytes:
    """What a reload compares to know a provider's key changed (the key itself is not kept)."""
    return hashlib.sha256(key.encode()).digest() if key is not None else b""


@dataclass(slots=True)
class ProviderSet:
    """The providers of a config, before they are put in place, and what identifies each
    (:func:`_provider_identity`: a reload rebuilds a provider when it changed)."""

    providers: dict[str, Provider] = field(default_factory=dict)
    identity: dict[str, tuple[object, bytes]] = field(default_factory=dict)


class _NotBuilt(Exception):
    """Some providers of a config could not be built (``error`` names them); ``built``, those
    that were, for the caller to close."""

    def __init__(self, error: ConfigError, built: list[Provider]) -> None:
        super().__init__(str(error))
        self.error = error
        self.built = built


class Daemon:
    """Everything one running daemon owns, built from one config."""

    def __init__(
        self,
        config: Config,
        socket_path: Path,
        *,
        config_location: str | None = None,
        listen_socket: socket.socket | None = None,
        notifier: Notifier | None = None,
        log_level_override: str | None = None,
    ) -> None:
        self.config = config
        self.config_location = config_location
        """The file the config was read from, which a reload reads again (missing, the reload
        is rejected); None: the daemon started on the built-in default, and a reload searches
        again (DESIGN §3)."""
        self.providers: dict[str, Provider] = {}
        self._provider_identity: dict[str, tuple[object, bytes]] = {}
        try:
            built = self._providers_for(config, resolve_api_keys(config))
        except _NotBuilt as failed:  # at start: the process ends, nothing was connected
            raise failed.error from None
        self.providers, self._provider_identity = built.providers, built.identity
        self.events = EventLog(SYSTEM_CLOCK)
        """The daemon's event log: the router, the broker and the runtime report to it."""
        self.router = Router(config, self.providers, events=self.events)
        self.health_checks = HealthChecks(self.router)
        self._health_scope: anyio.CancelScope | None = None
        self.store = Store(config, state_dir(config))
        self.gates = Gates(config)
        self._gates_file = saved_path(self.store.path.parent)
        """Where the gates are saved (:mod:`quotad.daemon.gates.saved`)."""
        self._gates_resumed = False
        """Whether what was saved there is counted again: only then may it be overwritten."""
        self.cluster: Cluster | None = None
        """The fleet (``[cluster] redis_url`` set): its link to Redis and the fleet's gates
        (:class:`~quotad.daemon.cluster.fleet.Cluster`); None for one host."""
        if config.cluster.redis_url:
            from quotad.daemon.cluster.fleet import Cluster  # the Redis client: only now

            self.cluster = Cluster(
                config.cluster, events=self.events, timezone=config.daemon.timezone
            )
            self.gates.use_fleet(self.cluster.gates)
        self.broker = Broker(config, self.router, self.store, gates=self.gates, events=self.events)
        self.shared_budgets: SharedBudgets | None = None
        """With ``[cluster]``: the budgets and spend shared by the fleet."""
        if self.cluster is not None:
            self.broker.reports.cluster = self.cluster
            self.cluster.report_load(self._fleet_load)
            from quotad.daemon.cluster.shared_budgets import SharedBudgets

            shared = SharedBudgets(
                self.cluster.link, self.store.budgets, self.store.ledger, self.events.add
            )
            self.cluster.run_beside(shared.run)
            self.broker.tail.watchers.append(shared.finished)
            self.broker.budget_holds.fleet = self.broker.reports.fleet_budgets = shared
            shared.declare(self.broker.tail.declared)
            self.shared_budgets = shared
        self.broker.admin.reload_config = self._reload_for_peer
        if listen_socket is not None:
            socket_path = Path(listen_socket.getsockname())
        self.request_memory = RequestMemory()
        """The bound on request bytes held in memory, shared by the socket and the front door."""
        self.server = SocketServer(
            self.broker,
            socket_path,
            limits=ConnectionLimits.from_config(config.daemon),
            access=AccessPolicy.from_config(config.daemon),
            request_memory=self.request_memory,
        )
        self.notifier = notifier or Notifier({})
        self.http: FrontDoor | None = None
        if config.http.listen:
            self.http = FrontDoor(
                self.broker,
                config.http,
                app_for_key=self.store.keys.app_for_key,
                status=self.server.status,
                other_problems=lambda: self.server.problems + self.store.ledger.problems(),
                request_memory=self.request_memory,
            )
        self.reconfigurables: list[Reconfigurable] = [
            self.server,
            self.gates,
            self.store,
            self.broker.semantic,
        ]
        if self.http is not None:
            self.reconfigurables.append(self.http)
        """Components given each reloaded config, in order; a stateful component built by the
        daemon appends itself here (gates, store, breakers, the HTTP front door)."""
        self._listen_socket = listen_socket
        self._log_level_override = log_level_override
        self._retiring: set[Provider] = set()
        self._tasks: anyio.abc.TaskGroup | None = None
        self._reload_lock = anyio.Lock()

    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[Daemon] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until a stop signal, then drain and close."""
        try:
            for alert in await self.store.open():
                self.events.add("budget_alert", alert.message, logging.WARNING)
            if interrupted := self.store.interrupted:
                self.events.add(
                    "interrupted_calls", interrupted_message(interrupted), logging.WARNING
                )
            today = self.store.calendar.day(self.store.clock.time())
            self.broker.tail.load_spend(self.store.spent_at_open, today)
            await self.broker.semantic.start()  # model and questions loaded off the loop
            self._resume_gates()  # before serving: the provider still counts them
            if self.shared_budgets is not None:  # this host's spend, pushed when it joins
                await self.shared_budgets.load()
            if self.cluster is not None:  # before serving: admissions start in the fleet
                await self.cluster.open()
            if self.http is not None:  # first: clients take the socket answering for "ready"
                await self.http.bind()
                self.server.http_address = self.http.address
            self.server.bind(self._listen_socket)
            async with anyio.create_task_group() as tasks:
                self._tasks = tasks
                if self.cluster is not None:
                    await tasks.start(self.cluster.run)
                await tasks.start(self.server.serve)
                if self.http is not None:
                    await tasks.start(self.http.serve)
                await tasks.start(self._handle_signals, tasks)
                tasks.start_soon(self._run_health_checks)
                tasks.start_soon(self.gates.run)
                tasks.start_soon(self.gates.keep_saved, self._gates_file)
                tasks.start_soon(self.store.retention.run)
                log.info(
                    "quotad serving %s%s (%d providers, %d groups; config: %s)",
                    self.server.path,
                    f" and http://{self.http.address}" if self.http is not None else "",
                    len(self.providers),
                    len(self.router.groups),
                    self.config.source,
                )
                self.notifier.ready(self._status_line())
                tasks.start_soon(self.notifier.keep_watchdog_fed)
                task_status.started(self)
        finally:
            with anyio.CancelScope(shield=True):
                if self.http is not None:
                    await self.http.shutdown(0)  # no-op after a drain; closes a lone bind
                if self._gates_resumed:  # after the drain: all they counted
                    self.gates.save(self._gates_file)
                for provider in [*self.providers.values(), *self._retiring]:
                    await provider.aclose()
                await self.store.close()
                if self.cluster is not None:
                    await self.cluster.close()
            self.notifier.close()

    def _resume_gates(self) -> None:
        """Count again what the gates counted when the daemon last stopped (or last saved,
        if it did not stop cleanly), then save there from now on."""
        saved = read_saved(self._gates_file)
        if saved is not None:
            resumed = self.gates.resume(saved)
            log.log(
                logging.INFO if resumed.stopped else logging.WARNING,
                "gates: %d unit(s) in %d window(s) and %d pause(s) counted again, saved %.1f s "
                "ago%s",
                resumed.units,
                resumed.windows,
                resumed.pauses,
                resumed.elapsed_s,
                ""
                if resumed.stopped
                else " by a daemon that did not stop cleanly (what it admitted after that save "
                "is not counted)",
            )
        self._gates_resumed = True

    async def _run_health_checks(self) -> None:
        """Run the current router's health checks until a reload replaces them."""
        with anyio.CancelScope() as scope:
            self._health_scope = scope
            await self.health_checks.run()

    async def _handle_signals(
        self,
        tasks: anyio.abc.TaskGroup,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """SIGHUP asks for a reload (:meth:`_reload_on_hangups` runs it); SIGTERM or SIGINT
        stops, at once, whatever reload runs. Started (so READY is sent) only once the handlers
        are in place: a reload right after READY must not kill the daemon.

        The reloads run beside this loop, not in it: run here, each SIGHUP was a reload in
        turn, and a SIGTERM waited for all those before it (20 SIGHUPs to a daemon of 10,000
        apps held its SIGTERM 54 s, past systemd's stop timeout)."""
        hangups, to_answer = anyio.create_memory_object_stream[None](1)  # one reload asked
        tasks.start_soon(self._reload_on_hangups, to_answer)  # for all: it reads the file then
        with (
            hangups,
            anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals,
        ):
            task_status.started()
            async for signum in signals:
                if signum == signal.SIGHUP:
                    with contextlib.suppress(anyio.WouldBlock):  # one is already asked for
                        hangups.send_nowait(None)
                    continue
                log.info("%s: stopping", signal.Signals(signum).name)
                break
        await self.stop()
        tasks.cancel_scope.cancel()

    async def _reload_on_hangups(self, hangups: MemoryObjectReceiveStream[None]) -> None:
        """Reload once for each SIGHUP, or once for all those that came during a reload."""
        with hangups:
            async for _ in hangups:
                try:
                    await self.reload()
                except Exception:  # a reload must never take the daemon down
                    log.exception("reload failed; serving on")

    async def stop(self) -> None:
        """Stop accepting, drain requests in flight, close connections."""
        drain_s = self.config.daemon.drain_s
        in_flight = self.server.requests_in_flight
        self.notifier.stopping(
            f"stopping: {in_flight} request(s) in flight", drain_s + STOP_GRACE_S
        )
        async with anyio.create_task_group() as servers:
            servers.start_soon(self.server.shutdown, drain_s)
            if self.http is not None:
                servers.start_soon(self.http.shutdown, drain_s)

    # ------------------------------------------------------------------ reload

    async def reload(
        self, *, by: str = "signal", caller_uid: int | None = None, caller_pid: int | None = None
    ) -> bool:
        """Read the config again and apply it (:meth:`try_reload`); True when applied."""
        rejected = await self.try_reload(by=by, caller_uid=caller_uid, caller_pid=caller_pid)
        return rejected is None

    async def try_reload(
        self, *, by: str = "signal", caller_uid: int | None = None, caller_pid: int | None = None
    ) -> ConfigError | None:
        """Read the config again and apply it without dropping connections or state.

        The new file is loaded and validated, every provider key resolved, and the providers
        whose table or key changed built, first (:meth:`_build_reloaded`); any problem, or
        any exception on the way, keeps the running config, logs every problem, adds a
        ``reload_rejected`` event, and is returned. Then the new providers are put in place
        (the old ones closed once the requests in flight have finished), the router is
        rebuilt keeping its targets' state, the broker takes the new config, and each of
        :attr:`reconfigurables` is reconfigured; a ``reload`` event says so. None when applied.
        READY=1 follows RELOADING=1 whatever happens.
        """
        async with self._reload_lock:
            self.notifier.reloading()
            outcome = "reload failed"
            try:
                try:
                    config, providers = await self._build_reloaded()
                except ConfigError as error:
                    outcome = f"reload rejected: {len(error.problems)} problem(s) in {error.source}"
                    await self._reject_reload(error, by, caller_uid, caller_pid)
                    return error
                rebuilt = self._apply(config, providers)
                await self.store.count_new_budgets()
                outcome = "config reloaded"
            finally:  # READY=1 ends every RELOADING=1, whatever happened in between
                self.notifier.ready(f"{self._status_line()}; {outcome}")
            self.events.add(
                "reload",
                f"reloaded {config.source}: {len(self.providers)} providers ({rebuilt} "
                f"rebuilt), {len(self.router.groups)} groups",
            )
            await self.record_operator_action(
                "reload",
                config.source,
                by=by,
                caller_uid=caller_uid,
                caller_pid=caller_pid,
                detail=f"applied: {rebuilt} provider(s) rebuilt",
            )
            return None

    async def _build_reloaded(self) -> tuple[Config, ProviderSet]:
        """The new config and its providers, built without touching the running ones. Any
        failure is a :class:`ConfigError`: a budget it adds that would count spend the
        ledger cannot read (:meth:`.store.Store.check_reload`, as the start refuses it), an
        unforeseen exception too (logged with its traceback), so that a reload that cannot
        be built is rejected, never half applied."""
        source = self.config_location or "the config"
        try:
            load = functools.partial(find_and_load_config, self.config_location, empty_ok=False)
            config = await anyio.to_thread.run_sync(load)  # an empty file: being written?
            source = config.source
            try:  # as the start refuses them: a budget added would count them as $0
                await self.store.check_reload(config)
            except StoreError as error:
                raise ConfigError(source, [f"budgets: {error}"]) from None
            keys = await anyio.to_thread.run_sync(resolve_api_keys, config)
            try:
                return config, self._providers_for(config, keys)
            except _NotBuilt as failed:  # those built for it are closed: they serve nothing
                for provider in failed.built:
                    await provider.aclose()
                raise failed.error from None
        except ConfigError:
            raise
        except Exception as error:
            log.exception("reload: the new config could not be built")
            problem = f"cannot be built: {type(error).__name__}: {error}"
            raise ConfigError(source, [problem]) from None

    async def _reject_reload(
        self, error: ConfigError, by: str, caller_uid: int | None, caller_pid: int | None
    ) -> None:
        """Keep the running config: log every problem, add a ``reload_rejected`` event and an
        audit row."""
        reported = error.reported()
        self.events.add(
            "reload_rejected",
            f"{error.source} has {len(error.problems)} problem(s); still serving the "
            f"previous config (first: {reported[0] if reported else '-'})",
            logging.ERROR,
        )
        for problem in reported:
            log.error("reload rejected: %s", problem)
        await self.record_operator_action(
            "reload",
            error.source,
            by=by,
            caller_uid=caller_uid,
            caller_pid=caller_pid,
            detail=f"rejected: {len(error.problems)} problem(s)",
        )

    def _apply(self, config: Config, built: ProviderSet) -> int:
        """Put a validated config and its providers in place; the number of providers
        rebuilt. Every check is done, and every provider built, before, so nothing here should
        fail; a component whose ``reconfigure`` raises anyway is logged, and the others are
        still reconfigured."""
        for key in RESTART_ONLY:
            running = getattr(self.config.daemon, key)
            if getattr(config.daemon, key) != running:
                log.warning("reload: daemon.%s changed; it takes effect when quotad restarts", key)
                setattr(config.daemon, key, running)
        if config.cluster != self.config.cluster:  # the link and the fleet stay as started
            log.warning("reload: [cluster] changed; it takes effect when quotad restarts")
            config.cluster = self.config.cluster
        previous = self.providers
        providers = built.providers
        self._provider_identity = built.identity
        retired = [
            provider for name, provider in previous.items() if providers.get(name) is not provider
        ]
        rebuilt = sum(
            1 for name, provider in providers.items() if previous.get(name) is not provider
        )
        self.router = Router(config, providers, events=self.events, previous=self.router)
        self.health_checks = HealthChecks(self.router)
        if self._health_scope is not None:
            self._health_scope.cancel()  # the checks restart on the new router's providers
        self.providers = providers
        self.config = config
        requests_before_done = self.broker.reconfigure(config, self.router)
        if self.shared_budgets is not None:
            self.shared_budgets.declare(self.broker.tail.declared)
        for component in self.reconfigurables:
            try:
                component.reconfigure(config)
            except Exception:  # a bug there must not take the daemon down with the reload
                log.exception("reload: %s could not apply the new config", type(component).__name__)
        if self._log_level_override is None:
            logging.getLogger("quotad").setLevel(config.daemon.log_level.upper())
        if retired:
            assert self._tasks is not None
            self._retiring.update(retired)
            self._tasks.start_soon(self._close_when_done, retired, requests_before_done)
        if self._tasks is not None:
            self._tasks.start_soon(self._run_health_checks)
        return rebuilt

    def _providers_for(self, config: Config, keys: dict[str, str | None]) -> ProviderSet:
        """A provider per ``[providers.X]``: the running one where its table and key are
        unchanged, else a new one. Providers that cannot be built raise :class:`_NotBuilt`:
        a :class:`ConfigError` naming them (the config checks should have refused what they
        could not take), and the new ones that were built, to close."""
        built = ProviderSet()
        fresh: list[Provider] = []
        problems: list[str] = []
        for name, provider_config in config.providers.items():
            built.identity[name] = _provider_identity(provider_config, keys[name])
            running = self.providers.get(name)
            if running is not None and self._provider_identity.get(name) == built.identity[name]:
                built.providers[name] = running
                continue
            try:
                provider = built.providers[name] = build_provider(name, provider_config, keys[name])
                fresh.append(provider)
            except Exception as error:
                log.exception("provider %s could not be built", name)
                where = format_path(["providers", name])
                problems.append(f"{where}: cannot be built: {type(error).__name__}: {error}")
        if problems:
            raise _NotBuilt(ConfigError(config.source, problems), fresh)
        return built

    async def _close_when_done(self, providers: list[Provider], done: anyio.Event) -> None:
        """Close replaced providers' connection pools once the requests that may use them
        have finished."""
        await done.wait()
        with anyio.CancelScope(shield=True):
            for provider in providers:
                self._retiring.discard(provider)
                await provider.aclose()
        log.debug("closed %d replaced provider(s)", len(providers))

    async def _reload_for_peer(self, caller_uid: int | None, caller_pid: int | None) -> bool:
        """``Admin(action="reload")`` from a client: True when applied; a rejection is a
        ``bad_request`` whose details carry the config's ``source`` and its ``problems`` (as
        :meth:`~quotad.daemon.config.ConfigError.reported` gives them: a bounded list)."""
        rejected = await self.try_reload(by="socket", caller_uid=caller_uid, caller_pid=caller_pid)
        if rejected is None:
            return True
        raise RequestError(
            "bad_request",
            f"reload rejected: {rejected.source} has {len(rejected.problems)} problem(s); "
            "still serving the previous config",
            details={"source": rejected.source, "problems": rejected.reported()},
        )

    # ------------------------------------------------------------------ operator actions

    async def record_operator_action(
        self,
        action: str,
        target: str,
        *,
        by: str,
        caller_uid: int | None = None,
        caller_pid: int | None = None,
        detail: str = "",
    ) -> None:
        """Record an operator action (config reload; target and key actions too): who did
        what to what. ``by`` is how it came ("signal", "socket", "http").

        It is logged, and committed to the store's ``audit`` table.
        """
        who = f"uid {caller_uid} pid {caller_pid}" if caller_uid is not None else "unknown peer"
        log.info("operator action %s %s by %s (%s): %s", action, target, by, who, detail)
        try:
            await self.store.audit.record(
                action, target, caller_uid, caller_pid, {"by": by, "detail": detail}
            )
        except Exception:  # the action happened; a failed audit write must not undo it
            log.exception("could not record operator action %s in the audit table", action)

    # ------------------------------------------------------------------ status

    def _fleet_load(self) -> dict[str, int]:
        """What this host tells the fleet of its load at each heartbeat."""
        return {"in_flight": self.broker.tail.in_flight, "queued": len(self.gates.queue)}

    def _status_line(self) -> str:
        """The daemon's state in one line, for ``systemctl status``."""
        return (
            f"serving {self.server.path}: {len(self.providers)} providers, "
            f"{len(self.router.groups)} groups"
        )


def run_daemon(
    config: Config,
    *,
    config_location: str | None = None,
    socket_path: str | None = None,
    log_format: str = "text",
    log_level: str | None = None,
) -> int:
    """``quotad serve``: run in the foreground; the exit code."""
    configure_logging(log_format, log_level or config.daemon.log_level)
    for hint in config_hints(config):
        log.warning("%s", hint)
    try:
        listen_socket = activated_socket()
    except ActivationError as error:
        log.error("cannot start: %s", error)
        return EXIT_FAILURE
    path = Path(socket_path) if socket_path else daemon_socket_path(config.daemon.socket)
    try:
        daemon = Daemon(
            config,
            path,
            config_location=config_location,
            listen_socket=listen_socket,
            notifier=Notifier(),
            log_level_override=log_level,
        )
    except ConfigError as error:
        log.error("cannot start: %s", error)
        return EXIT_USAGE  # a usage or config error
    try:
        anyio.run(daemon.serve, backend="asyncio", backend_options={"use_uvloop": True})
    except (SocketInUseError, StoreError, HttpListenError, ClusterStartError) as error:
        log.error("cannot start: %s", error)
        return EXIT_FAILURE
    log.info("stopped")
    return EXIT_OK
