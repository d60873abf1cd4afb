"""A provider's token limit holds when replies use far fewer tokens than their ``max_tokens``:
the provider counts ``max_tokens`` when a request arrives and never gives back what went
unused (OpenAI; the sim), so the provider's gate keeps it too. Given back, it let the next
requests past the provider's count: a probe saw 4 of 20 requests answered 429 at
``max_tokens`` 500 against a 4,000-token limit."""

from __future__ import annotations

import threading

from quotad.client import Client
from tests.support.daemon import DaemonProcess, daemon_config, sim_provider_config
from tests.support.sim import SimProcess

TOKENS = 2000
WINDOW_S = 2.0


def test_replies_shorter_than_max_tokens_never_take_the_provider_past_its_token_limit() -> None:
    limits = f"limits = [{{{{ tokens = {TOKENS}, window_s = {WINDOW_S} }}}}]"
    with SimProcess(tpm=TOKENS, window_s=WINDOW_S, latency_ms=5) as sim:
        config = daemon_config(
            sim_provider_config("sim", sim.base_url, extra=limits), cache='mode = "off"'
        )
        with DaemonProcess(config) as daemon:
            failures: list[BaseException] = []

            def load(app: str) -> None:
                try:
                    with Client(daemon.socket_path, app=app, timeout=60) as client:
                        for n in range(6):  # ~305 tokens reserved each, 16 used
                            messages = [{"role": "user", "content": f"{app} question {n}"}]
                            client.chat("sim/m", messages, max_tokens=300, max_wait_s=60)
                except BaseException as error:  # reported below
                    failures.append(error)

            threads = [threading.Thread(target=load, args=(app,)) for app in "abc"]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(90)
            stats = sim.stats()
    assert failures == []
    assert stats["ok"] == 18, stats
    assert stats["rate_limited"] == 0, stats
    assert stats["max_in_window_tokens"] <= TOKENS, stats
