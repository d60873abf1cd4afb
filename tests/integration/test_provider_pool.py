"""The lean HTTP/1.1 pool of plain-http providers against a real ``quotad sim``: keep-alive
reuse, a server restart under pooled connections, streams giving their connection back (or
not), the slot limit, and every failure classified as the providers expect."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import httpx
import pytest

from quotad.daemon.config import parse_config
from quotad.daemon.net.httpx_messages import ReadResponse
from quotad.daemon.net.pool import (
    READ_AHEAD_BYTES,
    WHOLE_WRITE_BYTES,
    LeanHTTPTransport,
    _Body,
    _Connection,
)
from quotad.daemon.providers import build_provider
from quotad.daemon.providers.base import Provider, ProviderError
from quotad.protocol.messages import Chat, ChatMessage
from tests.support.backends import ASYNCIO_BACKENDS
from tests.support.daemon import free_port
from tests.support.sim import SimProcess

pytestmark = pytest.mark.parametrize("anyio_backend", ASYNCIO_BACKENDS)

CHAT = Chat(model="m", messages=[ChatMessage(role="user", content="pool test")], max_tokens=4)


@pytest.fixture(scope="module")
def sim() -> Iterator[SimProcess]:
    with SimProcess() as process:
        yield process


@asynccontextmanager
async def provider(base_url: str, **settings: Any) -> AsyncIterator[Provider]:
    raw = {"providers": {"p": {"kind": "openai", "base_url": base_url, **settings}}}
    config = parse_config(raw)
    built = build_provider("p", config.providers["p"], None)
    try:
        yield built
    finally:
        await built.aclose()


def pool_of(built: Provider) -> LeanHTTPTransport:
    transport = built._http._transport  # type: ignore[attr-defined]
    assert isinstance(transport, LeanHTTPTransport)
    return transport


@asynccontextmanager
async def pool_to_server(
    serve: Callable[[anyio.abc.SocketStream], Awaitable[None]], max_connections: int
) -> AsyncIterator[tuple[LeanHTTPTransport, httpx.Request]]:
    """A pool and a request to a loopback TCP server whose connections ``serve`` answers;
    the pool is closed and the server stopped on the way out."""
    pool = LeanHTTPTransport(max_connections=max_connections, keepalive_expiry_s=30)
    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(listener.serve, serve)
            try:
                yield pool, httpx.Request("GET", f"http://127.0.0.1:{port}/")
            finally:
                await pool.aclose()
                tasks.cancel_scope.cancel()


def idle_connections(pool: LeanHTTPTransport) -> int:
    return sum(len(connections) for connections in pool._idle.values())


@pytest.mark.anyio
async def test_one_connection_is_reused_and_a_restart_is_survived(sim: SimProcess) -> None:
    async with provider(sim.base_url) as built:
        pool = pool_of(built)
        for _ in range(5):
            result = await built.chat("gpt-4o-mini", CHAT, 4)
            assert result.content == "sim reply to: pool"
        assert idle_connections(pool) == 1
        stale = pool._idle[("127.0.0.1", sim.port)][0]
        await anyio.to_thread.run_sync(sim.restart)  # closes the pooled connection
        result = await built.chat("gpt-4o-mini", CHAT, 4)
        assert result.usage.completion_tokens == 4
        assert pool._idle[("127.0.0.1", sim.port)][0] is not stale


@pytest.mark.anyio
async def test_streams_give_their_connection_back_only_when_read_whole(sim: SimProcess) -> None:
    async with provider(sim.base_url) as built:
        pool = pool_of(built)
        stream = await built.open_stream("gpt-4o-mini", CHAT, 4)
        deltas = [delta.delta async for delta in stream.deltas()]
        await stream.aclose()
        assert "".join(deltas) == "sim reply to: pool"
        assert stream.usage.completion_tokens == 4
        assert idle_connections(pool) == 1
        cut = await built.open_stream("gpt-4o-mini", CHAT, 4)
        await cut.aclose()  # left unread: that connection cannot be reused
        assert idle_connections(pool) == 0
        assert pool._in_use == 0
        assert (await built.chat("gpt-4o-mini", CHAT, 4)).content


@pytest.mark.anyio
async def test_a_full_pool_waits_then_times_out(sim: SimProcess) -> None:
    pool = LeanHTTPTransport(max_connections=1, keepalive_expiry_s=30)
    body = b'{"model": "m", "messages": [{"role": "user", "content": "x"}]}'
    url = f"{sim.base_url}/chat/completions"

    def request(pool_timeout_s: float) -> httpx.Request:
        timeout = {"connect": 5.0, "read": 5.0, "write": 5.0, "pool": pool_timeout_s}
        return httpx.Request("POST", url, content=body, extensions={"timeout": timeout})

    try:
        with sim.controlled(latency_ms=800):
            async with anyio.create_task_group() as tasks:
                statuses: list[int] = []

                async def slow() -> None:
                    response = await pool.handle_async_request(request(5.0))
                    await response.aread()
                    await response.aclose()
                    statuses.append(response.status_code)

                tasks.start_soon(slow)
                await anyio.sleep(0.2)
                with pytest.raises(httpx.PoolTimeout):
                    await pool.handle_async_request(request(0.1))
                waiting = await pool.handle_async_request(request(5.0))  # gets the slot later
                await waiting.aread()
                await waiting.aclose()
        assert statuses == [200]
        assert waiting.status_code == 200
        assert pool._in_use == 0
    finally:
        await pool.aclose()


@pytest.mark.anyio
async def test_failures_are_classified_for_the_broker(sim: SimProcess) -> None:
    async with provider(f"http://127.0.0.1:{free_port()}/v1") as nobody:
        with pytest.raises(ProviderError) as refused:
            await nobody.chat("m", CHAT, 4)
    assert refused.value.kind == "connect"
    async with provider(sim.base_url, timeout_s=0.3) as built:
        with sim.controlled(latency_ms=2000), pytest.raises(ProviderError) as slow:
            await built.chat("m", CHAT, 4)
        assert slow.value.kind == "timeout"
        # the whole-request bound and the read timeout are both 0.3 s here: which one ends
        # the call first is a race of two timers due in the same millisecond (and anyio lets
        # a task already woken by the read timer resume before a scope's cancel lands)
        assert "within 0.3 s" in str(slow.value)
        with sim.controlled(reset_rate=1.0), pytest.raises(ProviderError) as reset:
            await built.chat("m", CHAT, 4)
        assert reset.value.kind == "connect"
        with sim.controlled(break_stream_rate=1.0):
            stream = await built.open_stream("m", CHAT, 8)
            with pytest.raises(ProviderError) as broken:
                async for _ in stream.deltas():
                    pass
            await stream.aclose()
        assert broken.value.kind == "stream_broken"
        with sim.controlled(fail_rate=1.0), pytest.raises(ProviderError) as failed:
            await built.chat("m", CHAT, 4)
        assert (failed.value.kind, failed.value.status) == ("server", 500)
        assert (await built.chat("m", CHAT, 4)).content  # and the pool still works


@pytest.mark.anyio
async def test_a_call_ends_at_its_deadline_or_its_read_timeout(sim: SimProcess) -> None:
    body = b'{"model": "m", "messages": [{"role": "user", "content": "x"}]}'
    with sim.controlled(latency_ms=1000):
        async with provider(sim.base_url, timeout_s=0.2) as built:
            pool = pool_of(built)
            now = anyio.current_time()
            with pytest.raises(ProviderError) as late:  # the whole request's deadline
                await built.chat("m", CHAT, 4)
            assert late.value.kind == "timeout"
            assert anyio.current_time() - now < 0.9
            timeouts = {"connect": 5.0, "read": 0.2, "write": 5.0, "pool": 5.0}
            request = httpx.Request(
                "POST",
                f"{sim.base_url}/chat/completions",
                content=body,
                extensions={"timeout": timeouts},
            )
            with pytest.raises(httpx.ReadTimeout):  # a read timeout, no deadline at all
                await pool.handle_async_request(request)
            assert pool._in_use == 0
            assert idle_connections(pool) == 0  # a connection cut mid-answer is not kept


@pytest.mark.anyio
async def test_a_small_answer_comes_back_read_as_any_read_response(sim: SimProcess) -> None:
    async with provider(sim.base_url) as built:
        pool = pool_of(built)
        request = httpx.Request("GET", f"{sim.base_url}/models")
        response = await pool.handle_async_request(request)
        assert isinstance(response, ReadResponse)
        assert idle_connections(pool) == 1  # its connection is back before it is looked at
        assert pool._in_use == 0
        assert response.is_closed
        assert response.is_stream_consumed
        assert response.content == await response.aread()
        assert b"".join([piece async for piece in response.aiter_bytes()]) == response.content
        assert response.json()["object"] == "list"
        assert response.request is request
        assert response.headers["content-type"] == "application/json"
        assert response.num_bytes_downloaded == len(response.content)
        assert response.http_version == "HTTP/1.1"
        await response.aclose()


@pytest.mark.anyio
async def test_a_stream_read_slowly_holds_the_server_back() -> None:
    sent = 0

    async def serve(client: anyio.abc.SocketStream) -> None:
        nonlocal sent
        async with client:
            await client.receive()
            await client.send(b"HTTP/1.1 200 OK\r\ncontent-length: 20000000\r\n\r\n")
            chunk = b"x" * 65536
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                while sent < 20_000_000:
                    await client.send(chunk)
                    sent += len(chunk)

    async with pool_to_server(serve, max_connections=1) as (pool, request):
        response = await pool.handle_async_request(request)
        await anyio.sleep(0.5)  # reading nothing of it
        body = response.stream
        assert isinstance(body, _Body)
        connection = body._connection
        assert connection is not None
        assert len(connection.buffer) < READ_AHEAD_BYTES + 1024 * 1024
        assert sent < 20_000_000  # the server is held back (socket buffers full)
        first = await anext(aiter(body))
        assert first
        await response.aclose()


async def chunked_answer(body: bytes) -> list[bytes] | httpx.RemoteProtocolError:
    """The pieces the pool passes on of a chunked answer whose body is ``body``, written at
    once; the pool's error when it refuses it."""

    async def serve(client: anyio.abc.SocketStream) -> None:
        async with client:
            await client.receive()
            head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                await client.send(head + body)
                await client.receive()

    async with pool_to_server(serve, max_connections=1) as (pool, request):
        response = await pool.handle_async_request(request)
        assert isinstance(response.stream, _Body)
        try:
            return [piece async for piece in response.stream]
        except httpx.RemoteProtocolError as refused:
            return refused
        finally:
            await response.aclose()


@pytest.mark.anyio
async def test_chunks_that_come_together_are_passed_on_together() -> None:
    """20,000 one-byte chunks in one write were 20,000 pieces through every layer above, one
    at a time (the event loop held 0.8 s a read ahead, 5 s of CPU per MB of body); chunks
    written otherwise (an extension, spaces around the size) are still read, one at a time."""
    tiny = b"".join(b"1\r\n%c\r\n" % (65 + number % 26) for number in range(20_000))
    odd = b"2;name=value\r\nab\r\n 3 \r\ncde\r\n4\r\nfghi\r\n"
    pieces = await chunked_answer(tiny + odd + tiny + b"0\r\nx-trailer: 1\r\n\r\n")
    assert isinstance(pieces, list)
    letters = bytes(65 + number % 26 for number in range(20_000))
    assert b"".join(pieces) == letters + b"abcdefghi" + letters
    assert len(pieces) < 200


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("body", "refusal"),
    [
        (b"1\r\na\r\n" * 100 + b"1\r\nbX\r\n0\r\n\r\n", "a chunk not followed by CRLF"),
        (b"1\r\na\r\n0\r\n" + b"x-t: 1\r\n" * 10_000 + b"\r\n", "trailers longer than"),
        (b"1\r\na\r\nzz\r\n", "bad chunk size line"),
    ],
    ids=["no CRLF after a chunk", "trailers past the bound", "a size that is no number"],
)
async def test_a_chunked_body_out_of_shape_is_refused(body: bytes, refusal: str) -> None:
    refused = await chunked_answer(body)
    assert isinstance(refused, httpx.RemoteProtocolError)
    assert refusal in str(refused)


@pytest.mark.anyio
async def test_close_delimited_http10_answers_are_read_to_the_close() -> None:
    answers = [
        b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\nthe whole body",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n"
        b"connection: close\r\n\r\nok",
        b"SMTP ready\r\n\r\n",
    ]

    async def serve(client: anyio.abc.SocketStream) -> None:
        async with client:
            await client.receive()
            await client.send(answers.pop(0))

    async with pool_to_server(serve, max_connections=4) as (pool, request):
        first = await pool.handle_async_request(request)
        assert await first.aread() == b"the whole body"
        await first.aclose()
        second = await pool.handle_async_request(request)
        assert (second.status_code, await second.aread()) == (200, b"ok")
        await second.aclose()
        assert idle_connections(pool) == 0  # neither may be kept
        with pytest.raises(httpx.RemoteProtocolError):
            await pool.handle_async_request(request)
        assert pool._in_use == 0


@pytest.mark.anyio
@pytest.mark.parametrize("size", [0, 1000, WHOLE_WRITE_BYTES, WHOLE_WRITE_BYTES + 1, 2**20])
async def test_a_big_body_is_written_as_it_is_after_its_head(
    size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Up to WHOLE_WRITE_BYTES, head and body go in one write; past it, the body object
    itself follows the head (the copy of a 13 MB chat onto its head took ~9 ms of the loop)."""
    received = bytearray()
    written: list[tuple[bytes, ...]] = []
    send = _Connection.send

    def spy(connection: _Connection, pieces: tuple[bytes, ...]) -> None:
        written.append(pieces)
        send(connection, pieces)

    monkeypatch.setattr(_Connection, "send", spy)

    async def serve(client: anyio.abc.SocketStream) -> None:
        async with client:
            while b"\r\n\r\n" not in received or len(received.partition(b"\r\n\r\n")[2]) < size:
                received.extend(await client.receive())
            await client.send(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")

    async with pool_to_server(serve, max_connections=1) as (pool, request):
        body = b"x" * size
        post = httpx.Request("POST", request.url, content=body)
        response = await pool.handle_async_request(post)
        assert response.status_code == 200
        await response.aclose()
    head, _, sent_body = bytes(received).partition(b"\r\n\r\n")
    assert sent_body == body
    assert b"content-length: %d" % size in head.lower()
    [pieces] = written
    if size <= WHOLE_WRITE_BYTES:
        assert pieces == (bytes(received),)
    else:
        assert pieces[0] == head + b"\r\n\r\n"
        assert pieces[1] is post.content
