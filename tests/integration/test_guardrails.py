"""Guardrails end to end: a real ``quotad serve`` in front of two real ``quotad sim``
processes (OpenAI- and Anthropic-shaped) that log every body they receive, driven by the
native client and by the official ``openai`` and ``anthropic`` SDKs through the HTTP front
door. Masked values never reach a sim (its log says what it received), blocked requests never
do, replies get the caller's values back (plain, streamed, tool calls, cache hits with another
caller's values), output rules apply, per-app overrides apply; and no byte of the state
directory (the SQLite file, its WAL), the daemon's debug log, status, spend or /metrics holds
a value that was masked or blocked."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anthropic
import httpx
import openai
import pytest

from quotad.client import BlockedError, Client
from tests.support import guardrails as samples
from tests.support.daemon import DaemonProcess, daemon_config, free_port, sim_provider_config
from tests.support.sim import SimProcess, read_sim_log
from tests.support.sim_tools import send_tool

EMAIL = "jane.doe@example.com"
OTHER_EMAIL = "bob.smith@example.org"
NOTEBOOK_EMAIL = "carol.jones@example.net"  # the notebook app only logs e-mail addresses
PHONE = "+44 20 7946 0958"
CARD = "4111 1111 1111 1111"
TOKEN = samples.GITHUB_TOKEN
PROTECTED = (EMAIL, OTHER_EMAIL, PHONE, CARD, CARD.replace(" ", ""), TOKEN)
"""Values masked or blocked for every app that sends them here."""
SEND_TOOL = send_tool(to="[EMAIL_1]")
"""The sim calls it with ``to`` a placeholder, which the reply must restore."""

GUARDRAILS = """\
[guardrails]
restore = true
[guardrails.input]
email = "mask"
phone = "mask"
credit_card = "block"
secret = "block"
ip = "log"
[guardrails.output]
secret = "mask"
[apps.notebook.guardrails.input]
email = "log"
[apps.echoer.guardrails.input]
secret = "log"
[models.fast]
targets = ["sim/gpt-4o-mini"]
[models.haiku]
targets = ["claude/claude-3-5-haiku-latest"]
"""


@dataclass
class Stack:
    sim: SimProcess
    claude: SimProcess
    daemon: DaemonProcess
    url: str

    def native(self, app: str = "agent") -> Client:
        return Client(socket=str(self.daemon.socket_path), app=app)

    def openai(self, app: str = "agent") -> openai.OpenAI:
        headers = {"x-quotad-app": app}
        return openai.OpenAI(
            base_url=f"{self.url}/v1", api_key="unused", default_headers=headers, max_retries=0
        )

    def anthropic(self, app: str = "agent") -> anthropic.Anthropic:
        headers = {"x-quotad-app": app}
        return anthropic.Anthropic(
            base_url=self.url, api_key="unused", default_headers=headers, max_retries=0
        )

    def received_by_sim(self) -> tuple[list[str], ...]:
        """The bodies each sim (the OpenAI one, then the Anthropic one) received so far, in
        the order they arrived."""
        bodies = []
        for sim in (self.sim, self.claude):
            assert sim.log_path is not None
            bodies.append([line["body"] for line in read_sim_log(sim.log_path)])
        return tuple(bodies)

    def received(self) -> list[str]:
        """Every body the sims received so far."""
        return [body for bodies in self.received_by_sim() for body in bodies]

    def state_bytes(self) -> dict[str, bytes]:
        """Every file of the state directory (the database, its WAL, …), by name."""
        return {
            path.name: path.read_bytes()
            for path in self.daemon.state_dir.rglob("*")
            if path.is_file()
        }

    def quotad(self, *args: str) -> Any:
        env = {"QUOTAD_SOCKET": str(self.daemon.socket_path)}
        result = subprocess.run(
            [sys.executable, "-m", "quotad.daemon.cli", *args, "--json"],
            capture_output=True,
            text=True,
            env={**self.daemon.env, **env},
            timeout=30,
            check=True,
        )
        return json.loads(result.stdout)


@contextlib.contextmanager
def running_stack() -> Iterator[Stack]:
    port = free_port()
    with (
        SimProcess(log=True, log_bodies=True) as sim,
        SimProcess(log=True, log_bodies=True) as claude,
    ):
        text = daemon_config(
            GUARDRAILS,
            sim_provider_config("sim", sim.base_url),
            sim_provider_config("claude", claude.base_url, kind="anthropic"),
            http=f'listen = "127.0.0.1:{port}"\nauth = "none"',
        )
        with DaemonProcess(text, extra_args=("--log-level", "debug")) as daemon:
            yield Stack(sim, claude, daemon, f"http://127.0.0.1:{port}")


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with running_stack() as running:
        yield running


def user(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


def sent_since(stack: Stack, before: tuple[list[str], ...]) -> list[str]:
    """The bodies the sims received after ``before`` (:meth:`Stack.received_by_sim` then):
    each sim's own new ones, the OpenAI sim's first. Counting over both logs at once would
    take the Anthropic sim's earlier bodies (another test's) for this test's."""
    now = stack.received_by_sim()
    pairs = zip(before, now, strict=True)
    return [body for earlier, bodies in pairs for body in bodies[len(earlier) :]]


# --------------------------------------------------------------------------- native client


def test_native_client_masks_restores_and_blocks(stack: Stack) -> None:
    before = stack.received_by_sim()
    with stack.native() as client:
        reply = client.chat("fast", user(f"mail {EMAIL} or call {PHONE} today"), max_tokens=32)
        assert reply.content is not None
        assert f"mail {EMAIL} or call {PHONE} today" in reply.content
        streamed = "".join(
            chunk.delta
            for chunk in client.chat_stream("fast", user(f"stream to {EMAIL} now"), max_tokens=32)
        )
        assert f"stream to {EMAIL} now" in streamed
        with pytest.raises(BlockedError) as blocked:
            client.chat("fast", user(f"charge card {CARD} please"), max_tokens=32)
        assert blocked.value.details["kinds"] == ["credit_card"]
        assert CARD not in str(blocked.value)
        assert CARD not in json.dumps(blocked.value.details)
        with pytest.raises(BlockedError):
            list(client.chat_stream("fast", user(f"deploy with {TOKEN}"), max_tokens=32))
        embedded = client.embed("sim/sim-embed", [f"index {EMAIL}", "plain"])
        assert len(embedded.embeddings) == 2
    sent = sent_since(stack, before)
    assert len(sent) == 3  # the two blocked requests never reached the sim
    assert "mail [EMAIL_1] or call [PHONE_1] today" in sent[0]
    assert "stream to [EMAIL_1] now" in sent[1]
    assert "index [EMAIL_1]" in sent[2]


def test_native_tool_call_arguments_are_restored(stack: Stack) -> None:
    with stack.native() as client:
        reply = client.chat("fast", user(f"use the tool to mail {EMAIL}"), tools=[SEND_TOOL])
        streamed = list(
            client.chat_stream("fast", user(f"use the tool for {EMAIL} now"), tools=[SEND_TOOL])
        )
    assert reply.tool_calls is not None
    assert json.loads(reply.tool_calls[0]["function"]["arguments"]) == {"to": EMAIL, "n": 1}
    arguments = "".join(
        call["function"].get("arguments") or ""
        for chunk in streamed
        for call in chunk.tool_calls or ()
    )
    assert json.loads(arguments) == {"to": EMAIL, "n": 1}


def test_a_cache_hit_gives_each_caller_its_own_values(stack: Stack) -> None:
    before = stack.received_by_sim()
    with stack.native("first") as first, stack.native("second") as second:
        mine = first.chat("fast", user(f"remember {EMAIL} forever"), max_tokens=32)
        theirs = second.chat("fast", user(f"remember {OTHER_EMAIL} forever"), max_tokens=32)
    assert len(sent_since(stack, before)) == 1
    assert theirs.cached
    assert not mine.cached
    assert mine.content is not None
    assert f"remember {EMAIL} forever" in mine.content
    assert theirs.content is not None
    assert f"remember {OTHER_EMAIL} forever" in theirs.content


def test_per_app_overrides_and_output_rules_apply(stack: Stack) -> None:
    before = stack.received_by_sim()
    with stack.native("notebook") as notebook, stack.native("echoer") as echoer:
        logged = notebook.chat("fast", user(f"note {NOTEBOOK_EMAIL} down"), max_tokens=32)
        echoed = echoer.chat("fast", user(f"echo {samples.SLACK_TOKEN} back"), max_tokens=32)
    sent = sent_since(stack, before)
    assert NOTEBOOK_EMAIL in sent[0]  # the notebook's e-mail rule is log: it leaves as it is
    assert logged.content is not None
    assert NOTEBOOK_EMAIL in logged.content
    assert samples.SLACK_TOKEN in sent[1]  # the echoer's secret rule is log on input…
    assert echoed.content is not None
    assert "echo [SECRET_1] back" in echoed.content  # …and the output rule masks it coming back
    assert samples.SLACK_TOKEN not in echoed.content


# --------------------------------------------------------------------------- the SDKs


def test_openai_sdk_masked_restored_streamed_and_blocked(stack: Stack) -> None:
    before = stack.received_by_sim()
    with stack.openai() as client:
        plain = client.chat.completions.create(
            model="fast", messages=user(f"openai to {EMAIL} asap"), max_tokens=32
        )
        assert plain.choices[0].message.content is not None
        assert f"openai to {EMAIL} asap" in plain.choices[0].message.content
        pieces = client.chat.completions.create(
            model="fast", messages=user(f"openai stream {PHONE} asap"), stream=True, max_tokens=32
        )
        text = "".join(chunk.choices[0].delta.content or "" for chunk in pieces if chunk.choices)
        assert f"openai stream {PHONE} asap" in text
        tool = client.chat.completions.create(
            model="fast",
            messages=user(f"use the tool on {EMAIL}"),
            tools=[SEND_TOOL],  # type: ignore[list-item]
        )
        calls = tool.choices[0].message.tool_calls
        assert calls is not None
        assert json.loads(calls[0].function.arguments)["to"] == EMAIL  # type: ignore[union-attr]
        with pytest.raises(openai.BadRequestError) as blocked:
            client.chat.completions.create(
                model="fast", messages=user(f"openai card {CARD}"), max_tokens=32
            )
        assert blocked.value.status_code == 400
        assert blocked.value.code == "blocked"
        assert "credit_card" in blocked.value.message
        assert CARD not in blocked.value.message
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(
                model="fast", messages=user(f"key {TOKEN}"), stream=True, max_tokens=32
            )
        vectors = client.embeddings.create(model="sim/sim-embed", input=f"embed {EMAIL}")
        assert len(vectors.data) == 1
        with pytest.raises(openai.BadRequestError):
            client.embeddings.create(model="sim/sim-embed", input=[f"card {CARD}"])
    sent = sent_since(stack, before)
    assert len(sent) == 4
    assert "openai to [EMAIL_1] asap" in sent[0]
    assert "openai stream [PHONE_1] asap" in sent[1]
    assert "use the tool on [EMAIL_1]" in sent[2]
    assert "embed [EMAIL_1]" in sent[3]


def test_anthropic_sdk_masked_restored_streamed_and_blocked(stack: Stack) -> None:
    before = stack.received_by_sim()
    with stack.anthropic() as client:
        plain = client.messages.create(
            model="haiku",
            max_tokens=32,
            system=f"the user is {OTHER_EMAIL}",
            messages=[{"role": "user", "content": f"claude to {EMAIL} asap"}],
        )
        text = "".join(block.text for block in plain.content if block.type == "text")
        assert f"claude to {EMAIL} asap" in text
        with client.messages.stream(
            model="haiku",
            max_tokens=32,
            messages=[{"role": "user", "content": f"claude stream {PHONE} asap"}],
        ) as stream:
            streamed = "".join(stream.text_stream)
        assert f"claude stream {PHONE} asap" in streamed
        with pytest.raises(anthropic.BadRequestError) as blocked:
            client.messages.create(
                model="haiku",
                max_tokens=32,
                messages=[{"role": "user", "content": f"claude key {TOKEN}"}],
            )
        assert blocked.value.status_code == 400
        assert "secret" in str(blocked.value)
        assert TOKEN not in str(blocked.value)
    sent = sent_since(stack, before)
    assert len(sent) == 2
    assert "the user is [EMAIL_1]" in sent[0]  # the system prompt comes first
    assert "claude to [EMAIL_2] asap" in sent[0]
    assert "claude stream [PHONE_1] asap" in sent[1]


# --------------------------------------------------------------------------- what is kept


def traffic(stack: Stack) -> None:
    """Every kind of request, with values to mask or block, through every client."""
    with stack.native() as client:
        client.chat("fast", user(f"keep {EMAIL} and {PHONE}"), max_tokens=32)
        client.chat("fast", user(f"keep {OTHER_EMAIL} and {PHONE}"), max_tokens=32)  # a hit
        list(client.chat_stream("fast", user(f"stream {EMAIL} on"), max_tokens=32))
        list(client.chat_stream("fast", user(f"stream {OTHER_EMAIL} on"), max_tokens=32))
        client.chat("fast", user(f"use the tool for {EMAIL}"), tools=[SEND_TOOL])
        client.embed("sim/sim-embed", f"vector {EMAIL}")
        for text in (f"card {CARD}", f"key {TOKEN}", f"card {CARD.replace(' ', '')}"):
            with pytest.raises(BlockedError):
                client.chat("fast", user(text), max_tokens=32)
    with stack.openai() as oai:
        oai.chat.completions.create(model="fast", messages=user(f"sdk {EMAIL} x"), max_tokens=32)
        with pytest.raises(openai.BadRequestError):
            oai.chat.completions.create(model="fast", messages=user(f"sdk {CARD}"), max_tokens=32)
    with stack.anthropic() as claude:
        claude.messages.create(
            model="haiku", max_tokens=32, messages=[{"role": "user", "content": f"c {EMAIL} x"}]
        )
        with pytest.raises(anthropic.BadRequestError):
            claude.messages.create(
                model="haiku", max_tokens=32, messages=[{"role": "user", "content": f"c {TOKEN}"}]
            )


def assert_holds_none(where: str, data: bytes) -> None:
    for value in PROTECTED:
        assert value.encode() not in data, f"{where} holds {value!r}"


def test_nothing_sent_kept_logged_or_shown_holds_a_value() -> None:
    with running_stack() as stack:
        traffic(stack)
        received = stack.received()
        assert len(received) == 6  # 4 native (2 were cache hits), 1 per SDK; none blocked
        for body in received:
            assert_holds_none("what the sims received", body.encode())
        files = stack.state_bytes()
        assert any(name.endswith("-wal") for name in files), sorted(files)
        for name, data in files.items():  # while running: the WAL holds the new rows
            assert_holds_none(name, data)
        status = stack.quotad("status")
        spend = stack.quotad("spend")
        metrics = httpx.get(f"{stack.url}/metrics", trust_env=False).content
        for where, data in [("status", json.dumps(status).encode()), ("metrics", metrics)]:
            assert_holds_none(where, data)
        assert_holds_none("spend", json.dumps(spend).encode())
        [agent] = [app for app in status["apps"] if app["name"] == "agent"]
        assert agent["blocked"] == 5
        assert agent["entities"] == {"credit_card": 3, "email": 8, "phone": 2, "secret": 2}
        [row] = [row for row in spend["rows"] if row["key"] == "agent"]
        assert (row["blocked"], row["entities"]) == (agent["blocked"], agent["entities"])
        assert 'quotad_guardrail_blocked_total{app="agent"} 5' in metrics.decode()
        stack.daemon.stop()
        for name, data in stack.state_bytes().items():  # checkpointed into the database
            assert_holds_none(name, data)
        log = stack.daemon.log()
        assert "request qd-" in log  # the debug line per request was written
        assert_holds_none("the daemon's log", log.encode())


def test_the_ledger_counts_by_kind_survive_a_restart() -> None:
    with running_stack() as stack, stack.native() as client:
        client.chat("fast", user(f"mail {EMAIL} and {OTHER_EMAIL}"), max_tokens=32)
        with pytest.raises(BlockedError):
            client.chat("fast", user(f"card {CARD}"), max_tokens=32)
        stack.daemon.stop()
        stack.daemon.start()
        spend = stack.quotad("spend", "--by", "model")
        [row] = spend["rows"]
        assert (row["key"], row["blocked"], row["entities"]) == (
            "fast",
            1,
            {"credit_card": 1, "email": 2},
        )
