"""Pacing through real processes (``quotad sim``, ``quotad serve``, ``quotad chat``): a client
alone gets an app's whole window at once, ``quotad status`` shows which gates pace, and a
``rate_limited`` answer names the gate, its use and when room comes (issue 18)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import pytest

from tests.support.daemon import DaemonProcess, daemon_config, run_quotad, sim_provider_config
from tests.support.sim import SimProcess

APP_X = "[apps.x]\nrpm = 3\n"


@pytest.fixture(scope="module")
def daemon() -> Iterator[DaemonProcess]:
    with SimProcess() as sim:
        provider = sim_provider_config("p", sim.base_url, extra="rpm = 600")
        config = daemon_config(provider, APP_X, cache='mode = "off"')
        with DaemonProcess(config) as running:
            yield running


def quotad(daemon: DaemonProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return run_quotad(*args, env={"QUOTAD_SOCKET": str(daemon.socket_path)})


def test_a_lone_client_s_requests_go_at_once_then_the_app_gate_says_why(
    daemon: DaemonProcess,
) -> None:
    """Before: with app rpm = 3 they came at 0 s, 14 s, 34 s, and ``--max-wait 2`` failed
    with rate_limited while status showed 2/3 used."""
    for number in range(3):
        chat = quotad(daemon, "chat", "--app", "x", "--max-wait", "2", "-m", "p/m", f"hi {number}")
        assert chat.returncode == 0, chat.stderr
        assert "wait 0 ms" in chat.stdout + chat.stderr
    refused = quotad(daemon, "chat", "--app", "x", "--max-wait", "0", "-m", "p/m", "hi 4")
    assert refused.returncode == 1
    assert "rate_limited" in refused.stderr
    assert "app gate app:x allows 3 requests per 60 s; 3 used in the last 60 s" in refused.stderr
    assert "next free in" in refused.stderr

    status = json.loads(quotad(daemon, "status", "--json").stdout)
    windows = {(g["name"], w["unit"]): w for g in status["gates"] for w in g["windows"]}
    assert windows[("app:x", "requests")]["used"] == 3
    assert windows[("app:x", "requests")]["pace_s"] is None  # an app gate does not pace
    assert windows[("provider:p", "requests")]["pace_s"] == pytest.approx(0.1)
    text = quotad(daemon, "status").stdout
    provider_row = next(line for line in text.splitlines() if line.startswith("provider:p"))
    app_row = next(line for line in text.splitlines() if line.startswith("app:x"))
    assert "1 per 0.1s" in provider_row
    assert " off " in f"{app_row} "
