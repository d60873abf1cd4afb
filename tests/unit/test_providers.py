"""Provider wire formats (quotad.daemon.providers) against ``httpx.MockTransport``: what goes out,
what comes back, streams (whole, split anywhere, broken), every failure class, the conversion
between the OpenAI and Anthropic shapes, and where API keys come from and never go."""

from __future__ import annotations

import base64
import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import msgspec
import pytest

from quotad.daemon.config import ConfigError, ProviderConfig
from quotad.daemon.net import addresses
from quotad.daemon.net import sse as sse_module
from quotad.daemon.providers import build_provider, resolve_api_key
from quotad.daemon.providers.anthropic import AnthropicProvider
from quotad.daemon.providers.base import ChatDelta, ChatStream, Provider, ProviderError
from quotad.daemon.providers.openai import OpenAIProvider
from quotad.daemon.streamed_answer import merge_tool_calls
from quotad.protocol.messages import Chat, ChatMessage, Usage

API_KEY = "sk-test-0123456789abcdef"
BASE_URL = "https://provider.test/v1"

Answer = Callable[[httpx.Request], httpx.Response | Awaitable[httpx.Response]]


class Upstream:
    """A mock provider: records each request and answers it with ``answer``."""

    def __init__(self, answer: Answer) -> None:
        self.requests: list[httpx.Request] = []
        self._answer = answer
        self.transport = httpx.MockTransport(self._handle)

    async def _handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        response = self._answer(request)
        return await response if isinstance(response, Awaitable) else response

    @property
    def body(self) -> Any:
        """The JSON body of the last request."""
        return msgspec.json.decode(self.requests[-1].content)


def config(kind: str = "openai", **settings: Any) -> ProviderConfig:
    return ProviderConfig(kind=kind, base_url=BASE_URL, **settings)  # type: ignore[arg-type]


def openai(answer: Answer, **settings: Any) -> tuple[OpenAIProvider, Upstream]:
    upstream = Upstream(answer)
    provider = OpenAIProvider("oa", config(**settings), API_KEY, transport=upstream.transport)
    return provider, upstream


def anthropic(answer: Answer, **settings: Any) -> tuple[AnthropicProvider, Upstream]:
    upstream = Upstream(answer)
    provider = AnthropicProvider(
        "an", config("anthropic", **settings), API_KEY, transport=upstream.transport
    )
    return provider, upstream


def reply(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Answer:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=body, headers=headers)

    return answer


def chat(*messages: ChatMessage, **fields: Any) -> Chat:
    return Chat(model="m", messages=list(messages) or [user("hi")], **fields)


def user(content: str | list[dict[str, Any]]) -> ChatMessage:
    return ChatMessage(role="user", content=content)


def sse(*events: Any, done: bool = True) -> bytes:
    """An OpenAI event stream."""
    lines = [b"data: " + msgspec.json.encode(event) + b"\n\n" for event in events]
    return b"".join(lines) + (b"data: [DONE]\n\n" if done else b"")


def anthropic_sse(*events: dict[str, Any]) -> bytes:
    """An Anthropic event stream (``event:`` lines too, as Anthropic sends them)."""
    return b"".join(
        b"event: %s\ndata: %s\n\n" % (event["type"].encode(), msgspec.json.encode(event))
        for event in events
    )


async def pieces(body: bytes, size: int, then: Exception | None = None) -> AsyncIterator[bytes]:
    """``body`` in pieces of ``size`` bytes, then optionally a failure."""
    for start in range(0, len(body), size):
        yield body[start : start + size]
    if then is not None:
        raise then


def streamed(body: bytes, size: int = 7, then: Exception | None = None) -> Answer:
    def answer(request: httpx.Request) -> httpx.Response:
        headers = {"content-type": "text/event-stream", "x-ratelimit-remaining-requests": "9"}
        return httpx.Response(200, headers=headers, content=pieces(body, size, then))

    return answer


async def collect(stream: ChatStream) -> list[ChatDelta]:
    try:
        return [delta async for delta in stream.deltas()]
    finally:
        await stream.aclose()


def streamed_tool_calls(
    deltas: list[ChatDelta], call_id: str, name: str, arguments: str
) -> list[dict[str, Any]]:
    """The tool-call fragments of a stream whose text is "Hello" and that calls one tool,
    checked: the first names the call, the arguments add up to ``arguments``, and the stream
    ends for the tool."""
    assert "".join(delta.delta for delta in deltas) == "Hello"
    calls = [call for delta in deltas for call in delta.tool_calls or []]
    assert calls[0] == {
        "index": 0,
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": ""},
    }
    assert "".join(call["function"]["arguments"] for call in calls) == arguments
    assert deltas[-1].finish_reason == "tool_calls"
    return calls


async def stream_failure(
    provider: Provider, model: str, max_tokens: int, match: str | None = None
) -> ProviderError:
    """The error a stream of ``provider`` opened fine but raised while read (its message
    matching ``match``)."""
    stream = await provider.open_stream(model, chat(), max_tokens)
    with pytest.raises(ProviderError, match=match) as caught:
        await collect(stream)
    return caught.value


def completion(content: str | None = "hello", **message: Any) -> dict[str, Any]:
    return {
        "id": "c1",
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, **message},
                "finish_reason": "tool_calls" if message else "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 12,
            "completion_tokens": 3,
            "total_tokens": 15,
            "prompt_tokens_details": {"cached_tokens": 8},
        },
    }


# --------------------------------------------------------------------------- OpenAI: chat


@pytest.mark.anyio
async def test_openai_chat_request_and_answer() -> None:
    headers = {"x-ratelimit-remaining-tokens": "999", "x-ratelimit-reset-tokens": "1s"}
    provider, upstream = openai(reply(completion(), headers=headers), headers={"x-org": "acme"})
    request = chat(
        ChatMessage(role="system", content="be brief"),
        user("hi"),
        temperature=0.2,
        stop=["\n"],
        extra={"logprobs": True},
    )
    result = await provider.chat("gpt-test", request, 64)

    sent = upstream.requests[-1]
    assert sent.method == "POST"
    assert str(sent.url) == f"{BASE_URL}/chat/completions"
    assert sent.headers["authorization"] == f"Bearer {API_KEY}"
    assert sent.headers["content-type"] == "application/json"
    assert sent.headers["x-org"] == "acme"
    assert upstream.body == {
        "model": "gpt-test",
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        "max_tokens": 64,
        "temperature": 0.2,
        "stop": ["\n"],
        "logprobs": True,
    }
    assert result.content == "hello"
    assert result.finish_reason == "stop"
    assert result.tool_calls is None
    assert result.usage == Usage(prompt_tokens=12, completion_tokens=3, cached_tokens=8)
    assert result.rate_limits.remaining_tokens == 999
    assert result.rate_limits.reset_tokens_s == 1.0


@pytest.mark.anyio
async def test_openai_sampling_params_and_tools_pass_through() -> None:
    provider, upstream = openai(reply(completion()))
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    request = chat(
        top_p=0.5,
        seed=7,
        tools=tools,
        tool_choice="required",
        response_format={"type": "json_object"},
    )
    await provider.chat("m", request, 10)
    body = upstream.body
    assert body["top_p"] == 0.5
    assert body["seed"] == 7
    assert body["tools"] == tools
    assert body["tool_choice"] == "required"
    assert body["response_format"] == {"type": "json_object"}
    assert "temperature" not in body
    assert "stream" not in body


@pytest.mark.anyio
async def test_openai_tool_calls_in_the_answer() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    provider, _ = openai(reply(completion(None, tool_calls=[call])))
    result = await provider.chat("m", chat(), 10)
    assert result.content is None
    assert result.tool_calls == [call]
    assert result.finish_reason == "tool_calls"


@pytest.mark.anyio
async def test_max_completion_tokens_in_extra_replaces_max_tokens() -> None:
    provider, upstream = openai(reply(completion()))
    await provider.chat("o3", chat(extra={"max_completion_tokens": 500}), 500)
    assert upstream.body["max_completion_tokens"] == 500
    assert "max_tokens" not in upstream.body


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("extra", "sent"),
    [
        ({"max_completion_tokens": 2000}, {"max_completion_tokens": 100}),
        ({"max_tokens": 2000}, {"max_tokens": 100}),
        ({"max_output_tokens": 2000}, {"max_tokens": 100, "max_output_tokens": 100}),
        (
            {"max_tokens": 7, "max_completion_tokens": 2000, "max_output_tokens": 9},
            {"max_completion_tokens": 100, "max_output_tokens": 100},
        ),
    ],
)
async def test_the_limit_sent_is_the_one_reserved_for_whatever_extra_says(
    extra: dict[str, int], sent: dict[str, int]
) -> None:
    """The broker reserves for the limit it passes (100 here); no spelling of it in extra
    may send the provider another (max_tokens=1 with max_completion_tokens=2000 overshot a
    budget by 302 %)."""
    provider, upstream = openai(reply(completion()))
    await provider.chat("m", chat(max_tokens=1, extra=extra), 100)
    limits = {
        name: upstream.body[name] for name in extra.keys() | {"max_tokens"} if name in upstream.body
    }
    assert limits == sent
    claude, upstream = anthropic(reply(anthropic_message({"type": "text", "text": "hi"})))
    await claude.chat("m", chat(max_tokens=1, extra=extra), 100)
    assert upstream.body["max_tokens"] == 100
    assert not upstream.body.keys() & {"max_completion_tokens", "max_output_tokens"}


@pytest.mark.anyio
async def test_configured_headers_replace_defaults_whatever_their_case() -> None:
    provider, upstream = openai(reply(completion()), headers={"Authorization": "Bearer other"})
    await provider.chat("m", chat(), 10)
    assert upstream.requests[-1].headers.get_list("authorization") == ["Bearer other"]


@pytest.mark.anyio
async def test_no_key_means_no_authorization_header() -> None:
    upstream = Upstream(reply(completion()))
    provider = OpenAIProvider("local", config(), None, transport=upstream.transport)
    await provider.chat("llama", chat(), 10)
    assert "authorization" not in upstream.requests[-1].headers


# --------------------------------------------------------------------------- OpenAI: streams


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


TOOL_STREAM = sse(
    _chunk({"role": "assistant", "content": ""}),
    _chunk({"content": "Hel"}),
    _chunk({"content": "lo"}),
    _chunk(
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "f", "arguments": ""},
                }
            ]
        }
    ),
    _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a":'}}]}),
    _chunk({"tool_calls": [{"index": 0, "function": {"arguments": " 1}"}}]}),
    _chunk({}, "tool_calls"),
    {
        "choices": [],
        "usage": {
            "prompt_tokens": 5,
            "completion_tokens": 9,
            "prompt_tokens_details": {"cached_tokens": 2},
        },
    },
)


@pytest.mark.anyio
@pytest.mark.parametrize("size", [1, 5, 64, 100_000])
async def test_openai_stream(size: int) -> None:
    provider, upstream = openai(streamed(TOOL_STREAM, size))
    stream = await provider.open_stream("m", chat(), 32)
    assert stream.rate_limits.remaining_requests == 9
    deltas = await collect(stream)

    assert upstream.body["stream"] is True
    assert upstream.body["stream_options"] == {"include_usage": True}
    streamed_tool_calls(deltas, "call_1", "f", '{"a": 1}')
    assert stream.finish_reason == "tool_calls"
    assert stream.usage == Usage(prompt_tokens=5, completion_tokens=9, cached_tokens=2)


@pytest.mark.anyio
async def test_openai_stream_with_crlf_lines_and_comments() -> None:
    body = TOOL_STREAM.replace(b"\n", b"\r\n")
    provider, _ = openai(streamed(b": keep-alive\r\n\r\n" + body, 3))
    stream = await provider.open_stream("m", chat(), 32)
    assert "".join(delta.delta for delta in await collect(stream)) == "Hello"
    assert stream.usage.completion_tokens == 9


@pytest.mark.anyio
@pytest.mark.parametrize("size", [1, 2, 3, 100_000])
@pytest.mark.parametrize("ending", [b"\r", b"\r\n", b"mixed"])
async def test_openai_stream_with_any_line_ending_the_standard_allows(
    ending: bytes, size: int
) -> None:
    """An event stream's lines may end in CR LF, LF or a lone CR, mixed in one stream, and
    a CR LF may be cut between two reads (WHATWG HTML, 9.2.6)."""
    lines = (b": keep-alive\n\n" + TOOL_STREAM).split(b"\n")
    endings = [b"\r", b"\r\n", b"\n"] if ending == b"mixed" else [ending]
    body = b"".join(line + endings[n % len(endings)] for n, line in enumerate(lines[:-1]))
    provider, _ = openai(streamed(body, size))
    stream = await provider.open_stream("m", chat(), 32)
    deltas = await collect(stream)
    streamed_tool_calls(deltas, "call_1", "f", '{"a": 1}')
    assert stream.usage.completion_tokens == 9


@pytest.mark.anyio
async def test_openai_stream_broken_mid_way() -> None:
    body = sse(_chunk({"content": "Hel"}), _chunk({"content": "lo"}), done=False)
    broken = httpx.RemoteProtocolError("peer closed connection: incomplete chunked read")
    provider, _ = openai(streamed(body, 1000, then=broken))
    stream = await provider.open_stream("m", chat(), 32)
    received: list[str] = []

    async def receive() -> None:
        async for delta in stream.deltas():
            received.append(delta.delta)

    with pytest.raises(ProviderError) as caught:
        await receive()
    await stream.aclose()
    assert received == ["Hel", "lo"]
    assert caught.value.kind == "stream_broken"
    assert caught.value.retryable
    assert caught.value.rate_limits.remaining_requests == 9


@pytest.mark.anyio
async def test_openai_stream_that_ends_without_done() -> None:
    provider, _ = openai(streamed(sse(_chunk({"content": "Hel"}), done=False)))
    error = await stream_failure(provider, "m", 32, "ended before")
    assert error.kind == "stream_broken"


@pytest.mark.anyio
async def test_openai_stream_that_ends_after_its_finish_reason_without_done() -> None:
    body = sse(_chunk({"content": "Hi"}), _chunk({}, "stop"), done=False)
    provider, _ = openai(streamed(body))
    stream = await provider.open_stream("m", chat(), 32)
    assert [delta.delta for delta in await collect(stream)] == ["Hi", ""]
    assert stream.finish_reason == "stop"


@pytest.mark.anyio
async def test_an_oversized_event_breaks_the_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sse_module, "MAX_EVENT_BYTES", 100)
    provider, _ = openai(streamed(b"data: " + b"x" * 500, 50))
    error = await stream_failure(provider, "m", 32, "longer than 100 bytes")
    assert error.kind == "stream_broken"


@pytest.mark.anyio
async def test_a_body_left_open_after_done_is_not_waited_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sse_module, "DRAIN_S", 0.05)

    async def open_ended() -> AsyncIterator[bytes]:
        yield sse(_chunk({"content": "Hi"}), _chunk({}, "stop"))
        await anyio.sleep(10)
        yield b""

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=open_ended())

    provider, _ = openai(answer)
    stream = await provider.open_stream("m", chat(), 32)
    with anyio.fail_after(5):
        assert [delta.delta for delta in await collect(stream)] == ["Hi", ""]


@pytest.mark.anyio
async def test_openai_stream_error_event() -> None:
    body = sse(_chunk({"content": "Hi"}), {"error": {"message": "overloaded", "type": "server"}})
    provider, _ = openai(streamed(body))
    error = await stream_failure(provider, "m", 32, "overloaded")
    assert error.kind == "stream_broken"


@pytest.mark.anyio
async def test_openai_stream_refused_before_it_starts() -> None:
    provider, _ = openai(reply({"error": {"message": "slow down"}}, 429, {"retry-after": "3"}))
    with pytest.raises(ProviderError) as caught:
        await provider.open_stream("m", chat(), 32)
    assert caught.value.kind == "rate_limited"
    assert caught.value.retry_after_s == 3.0
    assert caught.value.message == "slow down"


@pytest.mark.anyio
async def test_a_stream_closed_early_stops() -> None:
    provider, _ = openai(streamed(TOOL_STREAM, 9))
    stream = await provider.open_stream("m", chat(), 32)
    async for delta in stream.deltas():
        assert delta.delta == "Hel"
        break
    await stream.aclose()
    assert [delta async for delta in stream.deltas()] == []


# --------------------------------------------------------------------------- OpenAI: the rest


@pytest.mark.anyio
async def test_openai_embeddings_in_input_order() -> None:
    answer = {
        "data": [{"index": 1, "embedding": [0.5, 0.25]}, {"index": 0, "embedding": [1.0, 2.0]}],
        "usage": {"prompt_tokens": 4, "total_tokens": 4},
    }
    provider, upstream = openai(reply(answer))
    result = await provider.embed("emb", ["a", "b"], 2, {"user": "u1"})
    assert str(upstream.requests[-1].url) == f"{BASE_URL}/embeddings"
    assert upstream.body == {"model": "emb", "input": ["a", "b"], "dimensions": 2, "user": "u1"}
    assert result.embeddings == [[1.0, 2.0], [0.5, 0.25]]
    assert result.usage.prompt_tokens == 4


@pytest.mark.anyio
async def test_openai_base64_embeddings() -> None:
    vector = base64.b64encode(struct.pack("<2f", 0.5, -2.0)).decode()
    provider, _ = openai(reply({"data": [{"index": 0, "embedding": vector}]}))
    result = await provider.embed("emb", ["a"], None, {"encoding_format": "base64"})
    assert result.embeddings == [[0.5, -2.0]]


@pytest.mark.anyio
async def test_openai_models() -> None:
    provider, upstream = openai(reply({"object": "list", "data": [{"id": "a"}, {"id": "b"}]}))
    assert await provider.list_models() == ["a", "b"]
    assert upstream.requests[-1].method == "GET"
    assert str(upstream.requests[-1].url) == f"{BASE_URL}/models"


# --------------------------------------------------------------------------- failure classes


def failing(error: Exception) -> Answer:
    def answer(request: httpx.Request) -> httpx.Response:
        raise error

    return answer


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("error", "kind", "may_bill"),
    [
        (httpx.ConnectError("[Errno 111] Connection refused"), "connect", False),
        (httpx.ConnectTimeout("timed out"), "timeout", False),
        (httpx.ReadTimeout("timed out"), "timeout", True),
        (httpx.WriteTimeout("timed out"), "timeout", False),
        (httpx.PoolTimeout("timed out"), "timeout", False),
        (
            httpx.RemoteProtocolError("Server disconnected without sending a response."),
            "connect",
            True,
        ),
        (httpx.ReadError("[Errno 104] Connection reset by peer"), "connect", True),
    ],
)
async def test_transport_failures(error: Exception, kind: str, may_bill: bool) -> None:
    """Each failure's kind, and whether the provider may bill the call all the same: it
    had the whole request when the answer was awaited or read, not before."""
    provider, _ = openai(failing(error))
    with pytest.raises(ProviderError) as caught:
        await provider.chat("m", chat(), 10)
    assert caught.value.kind == kind
    assert caught.value.may_bill is may_bill
    assert caught.value.retryable
    assert caught.value.status is None
    assert "provider.test" in caught.value.message


@pytest.mark.anyio
async def test_the_whole_request_has_a_deadline() -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await anyio.sleep(5)
        return httpx.Response(200, json=completion())

    provider, _ = openai(slow, timeout_s=0.05)
    with anyio.fail_after(2), pytest.raises(ProviderError) as caught:
        await provider.chat("m", chat(), 10)
    assert caught.value.kind == "timeout"
    assert caught.value.may_bill  # it may still answer, and bill


@contextlib.contextmanager
def listener(*, accepting: bool) -> Iterator[str]:
    """A local server that never answers: ``accepting``, it takes each request and keeps it;
    else its backlog is full (one connection waits unaccepted), so connecting never ends."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0 if not accepting else 8)
    waiting = socket.create_connection(server.getsockname()) if not accepting else None
    try:
        yield "http://{}:{}/v1".format(*server.getsockname())
    finally:
        if waiting is not None:
            waiting.close()
        server.close()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # the daemon's loop, the lean pool's
@pytest.mark.parametrize("transport", ["lean", "httpx"])
@pytest.mark.parametrize(("accepting", "may_bill"), [(False, False), (True, True)])
async def test_a_deadline_before_the_request_is_handed_over_bills_nothing(
    anyio_backend: str, transport: str, accepting: bool, may_bill: bool
) -> None:
    """The whole-request deadline that passes while connecting (or waiting for a free
    connection) leaves a call the provider never had: it was charged its bound all the
    same. One that passes while the answer is awaited may still be billed."""
    with listener(accepting=accepting) as base_url:
        settings = ProviderConfig(
            kind="openai", base_url=base_url, timeout_s=0.3, connect_timeout_s=5
        )
        given = httpx.AsyncHTTPTransport() if transport == "httpx" else None
        provider = OpenAIProvider("oa", settings, API_KEY, transport=given)
        try:
            with anyio.fail_after(10), pytest.raises(ProviderError) as caught:
                await provider.chat("m", chat(), 10)
        finally:
            await provider.aclose()
    assert caught.value.kind == "timeout"
    assert caught.value.may_bill is may_bill


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("status", "body", "may_bill"),
    [
        (500, b'{"error": {"message": "boom"}}', False),
        (429, b'{"error": {"message": "slow down"}}', False),
        (400, b'{"error": {"message": "bad"}}', False),
        (200, b'{"choices": "not a list"}', True),
        (200, b"not json", True),
    ],
)
async def test_an_answer_says_whether_the_call_may_be_billed(
    status: int, body: bytes, may_bill: bool
) -> None:
    """An error status says the call was not made; a 2xx that cannot be read was made."""

    async def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=body)

    provider, _ = openai(answer)
    with pytest.raises(ProviderError) as caught:
        await provider.chat("m", chat(), 10)
    assert caught.value.may_bill is may_bill


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (500, "server"),
        (502, "server"),
        (529, "server"),
        (408, "conflict"),
        (409, "conflict"),
        (400, "client"),
        (401, "client"),
        (404, "client"),
        (422, "client"),
    ],
)
async def test_status_failures(status: int, kind: str) -> None:
    body = {"error": {"message": f"failed with {status}", "type": "x", "code": None}}
    provider, _ = openai(reply(body, status, {"x-ratelimit-remaining-requests": "3"}))
    with pytest.raises(ProviderError) as caught:
        await provider.chat("m", chat(), 10)
    assert caught.value.kind == kind
    assert caught.value.status == status
    assert caught.value.message == f"failed with {status}"
    assert caught.value.body == body
    assert caught.value.rate_limits.remaining_requests == 3
    assert caught.value.retryable == (kind != "client")


@pytest.mark.anyio
async def test_rate_limited_with_retry_after() -> None:
    headers = {"retry-after": "20", "x-ratelimit-remaining-requests": "0"}
    provider, _ = openai(reply({"error": {"message": "Rate limit reached"}}, 429, headers))
    with pytest.raises(ProviderError) as caught:
        await provider.chat("m", chat(), 10)
    assert caught.value.kind == "rate_limited"
    assert caught.value.retry_after_s == 20.0
    assert caught.value.rate_limits.remaining_requests == 0


@pytest.mark.anyio
async def test_an_error_without_a_json_body() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, text="<html>upstream unavailable</html>")

    provider, _ = openai(answer)
    with pytest.raises(ProviderError) as caught:
        await provider.chat("m", chat(), 10)
    assert caught.value.kind == "server"
    assert caught.value.message == "<html>upstream unavailable</html>"

    provider, _ = openai(lambda request: httpx.Response(503))
    with pytest.raises(ProviderError, match="HTTP 503 Service Unavailable"):
        await provider.chat("m", chat(), 10)


@pytest.mark.anyio
@pytest.mark.parametrize("body", [b"not json", b'{"choices": "nope"}', b'{"choices": []}'])
async def test_an_undecodable_answer_is_a_protocol_error(body: bytes) -> None:
    provider, _ = openai(lambda request: httpx.Response(200, content=body))
    with pytest.raises(ProviderError) as caught:
        await provider.chat("m", chat(), 10)
    assert caught.value.kind == "protocol"
    assert not caught.value.retryable


DEEP = b"[" * 20_000 + b"]" * 20_000


@pytest.mark.anyio
async def test_answers_nested_too_deep_fail_as_the_provider_s_not_as_a_bug() -> None:
    """msgspec raises RecursionError (not DecodeError) past its depth: an answer, an error
    answer or a stream event nested that deep is the provider's failure, classified."""
    deep_tools = b'{"choices": [{"message": {"content": null, "tool_calls": ' + DEEP + b"}}]}"
    provider, _ = openai(lambda request: httpx.Response(200, content=deep_tools))
    with pytest.raises(ProviderError) as answer:
        await provider.chat("m", chat(), 10)
    assert answer.value.kind == "protocol"
    provider, _ = openai(lambda request: httpx.Response(500, content=DEEP))
    with pytest.raises(ProviderError) as error:
        await provider.chat("m", chat(), 10)
    assert error.value.kind == "server"
    assert isinstance(error.value.body, str)
    event = b'{"choices": [{"delta": {"tool_calls": ' + DEEP + b"}}]}"
    provider, _ = openai(streamed(b"data: " + event + b"\n\n", size=1 << 20))
    stream = await provider.open_stream("m", chat(), 10)
    with pytest.raises(ProviderError) as broken:
        await collect(stream)
    assert broken.value.kind == "protocol"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("call", "says"),
    [
        ({"index": "a", "function": {"arguments": "{}"}}, "at `$[0].index`"),
        ({"index": [0]}, "at `$[0].index`"),
        ({"index": 0, "id": "c", "function": "f"}, "at `$[0].function`"),
    ],
)
async def test_a_tool_call_of_no_shape_quotad_reads_is_a_protocol_error(
    call: dict[str, Any], says: str
) -> None:
    """A tool call whose index is not an integer, or whose function is not an object, failed
    where the stream's pieces were merged (unhashable or unordered indexes) or the answer was
    translated for the front door (``function.get``): an internal error, not the provider's."""
    event = {"choices": [{"delta": {"tool_calls": [call]}}]}
    provider, _ = openai(streamed(sse(event)))
    stream = await provider.open_stream("m", chat(), 10)
    with pytest.raises(ProviderError) as broken:
        await collect(stream)
    assert broken.value.kind == "protocol"
    assert says in broken.value.message
    answer = {"choices": [{"message": {"content": None, "tool_calls": [call]}}]}
    provider, _ = openai(reply(answer))
    with pytest.raises(ProviderError) as refused:
        await provider.chat("m", chat(), 10)
    assert refused.value.kind == "protocol"
    assert says in refused.value.message


@pytest.mark.anyio
async def test_a_tool_call_with_a_null_index_is_the_first() -> None:
    first = {"index": None, "id": "c", "type": "function", "function": {"name": "f"}}
    pieces = [first, {"index": 0, "function": {"arguments": "{}"}}]
    events = [{"choices": [{"delta": {"tool_calls": [piece]}}]} for piece in pieces]
    provider, _ = openai(
        streamed(sse(*events, {"choices": [{"delta": {}, "finish_reason": "stop"}]}))
    )
    deltas = await collect(await provider.open_stream("m", chat(), 10))
    fragments = [call for delta in deltas for call in delta.tool_calls or ()]
    merged = [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    assert merge_tool_calls(fragments) == merged


@pytest.mark.anyio
async def test_the_key_never_appears_in_an_error() -> None:
    echo = {"error": {"message": f"Incorrect API key provided: {API_KEY}."}}
    provider, _ = openai(reply(echo, 401))
    with pytest.raises(ProviderError) as caught:
        await provider.chat("m", chat(), 10)
    error = caught.value
    assert error.kind == "client"
    assert "[redacted]" in error.message
    for text in (error.message, str(error), repr(error), msgspec.json.encode(error.body).decode()):
        assert API_KEY not in text

    provider, _ = openai(failing(httpx.ConnectError(f"refused for {API_KEY}")))
    with pytest.raises(ProviderError) as caught:
        await provider.chat("m", chat(), 10)
    assert API_KEY not in str(caught.value)

    body = sse({"error": {"message": f"bad key {API_KEY}"}})
    provider, _ = openai(streamed(body))
    error = await stream_failure(provider, "m", 10)
    assert API_KEY not in str(error)
    assert API_KEY not in str(error.body)


@pytest.mark.anyio
async def test_a_placeholder_key_is_not_redacted() -> None:
    upstream = Upstream(reply({"error": {"message": "none of the models match"}}, 404))
    provider = OpenAIProvider("local", config(), "none", transport=upstream.transport)
    with pytest.raises(ProviderError, match=r"^none of the models match$"):
        await provider.chat("m", chat(), 10)


def test_proxies_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    remote = httpx.URL("https://api.remote.test/v1")
    assert addresses.environment_proxy(remote) is None
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.test:3128")
    assert addresses.environment_proxy(remote) == "http://proxy.test:3128"
    assert addresses.environment_proxy(httpx.URL("http://127.0.0.1:8000/v1")) is None
    assert addresses.environment_proxy(httpx.URL("http://localhost:8000/v1")) is None
    monkeypatch.setenv("NO_PROXY", "remote.test")
    assert addresses.environment_proxy(remote) is None


# --------------------------------------------------------------------------- Anthropic: requests


def tool_call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def anthropic_message(*content: dict[str, Any], stop_reason: str = "end_turn") -> dict[str, Any]:
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "content": list(content),
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {
            "input_tokens": 10,
            "output_tokens": 4,
            "cache_creation_input_tokens": 100,
            "cache_read_input_tokens": 1000,
        },
    }


@pytest.mark.anyio
async def test_anthropic_request_conversion() -> None:
    provider, upstream = anthropic(reply(anthropic_message({"type": "text", "text": "ok"})))
    png = base64.b64encode(b"\x89PNG").decode()
    request = chat(
        ChatMessage(role="system", content="be brief"),
        ChatMessage(role="developer", content=[{"type": "text", "text": "use tools"}]),
        user(
            [
                {"type": "text", "text": "what is this?", "cache_control": {"type": "ephemeral"}},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}},
                {"type": "image_url", "image_url": {"url": "https://img.test/a.jpg"}},
            ]
        ),
        ChatMessage(
            role="assistant",
            content="let me look",
            tool_calls=[tool_call("t1", "look", '{"q": "x"}'), tool_call("t2", "see", "")],
        ),
        ChatMessage(role="tool", tool_call_id="t1", content="found x"),
        ChatMessage(role="tool", tool_call_id="t2", content=[{"type": "text", "text": "seen"}]),
        user("and so?"),
        temperature=1.7,
        top_p=0.9,
        stop=["END"],
        seed=3,
        response_format={"type": "json_object"},
        tools=[
            {
                "type": "function",
                "function": {
                    "name": "look",
                    "description": "looks",
                    "parameters": {"type": "object", "properties": {"q": {}}},
                },
            },
            {"type": "function", "function": {"name": "see"}},
        ],
        tool_choice={"type": "function", "function": {"name": "look"}},
        extra={"metadata": {"user_id": "u1"}},
    )
    await provider.chat("claude-test", request, 256)

    sent = upstream.requests[-1]
    assert str(sent.url) == f"{BASE_URL}/messages"
    assert sent.headers["x-api-key"] == API_KEY
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in sent.headers
    assert upstream.body == {
        "model": "claude-test",
        "max_tokens": 256,
        "system": "be brief\n\nuse tools",
        "messages": [
            {
                "role": "user",
                "content": [
                    {
                        "type": "text",
                        "text": "what is this?",
                        "cache_control": {"type": "ephemeral"},
                    },
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": png},
                    },
                    {"type": "image", "source": {"type": "url", "url": "https://img.test/a.jpg"}},
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "let me look"},
                    {"type": "tool_use", "id": "t1", "name": "look", "input": {"q": "x"}},
                    {"type": "tool_use", "id": "t2", "name": "see", "input": {}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": "found x"},
                    {
                        "type": "tool_result",
                        "tool_use_id": "t2",
                        "content": [{"type": "text", "text": "seen"}],
                    },
                    {"type": "text", "text": "and so?"},
                ],
            },
        ],
        "temperature": 1.0,
        "top_p": 0.9,
        "stop_sequences": ["END"],
        "tools": [
            {
                "name": "look",
                "description": "looks",
                "input_schema": {"type": "object", "properties": {"q": {}}},
            },
            {"name": "see", "input_schema": {"type": "object", "properties": {}}},
        ],
        "tool_choice": {"type": "tool", "name": "look"},
        "metadata": {"user_id": "u1"},
    }


@pytest.mark.anyio
async def test_a_cached_system_prompt_stays_in_blocks() -> None:
    provider, upstream = anthropic(reply(anthropic_message()))
    cached = {"type": "text", "text": "long rules", "cache_control": {"type": "ephemeral"}}
    await provider.chat("c", chat(ChatMessage(role="system", content=[cached]), user("hi")), 10)
    assert upstream.body["system"] == [cached]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("choice", "converted"),
    [
        ("auto", {"type": "auto"}),
        ("none", {"type": "none"}),
        ("required", {"type": "any"}),
        ({"type": "any"}, {"type": "any"}),
    ],
)
async def test_anthropic_tool_choice(choice: str | dict[str, Any], converted: Any) -> None:
    provider, upstream = anthropic(reply(anthropic_message()))
    await provider.chat("c", chat(tool_choice=choice), 10)
    assert upstream.body["tool_choice"] == converted


@pytest.mark.anyio
async def test_user_text_before_tool_results_is_moved_after_them() -> None:
    provider, upstream = anthropic(reply(anthropic_message()))
    messages = [
        ChatMessage(role="assistant", tool_calls=[tool_call("t1", "f", "{}")]),
        user("meanwhile"),
        ChatMessage(role="tool", tool_call_id="t1", content="done"),
    ]
    await provider.chat("c", chat(*messages), 10)
    blocks = upstream.body["messages"][1]["content"]
    assert [block["type"] for block in blocks] == ["tool_result", "text"]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("message", "says"),
    [
        (
            ChatMessage(role="assistant", tool_calls=[tool_call("t1", "f", "{not json")]),
            "the arguments of tool call 'f' (t1) are not valid JSON",
        ),
        (
            ChatMessage(role="assistant", tool_calls=[tool_call("t1", "f", "[1, 2]")]),
            "the arguments of tool call 'f' (t1) are not an object",
        ),
        (  # its id was sent as null, for Anthropic to refuse
            ChatMessage(role="assistant", tool_calls=[tool_call("", "f", "{}")]),
            "tool call 'f' has no id",
        ),
        (ChatMessage(role="tool", content="orphan"), "no tool_call_id"),
        (
            ChatMessage(
                role="user", content=[{"type": "image_url", "image_url": {"url": "file:/x"}}]
            ),
            "an image_url must be",
        ),
        (  # a system message's texts are joined: TypeError, an internal error
            ChatMessage(role="system", content=[{"type": "text", "text": 5}]),
            "a text part's text is not a string",
        ),
        (
            ChatMessage(role="user", content=[{"type": "text", "text": ["a"]}]),
            "a text part's text is not a string",
        ),
    ],
)
async def test_requests_anthropic_cannot_express_are_client_errors(
    message: ChatMessage, says: str
) -> None:
    provider, upstream = anthropic(reply(anthropic_message()))
    with pytest.raises(ProviderError, match="cannot express") as caught:
        await provider.chat("c", chat(user("hi"), message), 10)
    assert caught.value.kind == "client"
    assert says in caught.value.message
    assert upstream.requests == []


# --------------------------------------------------------------------------- Anthropic: answers


@pytest.mark.anyio
async def test_anthropic_answer_conversion() -> None:
    message = anthropic_message(
        {"type": "thinking", "thinking": "hmm", "signature": "s"},
        {"type": "text", "text": "Let me check. "},
        {"type": "tool_use", "id": "toolu_1", "name": "look", "input": {"q": "x"}},
        stop_reason="tool_use",
    )
    headers = {"anthropic-ratelimit-requests-remaining": "4"}
    provider, _ = anthropic(reply(message, headers=headers))
    result = await provider.chat("c", chat(), 10)
    assert result.content == "Let me check. "
    assert result.tool_calls == [
        {
            "id": "toolu_1",
            "type": "function",
            "function": {"name": "look", "arguments": '{"q":"x"}'},
        }
    ]
    assert result.finish_reason == "tool_calls"
    assert result.usage == Usage(prompt_tokens=1110, completion_tokens=4, cached_tokens=1000)
    assert result.rate_limits.remaining_requests == 4


@pytest.mark.anyio
async def test_a_tool_only_answer_has_no_content() -> None:
    block = {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}
    provider, _ = anthropic(reply(anthropic_message(block, stop_reason="tool_use")))
    result = await provider.chat("c", chat(), 10)
    assert result.content is None
    assert result.tool_calls is not None


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("brand_new", "brand_new"),
    ],
)
async def test_anthropic_stop_reasons(stop_reason: str, finish_reason: str) -> None:
    message = anthropic_message({"type": "text", "text": "x"}, stop_reason=stop_reason)
    provider, _ = anthropic(reply(message))
    assert (await provider.chat("c", chat(), 10)).finish_reason == finish_reason


ANTHROPIC_STREAM = anthropic_sse(
    {
        "type": "message_start",
        "message": {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "content": [],
            "usage": {
                "input_tokens": 20,
                "cache_read_input_tokens": 50,
                "cache_creation_input_tokens": 0,
                "output_tokens": 1,
            },
        },
    },
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "ping"},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "lo"}},
    {"type": "content_block_stop", "index": 0},
    {
        "type": "content_block_start",
        "index": 1,
        "content_block": {"type": "tool_use", "id": "toolu_1", "name": "look", "input": {}},
    },
    {
        "type": "content_block_delta",
        "index": 1,
        "delta": {"type": "input_json_delta", "partial_json": ""},
    },
    {
        "type": "content_block_delta",
        "index": 1,
        "delta": {"type": "input_json_delta", "partial_json": '{"q": '},
    },
    {
        "type": "content_block_delta",
        "index": 1,
        "delta": {"type": "input_json_delta", "partial_json": '"x"}'},
    },
    {"type": "content_block_stop", "index": 1},
    {
        "type": "message_delta",
        "delta": {"stop_reason": "tool_use", "stop_sequence": None},
        "usage": {"output_tokens": 15},
    },
    {"type": "message_stop"},
)


@pytest.mark.anyio
@pytest.mark.parametrize("size", [3, 100_000])
async def test_anthropic_stream(size: int) -> None:
    provider, upstream = anthropic(streamed(ANTHROPIC_STREAM, size))
    stream = await provider.open_stream("c", chat(), 64)
    deltas = await collect(stream)

    assert upstream.body["stream"] is True
    calls = streamed_tool_calls(deltas, "toolu_1", "look", '{"q": "x"}')
    assert all(call["index"] == 0 for call in calls)
    assert stream.finish_reason == "tool_calls"
    assert stream.usage == Usage(prompt_tokens=70, completion_tokens=15, cached_tokens=50)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("error_type", "kind"),
    [
        ("overloaded_error", "stream_broken"),
        ("api_error", "stream_broken"),
        ("rate_limit_error", "rate_limited"),
        ("invalid_request_error", "client"),
    ],
)
async def test_anthropic_stream_error_event(error_type: str, kind: str) -> None:
    body = anthropic_sse(
        {"type": "message_start", "message": {"usage": {"input_tokens": 3}}},
        {"type": "error", "error": {"type": error_type, "message": "Overloaded"}},
    )
    provider, _ = anthropic(streamed(body))
    error = await stream_failure(provider, "c", 64, "Overloaded")
    assert error.kind == kind


@pytest.mark.anyio
async def test_anthropic_stream_cut_before_message_stop() -> None:
    body = ANTHROPIC_STREAM[: ANTHROPIC_STREAM.index(b"event: content_block_stop")]
    provider, _ = anthropic(streamed(body))
    error = await stream_failure(provider, "c", 64, "message_stop")
    assert error.kind == "stream_broken"


@pytest.mark.anyio
async def test_anthropic_has_no_embeddings() -> None:
    provider, upstream = anthropic(reply({}))
    with pytest.raises(ProviderError, match="no embeddings") as caught:
        await provider.embed("c", ["x"], None, {})
    assert caught.value.kind == "client"
    assert upstream.requests == []


@pytest.mark.anyio
async def test_anthropic_models_every_page() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if "after_id" not in request.url.params:
            return httpx.Response(
                200, json={"data": [{"id": "a"}, {"id": "b"}], "has_more": True, "last_id": "b"}
            )
        return httpx.Response(200, json={"data": [{"id": "c"}], "has_more": False})

    provider, upstream = anthropic(answer)
    assert await provider.list_models() == ["a", "b", "c"]
    assert [request.url.params.get("after_id") for request in upstream.requests] == [None, "b"]
    assert upstream.requests[0].headers["x-api-key"] == API_KEY


@pytest.mark.anyio
async def test_anthropic_errors_carry_the_message_and_rate_limits() -> None:
    body = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    headers = {"retry-after": "4", "anthropic-ratelimit-tokens-remaining": "0"}
    provider, _ = anthropic(reply(body, 529, headers))
    with pytest.raises(ProviderError) as caught:
        await provider.chat("c", chat(), 10)
    assert caught.value.kind == "server"
    assert caught.value.message == "Overloaded"
    assert caught.value.retry_after_s == 4.0
    assert caught.value.rate_limits.remaining_tokens == 0


# --------------------------------------------------------------------------- building, keys


class ClosingTransport(httpx.MockTransport):
    closed = False

    async def aclose(self) -> None:
        self.closed = True


@pytest.mark.anyio
async def test_build_provider_picks_the_wire_format_and_aclose_closes_the_pool() -> None:
    transport = ClosingTransport(lambda request: httpx.Response(200, json={"data": []}))
    provider = build_provider("an", config("anthropic"), API_KEY, transport)
    assert isinstance(provider, AnthropicProvider)
    assert (provider.name, provider.kind) == ("an", "anthropic")
    assert isinstance(build_provider("oa", config(), None), OpenAIProvider)
    assert await provider.list_models() == []
    await provider.aclose()
    assert transport.closed


def test_key_from_the_environment() -> None:
    settings = config(api_key_env="TEST_KEY")
    assert resolve_api_key("oa", settings, {"TEST_KEY": f"  {API_KEY}\n"}) == API_KEY


def test_key_from_a_file(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(f"{API_KEY}\n")
    assert resolve_api_key("oa", config(api_key_file=str(key_file)), {}) == API_KEY


def test_key_from_systemd_credentials(tmp_path: Path) -> None:
    (tmp_path / "oa").write_text(API_KEY)
    environ = {"CREDENTIALS_DIRECTORY": str(tmp_path)}
    assert resolve_api_key("oa", config(), environ) == API_KEY
    assert resolve_api_key("oa", config(api_key_env="UNSET_KEY"), environ) == API_KEY
    assert resolve_api_key("other", config(), environ) is None


def test_no_key_configured_is_none() -> None:
    assert resolve_api_key("local", config(), {}) is None


def test_a_missing_key_file_names_the_provider_and_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ConfigError) as caught:
        resolve_api_key("oa", config(api_key_file=str(missing)), {})
    assert "providers.oa.api_key_file" in str(caught.value)
    assert str(missing) in str(caught.value)


def test_an_empty_key_file_is_an_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text(" \n")
    with pytest.raises(ConfigError, match="is empty"):
        resolve_api_key("oa", config(api_key_file=str(empty)), {})


def test_a_byte_order_mark_before_a_file_key_is_dropped(tmp_path: Path) -> None:
    """Written by some editors; ``str.strip`` keeps U+FEFF, and the key crashed the daemon."""
    key_file = tmp_path / "key"
    key_file.write_bytes(b"\xef\xbb\xbf" + API_KEY.encode() + b"\r\n")
    assert resolve_api_key("oa", config(api_key_file=str(key_file)), {}) == API_KEY


@pytest.mark.parametrize("where", ["file", "env", "credential"])
def test_a_key_a_header_cannot_carry_is_an_error_naming_its_origin(
    tmp_path: Path, where: str
) -> None:
    """A non-ASCII key crashed the daemon (httpx could not encode its header) at start and on
    a reload; now it is a config problem naming the origin and the character, never the key."""
    secret = API_KEY[:4] + "\u00e9" + API_KEY[4:]
    (tmp_path / "oa").write_text(secret)
    settings = {
        "file": config(api_key_file=str(tmp_path / "oa")),
        "env": config(api_key_env="TEST_KEY"),
        "credential": config(),
    }[where]
    environ = {"TEST_KEY": secret, "CREDENTIALS_DIRECTORY": str(tmp_path)}
    with pytest.raises(ConfigError, match="holds U\\+00E9 at 4") as caught:
        resolve_api_key("oa", settings, environ)
    assert "providers.oa" in str(caught.value)
    assert "printable ASCII" in str(caught.value)
    assert API_KEY[4:] not in str(caught.value)


def test_an_unset_key_variable_is_an_error() -> None:
    with pytest.raises(ConfigError, match="OPENAI_TEST_KEY is not set") as caught:
        resolve_api_key("oa", config(api_key_env="OPENAI_TEST_KEY"), {"OTHER": API_KEY})
    assert "providers.oa.api_key_env" in str(caught.value)
    assert API_KEY not in str(caught.value)
