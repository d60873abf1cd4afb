"""The HTTP front door in-process, in front of a scripted broker: the official SDKs against
it (errors and their retry behaviour, keys, streams), raw HTTP for headers and bodies, and
client disconnects cancelling the broker call."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anthropic
import anyio
import h11
import httpx
import msgspec
import openai
import pytest

from quotad.daemon.broker import Broker
from quotad.daemon.caller import Caller
from quotad.daemon.config import Config, HttpConfig, parse_config
from quotad.daemon.errors import RequestError
from quotad.daemon.front_door import FrontDoor
from quotad.daemon.providers import build_provider
from quotad.daemon.routing import Router
from quotad.daemon.store import Store
from quotad.protocol.errors import ErrorCode
from quotad.protocol.messages import Chat, ChatChunk, ChatEnd, ChatReply, Embed, EmbedReply, Usage
from tests.support.serving import running
from tests.support.store import open_store

pytestmark = pytest.mark.anyio

KEYS = {"sk-indexer": "indexer", "sk-agent": "agent"}
MESSAGES: list[Any] = [{"role": "user", "content": "hello"}]
CHAT = {"model": "fast", "messages": MESSAGES, "max_tokens": 5}
ANTHROPIC_CHAT = {"model": "fast", "max_tokens": 5, "messages": MESSAGES}
TOOL_CALL = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "lookup"}}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # daemon internals, and the SDKs' async clients are asyncio clients


class ScriptedBroker(Broker):
    """A real broker whose request kinds are scripted: it records every call, raises
    ``error`` when set, and with ``block`` waits until cancelled (counting that)."""

    def __init__(self, config: Config | None = None) -> None:
        config = config or Config()
        unopened = Store(config, Path("/nonexistent/quotad-scripted"))  # its requests are scripted
        super().__init__(config, Router(config, {}), unopened)
        self.calls: list[tuple[Chat | Embed, Caller]] = []
        self.error: RequestError | None = None
        self.stream_error: RequestError | None = None  # raised after two chunks
        self.block = False
        self.cancelled = 0
        self._changed = anyio.Event()

    def _record(self, request: Chat | Embed, caller: Caller) -> None:
        self.calls.append((request, caller))
        self._note()

    def _note(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def until(self, condition: Callable[[], bool]) -> None:
        """Wait (at most 5 s) until ``condition`` holds after a call or a cancellation."""
        with anyio.fail_after(5):
            while not condition():
                await self._changed.wait()

    async def _maybe_block(self) -> None:
        if self.block:
            try:
                await anyio.sleep_forever()
            except anyio.get_cancelled_exc_class():
                self.cancelled += 1
                self._note()
                raise

    async def chat(self, request: Chat, caller: Caller) -> ChatReply:
        self._record(request, caller)
        if self.error is not None:
            raise self.error
        await self._maybe_block()
        return ChatReply(
            content="hi there",
            finish_reason="stop",
            usage=Usage(prompt_tokens=7, completion_tokens=2, cached_tokens=3),
            cost_usd=0.00125,
            target="sim/gpt-test",
            attempts=2,
            wait_s=0.0125,
            request_id="qd-test-1",
        )

    async def chat_stream(
        self, request: Chat, caller: Caller
    ) -> AsyncIterator[ChatChunk | ChatEnd]:
        self._record(request, caller)
        if self.error is not None:
            raise self.error
        try:
            yield ChatChunk(
                delta="Hel", request_id="qd-test-2", target="sim/gpt-test", attempts=1, wait_s=0.5
            )
            yield ChatChunk(delta="lo")
            if self.stream_error is not None:
                raise self.stream_error
            await self._maybe_block()
            yield ChatChunk(tool_calls=[TOOL_CALL])
            yield ChatChunk(tool_calls=[{"index": 0, "function": {"arguments": '{"q": 1}'}}])
            yield ChatChunk(finish_reason="tool_calls")
            yield ChatEnd(
                content="Hello",
                finish_reason="tool_calls",
                usage=Usage(prompt_tokens=9, completion_tokens=4),
                target="sim/gpt-test",
                request_id="qd-test-2",
                cost_usd=0.0042,
            )
        except GeneratorExit:
            self.cancelled += 1
            self._note()
            raise

    async def embed(self, request: Embed, caller: Caller) -> EmbedReply:
        self._record(request, caller)
        return EmbedReply(
            embeddings=[[0.5, -0.25], [1.0, 0.0]],
            usage=Usage(prompt_tokens=4),
            target="sim/embed-test",
            request_id="qd-test-3",
        )


@asynccontextmanager
async def serving(
    broker: Broker,
    auth: str = "none",
    app_for_key: Callable[[str], str | None] = KEYS.get,
) -> AsyncIterator[str]:
    """The front door on a free loopback port; its base URL."""
    config = HttpConfig(listen="127.0.0.1:0", auth=auth)  # type: ignore[arg-type]
    front_door = FrontDoor(broker, config, app_for_key=app_for_key)
    await front_door.bind()
    async with running(front_door):
        yield f"http://{front_door.address}"


@asynccontextmanager
async def both_sdks(
    broker: Broker, max_retries: int = 2
) -> AsyncIterator[tuple[openai.AsyncOpenAI, anthropic.AsyncAnthropic]]:
    """The real OpenAI and Anthropic SDKs (each retrying ``max_retries`` times, their
    default 2 unless told) pointed at the front door over ``broker``."""
    async with (
        serving(broker) as url,
        openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="k", max_retries=max_retries) as oai,
        anthropic.AsyncAnthropic(base_url=url, api_key="k", max_retries=max_retries) as claude,
    ):
        yield oai, claude


def http_count(broker: Broker, endpoint: str, status: int) -> int:
    return broker.metrics._http.get((endpoint, status), 0)


# --------------------------------------------------------------------------- errors


async def test_budget_exceeded_is_429_that_neither_sdk_retries() -> None:
    broker = ScriptedBroker()
    broker.error = RequestError("budget_exceeded", "app indexer: daily budget of $5 is spent")
    async with both_sdks(broker, max_retries=3) as (oai, claude):
        with pytest.raises(openai.RateLimitError) as openai_error:
            await oai.chat.completions.create(model="fast", messages=MESSAGES)
        with pytest.raises(anthropic.RateLimitError) as anthropic_error:
            await claude.messages.create(model="fast", max_tokens=5, messages=MESSAGES)
    assert http_count(broker, "chat_completions", 429) == 1
    assert http_count(broker, "messages", 429) == 1
    assert len(broker.calls) == 2
    assert openai_error.value.response.headers["x-should-retry"] == "false"
    assert openai_error.value.code == "budget_exceeded"
    assert openai_error.value.type == "insufficient_quota"
    assert "daily budget" in openai_error.value.message
    assert anthropic_error.value.body == {
        "type": "error",
        "error": {
            "type": "rate_limit_error",
            "message": "app indexer: daily budget of $5 is spent",
        },
    }


async def test_rate_limited_is_retried_by_the_sdk_after_retry_after() -> None:
    broker = ScriptedBroker()
    broker.error = RequestError("rate_limited", "gate full", retry_after_s=0.01)
    async with (
        serving(broker) as url,
        openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="k", max_retries=2) as oai,
    ):
        with pytest.raises(openai.RateLimitError) as caught:
            await oai.chat.completions.create(model="fast", messages=MESSAGES)
    assert http_count(broker, "chat_completions", 429) == 3
    assert caught.value.response.headers["retry-after"] == "1"
    assert caught.value.response.headers["retry-after-ms"] == "10"


@pytest.mark.parametrize(
    ("code", "status", "openai_type", "anthropic_type"),
    [
        ("bad_request", 400, "invalid_request_error", "invalid_request_error"),
        ("blocked", 400, "invalid_request_error", "invalid_request_error"),
        ("unauthorized", 401, "authentication_error", "authentication_error"),
        ("unknown_model", 404, "invalid_request_error", "not_found_error"),
        ("budget_exceeded", 429, "insufficient_quota", "rate_limit_error"),
        ("rate_limited", 429, "rate_limit_error", "rate_limit_error"),
        ("internal", 500, "server_error", "api_error"),
        ("upstream_error", 502, "server_error", "api_error"),
        ("overloaded", 503, "server_error", "overloaded_error"),
        ("timeout", 504, "server_error", "api_error"),
    ],
)
async def test_each_error_code_has_its_status_and_each_api_its_shape(
    code: ErrorCode, status: int, openai_type: str, anthropic_type: str
) -> None:
    broker = ScriptedBroker()
    broker.error = RequestError(code, f"what went wrong: {code}")
    async with serving(broker) as url, httpx.AsyncClient(base_url=url) as http:
        oai = await http.post("/v1/chat/completions", json=CHAT)
        claude = await http.post("/v1/messages", json=ANTHROPIC_CHAT)
    assert oai.status_code == claude.status_code == status
    assert oai.json() == {
        "error": {
            "message": f"what went wrong: {code}",
            "type": openai_type,
            "code": code,
            "param": None,
        }
    }
    assert claude.json() == {
        "type": "error",
        "error": {"type": anthropic_type, "message": f"what went wrong: {code}"},
    }
    retries = code in ("rate_limited", "overloaded")
    assert ("retry-after" in oai.headers) == retries
    assert ("x-should-retry" in oai.headers) == (code == "budget_exceeded")


async def test_bad_bodies_are_400_naming_the_field() -> None:
    broker = ScriptedBroker()
    cases: list[tuple[str, bytes, str | None, str]] = [
        ("/v1/chat/completions", b"{not json", None, "not valid JSON"),
        ("/v1/chat/completions", b"", None, "no body"),
        ("/v1/chat/completions", b'{"messages": [{"role": "user"}]}', "model", "model: required"),
        ("/v1/chat/completions", b'{"model": "m", "messages": []}', "messages", "length >= 1"),
        (
            "/v1/chat/completions",
            b'{"model": "m", "messages": [{"role": "user"}], "max_tokens": "x"}',
            "max_tokens",
            "max_tokens: expected int, got str",
        ),
        (
            "/v1/chat/completions",
            b'{"model": "m", "messages": [{"role": "bob"}]}',
            "messages[0].role",
            "invalid enum value 'bob'",
        ),
        ("/v1/chat/completions", b'{"model": "m", "messages": [{"role": "user"}], "n": 2}',
         "n", "one choice"),
        ("/v1/embeddings", b'{"model": "m", "input": [1, 2]}', "input", "not tokens"),
        ("/v1/messages", b'{"model": "m", "messages": [{"role": "user", "content": "x"}]}',
         "max_tokens", "required"),
        ("/v1/messages",
         b'{"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": '
         b'[{"type": "image", "source": 3}]}]}',
         "messages[0].content[0].source", "expected an object"),
    ]  # fmt: skip
    async with serving(broker) as url, httpx.AsyncClient(base_url=url) as http:
        for path, body, param, says in cases:
            response = await http.post(path, content=body)
            assert response.status_code == 400, (path, body)
            error = response.json()["error"]
            assert says in error["message"], (error, says)
            if path != "/v1/messages":
                assert error["param"] == param
    assert broker.calls == []


async def test_unknown_path_is_404_and_wrong_method_405() -> None:
    async with serving(ScriptedBroker()) as url, httpx.AsyncClient(base_url=url) as http:
        missing = await http.post("/v1/completions", json=CHAT)
        wrong = await http.get("/v1/chat/completions")
        health = await http.head("/healthz")
    assert missing.status_code == 404
    assert "/v1/chat/completions" in missing.json()["error"]["message"]
    assert wrong.status_code == 405
    assert wrong.headers["allow"] == "POST"
    assert health.status_code == 200


# --------------------------------------------------------------------------- keys and headers


async def test_keys_name_the_app_in_either_header_and_bad_keys_are_401() -> None:
    broker = ScriptedBroker()
    async with (
        serving(broker, auth="keys") as url,
        openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="sk-indexer") as oai,
        anthropic.AsyncAnthropic(base_url=url, api_key="sk-agent") as claude,
        openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="sk-wrong") as wrong,
        httpx.AsyncClient(base_url=url) as http,
    ):
        await oai.chat.completions.create(
            model="fast", messages=MESSAGES, extra_headers={"x-quotad-app": "not-me"}
        )
        await claude.messages.create(model="fast", max_tokens=5, messages=MESSAGES)
        with pytest.raises(openai.AuthenticationError) as bad_key:
            await wrong.chat.completions.create(model="fast", messages=MESSAGES)
        missing = await http.post("/v1/chat/completions", json=CHAT)
        anthropic_missing = await http.post("/v1/messages", json=ANTHROPIC_CHAT)
        models = await http.get("/v1/models")
        metrics = await http.get("/metrics")
    assert [(caller.app, caller.via) for _, caller in broker.calls] == [
        ("indexer", "http"),
        ("agent", "http"),
    ]
    assert bad_key.value.status_code == 401
    assert "sk-wrong" not in bad_key.value.message
    assert missing.status_code == anthropic_missing.status_code == models.status_code == 401
    assert "Authorization: Bearer KEY" in missing.json()["error"]["message"]
    assert anthropic_missing.json()["error"]["type"] == "authentication_error"
    assert metrics.status_code == 200  # scrapers send no key


async def test_with_keys_the_key_is_checked_before_the_options_and_the_app_is_ignored() -> None:
    """A bad ``x-quotad-*`` option was a 400 before the key was looked at: an unknown key
    was told of the option, not that it may not call; and an ``x-quotad-app`` that is not
    UTF-8 was refused from a key holder, whose app the key names (the header is ignored)."""
    broker = ScriptedBroker()
    async with serving(broker, auth="keys") as url, httpx.AsyncClient(base_url=url) as http:
        unknown = await http.post(
            "/v1/chat/completions",
            json=CHAT,
            headers={"authorization": "Bearer sk-wrong", "x-quotad-priority": "urgent"},
        )
        held = {b"authorization": b"Bearer sk-agent", b"x-quotad-app": b"caf\xe9"}
        ignored = await http.post("/v1/chat/completions", json=CHAT, headers=held)
        bad_option = await http.post(
            "/v1/chat/completions",
            json=CHAT,
            headers={"authorization": "Bearer sk-agent", "x-quotad-cache": "maybe"},
        )
    assert unknown.status_code == 401
    assert ignored.status_code == 200
    assert [caller.app for _, caller in broker.calls] == ["agent"]
    assert bad_option.status_code == 400
    assert bad_option.json()["error"]["param"] == "x-quotad-cache"


async def test_without_keys_the_app_is_x_quotad_app_else_anonymous() -> None:
    broker = ScriptedBroker()
    async with serving(broker, auth="none") as url, httpx.AsyncClient(base_url=url) as http:
        await http.post("/v1/chat/completions", json=CHAT, headers={"x-quotad-app": "notebook"})
        await http.post("/v1/chat/completions", json=CHAT)
    assert [caller.app for _, caller in broker.calls] == ["notebook", "anonymous"]


async def test_an_app_named_in_utf_8_is_the_app_the_socket_knows_by_that_name() -> None:
    """An ``x-quotad-app`` was read as Latin-1: "日報-bot" sent by curl was refused (its UTF-8
    bytes read as C1 control characters), and "café" became "cafÃ©", an app no ``[apps]``
    entry, budget or report of the native client's "café" counts."""
    broker = ScriptedBroker()
    async with serving(broker, auth="none") as url, httpx.AsyncClient(base_url=url) as http:
        for app in ("日報-bot", "café"):
            await http.post(
                "/v1/chat/completions", json=CHAT, headers={b"x-quotad-app": app.encode()}
            )
        latin_1 = await http.post(
            "/v1/chat/completions", json=CHAT, headers={b"x-quotad-app": b"caf\xe9"}
        )
    assert [caller.app for _, caller in broker.calls] == ["日報-bot", "café"]
    assert latin_1.status_code == 400
    assert latin_1.json()["error"]["param"] == "x-quotad-app"
    assert "UTF-8" in latin_1.json()["error"]["message"]


async def test_quotad_request_headers_reach_the_request_and_bad_ones_are_400() -> None:
    broker = ScriptedBroker()
    options = {"x-quotad-priority": "high", "x-quotad-cache": "bypass", "x-quotad-max-wait": "2.5"}
    async with serving(broker) as url, httpx.AsyncClient(base_url=url) as http:
        good = await http.post("/v1/chat/completions", json=CHAT, headers=options)
        embedded = await http.post(
            "/v1/embeddings",
            json={"model": "e", "input": "x"},
            headers={"x-quotad-priority": "low"},
        )
        bad = [
            (name, await http.post("/v1/chat/completions", json=CHAT, headers={name: value}))
            for name, value in [
                ("x-quotad-priority", "urgent"),
                ("x-quotad-cache", "maybe"),
                ("x-quotad-max-wait", "-1"),
                ("x-quotad-max-wait", "soon"),
                ("x-quotad-max-wait", "inf"),
                ("x-quotad-max-wait", "86401"),  # past a day, as the socket refuses
                ("x-quotad-app", "a" * 300),
            ]
        ]
    assert good.status_code == embedded.status_code == 200
    chat, _ = broker.calls[0]
    assert (chat.priority, chat.cache, chat.max_wait_s) == ("high", "bypass", 2.5)
    assert good.headers["x-quotad-cache"] == "bypass"
    assert broker.calls[1][0].priority == "low"
    for name, response in bad:
        assert response.status_code == 400
        assert response.json()["error"]["param"] == name
    assert len(broker.calls) == 2


async def test_embeddings_fields_openai_does_not_document_go_to_the_provider_as_extra() -> None:
    """They were dropped: ``input_type`` "query" and "passage" shared one cached vector."""
    broker = ScriptedBroker()
    async with both_sdks(broker) as (oai, _):
        await oai.embeddings.create(
            model="e",
            input="a",
            dimensions=64,
            user="u1",
            encoding_format="float",
            extra_body={"input_type": "query", "truncate": {"side": "END"}},
        )
        await oai.embeddings.create(model="e", input="a")
    [(tagged, _), (plain, _)] = broker.calls
    assert isinstance(tagged, Embed)
    assert isinstance(plain, Embed)
    assert tagged.extra == {"input_type": "query", "truncate": {"side": "END"}}
    assert (tagged.dimensions, tagged.user) == (64, "u1")
    assert plain.extra == {}


# --------------------------------------------------------------------------- answers


async def test_plain_answers_carry_quotad_headers_in_both_shapes() -> None:
    broker = ScriptedBroker()
    async with both_sdks(broker) as (oai, claude):
        raw = await oai.chat.completions.with_raw_response.create(
            model="fast", messages=MESSAGES, max_completion_tokens=9, stop="END", user="u1"
        )
        message = await claude.messages.create(model="fast", max_tokens=5, messages=MESSAGES)
        vectors = await oai.embeddings.create(model="e", input=["a", "b"])  # base64 by default
        floats = await oai.embeddings.create(model="e", input="a", encoding_format="float")
    completion = raw.parse()
    assert completion.choices[0].message.content == "hi there"
    assert completion.model == "gpt-test"
    assert completion.id == "chatcmpl-qd-test-1"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens_details is not None
    assert completion.usage.prompt_tokens_details.cached_tokens == 3
    assert raw.headers["x-quotad-request-id"] == "qd-test-1"
    assert raw.headers["x-quotad-target"] == "sim/gpt-test"
    assert raw.headers["x-quotad-cache"] == "miss"
    assert raw.headers["x-quotad-cost-usd"] == "0.001250"
    assert raw.headers["x-quotad-wait-ms"] == "12.5"
    assert raw.headers["x-quotad-attempts"] == "2"
    chat, _ = broker.calls[0]
    assert isinstance(chat, Chat)
    assert chat.max_tokens == 9
    assert chat.extra == {"max_completion_tokens": 9}
    assert (chat.stop, chat.user) == (["END"], "u1")
    assert message.content[0].type == "text"
    assert message.content[0].text == "hi there"
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens) == (4, 3)
    assert [item.embedding for item in vectors.data] == [[0.5, -0.25], [1.0, 0.0]]
    assert floats.data[0].embedding == [0.5, -0.25]
    assert floats.model == "embed-test"


async def test_openai_stream_with_usage_then_done() -> None:
    broker = ScriptedBroker()
    async with (
        serving(broker) as url,
        openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="k") as oai,
        httpx.AsyncClient(base_url=url) as http,
    ):
        stream = await oai.chat.completions.create(
            model="fast", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
        raw = await http.post("/v1/chat/completions", json={**CHAT, "stream": True})
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello"
    assert chunks[0].choices[0].delta.role == "assistant"
    calls = [
        c.choices[0].delta.tool_calls for c in chunks if c.choices and c.choices[0].delta.tool_calls
    ]
    assert calls[0] is not None
    assert calls[0][0].id == "call_1"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (9, 4)
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert raw.headers["x-quotad-target"] == "sim/gpt-test"
    assert raw.headers["x-quotad-wait-ms"] == "500.0"
    assert raw.text.endswith("data: [DONE]\n\n")
    assert '"usage"' not in raw.text  # only with stream_options.include_usage


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
async def test_a_stream_sends_its_cost_as_a_trailer(path: str) -> None:
    """A stream's head goes out before its cost is known: the cost comes after its last
    chunk, a trailer announced in the head, which a real HTTP parser (h11, httpx's) reads."""
    async with serving(ScriptedBroker()) as url:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        body = msgspec.json.encode({**CHAT, "max_tokens": 5, "stream": True})
        head = (
            f"POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        )
        async with await anyio.connect_tcp(host, int(port)) as connection:
            await connection.send(head.encode() + body)
            received = b""
            with anyio.fail_after(10):
                async for data in connection:
                    received += data
    parser = h11.Connection(h11.CLIENT)
    parser.send(h11.Request(method="POST", target=path, headers=[("host", host)]))
    parser.receive_data(received)
    events = []
    while not isinstance(event := parser.next_event(), h11.EndOfMessage | h11.NEED_DATA):
        events.append(event)
    response = events[0]
    assert isinstance(response, h11.Response)
    assert (b"trailer", b"x-quotad-cost-usd") in list(response.headers)
    assert isinstance(event, h11.EndOfMessage)
    assert list(event.headers) == [(b"x-quotad-cost-usd", b"0.004200")]
    assert received.endswith(b"\r\n0\r\nx-quotad-cost-usd: 0.004200\r\n\r\n")


async def test_anthropic_stream_builds_text_and_tool_use_blocks() -> None:
    broker = ScriptedBroker()
    async with (
        serving(broker) as url,
        anthropic.AsyncAnthropic(base_url=url, api_key="k") as claude,
        claude.messages.stream(model="fast", max_tokens=5, messages=MESSAGES) as stream,
    ):
        texts = [text async for text in stream.text_stream]
        message = await stream.get_final_message()
    assert "".join(texts) == "Hello"
    assert [block.type for block in message.content] == ["text", "tool_use"]
    tool = message.content[1]
    assert tool.type == "tool_use"
    assert (tool.id, tool.name, tool.input) == ("call_1", "lookup", {"q": 1})
    assert message.stop_reason == "tool_use"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (9, 4)
    assert message.id == "msg_qd-test-2"


async def test_failure_after_a_stream_started_is_an_error_event() -> None:
    broker = ScriptedBroker()
    broker.stream_error = RequestError("upstream_error", "sim broke the stream")
    async with both_sdks(broker, max_retries=0) as (oai, claude):
        stream = await oai.chat.completions.create(model="fast", messages=MESSAGES, stream=True)
        seen: list[str] = []

        async def read_openai() -> None:
            async for chunk in stream:
                seen.append(chunk.choices[0].delta.content or "")

        async def read_anthropic() -> None:
            async with claude.messages.stream(model="fast", max_tokens=5, messages=MESSAGES) as s:
                async for _ in s:
                    pass

        with pytest.raises(openai.APIError, match="sim broke the stream"):
            await read_openai()
        with pytest.raises(anthropic.APIError, match="sim broke the stream"):
            await read_anthropic()
    assert "".join(seen) == "Hello"


async def test_failure_before_a_stream_starts_has_its_status() -> None:
    broker = ScriptedBroker()
    broker.error = RequestError("unknown_model", "unknown model 'fast'")
    async with (
        serving(broker) as url,
        openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="k") as oai,
    ):
        with pytest.raises(openai.NotFoundError):
            await oai.chat.completions.create(model="fast", messages=MESSAGES, stream=True)


# --------------------------------------------------------------------------- disconnects


async def test_client_going_away_cancels_the_broker_call() -> None:
    broker = ScriptedBroker()
    broker.block = True
    request = b"POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\ncontent-length: %d\r\n\r\n%b"
    body = msgspec.json.encode(CHAT)
    async with serving(broker) as url:
        port = int(url.rpartition(":")[2])
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            await stream.send(request % (len(body), body))
            await broker.until(lambda: bool(broker.calls))
        await broker.until(lambda: broker.cancelled == 1)
        # a stream read up to its first chunks, then dropped
        stream_body = msgspec.json.encode({**CHAT, "stream": True})
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            await stream.send(request % (len(stream_body), stream_body))
            with anyio.fail_after(5):
                assert b"Hel" in await stream.receive()
        await broker.until(lambda: broker.cancelled == 2)


async def test_models_lists_groups_then_targets_in_both_shapes() -> None:
    config = parse_config(
        {
            "providers": {
                "sim": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1", "models": {"m1": {}}}
            },
            "models": {"fast": {"targets": ["sim/m1", "sim/m2"]}},
        }
    )
    providers = {"sim": build_provider("sim", config.providers["sim"], None)}
    try:
        async with (
            open_store(config) as store,
            serving(Broker(config, Router(config, providers), store)) as url,
            openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="k") as oai,
            anthropic.AsyncAnthropic(base_url=url, api_key="k") as claude,
        ):
            openai_models = [(m.id, m.owned_by) async for m in oai.models.list()]
            anthropic_models = [m.id async for m in claude.models.list()]
            one = await oai.models.retrieve("sim/m2")
            with pytest.raises(openai.NotFoundError):
                await oai.models.retrieve("nope")
    finally:
        await providers["sim"].aclose()
    assert openai_models == [
        ("fast", "quotad"),
        ("m1", "sim"),
        ("sim/m1", "sim"),
        ("sim/m2", "sim"),
    ]
    assert anthropic_models == ["fast", "m1", "sim/m1", "sim/m2"]
    assert (one.id, one.owned_by) == ("sim/m2", "sim")


@pytest.mark.parametrize(
    ("path", "says"),
    [
        ("/v1/models/sim/a%0a12:00:00%20error%20forged", "control characters (U+000A"),
        ("/v1/models/sim/%e2%80%ae", "control characters (U+202E"),
        ("/v1/models/sim/" + "N" * 60_000, "at most 256 characters, got 60004"),
    ],
    ids=["newline", "bidi-override", "huge"],
)
async def test_a_model_looked_up_by_url_is_a_name_as_a_request_s_model_is(
    path: str, says: str
) -> None:
    """``GET /v1/models/NAME`` made a target of any name on a provider's account, unchecked:
    a line break forged lines in ``quotad target list``, and 100 names of 60,000 characters
    made ``/metrics`` 66 MB and ``quotad status`` too large to send. Now the name is checked
    as a request's model is, and refused before any target is made of it."""
    config = parse_config({"providers": {"sim": {"kind": "openai", "base_url": "http://x:9"}}})
    providers = {"sim": build_provider("sim", config.providers["sim"], None)}
    router = Router(config, providers)
    try:
        async with (
            open_store(config) as store,
            serving(Broker(config, router, store)) as url,
            httpx.AsyncClient(base_url=url) as http,
        ):
            refused = await http.get(path)
            kept = await http.get("/v1/models/sim/fine")
    finally:
        await providers["sim"].aclose()
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert says in error["message"]
    assert error["param"] == "model"
    assert kept.status_code == 200
    assert list(router.targets) == ["sim/fine"]


async def test_a_reload_changes_auth_and_limits_in_place() -> None:
    broker = ScriptedBroker()
    front_door = FrontDoor(broker, HttpConfig(listen="127.0.0.1:0"), app_for_key=KEYS.get)
    await front_door.bind()
    async with anyio.create_task_group() as tasks:
        await tasks.start(front_door.serve)
        url = f"http://{front_door.address}"
        async with httpx.AsyncClient(base_url=url) as http:
            before = await http.post("/v1/chat/completions", json=CHAT)
            reloaded = parse_config({"http": {"auth": "none", "max_body_mb": 0.0001}})
            front_door.reconfigure(reloaded)
            after = await http.post("/v1/chat/completions", json=CHAT)
        async with httpx.AsyncClient(base_url=url) as http:  # a new connection: new limits
            too_big = await http.post("/v1/chat/completions", json={**CHAT, "pad": "x" * 200})
        await front_door.shutdown(1.0)
    assert (before.status_code, after.status_code, too_big.status_code) == (401, 200, 413)
