"""What systemd hands the daemon, and what the daemon tells it back, without libsystemd.

Socket activation (:func:`activated_socket`): systemd passes listening sockets as fds 3, 4…,
their count in ``$LISTEN_FDS``, for the process ``$LISTEN_PID``; each fd's type is checked, and
the variables are removed so that nothing started later takes them for its own.

Notification (:class:`Notifier`): ``READY=1`` once the socket serves, ``RELOADING=1`` and
``READY=1`` around a reload, ``STATUS=…`` lines, ``WATCHDOG=1`` every half of
``$WATCHDOG_USEC``, ``STOPPING=1``: each a datagram to ``$NOTIFY_SOCKET`` (a leading ``@`` names
an abstract socket). Outside systemd (no ``$NOTIFY_SOCKET``) every call does nothing.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
import time
from collections.abc import MutableMapping
from typing import Final

import anyio

log = logging.getLogger("quotad.systemd")

LISTEN_FDS_START: Final = 3
"""The first fd systemd passes (SD_LISTEN_FDS_START)."""
_ACTIVATION_VARIABLES: Final = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
WATCHDOG_INTERVAL_BOUNDS_S: Final = (0.05, 3600.0)
"""The shortest and longest time between two WATCHDOG=1 (``WATCHDOG_USEC=1`` pinged in a busy
loop)."""
MAX_EXTEND_USEC: Final = 2**63 - 1
"""The most EXTEND_TIMEOUT_USEC asks for (a usec_t; an allowance past it raised
OverflowError as the daemon stopped)."""


class ActivationError(Exception):
    """The sockets systemd passed are not what quotad can serve on."""


def _describe_fd(fd: int) -> str:
    """What ``fd`` is, for an error: ``a UDP socket``, ``a regular file``…"""
    try:
        mode = os.fstat(fd).st_mode
    except OSError as error:
        return f"not open ({error.strerror})"
    if stat.S_ISREG(mode):
        return "a regular file"
    if stat.S_ISFIFO(mode):
        return "a pipe"
    if not stat.S_ISSOCK(mode):
        return "not a socket"
    with socket.socket(fileno=os.dup(fd)) as probe:
        family = probe.family.name
        kind = probe.type.name
        listening = probe.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    return f"an {family}/{kind} socket{'' if listening else ' that is not listening'}"


def activated_socket(environ: MutableMapping[str, str] = os.environ) -> socket.socket | None:
    """The listening Unix stream socket systemd passed to this process, or None when the
    process was not socket-activated (no ``$LISTEN_FDS``, or ``$LISTEN_PID`` names another
    process: the variables were inherited, not meant for us).

    Raises :class:`ActivationError` when the fds are not exactly one listening ``AF_UNIX``
    ``SOCK_STREAM`` socket (quotad.socket has one ``ListenStream=`` path).
    """
    pid = environ.get("LISTEN_PID", "")
    count = environ.get("LISTEN_FDS", "")
    for name in _ACTIVATION_VARIABLES:
        environ.pop(name, None)
    if not count or pid != str(os.getpid()):
        return None
    if not count.isdigit() or int(count) < 1:
        raise ActivationError(f"LISTEN_FDS={count!r}: expected the number of sockets passed")
    fds = range(LISTEN_FDS_START, LISTEN_FDS_START + int(count))
    if len(fds) != 1:
        raise ActivationError(
            f"systemd passed {len(fds)} sockets (fds {fds.start}-{fds.stop - 1}); quotad serves "
            "one: give quotad.socket a single ListenStream= path"
        )
    fd = fds[0]
    try:
        mode = os.fstat(fd).st_mode
    except OSError as error:
        raise ActivationError(f"fd {fd} from systemd is not open ({error.strerror})") from None
    if stat.S_ISSOCK(mode):
        sock = socket.socket(fileno=fd)
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        if sock.family == socket.AF_UNIX and sock.type == socket.SOCK_STREAM and listening:
            sock.set_inheritable(False)
            return sock
        sock.detach()  # leave the fd as it was, for the error
    raise ActivationError(
        f"fd {fd} from systemd is {_describe_fd(fd)}; quotad needs a listening Unix stream "
        "socket (ListenStream=/run/quotad/quotad.sock in quotad.socket)"
    )


def _notify_address(value: str) -> str | bytes | None:
    """``$NOTIFY_SOCKET`` as a socket address: a path, or an abstract name for ``@name``."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None


class Notifier:
    """Sends state changes to the service manager (sd_notify); does nothing outside systemd.

    Built from ``$NOTIFY_SOCKET`` and ``$WATCHDOG_USEC`` (with ``$WATCHDOG_PID``, when set,
    naming this process). A datagram that cannot be sent is dropped with one debug line:
    notification never stops the daemon.
    """

    def __init__(self, environ: MutableMapping[str, str] = os.environ) -> None:
        self._address = _notify_address(environ.get("NOTIFY_SOCKET", ""))
        self._socket: socket.socket | None = None
        if self._address is not None:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._socket.setblocking(False)
        self.watchdog_interval_s = _watchdog_interval_s(environ)
        """Seconds between ``WATCHDOG=1`` pings (half the manager's timeout), or None."""
        self._failed = False

    @property
    def enabled(self) -> bool:
        """True under a service manager that listens."""
        return self._socket is not None

    def send(self, *assignments: str) -> None:
        """One datagram of ``KEY=value`` lines."""
        if self._socket is None or self._address is None:
            return
        try:
            self._socket.sendto("\n".join(assignments).encode(), self._address)
        except OSError as error:
            if not self._failed:
                log.debug("cannot notify the service manager: %s", error)
                self._failed = True

    def ready(self, status: str) -> None:
        """The daemon serves: ``READY=1`` with a status line."""
        self.send("READY=1", f"STATUS={status}")

    def reloading(self) -> None:
        """A reload has begun (``RELOADING=1``; ``READY=1`` ends it)."""
        self.send("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")

    def status(self, status: str) -> None:
        """A new status line (``systemctl status`` shows it)."""
        self.send(f"STATUS={status}")

    def stopping(self, status: str, allow_s: float) -> None:
        """The daemon stops; it may take ``allow_s`` more seconds (EXTEND_TIMEOUT_USEC, at
        most :data:`MAX_EXTEND_USEC`)."""
        wanted = max(allow_s, 0.0) * 1_000_000
        usec = int(wanted) if wanted < MAX_EXTEND_USEC else MAX_EXTEND_USEC
        self.send("STOPPING=1", f"STATUS={status}", f"EXTEND_TIMEOUT_USEC={usec}")

    def watchdog(self) -> None:
        """The daemon is alive (``WATCHDOG=1``)."""
        self.send("WATCHDOG=1")

    async def keep_watchdog_fed(self) -> None:
        """Ping the watchdog every :attr:`watchdog_interval_s` until cancelled (at once when
        there is no watchdog). The pings come from the event loop: a stuck loop stops them,
        and the service manager restarts the daemon."""
        interval = self.watchdog_interval_s
        if interval is None or self._socket is None:
            return
        while True:
            self.watchdog()
            await anyio.sleep(interval)

    def close(self) -> None:
        """Close the datagram socket."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _watchdog_interval_s(environ: MutableMapping[str, str]) -> float | None:
    """Half of ``$WATCHDOG_USEC``, within :data:`WATCHDOG_INTERVAL_BOUNDS_S`; None when the
    variable is unset, 0, not an ASCII number, or "infinity" (2**64-1 and past: 400 nines
    raised OverflowError, 5,000 would raise ValueError), or ``$WATCHDOG_PID`` names another
    process."""
    usec = environ.get("WATCHDOG_USEC", "")
    pid = environ.get("WATCHDOG_PID", "")
    if not (usec.isascii() and usec.isdigit() and len(usec) <= 20):  # 2**64: 20 digits
        return None
    if pid and pid != str(os.getpid()):
        return None
    if not 0 < int(usec) < 2**64 - 1:
        return None
    shortest, longest = WATCHDOG_INTERVAL_BOUNDS_S
    return min(max(int(usec) / 2_000_000, shortest), longest)
