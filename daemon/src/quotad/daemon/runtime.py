"""The running daemon: builds providers, router, broker and servers from a config, serves
until SIGTERM/SIGINT, then drains requests in flight (bounded by ``daemon.drain_s``) and exits 0.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path

import anyio
import anyio.abc

from quotad.daemon.broker import Broker
from quotad.daemon.config import Config, ConfigError
from quotad.daemon.gates import Gates
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
        self.gates = Gates(config)
        self.broker = Broker(config, self.router, self.gates)
        self.server = SocketServer(self.broker, socket_path, max_frame=config.daemon.max_frame)

    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[Daemon] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until a stop signal, then drain and close."""
        self.server.bind()
        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(self.gates.run)
                await tasks.start(self.server.serve)
                tasks.start_soon(self._stop_on_signal, tasks.cancel_scope)
                log.info(
                    "quotad serving %s (%d providers, %d groups; config: %s)",
                    self.server.path,
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
        await self.server.shutdown(self.config.daemon.drain_s)


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
    except SocketInUseError as error:
        log.error("cannot start: %s", error)
        return EXIT_FAILURE
    log.info("stopped")
    return EXIT_OK
