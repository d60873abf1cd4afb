"""The guardrails in the request pipeline, in process with a real store and a scripted
provider that records what it received: step 0 runs before the cache key, the budget and the
ledger; blocked requests never reach the provider and hold no budget but get their row; the
reply is screened for the cache and restored for the caller (whole, streamed, from the cache,
tool calls, broken streams); embeddings are checked; per-app overrides apply; big requests
are checked off the event loop; nothing the daemon keeps or shows holds a caller's value."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import msgspec
import pytest

from quotad.daemon.broker import Broker
from quotad.daemon.caller import Caller
from quotad.daemon.config import Config
from quotad.daemon.errors import RequestError
from quotad.daemon.guardrails import Blocked
from quotad.daemon.providers.base import (
    ALL_REPORTED,
    NOTHING_REPORTED,
    ChatDelta,
    ChatResult,
    ChatStream,
    EmbedResult,
    ProviderError,
)
from quotad.daemon.rate_limit_info import NO_RATE_LIMITS
from quotad.daemon.routing import Router
from quotad.daemon.store import Store
from quotad.protocol.messages import (
    Admin,
    Chat,
    ChatChunk,
    ChatEnd,
    ChatMessage,
    Embed,
    Spend,
    Usage,
)
from tests.support import guardrails as samples
from tests.support.providers import InProcessProvider, one_provider_config
from tests.support.store import open_store

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ["asyncio"])]

EMAIL = "jane.doe@example.com"
OTHER_EMAIL = "bob.smith@example.org"
CARD = "4111 1111 1111 1111"
KEY = samples.OPENAI_KEY


class PieceStream:
    """A provider stream of given pieces (text or tool-call fragments), that may break."""

    rate_limits = NO_RATE_LIMITS
    finish_reason: str | None = "stop"

    def __init__(self, pieces: Sequence[str | dict[str, Any]], break_after: int | None) -> None:
        self.pieces = pieces
        self.break_after = break_after
        self.usage = Usage()
        self.usage_reported = NOTHING_REPORTED  # until its end
        self._deltas = self._generate()

    def deltas(self) -> AsyncIterator[ChatDelta]:
        return self._deltas  # one iteration, as a provider's: the first piece is taken apart

    async def _generate(self) -> AsyncIterator[ChatDelta]:
        for index, piece in enumerate(self.pieces):
            if index == self.break_after:
                raise ProviderError("stream_broken", "the connection dropped")
            finish = "stop" if index == len(self.pieces) - 1 else None  # as providers do
            if isinstance(piece, dict):
                yield ChatDelta(tool_calls=[piece], finish_reason=finish)
            else:
                yield ChatDelta(delta=piece, finish_reason=finish)
        self.usage = Usage(prompt_tokens=5, completion_tokens=len(self.pieces))
        self.usage_reported = ALL_REPORTED

    async def aclose(self) -> None:
        pass


class Scripted(InProcessProvider):
    """A provider that records every request and answers with ``answer`` (default: an echo
    of the last user message) or, streamed, ``pieces`` (default: the answer word by word)."""

    def __init__(self) -> None:
        self.received: list[Chat] = []
        self.embedded: list[list[str]] = []
        self.answer: str | None = None
        self.tool_calls: list[dict[str, Any]] | None = None
        self.pieces: list[str | dict[str, Any]] | None = None
        self.break_after: int | None = None

    def reply_to(self, request: Chat) -> str:
        if self.answer is not None:
            return self.answer
        content = request.messages[-1].content
        return f"echo: {content}" if isinstance(content, str) else "echo"

    async def chat(self, model: str, request: Chat, max_tokens: int) -> ChatResult:
        self.received.append(request)
        return ChatResult(
            content=self.reply_to(request),
            tool_calls=self.tool_calls,
            finish_reason="stop",
            usage=Usage(prompt_tokens=5, completion_tokens=3),
        )

    async def open_stream(self, model: str, request: Chat, max_tokens: int) -> ChatStream:
        self.received.append(request)
        pieces: list[str | dict[str, Any]] | None = self.pieces
        if pieces is None:
            words = self.reply_to(request).split(" ")
            pieces = [*(word + " " for word in words[:-1]), *words[-1:]]
        return PieceStream(pieces, self.break_after)

    async def embed(
        self, model: str, inputs: list[str], dimensions: int | None, extra: dict[str, Any]
    ) -> EmbedResult:
        self.embedded.append(inputs)
        return EmbedResult(embeddings=[[1.0, 0.0] for _ in inputs], usage=Usage(prompt_tokens=2))


def config(**guardrails: Any) -> Config:
    return one_provider_config(
        prices={"p/gpt-4o": {"input": 1.0, "output": 2.0}},
        budgets={"daily_usd": 10.0},
        guardrails=guardrails
        or {
            "input": {"email": "mask", "credit_card": "block", "secret": "mask"},
            "output": {"secret": "mask"},
        },
        apps={
            "notebook": {"guardrails": {"input": {"email": "log"}}},
            "quiet": {"guardrails": {"input": {"email": "off", "credit_card": "off"}}},
            "strict": {"guardrails": {"output": {"secret": "block"}}},
            "raw": {"guardrails": {"restore": False}},
        },
    )


def chat(content: str, *, stream: bool = False, **fields: Any) -> Chat:
    return Chat(
        id=7,
        model="g",
        stream=stream,
        messages=[ChatMessage(role="user", content=content)],
        **fields,
    )


async def collect(broker: Broker, request: Chat, app: str = "a") -> tuple[list[ChatChunk], ChatEnd]:
    chunks: list[ChatChunk] = []
    async for item in broker.chat_stream(request, Caller(app=app)):
        if isinstance(item, ChatEnd):
            return chunks, item
        chunks.append(item)
    raise AssertionError("the stream had no end")


async def rows(store: Store) -> list[tuple[Any, ...]]:
    return await store.db.read("SELECT app, status, entities, cost_usd, cached FROM ledger")


async def cached_payloads(store: Store) -> bytes:
    found = await store.db.read("SELECT payload FROM cache")
    return b"".join(bytes(payload) for (payload,) in found)


class Harness:
    def __init__(self, store: Store, provider: Scripted, broker: Broker) -> None:
        self.store, self.provider, self.broker = store, provider, broker


@asynccontextmanager
async def harnessed(conf: Config | None = None) -> AsyncIterator[Harness]:
    """A broker with ``conf`` (the default guardrails unless given) over a scripted provider
    and a fresh store."""
    conf = conf or config()
    async with open_store(config()) as store:
        provider = Scripted()
        yield Harness(store, provider, Broker(conf, Router(conf, {"p": provider}), store))


# --------------------------------------------------------------------------- step 0


async def test_the_provider_gets_the_masked_request_and_the_caller_its_values(
    anyio_backend: str,
) -> None:
    async with harnessed() as h:
        reply = await h.broker.chat(chat(f"write to {EMAIL} with {KEY}"), Caller(app="a"))
        [sent] = h.provider.received
        assert sent.messages[0].content == "write to [EMAIL_1] with [SECRET_1]"
        assert reply.content == f"echo: write to {EMAIL} with {KEY}"
        assert await rows(h.store) == [
            ("a", "ok", '{"email":1,"secret":1}', pytest.approx(1.1e-5), 0)
        ]
        payloads = await cached_payloads(h.store)
        assert b"[EMAIL_1]" in payloads
        assert EMAIL.encode() not in payloads
        assert KEY.encode() not in payloads


async def test_a_blocked_request_reaches_no_provider_holds_no_budget_and_has_its_row(
    anyio_backend: str,
) -> None:
    async with harnessed() as h:
        reserve = h.broker.budgets.reserve
        reserved: list[float] = []

        def recording(app: str, max_cost_usd: float, now: float) -> Any:
            reserved.append(max_cost_usd)
            return reserve(app, max_cost_usd, now)

        h.broker.budgets.reserve = recording  # type: ignore[method-assign]
        with pytest.raises(Blocked) as raised:
            await h.broker.chat(chat(f"pay with {CARD}, mail {EMAIL}"), Caller(app="a"))
        error = raised.value
        assert error.code == "blocked"
        assert error.details["kinds"] == ["credit_card"]
        assert CARD not in error.message
        assert EMAIL not in error.message
        assert CARD not in json.dumps(error.details)
        assert h.provider.received == []
        assert reserved == []
        assert await rows(h.store) == [("a", "blocked", '{"credit_card":1,"email":1}', 0.0, 0)]
        assert await h.store.db.read("SELECT kind, count FROM guardrails_daily ORDER BY kind") == [
            ("blocked", 1),
            ("credit_card", 1),
            ("email", 1),
        ]
        status = h.broker.reports.status()
        [app] = [app for app in status.apps if app.name == "a"]
        assert (app.blocked, app.entities) == (1, {"credit_card": 1, "email": 1})


async def test_a_blocked_stream_reaches_no_provider(anyio_backend: str) -> None:
    async with harnessed() as h:
        with pytest.raises(Blocked):
            await collect(h.broker, chat(f"card {CARD}", stream=True))
        assert h.provider.received == []
        assert await rows(h.store) == [("a", "blocked", '{"credit_card":1}', 0.0, 0)]


async def test_the_cache_key_is_the_masked_request_and_a_hit_restores_its_own_values(
    anyio_backend: str,
) -> None:
    async with harnessed() as h:
        first = await h.broker.chat(chat(f"mail {EMAIL}"), Caller(app="a"))
        second = await h.broker.chat(chat(f"mail {OTHER_EMAIL}"), Caller(app="b"))
        assert len(h.provider.received) == 1  # one entry: "mail [EMAIL_1]"
        assert first.content == f"echo: mail {EMAIL}"
        assert (second.cached, second.content) == (True, f"echo: mail {OTHER_EMAIL}")
        assert [row[1:] for row in await rows(h.store)] == [
            ("ok", '{"email":1}', pytest.approx(1.1e-5), 0),
            ("ok", '{"email":1}', 0.0, 1),
        ]


async def test_per_app_overrides_apply(anyio_backend: str) -> None:
    async with harnessed() as h:
        await h.broker.chat(chat(f"mail {EMAIL}"), Caller(app="notebook"))  # email: log
        await h.broker.chat(chat(f"card {CARD} mail {EMAIL}"), Caller(app="quiet"))  # both off
        raw = await h.broker.chat(chat(f"again {EMAIL}"), Caller(app="raw"))  # restore off
        notebook, quiet, raw_sent = (sent.messages[0].content for sent in h.provider.received)
        assert notebook == f"mail {EMAIL}"
        assert quiet == f"card {CARD} mail {EMAIL}"
        assert raw_sent == "again [EMAIL_1]"
        assert raw.content == "echo: again [EMAIL_1]"
        assert [(row[0], row[2]) for row in await rows(h.store)] == [
            ("notebook", '{"email":1}'),
            ("quiet", ""),
            ("raw", '{"email":1}'),
        ]


async def test_a_reload_applies_new_guardrails(anyio_backend: str) -> None:
    async with harnessed() as h:
        stricter = config(input={"email": "block"})
        h.broker.reconfigure(stricter, Router(stricter, {"p": h.provider}))
        with pytest.raises(Blocked):
            await h.broker.chat(chat(f"mail {EMAIL}"), Caller(app="a"))


# --------------------------------------------------------------------------- replies


async def test_output_rules_apply_to_the_reply_and_the_cache_keeps_the_screened_one(
    anyio_backend: str,
) -> None:
    async with harnessed() as h:
        h.provider.answer = f"Sent to [EMAIL_1]; use {samples.GITHUB_TOKEN}"
        reply = await h.broker.chat(chat(f"mail {EMAIL}"), Caller(app="a"))
        assert reply.content == f"Sent to {EMAIL}; use [SECRET_1]"
        payloads = await cached_payloads(h.store)
        assert b"Sent to [EMAIL_1]; use [SECRET_1]" in payloads
        assert samples.GITHUB_TOKEN.encode() not in payloads
        assert EMAIL.encode() not in payloads
        assert (await rows(h.store))[0][2] == '{"email":1,"secret":1}'


async def test_an_output_block_refuses_the_reply_but_bills_it(anyio_backend: str) -> None:
    async with harnessed() as h:
        h.provider.answer = f"here: {samples.GITHUB_TOKEN}"
        with pytest.raises(Blocked) as raised:
            await h.broker.chat(chat("a key please"), Caller(app="strict"))
        assert raised.value.details["direction"] == "output"
        assert samples.GITHUB_TOKEN not in str(raised.value.details)
        [(app, status, entities, cost, _)] = await rows(h.store)
        assert (app, status, entities) == ("strict", "blocked", '{"secret":1}')
        assert cost > 0  # the provider answered: its cost counts against the budgets
        assert await cached_payloads(h.store) == b""


async def test_a_cache_hit_is_screened_by_the_hitting_apps_output_rules(
    anyio_backend: str,
) -> None:
    async with harnessed(config(input={"email": "mask"})) as h:
        h.provider.answer = f"here: {samples.GITHUB_TOKEN}"
        reply = await h.broker.chat(chat("a key please"), Caller(app="a"))  # no output rules
        assert reply.content == f"here: {samples.GITHUB_TOKEN}"
        with pytest.raises(Blocked):  # strict blocks secrets in replies, from the cache too
            await h.broker.chat(chat("a key please"), Caller(app="strict"))
        assert len(h.provider.received) == 1


async def test_tool_call_arguments_are_restored(anyio_backend: str) -> None:
    async with harnessed() as h:
        arguments = json.dumps({"to": "[EMAIL_1]", "note": 'say "hi"'})
        h.provider.tool_calls = [
            {"id": "c1", "type": "function", "function": {"name": "send", "arguments": arguments}}
        ]
        reply = await h.broker.chat(chat(f'mail "{EMAIL}"'), Caller(app="a"))
        assert reply.tool_calls is not None
        restored = json.loads(reply.tool_calls[0]["function"]["arguments"])
        assert restored == {"to": EMAIL, "note": 'say "hi"'}
        assert EMAIL.encode() not in await cached_payloads(h.store)


# --------------------------------------------------------------------------- streams


async def test_a_stream_restores_a_placeholder_split_across_chunks(anyio_backend: str) -> None:
    async with harnessed() as h:
        h.provider.pieces = ["Mail to [EM", "AIL", "_1", "] sent", " now."]
        chunks, end = await collect(h.broker, chat(f"mail {EMAIL}", stream=True))
        shown = "".join(chunk.delta for chunk in chunks)
        assert shown == end.content == f"Mail to {EMAIL} sent now."
        assert all("[EM" not in chunk.delta for chunk in chunks)
        assert chunks[0].request_id
        assert chunks[0].target == "p/gpt-4o"
        payloads = await cached_payloads(h.store)
        assert b"[EMAIL_1]" in payloads
        assert EMAIL.encode() not in payloads
        again, again_end = await collect(h.broker, chat(f"mail {OTHER_EMAIL}", stream=True))
        assert again_end.cached
        assert again[0].cached
        assert (
            "".join(c.delta for c in again)
            == again_end.content
            == (f"Mail to {OTHER_EMAIL} sent now.")
        )
        assert len(h.provider.received) == 1


async def test_a_streamed_secret_is_masked_whole_and_the_text_comes_before_the_finish(
    anyio_backend: str,
) -> None:
    token = samples.GITHUB_TOKEN
    async with harnessed() as h:
        h.provider.pieces = ["use ", token[:10], token[10:25], token[25:]]
        chunks, end = await collect(h.broker, chat("a token", stream=True))
        assert "".join(chunk.delta for chunk in chunks) == end.content == "use [SECRET_1]"
        assert [chunk.finish_reason for chunk in chunks] == [None] * (len(chunks) - 1) + ["stop"]
        assert chunks[-1].delta == "[SECRET_1]"  # what was held comes with the finish
        assert token not in repr(chunks)
        assert token.encode() not in await cached_payloads(h.store)


async def test_a_streamed_output_block_ends_the_stream_billed(anyio_backend: str) -> None:
    async with harnessed() as h:
        h.provider.pieces = ["use ", samples.GITHUB_TOKEN, " now", " please"]
        with pytest.raises(Blocked):
            await collect(h.broker, chat("a token", stream=True), app="strict")
        [(_, status, entities, cost, _)] = await rows(h.store)
        assert (status, entities) == ("blocked", '{"secret":1}')
        assert cost > 0
        assert await cached_payloads(h.store) == b""


async def test_streamed_tool_call_arguments_are_restored(anyio_backend: str) -> None:
    async with harnessed() as h:
        h.provider.pieces = [
            {"index": 0, "id": "c1", "type": "function", "function": {"name": "send"}},
            {"index": 0, "function": {"arguments": '{"to": "[EMA'}},
            {"index": 0, "function": {"arguments": 'IL_1]"}'}},
        ]
        chunks, end = await collect(h.broker, chat(f"mail {EMAIL}", stream=True))
        arguments = "".join(
            fragment["function"].get("arguments", "")
            for chunk in chunks
            for fragment in chunk.tool_calls or ()
        )
        assert json.loads(arguments) == {"to": EMAIL}
        assert end.tool_calls is not None
        assert json.loads(end.tool_calls[0]["function"]["arguments"]) == {"to": EMAIL}
        assert end.tool_calls[0]["function"]["name"] == "send"


async def test_a_broken_streams_partial_content_is_screened_and_restored(
    anyio_backend: str,
) -> None:
    async with harnessed() as h:
        h.provider.pieces = ["to [EMAIL_1] ", f"key {samples.GITHUB_TOKEN}", " more", "x"]
        h.provider.break_after = 3
        with pytest.raises(RequestError) as raised:
            await collect(h.broker, chat(f"mail {EMAIL}", stream=True))
        assert raised.value.code == "upstream_error"
        partial = raised.value.details["partial_content"]
        assert partial == f"to {EMAIL} key [SECRET_1] more"
        assert samples.GITHUB_TOKEN not in raised.value.message


# --------------------------------------------------------------------------- embeddings


async def test_embedding_inputs_are_masked_or_blocked(anyio_backend: str) -> None:
    async with harnessed() as h:
        request = Embed(id=1, model="g", input=[f"mail {EMAIL}", "plain"])
        reply = await h.broker.embed(request, Caller(app="a"))
        assert h.provider.embedded == [["mail [EMAIL_1]", "plain"]]
        assert len(reply.embeddings) == 2
        with pytest.raises(Blocked):
            await h.broker.embed(Embed(id=2, model="g", input=f"card {CARD}"), Caller(app="a"))
        assert len(h.provider.embedded) == 1
        assert [row[1:3] for row in await rows(h.store)] == [
            ("ok", '{"email":1}'),
            ("blocked", '{"credit_card":1}'),
        ]


# --------------------------------------------------------------------------- what is kept


async def test_big_requests_are_checked_in_a_worker_thread(anyio_backend: str) -> None:
    async with harnessed() as h:
        h.broker.guardrails.off_loop_chars = 1000
        guard = h.broker.guardrails.for_app("a")
        threads: list[threading.Thread] = []
        check = guard.check_chat

        def recording(request: Chat) -> Any:
            threads.append(threading.current_thread())
            return check(request)

        guard.check_chat = recording  # type: ignore[method-assign,assignment]
        small = await h.broker.chat(chat(f"mail {EMAIL}"), Caller(app="a"))
        big = await h.broker.chat(chat(f"mail {EMAIL} " + "word " * 300), Caller(app="a"))
        assert threads[0] is threading.main_thread()
        assert threads[1] is not threading.main_thread()
        assert small.content is not None
        assert EMAIL in small.content
        assert big.content is not None
        assert EMAIL in big.content
        assert "[EMAIL_1]" in str(h.provider.received[1].messages[0].content)


async def test_logs_status_and_the_live_tail_never_hold_a_value(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="quotad")
    async with harnessed() as h:
        await h.broker.chat(chat(f"mail {EMAIL}", user="u1"), Caller(app="a"))
        with pytest.raises(Blocked):
            await h.broker.chat(chat(f"card {CARD}"), Caller(app="a"))
        await collect(h.broker, chat(f"stream {EMAIL}", stream=True))
        await h.broker.embed(Embed(id=1, model="g", input=EMAIL), Caller(app="a"))
        await anyio.sleep(0.01)  # step 7's counting runs just after each reply
        spend = await h.broker.reports.spend(Spend(id=1, period="day", by="app"))
        recent, _ = h.broker.tail.recent_since(0)
        shown = msgspec.json.encode([h.broker.reports.status(), recent, spend])
        for value in (EMAIL, CARD, "4111111111111111"):
            assert value not in caplog.text
            assert value.encode() not in shown
        assert "request qd-" in caplog.text  # the debug line per request was written


# --------------------------------------------------------------------------- cache warm


async def test_warmed_entries_are_stored_as_a_live_request_would_leave_them(
    anyio_backend: str,
) -> None:
    async with harnessed() as h:
        function = {"name": "f", "arguments": json.dumps({"to": EMAIL})}
        call = {"id": "c", "type": "function", "function": function}
        hello = [{"role": "user", "content": f"hi {EMAIL}"}]
        entries = [
            {
                "request": {"model": "g", "messages": hello},
                "response": {
                    "content": f"Hello {EMAIL}, here: {samples.GITHUB_TOKEN}",
                    "tool_calls": [call],
                },
            },
            {
                "request": {"model": "g", "messages": [{"role": "user", "content": f"pay {CARD}"}]},
                "response": {"content": "paid"},
            },
            {
                "request": {"model": "g", "messages": hello, "stream": True},
                "response": {
                    "content": f"Hello {EMAIL}, here: {samples.GITHUB_TOKEN}",
                    "chunks": [f"Hello {EMAIL}, ", f"here: {samples.GITHUB_TOKEN}"],
                },
            },
        ]
        done = await h.broker.admin.run(
            Admin(id=1, action="cache_warm", args={"entries": entries}), Caller(app="ops")
        )
        assert done.data["stored"] == 2
        [problem] = done.data["problems"]
        assert problem.startswith("entries[1]: ")
        assert "credit_card" in problem
        assert CARD not in problem
        payloads = await cached_payloads(h.store)
        assert EMAIL.encode() not in payloads
        assert samples.GITHUB_TOKEN.encode() not in payloads
        reply = await h.broker.chat(chat(f"hi {OTHER_EMAIL}"), Caller(app="a"))
        assert reply.cached
        assert reply.content == f"Hello {OTHER_EMAIL}, here: [SECRET_1]"
        assert reply.tool_calls is not None
        assert json.loads(reply.tool_calls[0]["function"]["arguments"]) == {"to": OTHER_EMAIL}
        chunks, end = await collect(h.broker, chat(f"hi {OTHER_EMAIL}", stream=True))
        assert end.cached
        assert "".join(chunk.delta for chunk in chunks) == end.content
        assert end.content == f"Hello {OTHER_EMAIL}, here: [SECRET_1]"
        assert h.provider.received == []
