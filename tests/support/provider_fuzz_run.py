"""Running the hostile provider (:mod:`tests.support.provider_fuzz`) against a real daemon:
:class:`FuzzRig` starts a ``quotad serve`` whose four accounts are that provider (an OpenAI
and an Anthropic one through the lean pool of plain-http accounts, the same two through httpx's
pool: their URLs name a host that is not loopback, and ``HTTP_PROXY`` names the hostile server,
which answers as a proxy too) plus a ``quotad sim`` (the normal provider served afterwards);
:func:`run` sends valid requests (chat, stream, embeddings) from real clients (quotad's
:class:`~quotad.client.Client` on the socket, the ``openai`` SDK on the front door for a share,
the ``anthropic`` SDK on its Messages API for another: every provider's answers in Anthropic's
shape) and sorts the answers; :func:`ledger_figures` reads the ledger (read-only) for the checks."""

from __future__ import annotations

import contextlib
import math
import random
import sqlite3
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import anthropic
import openai

from quotad.client import Client, QuotadError
from tests.support.daemon import DaemonProcess, daemon_config, free_port, sim_provider_config
from tests.support.provider_fuzz import HostileProvider
from tests.support.sim import SimProcess

APP: Final = "pfuzz"
PROXIED_HOST: Final = "fuzz.invalid"
"""The host of the accounts reached through httpx's pool (never resolved: the proxy answers)."""
TARGETS: Final = {
    "openai": ("oa/gpt-x", "oah/gpt-x"),
    "anthropic": ("an/claude-x", "anh/claude-x"),
}
"""Chat targets by wire format: through the lean pool, then through httpx's."""
EMBED_TARGETS: Final = ("oa/emb-x", "oah/emb-x")
CLEAN_CODES: Final = frozenset(
    {"bad_request", "rate_limited", "upstream_error", "timeout", "overloaded"}
)
"""Error codes a request may get from a hostile provider: its fault, said cleanly."""
PAUSING: Final = frozenset({"rate_limited", "http 429", "timeout", "http 504"})
"""Outcomes that may leave the target paused."""
SDK_SHARE: Final = 0.25
"""The share of cases sent with the openai SDK to the front door."""
ANTHROPIC_SDK_SHARE: Final = 0.15
"""The share of chat cases sent with the anthropic SDK to the front door's Messages API."""
NEVER_OPENS: Final = "breaker = {{ failures = 1000000000, min_calls = 1000000000 }}"
TIMEOUTS: Final = "timeout_s = 0.5\nconnect_timeout_s = 0.5"
MAX_UNANSWERED: Final = 8
"""Cases never answered after which no more are sent: the daemon is wedged, and every case
after would wait :data:`NO_REPLY_S` in turn (a campaign of hours that says nothing more)."""
NO_REPLY_S: Final = 60.0
"""How long a client waits for a reply before the case counts as never answered (the
daemon's retry deadline is 8 s): a hang is a failure, not a campaign that never ends."""
KEY_ENV: Final = {"PFUZZ_KEY": "sk-pfuzz-0123456789abcdefghij"}
"""The accounts' API key (the hostile provider echoes it now and then)."""


def fuzz_config(hostile_port: int, sim_url: str, http_port: int) -> str:
    """The daemon of the rig: four accounts at the hostile provider, breakers that never open
    (every case reaches it), short provider timeouts, few quick retries, no cache, priced
    targets, budgets, the front door without auth."""
    direct = f"http://127.0.0.1:{hostile_port}/v1"
    proxied = f"http://{PROXIED_HOST}/v1"
    extra = f'{NEVER_OPENS}\n{TIMEOUTS}\napi_key_env = "PFUZZ_KEY"'
    prices = "".join(
        f'[prices."{target}"]\ninput = 1.0\noutput = 2.0\ncached_input = 0.5\n'
        for target in (*TARGETS["openai"], *TARGETS["anthropic"], *EMBED_TARGETS)
    )
    return daemon_config(
        sim_provider_config("oa", direct, extra=extra),
        sim_provider_config("an", direct, kind="anthropic", extra=extra),
        sim_provider_config("oah", proxied, extra=extra),
        sim_provider_config("anh", proxied, kind="anthropic", extra=extra),
        sim_provider_config("sim", sim_url),
        "[retry]\nattempts = 2\nbase_s = 0.01\nmax_s = 0.05\ndeadline_s = 8\n",
        "[gates]\nmax_wait_s = 0.5\n",
        "[budgets]\ndaily_usd = 1e300\nmonthly_usd = 1e300\n",
        f"[apps.{APP}]\ndaily_usd = 1e300\n",
        prices,
        http=f'listen = "127.0.0.1:{http_port}"\nauth = "none"',
        cache='mode = "off"',
    )


class FuzzRig:
    """A hostile provider, a sim and a daemon over both; use as a context manager."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.hostile = HostileProvider(seed)
        self.sim = SimProcess()
        self.http_port = free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.daemon: DaemonProcess | None = None
        self._running = contextlib.ExitStack()

    def __enter__(self) -> FuzzRig:
        with contextlib.ExitStack() as started:  # a start that fails stops those before it
            started.enter_context(self.hostile)
            started.enter_context(self.sim)
            proxy = f"http://127.0.0.1:{self.hostile.port}"
            env = {"HTTP_PROXY": proxy, "http_proxy": proxy, "NO_PROXY": "", "no_proxy": ""}
            env |= KEY_ENV
            config = fuzz_config(self.hostile.port, self.sim.base_url, self.http_port)
            self.daemon = started.enter_context(DaemonProcess(config, env=env))
            self._running = started.pop_all()
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Stop the daemon, then the sim, then the hostile provider (each even if one before
        it failed to stop)."""
        self._running.close()

    @property
    def process(self) -> DaemonProcess:
        assert self.daemon is not None
        return self.daemon


@dataclass
class Results:
    """What the cases got: outcomes counted (``ok``, an error code, an HTTP status), and the
    cases that failed inside (``internal``, a 500, no answer, an exception no client should
    raise), each with the case that showed it."""

    outcomes: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    paused_targets: set[str] = field(default_factory=set)
    """Targets a case found paused (it ends up reset: see :func:`run`)."""
    by_case: dict[int, str] = field(default_factory=dict)
    """Each case's outcome, by its index."""
    unanswered: int = 0
    """Cases the daemon never answered (see :data:`MAX_UNANSWERED`)."""

    @property
    def cases(self) -> int:
        return sum(self.outcomes.values())

    @property
    def wedged(self) -> bool:
        """Whether so many cases went unanswered that no more are sent."""
        return self.unanswered >= MAX_UNANSWERED


@dataclass
class Plan:
    """One case: what is asked (``chat``, ``stream``, ``embed``), of which target, by which
    client (``socket``: quotad's client; ``sdk``: the openai SDK at the front door;
    ``anthropic_sdk``: the anthropic SDK at its Messages API)."""

    index: int
    op: str
    target: str
    client: str

    @property
    def text(self) -> str:
        return f"case-{self.index} hello"

    def __str__(self) -> str:
        return f"case {self.index} ({self.op} {self.target} via {self.client})"


def plan(seed: int, index: int) -> Plan:
    """The request of case ``index`` of ``seed``."""
    rnd = random.Random(f"{seed}:{index}:client")
    op = rnd.choice(("chat", "chat", "stream", "stream", "embed"))
    if op == "embed":
        target = rnd.choice(EMBED_TARGETS)
    else:
        target = rnd.choice(TARGETS[rnd.choice(("openai", "anthropic"))])
    draw = rnd.random()
    client = "sdk" if draw < SDK_SHARE else "socket"
    if op != "embed" and SDK_SHARE <= draw < SDK_SHARE + ANTHROPIC_SDK_SHARE:
        client = "anthropic_sdk"
    return Plan(index, op, target, client)


def _socket_case(client: Client, case: Plan) -> str:
    messages = [{"role": "user", "content": case.text}]
    if case.op == "chat":
        reply = client.chat(case.target, messages, max_tokens=16)
        if KEY_ENV["PFUZZ_KEY"] in f"{reply.content}":
            return "the key in a reply"
        return "ok" if math.isfinite(reply.cost_usd) else f"cost {reply.cost_usd}"
    if case.op == "stream":
        for _ in client.chat_stream(case.target, messages, max_tokens=16):
            pass
        return "ok"
    inputs = [case.text] if case.index % 2 else [case.text, "second"]
    client.embed(case.target, inputs)
    return "ok"


def _sdk_case(sdk: openai.OpenAI, case: Plan) -> str:
    messages: Any = [{"role": "user", "content": case.text}]
    if case.op == "chat":
        sdk.chat.completions.create(model=case.target, messages=messages, max_tokens=16)
    elif case.op == "stream":
        for _ in sdk.chat.completions.create(
            model=case.target, messages=messages, max_tokens=16, stream=True
        ):
            pass
    else:
        sdk.embeddings.create(model=case.target, input=[case.text])
    return "ok"


def _anthropic_sdk_case(sdk: anthropic.Anthropic, case: Plan) -> str:
    messages: Any = [{"role": "user", "content": case.text}]
    if case.op == "chat":
        sdk.messages.create(model=case.target, messages=messages, max_tokens=16)
    else:
        for _ in sdk.messages.create(
            model=case.target, messages=messages, max_tokens=16, stream=True
        ):
            pass
    return "ok"


def _anthropic_failure(case: Plan, error: anthropic.APIError, results: Results) -> str:
    """The outcome of an error the anthropic SDK raised; an internal error (a 500, or an
    error event saying so: Anthropic's shape calls every other failure ``api_error`` too) or
    one no hostile provider explains is a failure."""
    status = getattr(error, "status_code", None)
    body = error.body.get("error") if isinstance(error.body, dict) else None
    message = body.get("message") if isinstance(body, dict) else None
    if isinstance(error, anthropic.APIConnectionError):
        results.failures.append(f"{case}: no answer: {error!r}"[:600])
        results.unanswered += 1
        return "no answer"
    if status == 200 or status is None:  # an error event in the stream
        if message == "internal error" or not isinstance(body, dict):
            results.failures.append(f"{case}: stream error {error.body!r}"[:600])
        return f"stream error {body.get('type') if isinstance(body, dict) else None}"
    if status not in (400, 429, 502, 503, 504):
        results.failures.append(f"{case}: http {status} {error.body!r}"[:600])
    return f"http {status}"


def send(
    client: Client,
    sdk: openai.OpenAI,
    anthropic_sdk: anthropic.Anthropic,
    case: Plan,
    results: Results,
) -> None:
    """Send one case and sort its answer into ``results``."""
    try:
        if case.client == "socket":
            outcome = _socket_case(client, case)
        elif case.client == "anthropic_sdk":
            outcome = _anthropic_sdk_case(anthropic_sdk, case)
        else:
            outcome = _sdk_case(sdk, case)
    except anthropic.APIError as error:
        outcome = _anthropic_failure(case, error, results)
    except QuotadError as error:
        outcome = error.code
        if str(error).startswith("no reply from quotad"):  # the client's own timeout
            outcome = "no reply"
            results.failures.append(f"{case}: never answered: {error}"[:600])
            results.unanswered += 1
        if KEY_ENV["PFUZZ_KEY"] in f"{error} {error.details}":
            results.failures.append(f"{case}: the key in an error: {error}"[:600])
        if error.code not in CLEAN_CODES:
            results.failures.append(f"{case}: {error.code}: {error}"[:600])
    except openai.APIStatusError as error:
        outcome = f"http {error.status_code}"
        code = error.body.get("code") if isinstance(error.body, dict) else None
        if error.status_code not in (400, 429, 502, 503, 504) or code == "internal":
            results.failures.append(f"{case}: {outcome} {error.body!r}"[:600])
    except openai.APIConnectionError as error:
        outcome = "no answer"
        results.failures.append(f"{case}: no answer: {error!r}"[:600])
        results.unanswered += 1
    except openai.APIError as error:  # an error event in a stream
        code = error.body.get("code") if isinstance(error.body, dict) else None
        outcome = f"stream error {code}"
        if code not in CLEAN_CODES:
            results.failures.append(f"{case}: stream error {error.body!r}"[:600])
    except Exception as error:  # what no client should raise
        outcome = type(error).__name__
        results.failures.append(f"{case}: {error!r}"[:600])
    if outcome in PAUSING:
        results.paused_targets.add(case.target)
    results.outcomes[outcome] += 1
    results.by_case[case.index] = outcome


def run(rig: FuzzRig, count: int, workers: int = 16, first: int = 0) -> Results:
    """Cases ``first`` to ``first + count`` of the rig's seed, from ``workers`` threads (each
    its own socket client and SDK client). A target a case found paused (a 429's retry-after,
    or rate-limit headers saying nothing is left until a reset far off: the hostile provider
    says so often) is reset, its pause lifted, so that the cases after it still reach the
    provider."""
    results = Results()
    cases = [plan(rig.seed, index) for index in range(first, first + count)]

    def worker(share: list[Plan]) -> None:
        with (
            Client(socket=rig.process.socket_path, app=APP, timeout=NO_REPLY_S) as client,
            openai.OpenAI(
                base_url=f"{rig.url}/v1",
                api_key="unused",
                max_retries=0,
                timeout=NO_REPLY_S,
                default_headers={"x-quotad-app": APP},
            ) as sdk,
            anthropic.Anthropic(
                base_url=rig.url,
                api_key="unused",
                max_retries=0,
                timeout=NO_REPLY_S,
                default_headers={"x-quotad-app": APP},
            ) as anthropic_sdk,
        ):
            for case in share:
                if results.wedged:
                    break
                send(client, sdk, anthropic_sdk, case, results)
                if case.target in results.paused_targets:
                    results.paused_targets.discard(case.target)
                    try:
                        client.admin("target_reset", case.target)
                    except QuotadError as error:
                        results.failures.append(f"resetting {case.target}: {error}")

    with ThreadPoolExecutor(workers) as pool:
        for done in [pool.submit(worker, cases[index::workers]) for index in range(workers)]:
            done.result()
    if results.wedged:
        results.failures.append(
            f"stopped after {results.cases} of {count} cases: {results.unanswered} were never "
            "answered (the daemon is wedged)"
        )
    return results


@dataclass
class LedgerFigures:
    """What the ledger holds of the fuzz app's requests."""

    rows: int
    by_status: dict[str, int]
    bad_costs: list[tuple[str, float]]
    """(request id, cost) of every row whose cost is negative, NaN or infinite."""
    bad_tokens: int
    """Rows with a negative token count."""


def ledger_figures(state_dir: Path) -> LedgerFigures:
    """The ledger of ``state_dir`` (its ``quotad.db``), read-only."""
    uri = f"file:{state_dir / 'quotad.db'}?mode=ro"
    db = sqlite3.connect(uri, uri=True)
    try:
        rows = db.execute(
            "SELECT request_id, status, cost_usd, prompt_tokens, completion_tokens, cached_tokens"
            " FROM ledger WHERE app = ?",
            (APP,),
        ).fetchall()
    finally:
        db.close()
    bad_costs = [
        (request_id, cost)
        for request_id, _, cost, *_ in rows
        if cost is None or not math.isfinite(cost) or cost < 0
    ]
    bad_tokens = sum(
        1 for *_, prompt, completion, cached in rows if min(prompt, completion, cached) < 0
    )
    return LedgerFigures(
        rows=len(rows),
        by_status=dict(Counter(status for _, status, *_ in rows)),
        bad_costs=bad_costs,
        bad_tokens=bad_tokens,
    )


def ledger_rows(state_dir: Path, app: str) -> list[str]:
    """The status of every ledger row of ``app`` in ``state_dir``'s ledger, read-only."""
    uri = f"file:{state_dir / 'quotad.db'}?mode=ro"
    db = sqlite3.connect(uri, uri=True)
    try:
        return [
            status for (status,) in db.execute("SELECT status FROM ledger WHERE app = ?", (app,))
        ]
    finally:
        db.close()


def reserved_usd(rig: FuzzRig) -> float:
    """What the daemon's budgets hold reserved now, in all."""
    with Client(socket=rig.process.socket_path, app=APP) as client:
        return sum(budget.reserved_usd for budget in client.status().budgets)


def served_after(rig: FuzzRig) -> bool:
    """Whether the daemon still answers on the normal provider, on both doors."""
    with Client(socket=rig.process.socket_path, app="after") as client:
        reply = client.chat("sim/gpt-4o-mini", [{"role": "user", "content": "still there?"}])
        streamed = "".join(
            chunk.delta
            for chunk in client.chat_stream(
                "sim/gpt-4o-mini", [{"role": "user", "content": "and?"}]
            )
        )
    with openai.OpenAI(base_url=f"{rig.url}/v1", api_key="unused", max_retries=0) as sdk:
        answer = sdk.chat.completions.create(
            model="sim/gpt-4o-mini", messages=[{"role": "user", "content": "still there?"}]
        )
    return bool(reply.content and streamed and answer.choices[0].message.content)
