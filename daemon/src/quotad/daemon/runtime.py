"""The running daemon: builds providers, router, broker and servers (the Unix socket, and the
HTTP front door unless ``[http] listen = ""``) from a config, serves until SIGTERM/SIGINT, then
drains requests in flight on both (bounded by ``daemon.drain_s``) and exits 0.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path

import anyio
import anyio.abc

from quotad.daemon.broker import Broker
from quotad.daemon.config import Config, ConfigError
from quotad.daemon.http import FrontDoor, HttpListenError
from quotad.daemon.logs import configure_logging
from quotad.daemon.providers import build_provider, resolve_api_key
from quotad.daemon.providers.base import Provider
from quotad.daemon.routing import Router
from quotad.daemon.server import SocketInUseError, SocketServer
from quotad.protocol.paths import daemon_socket_path

log = logging.getLogger("quotad")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2


class Daemon:
    """Everything one running daemon owns, built from one config."""

    def __init__(self, config: Config, socket_path: Path) -> None:
        self.config = config
        self.providers: dict[str, Provider] = {
            name: build_provider(name, provider_config, resolve_api_key(name, provider_config))
            for name, provider_config in config.providers.items()
        }
        self.router = Router(config, self.providers)
        self.broker = Broker(config, self.router)
        self.server = SocketServer(self.broker, socket_path, max_frame=config.daemon.max_frame)
        self.http: FrontDoor | None = None
        if config.http.listen:
            # HTTP keys live in the store (issue #5): pass its app_for_key here; until then
            # no key names an app, so only auth = "none" lets requests in.
            self.http = FrontDoor(
                self.broker, config.http, app_for_key=lambda key: None, status=self.server.status
            )

    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[Daemon] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until a stop signal, then drain and close."""
        if self.http is not None:  # first: clients take the socket answering for "ready"
            await self.http.bind()
            self.server.http_address = self.http.address
        try:
            self.server.bind()
        except BaseException:
            if self.http is not None:
                await self.http.shutdown(0)
            raise
        try:
            async with anyio.create_task_group() as tasks:
                await tasks.start(self.server.serve)
                if self.http is not None:
                    await tasks.start(self.http.serve)
                tasks.start_soon(self._stop_on_signal, tasks.cancel_scope)
                log.info(
                    "quotad serving %s%s (%d providers, %d groups; config: %s)",
                    self.server.path,
                    f" and http://{self.http.address}" if self.http is not None else "",
                    len(self.providers),
                    len(self.router.groups),
                    self.config.source,
                )
                task_status.started(self)
        finally:
            with anyio.CancelScope(shield=True):
                for provider in self.providers.values():
                    await provider.aclose()

    async def _stop_on_signal(self, scope: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.info("%s: stopping", signal.Signals(signum).name)
                break
        await self.stop()
        scope.cancel()

    async def stop(self) -> None:
        """Stop accepting, drain requests in flight, close connections."""
        drain_s = self.config.daemon.drain_s
        async with anyio.create_task_group() as servers:
            servers.start_soon(self.server.shutdown, drain_s)
            if self.http is not None:
                servers.start_soon(self.http.shutdown, drain_s)


def run_daemon(
    config: Config,
    *,
    socket_path: str | None = None,
    log_format: str = "text",
    log_level: str | None = None,
) -> int:
    """``quotad serve``: run in the foreground; the exit code."""
    configure_logging(log_format, log_level or config.daemon.log_level)
    path = Path(socket_path) if socket_path else daemon_socket_path(config.daemon.socket)
    try:
        daemon = Daemon(config, path)
    except ConfigError as error:
        log.error("cannot start: %s", error)
        return EXIT_CONFIG
    try:
        anyio.run(daemon.serve, backend="asyncio", backend_options={"use_uvloop": True})
    except (SocketInUseError, HttpListenError) as error:
        log.error("cannot start: %s", error)
        return EXIT_FAILURE
    log.info("stopped")
    return EXIT_OK
