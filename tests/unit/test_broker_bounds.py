"""What the broker reserves on budgets and settles (in process, a real store): the upper bound
of a request's cost is held while it runs (Japanese prompts at their bytes, extra's larger
completion limit), the provider is asked for exactly the limit reserved, refused extra is a
``bad_request`` row holding nothing, a stream that broke before its usage came settles at
least at the bound of what it delivered, and a cached prompt settles below what was held."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from quotad.daemon.broker import Broker
from quotad.daemon.caller import Caller
from quotad.daemon.config import Config, parse_config
from quotad.daemon.errors import RequestError
from quotad.daemon.providers.base import (
    ChatDelta,
    ChatResult,
    ChatStream,
    EmbedResult,
    ProviderError,
)
from quotad.daemon.request_limits import MAX_CHAT_ITEMS, MAX_EMBED_INPUTS
from quotad.daemon.routing import Router
from quotad.daemon.store import Store
from quotad.daemon.store.prices import PER_TOKEN
from quotad.protocol.framing import MAX_FREE_FORM_ITEMS
from quotad.protocol.messages import Chat, ChatMessage, Embed, Usage
from tests.support.providers import (
    UNREACHABLE,
    InProcessProvider,
    PiecesStream,
    one_provider_config,
)
from tests.support.store import open_store

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ["asyncio"])]

JAPANESE = "東京の天気について詳しく教えてください" * 20
INPUT_PRICE = 2.5  # gpt-4o, USD per 1M tokens
OUTPUT_PRICE = 10.0


def broken_stream() -> PiecesStream:
    """A stream that delivers Japanese text, then breaks before reporting its usage."""
    pieces = [
        ChatDelta(delta=JAPANESE[:100]),
        ChatDelta(tool_calls=[{"index": 0, "function": {"arguments": "x" * 40}}]),
    ]
    breaks = ProviderError("stream_broken", "the stream broke")
    return PiecesStream(pieces, finish_reason=None, breaks=breaks)


class Provider(InProcessProvider):
    """Answers what it is told to (``usage``), remembering what it was asked and what the
    budgets held while it answered."""

    def __init__(self, store: Store, usage: Usage | None = None) -> None:
        self.store = store
        self.usage = usage or Usage(prompt_tokens=10, completion_tokens=5)
        self.asked_max_tokens: list[int] = []
        self.held_usd: list[float] = []

    def _asked(self, max_tokens: int) -> None:
        self.asked_max_tokens.append(max_tokens)
        self.held_usd.append(self.store.budgets.global_budgets[0].reserved_usd)

    async def chat(self, model: str, request: Chat, max_tokens: int) -> ChatResult:
        self._asked(max_tokens)
        return ChatResult(content="x", usage=self.usage)

    async def open_stream(self, model: str, request: Chat, max_tokens: int) -> ChatStream:
        self._asked(max_tokens)
        return broken_stream()

    async def embed(
        self, model: str, inputs: list[str], dimensions: int | None, extra: dict[str, Any]
    ) -> EmbedResult:
        self._asked(0)
        return EmbedResult(embeddings=[[1.0]] * len(inputs), usage=self.usage)


def config() -> Config:
    return one_provider_config(budgets={"daily_usd": 100.0}, gates={"default_max_tokens": 256})


def chat(content: str | list[dict[str, Any]], **fields: Any) -> Chat:
    return Chat(id=1, model="g", messages=[ChatMessage(role="user", content=content)], **fields)


@asynccontextmanager
async def bounded_broker(
    usage: Usage | None = None,
) -> AsyncIterator[tuple[Store, Provider, Broker]]:
    """A broker over one recording provider (answering with ``usage``, if given) and a
    fresh store with a daily budget."""
    async with open_store(config()) as store:
        provider = Provider(store, usage)
        yield store, provider, Broker(config(), Router(config(), {"p": provider}), store)


async def rows(store: Store) -> list[tuple[Any, ...]]:
    return await store.db.read(
        "SELECT status, prompt_tokens, completion_tokens, cost_usd FROM ledger ORDER BY id"
    )


async def test_a_japanese_prompt_holds_its_bytes_and_settles_to_the_truth(
    anyio_backend: str,
) -> None:
    async with bounded_broker() as (store, provider, broker):
        await broker.chat(chat(JAPANESE, max_tokens=100), Caller(app="a"))
        prompt_bytes = len(JAPANESE.encode())
        assert provider.held_usd[0] >= (prompt_bytes * INPUT_PRICE + 100 * OUTPUT_PRICE) * PER_TOKEN
        assert provider.asked_max_tokens == [100]
        [daily] = store.budgets.global_budgets
        assert daily.reserved_usd == 0.0
        assert daily.spent_usd == pytest.approx((10 * INPUT_PRICE + 5 * OUTPUT_PRICE) * PER_TOKEN)


async def test_a_larger_limit_in_extra_is_reserved_and_is_what_the_provider_is_asked(
    anyio_backend: str,
) -> None:
    async with bounded_broker() as (_, provider, broker):
        request = chat("hi", max_tokens=1, extra={"max_completion_tokens": 2000})
        await broker.chat(request, Caller(app="a"))
        assert provider.asked_max_tokens == [2000]
        assert provider.held_usd[0] >= 2000 * OUTPUT_PRICE * PER_TOKEN


async def test_refused_extra_is_a_bad_request_row_that_holds_nothing(anyio_backend: str) -> None:
    async with bounded_broker() as (store, provider, broker):
        for extra in ({"n": 3}, {"model": "gpt-5-pro"}, {"max_tokens": "lots"}):
            with pytest.raises(RequestError) as refused:
                await broker.chat(chat("hi", extra=extra), Caller(app="a"))
            assert refused.value.code == "bad_request"
        with pytest.raises(RequestError, match=r"extra\.input"):
            await broker.embed(Embed(id=2, model="g", input="x", extra={"input": []}), Caller("a"))
        assert provider.asked_max_tokens == []
        assert [row[0] for row in await rows(store)] == ["bad_request"] * 4
        [daily] = store.budgets.global_budgets
        assert (daily.held, daily.reserved_usd, daily.spent_usd) == (0, 0.0, 0.0)


@pytest.mark.parametrize("kind", [{}, [], 1, True], ids=["object", "array", "number", "bool"])
async def test_a_part_or_tool_whose_type_is_not_a_string_is_a_bad_request_naming_it(
    anyio_backend: str, kind: Any
) -> None:
    """A part's or a tool's type decides how it is counted: an object or an array there made
    the estimate's (a tool: the budget bound's) set lookup raise TypeError (an ``internal``
    error, a 500 on the front door), found by bench/http_fuzz.py. Top-level parts, the blocks
    of a tool result's content, and tools."""
    tool_result = {"type": "tool_result", "tool_use_id": "t", "content": [{"type": kind}]}
    asked = {
        "messages[0].content[1].type": chat([{"type": "text", "text": "hi"}, {"type": kind}]),
        "messages[0].content[0].content[0].type": chat([tool_result]),
        "tools[1].type": chat("hi", tools=[{"type": "function"}, {"type": kind}]),
    }
    async with bounded_broker() as (store, provider, broker):
        for field, request in asked.items():
            with pytest.raises(RequestError) as refused:
                await broker.chat(request, Caller(app="a"))
            assert refused.value.code == "bad_request"
            assert str(refused.value).startswith(f"{field}: expected a string, got ")
            assert refused.value.details == {"field": field}
            with pytest.raises(RequestError, match=re.escape(field)):
                async for _ in broker.chat_stream(request, Caller(app="a")):
                    pass
        assert provider.asked_max_tokens == []
        assert [row[0] for row in await rows(store)] == ["bad_request"] * 6
        [daily] = store.budgets.global_budgets
        assert (daily.held, daily.reserved_usd, daily.spent_usd) == (0, 0.0, 0.0)


async def test_a_chat_past_the_bound_on_its_parts_is_refused_before_any_step_reads_them(
    anyio_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """550,000 one-letter parts (15 MB, within http.max_body_mb) held the event loop for 3 s:
    screening, estimating, bounding and hashing each read every part. More than
    MAX_CHAT_ITEMS messages, parts (those nested at any depth and tool calls counted) or
    tools are refused before the guardrails read any. Parts were counted one level into a
    tool result only: 550,000 a level further down passed, and held the loop 1.6 s."""
    part = {"type": "text", "text": "a"}
    many = MAX_CHAT_ITEMS + 1
    tool_result = {"type": "tool_result", "tool_use_id": "t", "content": [part] * MAX_CHAT_ITEMS}
    asked = {
        "messages[0].content": chat([part] * many),
        "messages[1].content": Chat(
            id=1,
            model="g",
            messages=[
                ChatMessage(role="user", content=[part] * MAX_CHAT_ITEMS),
                ChatMessage(role="user", content=[part]),
            ],
        ),
        "messages[0].content ": chat([tool_result]),
        "messages[0].content  ": chat(
            [{"type": "tool_result", "content": [{"type": "x", "content": [part] * many}]}]
        ),
        "messages[0].content   ": chat(
            [{"type": "document", "source": {"type": "content", "content": [part] * many}}]
        ),
        "messages[0].tool_calls": Chat(
            id=1,
            model="g",
            messages=[ChatMessage(role="assistant", tool_calls=[{"id": "c"}] * many)],
        ),
        "messages": Chat(id=1, model="g", messages=[ChatMessage(role="user", content="a")] * many),
        "tools": chat("hi", tools=[{"type": "function"}] * many),
    }
    screened: list[Chat] = []
    async with bounded_broker() as (store, provider, broker):
        monkeypatch.setattr(broker.guardrails, "check", screened.append)
        for field, request in asked.items():
            with pytest.raises(RequestError) as refused:
                await broker.chat(request, Caller(app="a"))
            assert refused.value.code == "bad_request"
            assert refused.value.details == {"field": field.strip()}
            assert f"a chat holds at most {MAX_CHAT_ITEMS:,} " in str(refused.value)
            with pytest.raises(RequestError, match=re.escape(field.strip())):
                async for _ in broker.chat_stream(request, Caller(app="a")):
                    pass
        assert screened == []
        assert provider.asked_max_tokens == []
        assert [row[0] for row in await rows(store)] == ["bad_request"] * 16
    async with bounded_broker() as (_, provider, broker):  # at the bound: served
        await broker.chat(chat([part] * MAX_CHAT_ITEMS), Caller(app="a"))
        assert len(provider.asked_max_tokens) == 1


async def test_an_embedding_past_the_bound_on_its_inputs_is_refused_before_any_step_reads_them(
    anyio_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by bench/fuzz_frames.py's wide frames: 2,000,000 empty inputs (a 1.9 MiB frame)
    held the event loop 3.7 s, each read by screening, bounding (three times) and
    estimating. More than MAX_EMBED_INPUTS are refused before the guardrails read any."""
    screened: list[Embed] = []
    async with bounded_broker() as (store, provider, broker):
        monkeypatch.setattr(broker.guardrails, "check", screened.append)
        with pytest.raises(RequestError) as refused:
            await broker.embed(
                Embed(id=1, model="g", input=["x"] * (MAX_EMBED_INPUTS + 1)), Caller("a")
            )
        assert refused.value.code == "bad_request"
        assert refused.value.details == {"field": "input"}
        assert f"at most {MAX_EMBED_INPUTS:,} inputs" in str(refused.value)
        assert screened == []
        assert provider.asked_max_tokens == []
        assert [row[0] for row in await rows(store)] == ["bad_request"]
    async with bounded_broker() as (_, provider, broker):  # at the bound: served
        reply = await broker.embed(
            Embed(id=1, model="g", input=["x"] * MAX_EMBED_INPUTS), Caller("a")
        )
        assert len(reply.embeddings) == MAX_EMBED_INPUTS


def spread(items: int) -> dict[str, Any]:
    """A free-form value of ``items`` items (entries and items at every depth) in maps of
    at most half of MAX_FREE_FORM_ITEMS, each within the frame's bound on one map."""
    half = MAX_FREE_FORM_ITEMS // 2
    value: dict[str, Any] = {}
    while items > half + 1:
        value[f"m{len(value)}"] = {f"k{index}": index for index in range(half)}
        items -= half + 1
    value.update({f"v{index}": index for index in range(items)})
    return value


async def test_a_free_form_value_past_the_bound_on_its_items_is_refused_before_any_step_reads_it(
    anyio_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The socket fuzz's wide frames: one free-form value of 500,000 items held the event loop
    about 1.4 s, each item read by screening, the token bounds (for the plan, the budget
    hold and the journal's row), the cache key and the provider's body. A frame's are
    counted before it is decoded; those of the front door's bodies, each content part and
    each tool call are counted here: more than MAX_FREE_FORM_ITEMS in one value (spread
    over maps each within the bound on one) are refused, naming it, before the guardrails
    read any."""
    wide = spread(MAX_FREE_FORM_ITEMS + 1)
    message = ChatMessage(role="assistant", tool_calls=[{"id": "c"}, wide])
    asked: dict[str, Chat | Embed] = {
        "extra": chat("hi", extra=wide),
        "tool_choice": chat("hi", tool_choice=wide),
        "response_format": chat("hi", response_format={"type": "json_schema", "s": wide}),
        "tools": chat("hi", tools=[{"type": "function"}, {"type": "function", "f": wide}]),
        "messages[0].content[1]": chat([{"type": "text", "text": "a"}, {**wide, "type": "x"}]),
        "messages[1].tool_calls[1]": Chat(
            id=1, model="g", messages=[ChatMessage(role="user", content="a"), message]
        ),
        "extra ": Embed(id=1, model="g", input="x", extra=wide),
    }
    screened: list[Chat | Embed] = []
    async with bounded_broker() as (store, provider, broker):
        monkeypatch.setattr(broker.guardrails, "check", screened.append)
        for field, request in asked.items():
            send = broker.embed if isinstance(request, Embed) else broker.chat
            with pytest.raises(RequestError) as refused:
                await send(request, Caller(app="a"))  # type: ignore[arg-type]
            assert refused.value.code == "bad_request"
            assert refused.value.details == {"field": field.strip()}
            assert f"holds at most {MAX_FREE_FORM_ITEMS:,} items" in str(refused.value)
        assert screened == []
        assert provider.asked_max_tokens == []
        assert [row[0] for row in await rows(store)] == ["bad_request"] * len(asked)
    async with bounded_broker() as (_, provider, broker):  # at the bound: served
        await broker.chat(chat("hi", extra=spread(MAX_FREE_FORM_ITEMS)), Caller(app="a"))
        assert len(provider.asked_max_tokens) == 1


async def test_a_broken_stream_settles_at_the_bound_of_what_it_delivered(
    anyio_backend: str,
) -> None:
    async with bounded_broker() as (store, _, broker):
        with pytest.raises(RequestError) as broken:
            async for _ in broker.chat_stream(chat(JAPANESE, stream=True), Caller(app="a")):
                pass
        assert broken.value.code == "upstream_error"
        [(status, prompt, completion, cost)] = await rows(store)
        assert status == "upstream_error"
        assert prompt >= len(JAPANESE.encode())  # the prompt's bound: no usage came
        delivered = len(JAPANESE[:100].encode()) + 40  # 300 bytes of text, 40 of arguments
        assert completion == min(256, delivered + len('[{"index":0,"function":{"arguments":""}}]'))
        assert cost == pytest.approx((prompt * INPUT_PRICE + completion * OUTPUT_PRICE) * PER_TOKEN)
        assert store.budgets.global_budgets[0].spent_usd == pytest.approx(cost)


async def test_a_cached_prompt_settles_below_what_was_held(anyio_backend: str) -> None:
    usage = Usage(prompt_tokens=400, completion_tokens=10, cached_tokens=384)
    async with bounded_broker(usage) as (store, provider, broker):
        reply = await broker.chat(chat("a" * 400, max_tokens=10), Caller(app="a"))
        cached_price = 1.25  # gpt-4o cached input
        expected = (16 * INPUT_PRICE + 384 * cached_price + 10 * OUTPUT_PRICE) * PER_TOKEN
        assert reply.cost_usd == pytest.approx(expected)
        assert reply.cost_usd < provider.held_usd[0]
        [daily] = store.budgets.global_budgets
        assert daily.reserved_usd == 0.0
        assert daily.spent_usd == pytest.approx(expected)


async def test_japanese_embedding_inputs_hold_their_bytes(anyio_backend: str) -> None:
    async with bounded_broker() as (_, provider, broker):
        await broker.embed(Embed(id=1, model="g", input=[JAPANESE] * 3), Caller(app="a"))
        assert provider.held_usd[0] >= 3 * len(JAPANESE.encode()) * INPUT_PRICE * PER_TOKEN


async def test_a_chat_with_no_messages_or_an_embedding_of_no_input_reaches_no_provider(
    anyio_backend: str,
) -> None:
    """Both were sent on (gates and budgets held, the provider called) for the provider's 400
    to come back as ``bad_request``; found by bench/soak.py."""
    empty_chat = Chat(id=1, model="g", messages=[])
    async with bounded_broker() as (store, provider, broker):
        for call in (broker.chat, first_chunk_of(broker)):
            with pytest.raises(RequestError) as refused:
                await call(empty_chat, Caller(app="a"))
            assert refused.value.code == "bad_request"
            assert str(refused.value) == "messages: a chat needs at least one message"
            assert refused.value.details == {"field": "messages"}
        with pytest.raises(RequestError) as refused:
            await broker.embed(Embed(id=1, model="g", input=[]), Caller(app="a"))
        assert str(refused.value) == "input: an embedding request needs at least one input"
        assert refused.value.details == {"field": "input"}
        assert provider.asked_max_tokens == []
        assert await rows(store) == [("bad_request", 0, 0, 0.0)] * 3


def first_chunk_of(broker: Broker) -> Callable[[Chat, Caller], Awaitable[None]]:
    """``broker.chat_stream`` as a call: read up to its first chunk."""

    async def call(request: Chat, caller: Caller) -> None:
        async for _ in broker.chat_stream(request, caller):
            break

    return call


class HeldProvider(Provider):
    """Answers once ``release`` is set: a request stays in flight meanwhile."""

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.release = anyio.Event()
        self.called = anyio.Event()

    async def chat(self, model: str, request: Chat, max_tokens: int) -> ChatResult:
        self.called.set()
        await self.release.wait()
        return await super().chat(model, request, max_tokens)


async def test_a_budget_a_reload_adds_holds_the_requests_in_flight_too(anyio_backend: str) -> None:
    """Requests in flight when a reload added a budget held nothing on it: new requests were
    admitted up to its limit, then the earlier ones' cost took it past (a probe: $0.725 of a
    $0.625 budget added under load)."""
    before = one_provider_config(gates={"default_max_tokens": 256})
    after = one_provider_config(budgets={"daily_usd": 100.0}, gates={"default_max_tokens": 256})
    async with open_store(before) as store:
        provider = HeldProvider(store)
        broker = Broker(before, Router(before, {"p": provider}), store)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(broker.chat, chat(JAPANESE, max_tokens=100), Caller(app="a"))
            await provider.called.wait()
            store.reconfigure(after)  # what SIGHUP does (then the ledger's totals are added)
            [daily] = store.budgets.global_budgets
            bound = (len(JAPANESE.encode()) * INPUT_PRICE + 100 * OUTPUT_PRICE) * PER_TOKEN
            assert daily.reserved_usd >= bound  # held: nothing new may take its room
            assert daily.held == 1
            provider.release.set()
        assert (daily.held, daily.reserved_usd) == (0, 0.0)
        assert daily.spent_usd == pytest.approx((10 * INPUT_PRICE + 5 * OUTPUT_PRICE) * PER_TOKEN)


def utf8_bytes(text: str) -> int:
    """The most tokens a byte-level tokenizer can count for ``text``."""
    return len(text.encode())


class GatedProvider(InProcessProvider):
    """Embeds, reporting ``count(input)`` tokens for each input (by default its UTF-8 bytes,
    what a byte-level tokenizer can count for CJK text), and holds every call until
    ``release`` is set, noting the most tokens its gates' windows hold while it runs."""

    def __init__(self, count: Callable[[str], int] = utf8_bytes) -> None:
        self.count = count
        self.broker: Broker | None = None
        self.release = anyio.Event()
        self.calls = 0
        self.most_used = 0
        self._arrived = anyio.Event()

        self.refused = 0

    def refuse(self) -> None:
        """A request was refused before it reached this provider."""
        self.refused += 1
        self._arrived.set()

    async def all_in(self, count: int) -> None:
        """Wait until ``count`` requests were either called or refused."""
        while self.calls + self.refused < count:
            await self._arrived.wait()
            self._arrived = anyio.Event()

    async def embed(
        self, model: str, inputs: list[str], dimensions: int | None, extra: dict[str, Any]
    ) -> EmbedResult:
        assert self.broker is not None
        self.calls += 1
        self.most_used = max(self.most_used, tokens_used(self.broker))
        self._arrived.set()
        await self.release.wait()
        tokens = sum(self.count(text) for text in inputs)
        return EmbedResult(embeddings=[[1.0]] * len(inputs), usage=Usage(prompt_tokens=tokens))


def tokens_used(broker: Broker) -> int:
    """The most tokens any window of any gate holds now."""
    gates, _, _ = broker.gates.status()
    return max(w.used for gate in gates for w in gate.windows if w.unit == "tokens")


async def test_embeddings_of_cjk_text_never_fill_a_token_window_past_its_limit(
    anyio_backend: str,
) -> None:
    """4 requests of 17,000 CJK characters (17,002 tokens each) were reserved at 4 characters
    a token: two admitted filled a 30,000-token window to 34,004."""
    text = "東京の天気" * 600  # 3,000 characters, 9,000 bytes
    provider = GatedProvider()
    async with gated_broker(30_000, provider) as broker:
        outcomes = await embed_together(broker, provider, [text] * 6)
        assert outcomes == ["ok"] * 3 + ["rate_limited"] * 3  # 3 x 9,002 <= 30,000
        assert provider.most_used <= 30_000
        assert 3 * 9000 <= tokens_used(broker) <= 30_000


def tpm_config(tpm: int) -> Config:
    """One unpaced provider of ``tpm`` tokens a minute behind model group ``g``."""
    return parse_config(
        {
            "providers": {
                "p": {"kind": "openai", "base_url": UNREACHABLE, "tpm": tpm, "pace": False}
            },
            "models": {"g": {"targets": ["p/text-embedding-3-small"]}},
        }
    )


@asynccontextmanager
async def gated_broker(tpm: int, provider: GatedProvider) -> AsyncIterator[Broker]:
    """A broker over ``provider`` alone, limited to ``tpm`` tokens a minute, on a fresh store."""
    limited = tpm_config(tpm)
    async with open_store(limited) as store:
        broker = provider.broker = Broker(limited, Router(limited, {"p": provider}), store)
        yield broker


async def embed_together(broker: Broker, provider: GatedProvider, texts: list[str]) -> list[str]:
    """``texts`` embedded at once, none waiting at the gates, each held by ``provider`` until
    all were called or refused; their outcomes (``ok`` or an error code), sorted."""
    outcomes: list[str] = []

    async def embed(index: int) -> None:
        request = Embed(id=index, model="g", input=texts[index], max_wait_s=0.0)
        try:
            await broker.embed(request, Caller(app="a"))
            outcomes.append("ok")
        except RequestError as error:
            outcomes.append(error.code)
            provider.refuse()

    async with anyio.create_task_group() as tasks:
        for index in range(len(texts)):
            tasks.start_soon(embed, index)
        await provider.all_in(len(texts))
        provider.release.set()
    return sorted(outcomes)


async def test_an_embedding_whose_bound_exceeds_a_token_limit_waits_for_the_whole_window(
    anyio_backend: str,
) -> None:
    """20,000 CJK characters are 60,000 UTF-8 bytes, the most a byte-level tokenizer can make
    of them, but about 20,000 tokens: refused outright against a 30,000-token limit ("it can
    never be admitted") although the provider takes it. Now it takes the whole window (one
    such request at a time) and the window keeps what it used."""
    texts = [f"{index}" + "東京の天気" * 4_000 for index in range(2)]  # distinct: no cache hits
    provider = GatedProvider(count=len)  # a token a character
    async with gated_broker(30_000, provider) as broker:
        outcomes = await embed_together(broker, provider, texts)
        assert outcomes == ["ok", "rate_limited"]  # the window held one
        assert provider.most_used <= 30_000
        assert tokens_used(broker) == 20_001


async def test_an_embedding_whose_bound_the_provider_never_counts_is_still_refused(
    anyio_backend: str,
) -> None:
    """An input of 40,000 characters counts 10,000 tokens at the least (OpenAI's estimate):
    past a 8,000-token limit it can never be admitted, and says so without a wait."""
    provider = GatedProvider(count=len)
    async with gated_broker(8_000, provider) as broker:
        with pytest.raises(RequestError) as refused:
            await broker.embed(Embed(id=1, model="g", input="word " * 8_000), Caller("a"))
        assert refused.value.code == "rate_limited"
        assert "at least 10000 tokens" in str(refused.value)
        assert "can never be admitted" in str(refused.value)
        assert provider.calls == 0


async def test_embeddings_leave_on_a_provider_gate_the_tokens_the_provider_counted(
    anyio_backend: str,
) -> None:
    """A provider counts an embedding request as its estimate from the characters (OpenAI; the
    sim), 1,000 tokens for 4,000 of English, and reports that as its usage. Its gate kept the
    bound reserved, 4,002, as if that were ``max_tokens``: 7 requests filled a 30,000-token
    window the provider counted 7,000 in. Now it keeps what the provider counted."""
    texts = [f"{index:04} " + "word " * 799 for index in range(30)]  # 4,000 characters each
    provider = GatedProvider(count=lambda text: len(text) // 4)
    provider.release.set()
    outcomes: list[str] = []
    async with gated_broker(30_000, provider) as broker:
        for index in range(30):
            try:
                await broker.embed(
                    Embed(id=index, model="g", input=texts[index], max_wait_s=0.0), Caller("a")
                )
                outcomes.append("ok")
            except RequestError as error:
                outcomes.append(error.code)
        # 26 x 1,000 counted, and the next one's bound of 4,002 does not fit beside them
        assert outcomes == ["ok"] * 26 + ["rate_limited"] * 4
        assert tokens_used(broker) == 26_000


class BreakingAtOnce(Provider):
    """Its streams break before their first piece, as a connection lost after the request
    went: the provider may bill the prompt (``may_bill``)."""

    async def open_stream(self, model: str, request: Chat, max_tokens: int) -> ChatStream:
        self._asked(max_tokens)
        broke = ProviderError("stream_broken", "the stream broke", may_bill=True)
        return PiecesStream([], finish_reason=None, breaks=broke)


async def test_a_stream_that_broke_before_its_first_piece_is_charged_its_prompt_each_time(
    anyio_backend: str,
) -> None:
    """Each attempt's provider had the request: its prompt bound is charged, nothing of the
    completion it never delivered (as a stream that broke later is charged what it
    delivered). Before, a stream that never started cost nothing, however often."""
    limited = one_provider_config(budgets={"daily_usd": 100.0}, retry={"attempts": 2})
    async with open_store(limited) as store:
        provider = BreakingAtOnce(store)
        broker = Broker(limited, Router(limited, {"p": provider}), store)
        with pytest.raises(RequestError):
            async for _ in broker.chat_stream(chat(JAPANESE, max_tokens=100), Caller(app="a")):
                pass
        assert len(provider.asked_max_tokens) == 2
        prompt_bound = 8 + 8 + len("user") + len(JAPANESE.encode())
        [(status, prompt, completion, cost)] = await rows(store)
        assert (status, prompt, completion) == ("upstream_error", 2 * prompt_bound, 0)
        assert cost == pytest.approx(2 * prompt_bound * INPUT_PRICE * PER_TOKEN)
        [daily] = store.budgets.global_budgets
        assert (daily.held, daily.reserved_usd) == (0, 0.0)
        assert daily.spent_usd == pytest.approx(cost)
