"""The systemd protocol pieces on real sockets: sd_notify datagrams (path and abstract
addresses), the watchdog interval, socket-activation variables, journald log lines, and the
access policy of ``daemon.allow_uids``/``allow_gids``."""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from quotad.daemon.access import AccessPolicy, peer_groups
from quotad.daemon.config import DaemonConfig
from quotad.daemon.logs import JsonFormatter, TextFormatter, stderr_is_journal
from quotad.daemon.systemd import ActivationError, Notifier, activated_socket


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify"
    sock.bind(str(path))
    sock.settimeout(5)
    yield sock, str(path)
    sock.close()


def test_notifier_sends_each_state_as_one_datagram(receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    notifier.ready("serving /run/q.sock")
    assert sock.recv(4096) == b"READY=1\nSTATUS=serving /run/q.sock"
    notifier.reloading()
    reloading = sock.recv(4096).decode().split("\n")
    assert reloading[0] == "RELOADING=1"
    assert reloading[1].startswith("MONOTONIC_USEC=")
    assert int(reloading[1].partition("=")[2]) > 0
    notifier.stopping("stopping", 15)
    assert sock.recv(4096) == b"STOPPING=1\nSTATUS=stopping\nEXTEND_TIMEOUT_USEC=15000000"
    notifier.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"
    notifier.close()


def test_notifier_reaches_an_abstract_socket() -> None:
    name = f"quotad-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(5)
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
        notifier.status("hello")
        assert sock.recv(4096) == b"STATUS=hello"
        notifier.close()


def test_notifier_outside_systemd_or_with_nobody_listening(tmp_path: Path) -> None:
    quiet = Notifier({})
    assert not quiet.enabled
    quiet.ready("nothing happens")
    gone = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody")})
    gone.ready("dropped")  # no receiver: dropped, not raised
    gone.ready("dropped again")
    gone.close()


def test_watchdog_interval_is_half_the_timeout_for_this_process_only() -> None:
    assert Notifier({"WATCHDOG_USEC": "30000000"}).watchdog_interval_s == 15.0
    mine = {"WATCHDOG_USEC": "200000", "WATCHDOG_PID": str(os.getpid())}
    assert Notifier(mine).watchdog_interval_s == 0.1
    assert Notifier({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"}).watchdog_interval_s is None
    assert Notifier({"WATCHDOG_USEC": "0"}).watchdog_interval_s is None
    assert Notifier({}).watchdog_interval_s is None


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_watchdog_pings_until_cancelled(
    anyio_backend: str, receiver: tuple[socket.socket, str]
) -> None:
    sock, path = receiver
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "40000"})
    with anyio.move_on_after(0.15):
        await notifier.keep_watchdog_fed()
    sock.setblocking(False)
    pings = []
    while True:
        try:
            pings.append(sock.recv(4096))
        except BlockingIOError:
            break
    assert len(pings) >= 3
    assert set(pings) == {b"WATCHDOG=1"}
    notifier.close()


def test_activation_variables_for_another_process_are_ignored_and_removed() -> None:
    environ = {"LISTEN_PID": "1", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "quotad.socket"}
    assert activated_socket(environ) is None
    assert environ == {}
    assert activated_socket({}) is None


@pytest.mark.parametrize(
    ("count", "message"),
    [("x", "LISTEN_FDS='x'"), ("0", "LISTEN_FDS='0'"), ("2", "systemd passed 2 sockets")],
)
def test_activation_variables_that_make_no_sense(count: str, message: str) -> None:
    with pytest.raises(ActivationError, match=message):
        activated_socket({"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": count})


def record(message: str, level: int = logging.WARNING, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            exc_info = sys.exc_info()
    return logging.LogRecord("quotad", level, __file__, 1, message, None, exc_info)


def test_journald_lines_each_carry_the_priority() -> None:
    journal = TextFormatter(journald=True)
    assert journal.format(record("careful")) == "<4>quotad: careful"
    assert journal.format(record("x", logging.ERROR)).startswith("<3>")
    assert journal.format(record("x", logging.DEBUG)).startswith("<7>")
    lines = journal.format(record("failed", logging.ERROR, exc=True)).split("\n")
    assert len(lines) > 2
    assert all(line.startswith("<3>") for line in lines)
    plain = TextFormatter(journald=False).format(record("careful"))
    assert not plain.startswith("<")
    assert "warning quotad: careful" in plain


def test_json_lines_for_journald_carry_the_priority_before_the_object() -> None:
    plain = json.loads(JsonFormatter().format(record("careful")))
    assert plain["level"] == "warning"
    assert plain["message"] == "careful"
    journal = JsonFormatter(journald=True).format(record("failed", logging.ERROR, exc=True))
    assert journal.startswith("<3>{")
    entry = json.loads(journal.removeprefix("<3>"))
    assert "ValueError: boom" in entry["exception"]
    assert "\n" not in journal  # one line, the traceback inside the object


def test_stderr_is_the_journal_only_when_the_variable_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with (tmp_path / "stream").open("w") as stream:
        monkeypatch.setattr(sys, "stderr", stream)
        info = os.fstat(stream.fileno())
        assert stderr_is_journal(f"{info.st_dev}:{info.st_ino}")
        assert not stderr_is_journal(f"{info.st_dev}:{info.st_ino + 1}")
        assert not stderr_is_journal("")
        assert not stderr_is_journal("nonsense")


def test_access_policy() -> None:
    open_policy = AccessPolicy.from_config(DaemonConfig())
    assert not open_policy.restricted
    assert open_policy.refusal(12345, 12345) is None
    policy = AccessPolicy.from_config(DaemonConfig(allow_uids=[1001], allow_gids=[2002]))
    assert policy.restricted
    assert policy.refusal(1001, 9) is None
    assert policy.refusal(9, 2002) is None
    assert policy.refusal(os.getuid(), 9) is None  # the daemon's own uid
    refusal = policy.refusal(31337, 31337)
    assert refusal is not None
    assert "uid 31337 (gid 31337)" in refusal
    assert "daemon.allow_uids" in refusal


def test_peer_groups_of_a_connected_pair() -> None:
    left, right = socket.socketpair()
    with left, right:
        groups = peer_groups(left)
        if sys.platform == "linux":
            assert groups == frozenset(os.getgroups())
        else:
            assert groups == frozenset()


def test_stopping_asks_for_at_most_what_a_usec_holds(receiver: tuple[socket.socket, str]) -> None:
    """drain_s = 1e308 raised OverflowError (int of inf) as the daemon stopped."""
    sock, path = receiver
    notifier = Notifier({"NOTIFY_SOCKET": path})
    for allow_s in (1e308, float("inf")):
        notifier.stopping("stopping", allow_s)
        assert sock.recv(4096).split(b"\n")[-1] == f"EXTEND_TIMEOUT_USEC={2**63 - 1}".encode()
    notifier.close()


@pytest.mark.parametrize(
    ("usec", "interval_s"),
    [
        ("9" * 400, None),  # OverflowError, before
        ("9" * 5000, None),  # past the digits int() reads
        (str(2**64 - 1), None),  # systemd's "infinity"
        ("\uff11\uff10", None),  # fullwidth digits: not a number systemd writes
        ("1", 0.05),  # pinged in a busy loop, before
        (str(10**18), 3600.0),
    ],
)
def test_watchdog_interval_of_odd_timeouts(usec: str, interval_s: float | None) -> None:
    assert Notifier({"WATCHDOG_USEC": usec}).watchdog_interval_s == interval_s
