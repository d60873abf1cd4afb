"""Stand-ins for what systemd does to a service, for tests of a real daemon process: a
``$NOTIFY_SOCKET`` receiver, and a launcher that passes a listening socket as fd 3 the way
socket activation does."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

ACTIVATION_LAUNCHER = (
    sys.executable,
    "-c",
    "import os, sys\n"
    "fd = int(os.environ.pop('QUOTAD_TEST_LISTEN_FD'))\n"
    "if fd != 3:\n"
    "    os.dup2(fd, 3)\n"
    "    os.close(fd)\n"
    "os.environ['LISTEN_FDS'] = '1'\n"
    "os.environ['LISTEN_PID'] = str(os.getpid())  # exec keeps the pid\n"
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])\n",
)
"""Runs ``python ARGS…`` with the fd named by ``$QUOTAD_TEST_LISTEN_FD`` moved to fd 3 and
``LISTEN_FDS``/``LISTEN_PID`` set as systemd sets them (``LISTEN_PID`` must be the daemon's own
pid, so it is set in the process that then execs the daemon)."""


def activation_env(fd: int) -> dict[str, str]:
    """The environment :data:`ACTIVATION_LAUNCHER` needs to pass ``fd`` (also in pass_fds)."""
    return {"QUOTAD_TEST_LISTEN_FD": str(fd)}


class NotifyReceiver:
    """A datagram socket in ``directory`` standing in for systemd's ``$NOTIFY_SOCKET``;
    every datagram received is kept as its list of ``KEY=value`` lines."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "notify.sock"
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(str(self.path))
        self.messages: list[list[str]] = []

    @property
    def env(self) -> dict[str, str]:
        """The environment a daemon needs to notify this receiver."""
        return {"NOTIFY_SOCKET": str(self.path)}

    def receive(self, timeout: float) -> list[str] | None:
        """The next datagram's lines, or None when none comes within ``timeout``."""
        self._socket.settimeout(timeout)
        try:
            data = self._socket.recv(65536)
        except TimeoutError:
            return None
        lines = data.decode().split("\n")
        self.messages.append(lines)
        return lines

    def wait_for(self, line: str, timeout: float = 15.0) -> list[str]:
        """Receive until a datagram holding ``line`` comes; that datagram."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            lines = self.receive(left)
            if lines is not None and line in lines:
                return lines
        raise AssertionError(f"no {line!r} within {timeout} s; got {self.messages}")

    def wait_for_count(self, line: str, count: int, timeout: float = 15.0) -> None:
        """Receive until ``line`` has come ``count`` times in all."""
        deadline = time.monotonic() + timeout
        while self.lines().count(line) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{line!r} not {count} times within {timeout} s")
            self.receive(left)

    def lines(self) -> list[str]:
        """Every line received so far, in order."""
        return [line for message in self.messages for line in message]

    def close(self) -> None:
        """Close and remove the socket."""
        self._socket.close()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> NotifyReceiver:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
