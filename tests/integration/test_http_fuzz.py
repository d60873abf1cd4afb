"""The HTTP front door of a real daemon under a few thousand seeded random and mutated
requests (tests/support/http_fuzz.py): it stays up, never answers 500 (nor carries an
internal error in a stream), logs no traceback, leaves one ledger row per request (a row for
every 200, no request id twice) and nothing reserved, and serves another client afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from quotad.client import Client, QuotadError
from tests.support import http_fuzz
from tests.support.daemon import DaemonProcess, free_port, two_sims_config
from tests.support.fuzz import FUZZ_TABLES
from tests.support.sim import SimProcess

FUZZ_SEED = 1313
CASES = 3000


def fuzz_config(openai_url: str, anthropic_url: str, port: int) -> str:
    http = (
        f'listen = "127.0.0.1:{port}"\nauth = "none"\n'
        "read_timeout_s = 0.5\nidle_timeout_s = 2\nmax_body_mb = 1"
    )
    return two_sims_config(openai_url, anthropic_url, http=http, extra=FUZZ_TABLES)


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
    assert http_fuzz.ledger_problems(process.state_dir, results.answered_ids) == []
    with Client(socket=process.socket_path) as quotad:
        assert sum(budget.reserved_usd for budget in quotad.status().budgets) == 0


def test_a_part_or_tool_typed_with_an_object_is_a_400_naming_it_on_every_door(
    daemon: tuple[DaemonProcess, str],
) -> None:
    """Found by bench/http_fuzz.py: a content part whose ``type`` was an object or an array
    was a 500 (and an ``internal`` error on the socket), with a traceback in the log; so was a
    tool's, where a budget made the daemon bound the request (the fuzzer ran without one)."""
    process, url = daemon
    before = process.log().count("Traceback")
    kinds: list[Any] = [{}, []]
    with Client(socket=process.socket_path) as client:
        for kind in kinds:
            parts = [{"type": "text", "text": "look"}, {"type": kind, "text": "x"}]
            tools = [{"type": kind, "function": {"name": "f", "parameters": {}}}]
            asked = {
                "messages[0].content[1].type": {"messages": [{"role": "user", "content": parts}]},
                "tools[0].type": {"messages": [{"role": "user", "content": "x"}], "tools": tools},
            }
            for field, fields in asked.items():
                for stream in (False, True):
                    body = dict(fields, model="fast", stream=stream)
                    answer = httpx.post(f"{url}/v1/chat/completions", json=body)
                    assert answer.status_code == 400, answer.text
                    assert answer.json()["error"]["message"].startswith(
                        f"{field}: expected a string"
                    )
                with pytest.raises(QuotadError) as refused:
                    client.chat("fast", fields["messages"], tools=fields.get("tools"))
                assert refused.value.code == "bad_request"
                assert field in str(refused.value)
    assert process.log().count("Traceback") == before


def test_no_messages_or_no_input_is_a_400_on_every_door(
    daemon: tuple[DaemonProcess, str],
) -> None:
    """A chat with no messages and an embedding request of no input were sent on, for the
    provider's 400 to come back: refused now before any provider is called."""
    process, url = daemon
    asked = [
        ("/v1/chat/completions", {"model": "fast", "messages": []}, "messages"),
        ("/v1/chat/completions", {"model": "fast", "messages": [], "stream": True}, "messages"),
        ("/v1/messages", {"model": "fast", "max_tokens": 5, "messages": []}, "messages"),
        ("/v1/embeddings", {"model": "sim/text-embedding-3-small", "input": []}, "input"),
    ]
    for path, body, field in asked:
        answer = httpx.post(f"{url}{path}", json=body)
        assert answer.status_code == 400, (path, answer.text)
        assert f"{field}: " in answer.text, answer.text
        if path != "/v1/messages":  # the OpenAI shape names the field (Anthropic's has none)
            assert answer.json()["error"]["param"] == field
    part = {"model": "fast", "messages": [{"role": "user", "content": [{"type": 5}]}]}
    answer = httpx.post(f"{url}/v1/chat/completions", json=part)
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == "messages[0].content[0].type"  # None, before
    with Client(socket=process.socket_path) as client:
        with pytest.raises(QuotadError) as refused:
            client.chat("fast", [])
        assert refused.value.code == "bad_request"
        assert str(refused.value).startswith("messages: a chat needs at least one message")
        with pytest.raises(QuotadError) as refused:
            client.embed("sim/text-embedding-3-small", [])
        assert str(refused.value).startswith("input: an embedding request needs at least one")


@pytest.mark.parametrize("field", ["top_logprobs", "seed"])
def test_an_integer_of_19_digits_below_64_bits_is_a_400_naming_it(
    daemon: tuple[DaemonProcess, str], field: str
) -> None:
    """Found by the HTTP fuzz's edge numbers (seed 31337): -9223372036854775809 has 19 digits,
    and only bodies with a run of 20 were checked for integers past 64 bits; it was decoded,
    then could not be encoded for the cache key or the provider: a 500, a traceback."""
    process, url = daemon
    before = process.log().count("Traceback")
    body = f'{{"model": "fast", "{field}": -9223372036854775809, "messages": '
    body += '[{"role": "user", "content": "x"}]}'
    answer = httpx.post(f"{url}/v1/chat/completions", content=body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["message"].startswith(f"{field}: an integer of 19 digits")
    assert process.log().count("Traceback") == before
