"""``quotad top`` against a real daemon in front of real ``quotad sim`` processes: it shows live
targets and apps under load, waits for a daemon that is absent or restarting and reconnects by
itself, runs operator actions (showing the daemon's own refusal), and quits cleanly."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from quotad.client import AsyncClient, Client, QuotadError
from quotad.tui.app import TopApp
from quotad.tui.feed import DaemonFeed
from quotad.tui.screens.confirm import ConfirmScreen
from quotad.tui.widgets.gauges import LimitGauges
from quotad.tui.widgets.table import LiveTable
from quotad.tui.widgets.targets import COLUMNS, TargetTable
from tests.support.daemon import (
    TWO_SIM_TARGETS,
    DaemonProcess,
    two_sims_config,
)
from tests.support.sim import SimProcess
from tests.tui.pilots import RecordingApp, connection_line, wait_until

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.parametrize("anyio_backend", ["asyncio"]),  # Textual runs on asyncio
]
SIZE = (120, 36)
INTERVAL_S = 0.1
MESSAGES = [{"role": "user", "content": "how busy is the daemon"}]
TARGETS = TWO_SIM_TARGETS

SIM_LATENCY_MS = 5  # how long the two sims of tests/conftest.py take to answer


def live_config(openai_url: str, anthropic_url: str, drain_s: float = 2) -> str:
    return two_sims_config(openai_url, anthropic_url, daemon=f"drain_s = {drain_s}")


@pytest.fixture(scope="module")
def daemon(sims: tuple[SimProcess, SimProcess]) -> Iterator[DaemonProcess]:
    with DaemonProcess(live_config(sims[0].base_url, sims[1].base_url)) as process:
        yield process


async def load(socket: Path, app: str, count: int) -> None:
    """``count`` chats as ``app``, four at a time."""
    async with AsyncClient(socket, app=app) as client:
        limiter = anyio.Semaphore(4)

        async def one() -> None:
            async with limiter:
                await client.chat("fast", MESSAGES, max_tokens=8, cache="bypass")

        async with anyio.create_task_group() as group:
            for _ in range(count):
                group.start_soon(one)


@pytest.mark.slow
async def test_shows_live_targets_and_apps_under_load(daemon: DaemonProcess) -> None:
    app = TopApp(DaemonFeed(str(daemon.socket_path), INTERVAL_S))
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.monitor.snapshot is not None)
        table = app.screen.query_one(TargetTable)
        await wait_until(pilot, lambda: table.row_count == len(TARGETS))
        assert [str(table.get_row_at(i)[0]) for i in range(table.row_count)] == TARGETS
        assert str(daemon.socket_path) in connection_line(app)

        async with anyio.create_task_group() as group:
            group.start_soon(load, daemon.socket_path, "alpha", 30)
            group.start_soon(load, daemon.socket_path, "beta", 10)

        def seen_all() -> bool:
            apps = app.monitor.apps
            return "alpha" in apps and "beta" in apps and apps["alpha"].requests == 30

        await wait_until(pilot, seen_all)
        assert app.monitor.apps["beta"].requests == 10
        assert app.monitor.apps["beta"].errors == 0
        assert any(rate for rate in app.monitor.requests_per_s if rate)
        # the requests column of the first target (failover sends everything to it)
        requests = [column.label for column in COLUMNS].index("requests")
        await wait_until(pilot, lambda: int(str(table.get_row_at(0)[requests])) >= 40)

        await pilot.press("2")
        apps_table = app.screen.query_one(LiveTable)
        await wait_until(pilot, lambda: apps_table.row_count >= 2)
        names = {str(apps_table.get_row_at(i)[0]) for i in range(apps_table.row_count)}
        assert {"alpha", "beta"} <= names

        await pilot.press("4")
        tail = app.screen.query_one(LiveTable)
        await wait_until(pilot, lambda: tail.row_count >= 40)
        newest = tail.get_row_at(0)
        assert str(newest[1]) in {"alpha", "beta"}
        assert str(newest[2]) == TARGETS[0]
        assert str(newest[3]) == "ok"


@pytest.mark.slow
async def test_waits_for_the_daemon_and_survives_a_restart(
    sims: tuple[SimProcess, SimProcess],
) -> None:
    directory = Path(tempfile.mkdtemp(prefix="qtop", dir="/tmp"))
    # a long drain: a daemon with quotad top attached must still stop at once (a subscription
    # is not work to drain), or stop() times out
    config = live_config(sims[0].base_url, sims[1].base_url, drain_s=60)
    daemon = DaemonProcess(config, directory=directory)
    app = TopApp(DaemonFeed(str(daemon.socket_path), INTERVAL_S))
    try:
        async with app.run_test(size=SIZE) as pilot:
            await wait_until(pilot, lambda: app.monitor.state == "waiting")
            line = connection_line(app)
            assert f"waiting for quotad at {daemon.socket_path}" in line
            assert "no such socket" in line

            await anyio.to_thread.run_sync(daemon.start)
            await wait_until(pilot, lambda: app.monitor.snapshot is not None)
            first = app.monitor.status
            assert first is not None
            assert app.monitor.state == "connected"

            exit_code = await anyio.to_thread.run_sync(lambda: daemon.stop(timeout=20))
            assert exit_code == 0
            await wait_until(pilot, lambda: app.monitor.state == "waiting")

            def shows_waiting() -> bool:  # repaints are capped at 5/s: wait for the line itself
                return f"waiting for quotad at {daemon.socket_path}" in connection_line(app)

            await wait_until(pilot, shows_waiting)
            assert "showing the last data seen" in connection_line(app)

            await anyio.to_thread.run_sync(daemon.start)

            def new_daemon() -> bool:
                status = app.monitor.status
                return status is not None and status.pid != first.pid

            await wait_until(pilot, new_daemon)
            assert app.monitor.state == "connected"
            await pilot.pause(0.1)
            assert connection_line(app).startswith("● quotad")
            await pilot.press("q")
        assert app.return_code == 0
    finally:
        await anyio.to_thread.run_sync(daemon.stop)
        shutil.rmtree(directory, ignore_errors=True)


async def test_a_target_action_shows_what_the_daemon_answered(daemon: DaemonProcess) -> None:
    with Client(daemon.socket_path, app="probe") as probe:
        try:
            probe.admin("target_disable", target=TARGETS[1])
        except QuotadError as error:
            refusal: str | None = error.message
        else:
            refusal = None
            probe.admin("target_enable", target=TARGETS[1])
    app = RecordingApp(DaemonFeed(str(daemon.socket_path), INTERVAL_S))
    async with app.run_test(size=SIZE) as pilot:
        table = app.screen.query_one(TargetTable)
        await wait_until(pilot, lambda: table.row_count == len(TARGETS))
        await pilot.press("down", "d")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        await wait_until(pilot, lambda: bool(app.notices))
        severity, _, message = app.notices[-1]
        if refusal is not None:  # a daemon without target actions refuses, and we show why
            assert severity == "error"
            assert message == f"disable {TARGETS[1]}: {refusal}"
        else:
            assert severity == "information"
            await wait_until(pilot, lambda: str(table.get_row_at(1)[1]) == "disabled")
            await pilot.press("e", "y")
            await wait_until(pilot, lambda: str(table.get_row_at(1)[1]) == "enabled")


async def test_q_quits_and_closes_the_subscription(daemon: DaemonProcess) -> None:
    async with AsyncClient(daemon.socket_path, app="probe") as probe:
        before = (await probe.status()).connections
        app = TopApp(DaemonFeed(str(daemon.socket_path), INTERVAL_S))
        async with app.run_test(size=SIZE) as pilot:
            await wait_until(pilot, lambda: app.monitor.snapshot is not None)
            assert (await probe.status()).connections == before + 1
            await pilot.press("q")
        assert app.return_code == 0
        for _ in range(250):
            if (await probe.status()).connections == before:
                break
            await anyio.sleep(0.02)
        assert (await probe.status()).connections == before


async def test_limits_show_the_gates_the_daemon_applies_to_each_target(
    sims: tuple[SimProcess, SimProcess],
) -> None:
    limits = "rpm = 600\n[providers.sim.models.gpt-4o-mini]\ntpm = 90000\n"
    config = live_config(sims[0].base_url, sims[1].base_url).replace(
        "[providers.claude]", limits + "[providers.claude]"
    )
    with DaemonProcess(config) as limited:
        app = TopApp(DaemonFeed(str(limited.socket_path), INTERVAL_S))
        async with app.run_test(size=SIZE) as pilot:
            gauges = app.screen.query_one(LimitGauges)

            def shows_limits() -> bool:
                return "provider sim" in str(gauges.render())

            await wait_until(pilot, shows_limits)
            text = str(gauges.render())
            sim_block, claude_block = text.split(TARGETS[1])
            assert "requests/60s" in sim_block
            assert "model sim/gpt-4o-mini" in sim_block
            assert "tokens/60s" in sim_block
            assert "no limits configured" not in sim_block
            assert "no limits configured" in claude_block  # claude has none
