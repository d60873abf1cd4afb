"""What the broker makes of a request's outcome: every outcome is a ledger row committed before
the caller hears of it (a provider that fails with something other than a request error, a
bug, still leaves its row and gives its budget hold back; a streamed cache hit commits its row
before its first chunk, and its many chunks give the other tasks turns), and a live stream's
``ChatEnd`` carries its whole tool calls."""

from __future__ import annotations

import tracemalloc
from typing import Any

import pytest

from quotad.daemon.broker import Broker
from quotad.daemon.caller import Caller
from quotad.daemon.config import Config
from quotad.daemon.providers.base import (
    ChatDelta,
    ChatResult,
    ChatStream,
)
from quotad.daemon.routing import Router
from quotad.daemon.store import Store
from quotad.daemon.streamed_answer import merge_tool_calls
from quotad.protocol.messages import Chat, ChatChunk, ChatEnd, ChatMessage, Usage
from tests.support.event_loop import turns_during
from tests.support.faults import break_first_call
from tests.support.providers import InProcessProvider, PiecesStream, one_provider_config
from tests.support.store import open_store

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ["asyncio"])]


THREE_PIECES = [ChatDelta(delta=piece) for piece in ("a", "b", "c")]


class Provider(InProcessProvider):
    """Answers chats and streams; ``broken`` makes its chats fail with a bug."""

    def __init__(self, pieces: list[ChatDelta] = THREE_PIECES) -> None:
        self.broken = False
        self.pieces = pieces

    async def chat(self, model: str, request: Chat, max_tokens: int) -> ChatResult:
        if self.broken:
            raise KeyError("a bug in the provider code")
        return ChatResult(content="x", usage=Usage(prompt_tokens=5, completion_tokens=3))

    async def open_stream(self, model: str, request: Chat, max_tokens: int) -> ChatStream:
        return PiecesStream(self.pieces, usage=Usage(prompt_tokens=5, completion_tokens=3))


def config() -> Config:
    return one_provider_config(budgets={"daily_usd": 10.0})


def chat(content: str, *, stream: bool = False) -> Chat:
    messages = [ChatMessage(role="user", content=content)]
    return Chat(id=1, model="g", stream=stream, messages=messages)


async def ledger_rows(store: Store) -> list[tuple[Any, ...]]:
    return await store.db.read("SELECT status, cached FROM ledger ORDER BY id")


async def broker_with_a_stream_cached(store: Store, pieces: list[ChatDelta]) -> Broker:
    """A broker over ``store`` whose provider streams ``pieces``, once the stream of
    ``chat("hi", stream=True)`` is cached (a miss: its answer is stored)."""
    broker = Broker(config(), Router(config(), {"p": Provider(pieces)}), store)
    async for _ in broker.chat_stream(chat("hi", stream=True), Caller(app="a")):
        pass
    return broker


async def test_a_failure_that_is_not_a_request_error_is_a_row_and_frees_its_hold(
    anyio_backend: str,
) -> None:
    provider = Provider()
    async with open_store(config()) as store:
        broker = Broker(config(), Router(config(), {"p": provider}), store)
        provider.broken = True
        with pytest.raises(KeyError, match="a bug in the provider code"):
            await broker.chat(chat("hi"), Caller(app="a"))
        assert await ledger_rows(store) == [("internal", 0)]
        [daily] = store.budgets.global_budgets
        assert (daily.held, daily.reserved_usd) == (0, 0.0)
        assert broker.tail.in_flight == 0


async def test_a_bug_in_step_7_before_the_commit_still_leaves_a_row(
    anyio_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_store(config()) as store:
        broker = Broker(config(), Router(config(), {"p": Provider()}), store)
        break_first_call(monkeypatch, broker.budgets, "settle", KeyError("a bug in settling"))
        with pytest.raises(KeyError, match="a bug in settling"):
            await broker.chat(chat("hi"), Caller(app="a"))
        assert await ledger_rows(store) == [("internal", 0)]
        [daily] = store.budgets.global_budgets
        assert (daily.held, daily.reserved_usd) == (0, 0.0)


async def test_a_streamed_hit_commits_its_row_before_its_first_chunk(anyio_backend: str) -> None:
    async with open_store(config()) as store:
        broker = Broker(config(), Router(config(), {"p": Provider()}), store)
        caller = Caller(app="a")
        async for _ in broker.chat_stream(chat("hi", stream=True), caller):
            pass  # a miss: its answer is cached
        replies = broker.chat_stream(chat("hi", stream=True), caller)
        first = await anext(replies)
        assert isinstance(first, ChatChunk)
        assert await ledger_rows(store) == [("ok", 0), ("ok", 1)]  # the hit's row is in
        rest = [type(reply).__name__ async for reply in replies]
        assert rest[-1] == "ChatEnd"
        assert set(rest[:-1]) <= {"ChatChunk"}


async def test_a_streamed_hit_of_many_chunks_gives_the_other_tasks_turns(
    anyio_backend: str,
) -> None:
    """A hit's chunks were all sent on with no other task running: a cached answer of 9,000
    chunks held the event loop ~0.9 s while its caller read it fast (the socket never full)."""
    pieces = [ChatDelta(delta=f"piece {n} ") for n in range(5_000)]
    async with open_store(config()) as store:
        broker = await broker_with_a_stream_cached(store, pieces)
        replies: list[ChatChunk | ChatEnd] = []

        async def read_the_hit() -> None:
            async for reply in broker.chat_stream(chat("hi", stream=True), Caller(app="a")):
                replies.append(reply)

        assert await turns_during(read_the_hit) >= 50
        assert isinstance(replies[-1], ChatEnd)
        assert replies[-1].cached
        got = "".join(reply.delta for reply in replies[:-1])  # type: ignore[union-attr]
        assert got == "".join(piece.delta for piece in pieces)


async def test_a_streamed_hit_makes_its_chunks_as_it_sends_them(anyio_backend: str) -> None:
    """A hit's chunks were all made before the first was sent, and held until the last was:
    13 MB streamed a few characters a chunk (2.9M chunks) held the event loop 1.4 s and took
    ~500 MB. They are cut from the stored answer a batch at a time, as they are sent."""
    pieces = [ChatDelta(delta=f"{n % 100} ") for n in range(50_000)]
    async with open_store(config()) as store:
        broker = await broker_with_a_stream_cached(store, pieces)
        expected = iter(pieces)
        tracemalloc.start()
        try:
            async for reply in broker.chat_stream(chat("hi", stream=True), Caller(app="a")):
                if isinstance(reply, ChatChunk):  # the very chunks stored, one by one
                    assert reply.delta == next(expected).delta
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert next(expected, None) is None
        # the answer read takes ~16 bytes a chunk (its text, a length); a chunk made, ~200
        assert peak < 40 * len(pieces)  # before: 10 MB, now 0.8 MB


async def test_a_stream_s_tool_call_fragments_merge_into_whole_calls(anyio_backend: str) -> None:
    fragments: list[dict[str, Any]] = [
        {
            "index": 0,
            "id": "call_1",
            "type": "function",
            "function": {"name": "f", "arguments": ""},
        },
        {
            "index": 1,
            "id": "call_2",
            "type": "function",
            "function": {"name": "g", "arguments": "{}"},
        },
        {"index": 0, "function": {"arguments": '{"a": '}},
        {"index": 0, "function": {"arguments": "1}"}},
    ]
    assert merge_tool_calls(fragments) == [
        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}},
        {"id": "call_2", "type": "function", "function": {"name": "g", "arguments": "{}"}},
    ]
    assert merge_tool_calls([]) is None


TOOL_CALL_PIECES = [
    ChatDelta(tool_calls=[{"index": 0, "id": "c", "type": "function", "function": {"name": "f"}}]),
    *(
        ChatDelta(tool_calls=[{"index": 0, "function": {"arguments": piece}}])
        for piece in ('{"x"', ": 2}")
    ),
]


class ToolCallingProvider(Provider):
    """Streams a tool call, in fragments as OpenAI sends them."""

    async def open_stream(self, model: str, request: Chat, max_tokens: int) -> ChatStream:
        return PiecesStream(TOOL_CALL_PIECES, finish_reason="tool_calls")


async def test_a_live_stream_s_end_carries_its_whole_tool_calls(anyio_backend: str) -> None:
    async with open_store(config()) as store:
        broker = Broker(config(), Router(config(), {"p": ToolCallingProvider()}), store)
        replies = [
            reply async for reply in broker.chat_stream(chat("hi", stream=True), Caller(app="a"))
        ]
        end = replies[-1]
        assert isinstance(end, ChatEnd)
        assert end.tool_calls == [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": '{"x": 2}'}}
        ]
