"""A restart mid-run keeps a provider's limit: a real daemon sends a provider (the sim, which
enforces 20 requests per 4 s) its whole window, restarts, and serves 20 more at once. The
provider still counts the first 20, and so does the restarted daemon (``gates.state``): no
429. Before, the restarted daemon's gates started empty and sent the 20 at once: 20 provider
429s (16 of the 20 requests failed ``rate_limited``), after a clean stop as after a kill."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from quotad.client import Client
from quotad.daemon.gates.saved import read_saved, saved_path
from tests.support.daemon import DaemonProcess, daemon_config, sim_provider_config
from tests.support.sim import SimProcess

LIMIT = 20
WINDOW_S = 4.0


def chats_at_once(daemon: DaemonProcess, count: int) -> list[str]:
    """``count`` chats at once, each in its own thread: the target that answered each, or
    its error."""
    outcomes: list[str] = []

    def chat(n: int) -> None:
        try:
            with Client(daemon.socket_path, app="a", timeout=60) as client:
                reply = client.chat(
                    "sim/m", [{"role": "user", "content": f"q{n}"}], max_tokens=5, max_wait_s=30
                )
            outcomes.append(reply.target)
        except Exception as error:  # counted below
            outcomes.append(f"{type(error).__name__}: {error}")

    threads = [threading.Thread(target=chat, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return outcomes


def saved_units(daemon: DaemonProcess) -> int:
    """Requests the daemon has saved in its provider's window so far."""
    saved = read_saved(saved_path(daemon.state_dir))
    if saved is None:
        return 0
    return sum(
        units
        for gate in saved.gates
        if gate.name == "provider:sim"
        for window in gate.windows
        for _, units in window.admissions
    )


def wait_until_saved(daemon: DaemonProcess) -> None:
    deadline = time.monotonic() + 10
    while saved_units(daemon) < LIMIT:
        assert time.monotonic() < deadline, "the running daemon did not save its gates"
        time.sleep(0.05)


def stop_cleanly(daemon: DaemonProcess) -> None:
    assert daemon.stop() == 0


def kill_once_saved(daemon: DaemonProcess) -> None:
    wait_until_saved(daemon)  # the running daemon saves every second
    daemon.kill()


@pytest.mark.parametrize("stop", [stop_cleanly, kill_once_saved], ids=["stopped", "killed"])
def test_a_restarted_daemon_still_counts_what_the_provider_counts(
    stop: Callable[[DaemonProcess], None],
) -> None:
    limits = f"pace = false\nlimits = [{{{{ requests = {LIMIT}, window_s = {WINDOW_S} }}}}]"
    with SimProcess(rpm=LIMIT, window_s=WINDOW_S) as sim:
        config = daemon_config(
            sim_provider_config("sim", sim.base_url, extra=limits), cache='mode = "off"'
        )
        with DaemonProcess(config) as daemon:
            first = chats_at_once(daemon, LIMIT)
            assert first == ["sim/m"] * LIMIT
            stop(daemon)
            daemon.start()
            second = chats_at_once(daemon, LIMIT)
            log = daemon.log()
        stats = sim.stats()
    assert stats["rate_limited"] == 0, stats
    assert stats["max_in_window_requests"] <= LIMIT, stats
    assert second == ["sim/m"] * LIMIT
    assert f"{LIMIT} unit(s) in 1 window(s) and 0 pause(s) counted again" in log
