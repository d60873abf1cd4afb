"""The HTTP front door of a real daemon under a few thousand seeded random and mutated
requests (tests/support/http_fuzz.py): it stays up, never answers 500 (nor carries an
internal error in a stream), logs no traceback, and serves another client afterwards."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from tests.support import http_fuzz
from tests.support.daemon import DaemonProcess, free_port, two_sims_config
from tests.support.sim import SimProcess

FUZZ_SEED = 1313
CASES = 3000


def fuzz_config(openai_url: str, anthropic_url: str, port: int) -> str:
    http = (
        f'listen = "127.0.0.1:{port}"\nauth = "none"\n'
        "read_timeout_s = 0.5\nidle_timeout_s = 2\nmax_body_mb = 1"
    )
    return two_sims_config(openai_url, anthropic_url, http=http)


@pytest.fixture(scope="module")
def daemon() -> Iterator[tuple[DaemonProcess, str]]:
    port = free_port()
    with (
        SimProcess() as openai_sim,
        SimProcess() as anthropic_sim,
        DaemonProcess(fuzz_config(openai_sim.base_url, anthropic_sim.base_url, port)) as process,
    ):
        yield process, f"http://127.0.0.1:{port}"


@pytest.mark.slow
def test_the_front_door_survives_random_and_mutated_requests(
    daemon: tuple[DaemonProcess, str],
) -> None:
    process, url = daemon
    results = http_fuzz.run(url, FUZZ_SEED, CASES)
    assert results.internal == []
    assert sum(results.statuses.values()) > CASES * 0.8  # most were answered
    assert results.statuses[200] > 0  # both kinds were made
    assert results.statuses[400] > 0
    assert process.process is not None
    assert process.process.poll() is None
    with openai.OpenAI(base_url=f"{url}/v1", api_key="unused") as client:  # served after
        reply = client.chat.completions.create(
            model="fast", messages=[{"role": "user", "content": "still there?"}], max_tokens=3
        )
    assert reply.choices[0].message.content
    assert "Traceback" not in process.log()
