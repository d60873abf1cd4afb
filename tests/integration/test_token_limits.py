"""A provider's token limit holds, through a real daemon and sim, whatever its requests use:

- chats whose replies use far fewer tokens than their ``max_tokens``: the provider counts
  ``max_tokens`` when a request arrives and never gives back what went unused (OpenAI; the
  sim), so the provider's gate keeps it too. Given back, it let the next requests past the
  provider's count: a probe saw 4 of 20 requests answered 429 at ``max_tokens`` 500 against
  a 4,000-token limit;
- embeddings, which reserve the upper bound of their tokens (UTF-8 bytes) and settle to what
  the provider counted (its estimate from the characters), so they neither pass the
  provider's count nor waste the limit; an input whose bytes exceed the whole limit still
  goes when the provider takes it (before, it was refused as never admitted)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from quotad.client import Client
from tests.support.daemon import DaemonProcess, daemon_config, sim_provider_config
from tests.support.sim import SimProcess

TOKENS = 2000
WINDOW_S = 2.0
JAPANESE = "東京の天気について" * 111  # 999 characters, 2,997 bytes: about 250 by the sim


def under_the_limit(load: Callable[[Client, str], None]) -> dict[str, Any]:
    """``load(client, app)`` run by apps ``a``, ``b`` and ``c`` at once, each in its own
    thread, through a daemon whose provider's gate has the sim's token limit; the sim's
    stats after (a failure in a thread fails the test)."""
    limits = f"limits = [{{{{ tokens = {TOKENS}, window_s = {WINDOW_S} }}}}]"
    with SimProcess(tpm=TOKENS, window_s=WINDOW_S, latency_ms=5) as sim:
        config = daemon_config(
            sim_provider_config("sim", sim.base_url, extra=limits), cache='mode = "off"'
        )
        with DaemonProcess(config) as daemon:
            failures: list[BaseException] = []

            def run(app: str) -> None:
                try:
                    with Client(daemon.socket_path, app=app, timeout=60) as client:
                        load(client, app)
                except BaseException as error:  # reported below
                    failures.append(error)

            threads = [threading.Thread(target=run, args=(app,)) for app in "abc"]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(90)
            stats = sim.stats()
    assert failures == []
    assert stats["rate_limited"] == 0, stats
    assert stats["max_in_window_tokens"] <= TOKENS, stats
    return stats


def test_replies_shorter_than_max_tokens_never_take_the_provider_past_its_token_limit() -> None:
    def chats(client: Client, app: str) -> None:
        for n in range(6):  # ~305 tokens reserved each, 16 used
            messages = [{"role": "user", "content": f"{app} question {n}"}]
            client.chat("sim/m", messages, max_tokens=300, max_wait_s=60)

    assert under_the_limit(chats)["ok"] == 18


def test_embeddings_keep_to_a_token_limit_and_one_past_it_by_its_bytes_still_goes() -> None:
    def embeddings(client: Client, app: str) -> None:
        for n in range(6):  # 100 tokens by the sim, 402 reserved
            text = f"{app}{n:03} " + "word " * 79
            client.embed("sim/text-embedding-3-small", text, max_wait_s=60)
        client.embed("sim/text-embedding-3-small", app + JAPANESE, max_wait_s=60)

    assert under_the_limit(embeddings)["ok"] == 21
