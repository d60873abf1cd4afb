"""SIGHUP applies the store's part of a new config (budgets, prices, cache settings) to a
running daemon, keeping what was spent."""

from __future__ import annotations

import signal
import time

from quotad.client import Client
from tests.support.daemon import DaemonProcess, daemon_config, sim_provider_config
from tests.support.sim import SimProcess

MESSAGES = [{"role": "user", "content": "price me"}]


def config(sim_url: str, daily_usd: float, input_price: float, max_mb: float) -> str:
    return daemon_config(
        f"[budgets]\ndaily_usd = {daily_usd}\n",
        sim_provider_config("sim", sim_url),
        f'[prices."sim/m"]\ninput = {input_price}\noutput = 1.0\n',
        cache=f"max_mb = {max_mb}",
    )


def test_sighup_applies_budgets_prices_and_cache_settings() -> None:
    with SimProcess() as sim:
        daemon = DaemonProcess(config(sim.base_url, 1.0, 1.0, 64))
        with daemon, Client(socket=daemon.socket_path) as client:
            first = client.chat("sim/m", MESSAGES, max_tokens=4, cache="bypass")
            assert first.cost_usd > 0
            daemon.config_path.write_text(
                config(sim.base_url, 2.0, 1000.0, 1).format(
                    state_dir=daemon.state_dir, socket=daemon.socket_path
                )
            )
            assert daemon.process is not None
            daemon.process.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            while client.status().budgets[0].limit_usd != 2.0:
                assert time.monotonic() < deadline, daemon.log()
                time.sleep(0.05)
            status = client.status()
            assert status.budgets[0].spent_usd == first.cost_usd  # kept across the reload
            assert status.cache.max_bytes == 1024 * 1024
            second = client.chat("sim/m", MESSAGES, max_tokens=4, cache="bypass")
            assert second.cost_usd > 100 * first.cost_usd  # the new input price applies
