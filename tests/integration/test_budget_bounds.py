"""Budgets hold against every way of asking, end to end: a real daemon, and a real sim that
counts prompt tokens as a worst-case byte-level tokenizer would (``--count-tokens bytes``: one
token per UTF-8 byte of every string of the prompt). Each case sends many concurrent requests
from one app until its budget refuses them: Japanese prompts (an app budget and the global
one), content parts the estimator did not know (a 40,000-character ``file`` part; audio and
fields beside a part's text), and native ``extra`` that asks for more completion tokens than
``max_tokens`` (OpenAI's ``max_completion_tokens``, Anthropic's ``max_tokens``). What was spent
(the ledger's cost of what the sim reported) never passes the limit, and the budget's holds all
come back."""

from __future__ import annotations

import itertools
import sqlite3
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest

from quotad.client import BudgetExceededError, Client
from quotad.protocol.messages import Chat, ChatReply
from tests.support.daemon import DaemonProcess, daemon_config, sim_provider_config
from tests.support.sim import SimProcess

JAPANESE = "東京の天気について詳しく教えてください。明日は雨が降りますか" * 10
WORKERS = 16
MAX_REQUESTS_PER_WORKER = 30
PRICES = """\
[prices."sim/sim-small"]
input = 10.0
output = 100.0
[prices."simant/sim-small"]
input = 10.0
output = 100.0
"""
APP_BUDGETS = {
    "japanese": 0.05,
    "file_part": 12.0,
    "odd_parts": 2.0,
    "openai_extra": 0.01,
    "anthropic_extra": 0.01,
}
GLOBAL_BUDGET = 0.05
_unique = itertools.count()


def config(budgets: str, sim: SimProcess) -> str:
    providers = sim_provider_config("sim", sim.base_url) + sim_provider_config(
        "simant", sim.base_url, kind="anthropic"
    )
    return daemon_config(budgets, providers, PRICES, cache='mode = "off"')


@pytest.fixture(scope="module")
def sim() -> Iterator[SimProcess]:
    with SimProcess(extra_args=["--count-tokens", "bytes"]) as process:
        yield process


@pytest.fixture(scope="module")
def app_budgets(sim: SimProcess) -> Iterator[DaemonProcess]:
    apps = "".join(f"[apps.{app}]\ndaily_usd = {usd}\n" for app, usd in APP_BUDGETS.items())
    with DaemonProcess(config(apps, sim)) as daemon:
        yield daemon


@pytest.fixture(scope="module")
def global_budget(sim: SimProcess) -> Iterator[DaemonProcess]:
    with DaemonProcess(config(f"[budgets]\ndaily_usd = {GLOBAL_BUDGET}\n", sim)) as daemon:
        yield daemon


@dataclass
class Outcome:
    """What one case's load did."""

    answered: int = 0
    refused: int = 0
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


def load(daemon: DaemonProcess, app: str, chat: Callable[[int], Chat]) -> Outcome:
    """:data:`WORKERS` clients asking concurrently (each request ``chat(n)``, a native
    ``Chat`` frame with its ``extra`` as given) until the budget refuses each, or each has
    asked :data:`MAX_REQUESTS_PER_WORKER` times."""
    outcome = Outcome()

    def worker() -> None:
        with Client(socket=daemon.socket_path, app=app) as client:
            for _ in range(MAX_REQUESTS_PER_WORKER):
                try:
                    client._call(chat(next(_unique)), ChatReply)
                except BudgetExceededError:
                    with outcome.lock:
                        outcome.refused += 1
                    return
                except Exception as error:
                    with outcome.lock:
                        outcome.errors.append(repr(error))
                    return
                with outcome.lock:
                    outcome.answered += 1

    with ThreadPoolExecutor(WORKERS) as pool:
        for future in [pool.submit(worker) for _ in range(WORKERS)]:
            future.result()
    return outcome


def spent(daemon: DaemonProcess, app: str | None = None) -> float:
    """The ledger's total cost (of one app), read from the daemon's database file."""
    connection = sqlite3.connect(daemon.state_dir / "quotad.db")
    try:
        where, parameters = ("WHERE app = ?", (app,)) if app else ("", ())
        (total,) = connection.execute(
            f"SELECT COALESCE(SUM(cost_usd), 0) FROM ledger {where}", parameters
        ).fetchone()
        return float(total)
    finally:
        connection.close()


def request(model: str, messages: list[dict[str, Any]], **fields: Any) -> Chat:
    return msgspec.convert(
        {"model": model, "messages": messages, "cache": "bypass", **fields}, Chat
    )


def japanese(n: int) -> Chat:
    return request(
        "sim/sim-small", [{"role": "user", "content": f"{JAPANESE} #{n}"}], max_tokens=16
    )


def file_part(n: int) -> Chat:
    """A ``file`` part of 40,000 characters (it counted 0: 1,607 USD spent on a 5 USD budget)."""
    document = {"file_data": "JVBERi0xLjQK" * 3334, "filename": f"report-{n}.pdf"}
    parts = [{"type": "text", "text": "summarize"}, {"type": "file", "file": document}]
    return request("sim/sim-small", [{"role": "user", "content": parts}], max_tokens=16)


def odd_parts(n: int) -> Chat:
    """Audio, a field beside a part's text, long tool call ids and names."""
    audio = {"type": "input_audio", "input_audio": {"data": "UklGRiQAAABXQVZF" * 2500}}
    noted = {"type": "text", "text": f"listen #{n}", "note": "x" * 10_000}
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": [noted, audio]},
        {"role": "assistant", "content": "", "tool_calls": [{"id": "c" * 5000, "type": "x"}]},
        {"role": "tool", "content": "ok", "tool_call_id": "c" * 5000},
        {"role": "user", "content": "and?", "name": "n" * 3000},
    ]
    return request("sim/sim-small", messages, max_tokens=16)


def openai_extra(n: int) -> Chat:
    """``max_tokens=1`` and OpenAI's ``max_completion_tokens`` in extra (+302 % measured)."""
    messages = [{"role": "user", "content": f"hi #{n}"}]
    return request("sim/sim-small", messages, max_tokens=1, extra={"max_completion_tokens": 16})


def anthropic_extra(n: int) -> Chat:
    """``max_tokens=1`` and the Anthropic body's own ``max_tokens`` in extra."""
    messages = [{"role": "user", "content": f"hi #{n}"}]
    return request("simant/sim-small", messages, max_tokens=1, extra={"max_tokens": 16})


CASES: dict[str, Callable[[int], Chat]] = {
    "japanese": japanese,
    "file_part": file_part,
    "odd_parts": odd_parts,
    "openai_extra": openai_extra,
    "anthropic_extra": anthropic_extra,
}


@pytest.mark.parametrize("case", list(APP_BUDGETS))
def test_an_app_budget_holds(app_budgets: DaemonProcess, case: str) -> None:
    outcome = load(app_budgets, case, CASES[case])
    limit = APP_BUDGETS[case]
    total = spent(app_budgets, case)
    print(f"{case}: spent {total:.6f} of {limit} USD ({total / limit:.2f}), {outcome}")
    assert not outcome.errors
    assert outcome.answered >= 1  # the limit was not held by refusing everything
    assert outcome.refused >= 1  # the load did reach the limit
    assert total <= limit, f"{case}: spent {total:.6f} USD on a {limit} USD budget"
    with Client(socket=app_budgets.socket_path) as client:
        budget = next(b for b in client.status().budgets if b.name == f"app {case} daily")
    assert budget.spent_usd == pytest.approx(total)
    assert budget.reserved_usd == 0.0


def test_the_global_budget_holds_against_japanese(global_budget: DaemonProcess) -> None:
    outcome = load(global_budget, "anyone", japanese)
    total = spent(global_budget)
    print(f"global: spent {total:.6f} of {GLOBAL_BUDGET} USD, {outcome}")
    assert not outcome.errors
    assert outcome.answered >= 1
    assert outcome.refused >= 1
    assert total <= GLOBAL_BUDGET, f"spent {total:.6f} USD on a {GLOBAL_BUDGET} USD budget"
