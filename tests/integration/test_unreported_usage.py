"""An answer whose provider does not report its usage, or only its prompt's, is charged the
upper bounds a broken stream is (the prompt's bound, the UTF-8 bytes of what it delivered at
most its limit), not 0: a real daemon over a real sim told to leave usage out
(``report_usage``: an OpenAI-compatible server that ignores ``stream_options.include_usage``,
a body without ``usage``, an Anthropic stream without the usage of ``message_start`` and
``message_delta``), through the socket client and through the HTTP front door with the
``openai`` SDK. Before, each such answer was an ``ok`` row of 0 tokens and $0, which no budget
saw: an app on such a server never spent its budget."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any

import msgspec
import openai
import pytest

from quotad.client import BudgetExceededError, Client
from quotad.daemon.request_limits import billable_tokens
from quotad.daemon.tokens import text_tokens_upper_bound
from quotad.protocol.messages import Chat, Embed, Usage
from tests.support.daemon import DaemonProcess, daemon_config, free_port, sim_provider_config
from tests.support.sim import SimProcess

OPENAI, ANTHROPIC, EMBEDDINGS = "sim/sim-small", "simant/sim-small", "sim/sim-embed"
USD_PER_MILLION = 1000.0
PER_TOKEN = USD_PER_MILLION / 1_000_000
QUESTION = "how much did this cost"
MESSAGES: list[Any] = [{"role": "user", "content": QUESTION}]
MAX_TOKENS = 200
"""Above the sim's 16 words: the completion's bound is then the bytes of what was delivered."""
CAPPED_MAX_TOKENS = 16
"""The budget tests' limit: the sim's answer fills it, so it is charged its whole hold."""
KINDS = ["openai", "openai_stream", "anthropic", "anthropic_stream", "embeddings"]


def chat_request(max_tokens: int) -> Chat:
    return msgspec.convert({"model": OPENAI, "messages": MESSAGES, "max_tokens": max_tokens}, Chat)


def hold_usd(max_tokens: int) -> float:
    """The most a chat of :data:`MESSAGES` can cost: what its budgets hold for it."""
    return sum(billable_tokens(chat_request(max_tokens), max_tokens)) * PER_TOKEN


CAPPED_USD = 1.5 * hold_usd(CAPPED_MAX_TOKENS)
"""A budget with room for one request's hold and a half: charged its bound, the first fills
it past what the second must hold; charged $0, it let the second through."""


def config(port: int, sim: SimProcess) -> str:
    providers = sim_provider_config("sim", sim.base_url) + sim_provider_config(
        "simant", sim.base_url, kind="anthropic"
    )
    prices = "".join(
        f'[prices."{target}"]\ninput = {USD_PER_MILLION}\noutput = {USD_PER_MILLION}\n'
        for target in (OPENAI, ANTHROPIC, EMBEDDINGS)
    )
    apps = "".join(f"[apps.{app}]\ndaily_usd = {CAPPED_USD}\n" for app in ("socket", "http"))
    http = f'listen = "127.0.0.1:{port}"\nauth = "none"'
    return daemon_config(providers, prices, apps, http=http, cache='mode = "off"')


@pytest.fixture(scope="module")
def port() -> int:
    """The front door's."""
    return free_port()


def sdk(port: int, app: str) -> openai.OpenAI:
    """The ``openai`` SDK at the front door, as ``app``."""
    return openai.OpenAI(
        base_url=f"http://127.0.0.1:{port}/v1",
        api_key="-",
        default_headers={"x-quotad-app": app},
        max_retries=0,
    )


@pytest.fixture(scope="module")
def daemon(sim: SimProcess, port: int) -> Iterator[DaemonProcess]:
    """Over the sim of ``tests/conftest.py``."""
    with DaemonProcess(config(port, sim)) as process:
        yield process


def row_of(daemon: DaemonProcess, user: str) -> dict[str, Any]:
    """The ledger row of ``user``'s one request (its reply comes after it is committed)."""
    connection = sqlite3.connect(daemon.state_dir / "quotad.db")
    connection.row_factory = sqlite3.Row
    try:
        query = "SELECT * FROM ledger WHERE user = ?"
        (row,) = [dict(row) for row in connection.execute(query, (user,)).fetchall()]
        return row
    finally:
        connection.close()


def ask(client: Client, kind: str, user: str) -> tuple[Usage, str]:
    """One request of ``kind`` by ``user``: the usage its reply says, and what it delivered."""
    model = ANTHROPIC if kind.startswith("anthropic") else OPENAI
    if kind == "embeddings":
        return client.embed(EMBEDDINGS, QUESTION, user=user).usage, ""
    if kind.endswith("_stream"):
        with client.chat_stream(model, MESSAGES, max_tokens=MAX_TOKENS, user=user) as stream:
            delivered = "".join(chunk.delta for chunk in stream)
        assert stream.end is not None
        return stream.end.usage, delivered
    reply = client.chat(model, MESSAGES, max_tokens=MAX_TOKENS, user=user)
    return reply.usage, reply.content or ""


def bounds(kind: str, delivered: str) -> tuple[int, int]:
    """The prompt's and the completion's upper bounds of a request of ``kind``."""
    if kind == "embeddings":
        embed = msgspec.convert({"model": EMBEDDINGS, "input": QUESTION}, Embed)
        return billable_tokens(embed, 0)[0], 0
    prompt, _ = billable_tokens(chat_request(MAX_TOKENS), MAX_TOKENS)
    return prompt, min(text_tokens_upper_bound(delivered), MAX_TOKENS)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("left_out", ["none", "prompt"])
def test_usage_left_out_is_charged_its_bounds(
    daemon: DaemonProcess, sim: SimProcess, kind: str, left_out: str
) -> None:
    with Client(daemon.socket_path, app="free") as client:
        reported, _ = ask(client, kind, f"{kind}-{left_out}-reported")
        with sim.controlled(report_usage=left_out):
            usage, delivered = ask(client, kind, f"{kind}-{left_out}")
    truth = row_of(daemon, f"{kind}-{left_out}-reported")
    row = row_of(daemon, f"{kind}-{left_out}")
    prompt_bound, completion_bound = bounds(kind, delivered)
    if left_out == "prompt":  # the prompt's count reported stands; an embedding has no more
        prompt_bound = reported.prompt_tokens
        completion_bound = completion_bound if kind != "embeddings" else 0
    assert row["status"] == "ok"
    assert (row["prompt_tokens"], row["completion_tokens"]) == (prompt_bound, completion_bound)
    assert row["cost_usd"] == pytest.approx((prompt_bound + completion_bound) * PER_TOKEN)
    assert row["prompt_tokens"] >= truth["prompt_tokens"] > 0
    assert row["completion_tokens"] >= truth["completion_tokens"]
    assert (usage.prompt_tokens, usage.completion_tokens) == (prompt_bound, completion_bound)


def test_the_openai_sdk_through_the_front_door_is_charged_the_bounds(
    daemon: DaemonProcess, sim: SimProcess, port: int
) -> None:
    with sim.controlled(report_usage="none"), sdk(port, "free") as client:
        plain = client.chat.completions.create(
            model=OPENAI, messages=MESSAGES, max_tokens=MAX_TOKENS, user="sdk-plain"
        )
        chunks = list(
            client.chat.completions.create(
                model=OPENAI,
                messages=MESSAGES,
                max_tokens=MAX_TOKENS,
                user="sdk-stream",
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    for user, delivered, usage in [
        ("sdk-plain", plain.choices[0].message.content or "", plain.usage),
        ("sdk-stream", streamed, chunks[-1].usage),
    ]:
        row = row_of(daemon, user)
        prompt_bound, completion_bound = bounds("openai", delivered)
        assert (row["prompt_tokens"], row["completion_tokens"]) == (prompt_bound, completion_bound)
        assert row["cost_usd"] == pytest.approx((prompt_bound + completion_bound) * PER_TOKEN)
        assert usage is not None
        assert (usage.prompt_tokens, usage.completion_tokens) == (prompt_bound, completion_bound)


def test_a_budget_the_unreported_spend_fills_refuses_the_next_request(
    daemon: DaemonProcess, sim: SimProcess, port: int
) -> None:
    """Charged $0, the first request left the budget as it was and the second went through."""
    with sim.controlled(report_usage="none"), Client(daemon.socket_path, app="socket") as client:
        client.chat(OPENAI, MESSAGES, max_tokens=CAPPED_MAX_TOKENS)
        with pytest.raises(BudgetExceededError):
            client.chat(OPENAI, MESSAGES, max_tokens=CAPPED_MAX_TOKENS)
    with sim.controlled(report_usage="none"), sdk(port, "http") as client:
        stream = client.chat.completions.create(
            model=OPENAI, messages=MESSAGES, max_tokens=CAPPED_MAX_TOKENS, stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        with pytest.raises(openai.RateLimitError) as refused:
            client.chat.completions.create(
                model=OPENAI, messages=MESSAGES, max_tokens=CAPPED_MAX_TOKENS
            )
    assert refused.value.code == "budget_exceeded"
