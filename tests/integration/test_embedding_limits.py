"""Embeddings against a provider's token limit, through a real daemon and sim: they reserve
the upper bound of their tokens (UTF-8 bytes) and settle to what the provider counted (its
estimate from the characters, as OpenAI's), so they neither pass the provider's count nor
waste the limit, and an input whose bytes exceed the whole limit still goes when the provider
would take it."""

from __future__ import annotations

import threading

from quotad.client import Client
from tests.support.daemon import DaemonProcess, daemon_config, sim_provider_config
from tests.support.sim import SimProcess

TOKENS = 2000
WINDOW_S = 2.0


def test_embeddings_keep_to_a_token_limit_and_one_past_it_by_its_bytes_still_goes() -> None:
    limits = f"limits = [{{{{ tokens = {TOKENS}, window_s = {WINDOW_S} }}}}]"
    japanese = "東京の天気について" * 111  # 999 characters, 2,997 bytes: about 250 by the sim
    with SimProcess(tpm=TOKENS, window_s=WINDOW_S, latency_ms=5) as sim:
        config = daemon_config(
            sim_provider_config("sim", sim.base_url, extra=limits), cache='mode = "off"'
        )
        with DaemonProcess(config) as daemon:
            failures: list[BaseException] = []

            def load(app: str) -> None:
                try:
                    with Client(daemon.socket_path, app=app, timeout=60) as client:
                        for n in range(6):  # 100 tokens by the sim, 402 reserved
                            text = f"{app}{n:03} " + "word " * 79
                            client.embed("sim/text-embedding-3-small", text, max_wait_s=60)
                        client.embed("sim/text-embedding-3-small", app + japanese, max_wait_s=60)
                except BaseException as error:  # reported below
                    failures.append(error)

            threads = [threading.Thread(target=load, args=(app,)) for app in "abc"]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(90)
            stats = sim.stats()
    assert failures == []
    assert stats["ok"] == 21, stats
    assert stats["rate_limited"] == 0, stats
    assert stats["max_in_window_tokens"] <= TOKENS, stats
