"""The HTTP/1.1 server core: keep-alive, pipelining, limits, timeouts, streaming, errors and
graceful shutdown, against an in-process server on a loopback port."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar, cast

import anyio
import anyio.abc
import anyio.lowlevel
import httpx
import msgspec
import pytest
from anyio import wait_all_tasks_blocked
from anyio.streams.buffered import BufferedByteReceiveStream

from quotad.daemon.net.http11 import (
    AbortConnection,
    Handler,
    HttpLimits,
    HttpRequest,
    HttpResponse,
    HttpServer,
    StreamingResponse,
)
from quotad.daemon.net.http11 import connection as connection_module
from tests.support.backends import ASYNCIO_BACKENDS
from tests.support.event_loop import TurnCounter
from tests.support.polling import run_loop_until
from tests.support.serving import running

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ASYNCIO_BACKENDS)]


Response = tuple[int, dict[str, str], bytes]
ReadT = TypeVar("ReadT")


@asynccontextmanager
async def serving(handler: Handler, limits: HttpLimits | None = None) -> AsyncIterator[HttpServer]:
    """A server on a free loopback port for the duration of the block."""
    async with running(HttpServer(handler, host="127.0.0.1", port=0, limits=limits)) as server:
        yield server


@asynccontextmanager
async def raw_connection(
    port: int,
) -> AsyncIterator[tuple[anyio.abc.SocketStream, BufferedByteReceiveStream]]:
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        yield stream, BufferedByteReceiveStream(stream)


async def read_response(reader: BufferedByteReceiveStream) -> Response:
    """One response: status, headers (lower-cased names), body (content-length or chunked)."""
    head = (await reader.receive_until(b"\r\n\r\n", 65536)).decode("latin-1")
    status_line, *lines = head.split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = await reader.receive_exactly(int(headers["content-length"]))
    else:
        parts = []
        while size := int(await reader.receive_until(b"\r\n", 100), 16):
            parts.append(await reader.receive_exactly(size))
            await reader.receive_exactly(2)
        await reader.receive_exactly(2)
        body = b"".join(parts)
    return int(status_line.split(" ", 2)[1]), headers, body


async def read_to_close(reader: BufferedByteReceiveStream) -> bytes:
    """Everything until the server closes (a reset counts as a close)."""
    data = bytearray(reader.buffer)
    try:
        while True:
            data += await reader.receive()
    except (anyio.EndOfStream, anyio.BrokenResourceError):
        return bytes(data)


async def exchange(
    handler: Handler,
    request: bytes,
    read: Callable[[BufferedByteReceiveStream], Awaitable[ReadT]],
    limits: HttpLimits | None = None,
) -> ReadT:
    """What ``read`` takes from a raw connection to a server running ``handler`` once
    ``request`` is sent on it (within 10 s)."""
    async with serving(handler, limits) as server, raw_connection(server.port) as (stream, reader):
        await stream.send(request)
        with anyio.fail_after(10):
            return await read(reader)


async def read_last_response(reader: BufferedByteReceiveStream) -> Response:
    """One response, checked to be followed by the server closing the connection."""
    answer = await read_response(reader)
    assert await read_to_close(reader) == b""
    return answer


async def last_answer(request: bytes, limits: HttpLimits | None = None) -> Response:
    """The one answer the echo server gives to ``request`` on a raw connection, checked to be
    followed by the server closing the connection."""
    return await exchange(echo, request, read_last_response, limits)


def get(path: str, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nhost: test\r\n{extra}\r\n".encode()


async def echo(request: HttpRequest) -> HttpResponse:
    body = msgspec.json.encode(
        {
            "method": request.method,
            "target": request.target,
            "path": request.path,
            "body": request.body.decode(),
            "client_port": request.client[1] if request.client else None,
            "x_test": request.header("X-Test"),
        }
    )
    return HttpResponse(200, [("content-type", "application/json")], body)


async def test_keep_alive_serves_several_requests_on_one_connection() -> None:
    async with serving(echo) as server, httpx.AsyncClient(trust_env=False) as client:
        base = f"http://127.0.0.1:{server.port}"
        first = await client.post(f"{base}/a?q=1", content=b"hello", headers={"x-test": "yes"})
        second = await client.get(f"{base}/b")
    assert first.status_code == second.status_code == 200
    one, two = first.json(), second.json()
    assert one["method"] == "POST"
    assert one["target"] == "/a?q=1"
    assert one["path"] == "/a"
    assert one["body"] == "hello"
    assert one["x_test"] == "yes"
    assert two["x_test"] is None
    assert one["client_port"] == two["client_port"]


async def test_pipelined_requests_are_answered_in_order_one_at_a_time() -> None:
    in_flight = 0
    most_in_flight = 0

    async def handler(request: HttpRequest) -> HttpResponse:
        nonlocal in_flight, most_in_flight
        in_flight += 1
        most_in_flight = max(most_in_flight, in_flight)
        if request.path == "/slow":
            await anyio.sleep(0.05)
        in_flight -= 1
        return HttpResponse(200, [], request.path.encode())

    async with serving(handler) as server, raw_connection(server.port) as (stream, reader):
        await stream.send(get("/slow") + get("/second") + get("/third"))
        with anyio.fail_after(5):
            bodies = [(await read_response(reader))[2] for _ in range(3)]
    assert bodies == [b"/slow", b"/second", b"/third"]
    assert most_in_flight == 1


async def test_body_over_the_limit_is_413_and_closes() -> None:
    limits = HttpLimits(max_body_bytes=1000)
    async with serving(echo, limits) as server:
        async with raw_connection(server.port) as (stream, reader):
            await stream.send(b"POST / HTTP/1.1\r\nhost: t\r\ncontent-length: 5000\r\n\r\n")
            with anyio.fail_after(5):
                status, headers, body = await read_response(reader)
                rest = await read_to_close(reader)
        assert status == 413
        assert headers["connection"] == "close"
        assert b"1000" in msgspec.json.decode(body)["error"]["message"].encode()
        assert msgspec.json.decode(body)["error"]["code"] == "bad_request"  # DESIGN §5's codes
        assert rest == b""
        async with raw_connection(server.port) as (stream, reader):
            chunk = b"x" * 600
            await stream.send(
                b"POST / HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n"
                + b"%x\r\n%b\r\n" % (len(chunk), chunk) * 2
            )
            with anyio.fail_after(5):
                status, _, _ = await read_response(reader)
        assert status == 413


async def test_headers_over_the_limit_are_431() -> None:
    limits = HttpLimits(max_header_bytes=1024)
    async with serving(echo, limits) as server:
        for filler in (b"a" * 4000, b"b" * 100_000):
            async with raw_connection(server.port) as (stream, reader):
                await stream.send(b"GET / HTTP/1.1\r\nhost: t\r\nx-big: " + filler + b"\r\n\r\n")
                with anyio.fail_after(5):
                    status, _, body = await read_response(reader)
            assert status == 431
            assert b"headers" in body


async def test_garbage_request_line_is_400_and_closes() -> None:
    status, headers, _ = await last_answer(b"THIS IS NOT HTTP\r\n\r\n")
    assert status == 400
    assert headers["connection"] == "close"


async def test_slowloris_request_is_closed_after_the_read_timeout() -> None:
    limits = HttpLimits(read_timeout_s=0.3)
    async with serving(echo, limits) as server, raw_connection(server.port) as (stream, reader):

        async def dribble() -> None:
            await stream.send(b"GET / HTTP/1.1\r\nhost: t\r\n")
            while True:  # never finishes the headers
                await anyio.sleep(0.05)
                try:
                    await stream.send(b"x-more: 1\r\n")
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    return

        async with anyio.create_task_group() as tg:
            tg.start_soon(dribble)
            with anyio.fail_after(5):
                status, _, _ = await read_response(reader)
                await read_to_close(reader)
            tg.cancel_scope.cancel()
    assert status == 408


async def test_idle_keep_alive_connection_is_closed_after_the_idle_timeout() -> None:
    limits = HttpLimits(idle_timeout_s=0.2)
    status, _, _ = await last_answer(get("/"), limits)
    assert status == 200


async def test_streaming_response_flushes_each_chunk() -> None:
    client_has_first = anyio.Event()

    async def chunks() -> AsyncIterator[bytes]:
        yield b"first"
        await client_has_first.wait()  # deadlocks unless "first" reached the client
        yield b"second"

    async def handler(request: HttpRequest) -> StreamingResponse:
        return StreamingResponse(200, [("content-type", "text/plain")], chunks())

    received = []
    async with serving(handler) as server, httpx.AsyncClient(trust_env=False) as client:
        with anyio.fail_after(5):
            async with client.stream("GET", f"http://127.0.0.1:{server.port}/") as response:
                async for chunk in response.aiter_raw():
                    received.append(chunk)
                    client_has_first.set()
    assert response.headers["transfer-encoding"] == "chunked"
    assert received == [b"first", b"second"]


async def test_client_disconnect_stops_the_stream() -> None:
    stream_closed = anyio.Event()

    async def chunks() -> AsyncIterator[bytes]:
        try:
            yield b"data: 1\n\n"
            await anyio.sleep_forever()
            yield b"never"
        finally:
            stream_closed.set()

    async def handler(request: HttpRequest) -> StreamingResponse:
        return StreamingResponse(200, [("content-type", "text/event-stream")], chunks())

    async with serving(handler) as server:
        async with raw_connection(server.port) as (stream, reader):
            await stream.send(get("/"))
            with anyio.fail_after(5):
                await reader.receive_until(b"data: 1\n\n", 65536)
        with anyio.fail_after(5):
            await stream_closed.wait()


@pytest.mark.parametrize("extra", ["", "connection: close\r\n"])
async def test_client_disconnect_cancels_a_waiting_handler(extra: str) -> None:
    cancelled = anyio.Event()

    async def handler(request: HttpRequest) -> HttpResponse:
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()
        raise AssertionError("unreachable")

    async with serving(handler) as server:
        async with raw_connection(server.port) as (stream, _):
            await stream.send(get("/", extra))  # its last request, or not: either way
            await wait_all_tasks_blocked()
        with anyio.fail_after(5):
            await cancelled.wait()


async def test_handler_error_is_500_and_the_server_carries_on() -> None:
    async def handler(request: HttpRequest) -> HttpResponse:
        if request.path == "/boom":
            raise RuntimeError("boom")
        if request.path == "/bad-header":
            return HttpResponse(200, [("x-injected", "a\r\nset-cookie: b")], b"")
        if request.path == "/nul-header":
            return HttpResponse(200, [("x-target", "sim/gpt-\x004o")], b"")
        if request.path == "/wide-header":
            return HttpResponse(200, [("x-target", "sim/漢字")], b"")
        return HttpResponse(200, [], b"ok")

    async with serving(handler) as server, httpx.AsyncClient(trust_env=False) as client:
        base = f"http://127.0.0.1:{server.port}"
        boom = await client.get(f"{base}/boom")
        bad_header = await client.get(f"{base}/bad-header")
        nul_header = await client.get(f"{base}/nul-header")  # never sent: the client fails
        wide_header = await client.get(f"{base}/wide-header")
        ok = await client.get(f"{base}/fine")
    assert boom.status_code == 500
    assert boom.json()["error"]["message"] == "internal server error"
    assert bad_header.status_code == nul_header.status_code == wide_header.status_code == 500
    assert "set-cookie" not in bad_header.headers
    assert "x-target" not in nul_header.headers
    assert (ok.status_code, ok.content) == (200, b"ok")


async def test_abort_connection_closes_without_an_answer() -> None:
    async def handler(request: HttpRequest) -> HttpResponse:
        raise AbortConnection(reset=request.path == "/reset")

    async with serving(handler) as server:
        for path in ("/close", "/reset"):
            async with raw_connection(server.port) as (stream, reader):
                await stream.send(get(path))
                with anyio.fail_after(5):
                    assert await read_to_close(reader) == b""


async def test_http10_request_is_answered_and_closed() -> None:
    status, headers, body = await last_answer(b"GET /old HTTP/1.0\r\n\r\n")
    assert status == 200
    assert headers["connection"] == "close"
    assert msgspec.json.decode(body)["path"] == "/old"


async def test_graceful_shutdown_finishes_requests_in_flight() -> None:
    entered = anyio.Event()
    release = anyio.Event()

    async def handler(request: HttpRequest) -> HttpResponse:
        if request.path == "/slow":
            entered.set()
            await release.wait()
        return HttpResponse(200, [], request.path.encode())

    server = HttpServer(handler, host="127.0.0.1", port=0)
    results: dict[str, Response] = {}
    async with anyio.create_task_group() as tg:
        port = await tg.start(server.serve)
        async with raw_connection(port) as (idle_stream, idle_reader):
            await idle_stream.send(get("/first"))
            assert (await read_response(idle_reader))[2] == b"/first"

            async def slow_request() -> None:
                async with raw_connection(port) as (stream, reader):
                    await stream.send(get("/slow"))
                    results["slow"] = await read_response(reader)

            with anyio.fail_after(5):
                tg.start_soon(slow_request)
                await entered.wait()
                tg.start_soon(server.shutdown, 5.0)
                await wait_all_tasks_blocked()
                assert server.closing
                assert await read_to_close(idle_reader) == b""  # idle keep-alive: closed
                async with raw_connection(port) as (new_stream, new_reader):  # still accepting
                    await new_stream.send(get("/new"))
                    status, new_headers, new_body = await read_response(new_reader)
                    assert (status, new_body) == (200, b"/new")  # the handler saw closing
                    assert new_headers["connection"] == "close"
                    assert await read_to_close(new_reader) == b""
                assert "slow" not in results
                release.set()
    status, headers, body = results["slow"]
    assert (status, body) == (200, b"/slow")
    assert headers["connection"] == "close"


async def test_shutdown_deadline_cancels_what_is_left() -> None:
    async def handler(request: HttpRequest) -> HttpResponse:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    server = HttpServer(handler, host="127.0.0.1", port=0)
    async with anyio.create_task_group() as tg:
        port = await tg.start(server.serve)
        async with raw_connection(port) as (stream, reader):
            await stream.send(get("/"))
            await wait_all_tasks_blocked()
            with anyio.fail_after(5):
                await server.shutdown(deadline_s=0.1)
                assert await read_to_close(reader) == b""


async def test_a_chunked_body_ends_with_the_trailers_announced_and_sound_only() -> None:
    """Trailers (a stream's cost) are announced in the head and sent after the last chunk;
    one not announced, or one that would split the trailer section, is left out."""

    async def chunks(trailers: list[tuple[str, str]]) -> AsyncIterator[bytes]:
        yield b"body"
        trailers += [("x-cost", "0.5"), ("x-other", "1"), ("x-cost", "2\r\nx-evil: 1")]

    async def handler(request: HttpRequest) -> StreamingResponse:
        trailers: list[tuple[str, str]] = []
        return StreamingResponse(200, [], chunks(trailers), ("x-cost",), trailers)

    received = await exchange(handler, get("/", "connection: close\r\n"), read_to_close)
    head, _, body = received.partition(b"\r\n\r\n")
    assert b"\r\ntrailer: x-cost\r\n" in head + b"\r\n"
    assert body == b"4\r\nbody\r\n0\r\nx-cost: 0.5\r\n\r\n"


async def test_a_stream_whose_head_cannot_be_written_is_answered_500_and_closed() -> None:
    """A streaming answer with a header that would split the head is a handler error (500);
    its chunks were left unclosed (a broker stream's generator, a /metrics scrape's place)."""

    class Chunks:
        closed = False

        def __aiter__(self) -> Chunks:
            return self

        async def __anext__(self) -> bytes:
            raise StopAsyncIteration

        async def aclose(self) -> None:
            Chunks.closed = True

    async def handler(request: HttpRequest) -> StreamingResponse:
        return StreamingResponse(200, [("x-split", "a\r\nx-evil: 1")], Chunks())

    status, _, _ = await exchange(handler, get("/"), read_response)
    assert status == 500
    assert Chunks.closed


class EndlessStream:
    """A handler that answers with 64 KiB chunks for ever: how many it made, and an event set
    once the server closed the stream."""

    def __init__(self) -> None:
        self.produced = 0
        self.closed = anyio.Event()

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            while True:
                self.produced += 1
                yield b"x" * 65536
                await anyio.lowlevel.checkpoint()
        finally:
            self.closed.set()

    async def handler(self, request: HttpRequest) -> StreamingResponse:
        return StreamingResponse(200, [], self.chunks())


async def test_a_client_that_does_not_read_holds_a_stream_back() -> None:
    endless = EndlessStream()
    async with serving(endless.handler) as server:
        async with raw_connection(server.port) as (stream, _):
            await stream.send(get("/"))
            await anyio.sleep(0.5)  # reading nothing
            held_at = endless.produced
            await anyio.sleep(0.2)
            # the socket buffers fill up (a few MB), then writing waits for the client
            assert held_at < 300
            assert endless.produced - held_at <= 1
        with anyio.fail_after(5):
            await endless.closed.wait()


async def test_a_client_that_reads_nothing_for_the_stall_bound_is_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A stream (``/metrics`` among them, no key needed) whose client never read held its
    connection and its stream for ever; now for :data:`WRITE_STALL_S` at most."""
    monkeypatch.setattr(connection_module, "WRITE_STALL_S", 0.3)
    endless = EndlessStream()
    async with serving(endless.handler) as server:
        async with raw_connection(server.port) as (stream, _):
            await stream.send(get("/"))
            await anyio.sleep(1.0)  # reading nothing, past the bound
            with anyio.fail_after(10):  # what was sent before the drop, then the end
                with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                    while True:
                        await stream.receive(1 << 20)
        with anyio.fail_after(5):
            await endless.closed.wait()


async def send_in_pieces(stream: anyio.abc.SocketStream, data: bytes, size: int = 10_000) -> None:
    for start in range(0, len(data), size):
        await stream.send(data[start : start + size])
        await anyio.sleep(0.002)


async def test_a_long_pipelined_burst_is_read_in_bounded_steps_and_answered_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def handler(request: HttpRequest) -> HttpResponse:
        return HttpResponse(200, [], request.path.encode())

    monkeypatch.setattr(connection_module, "READ_AHEAD_BYTES", 4096)  # pause, resume, often
    count = 3000  # ~110 KB of requests
    burst = b"".join(get(f"/{number}") for number in range(count))
    async with (
        serving(handler) as server,
        raw_connection(server.port) as (stream, reader),
        anyio.create_task_group() as tasks,
    ):
        tasks.start_soon(send_in_pieces, stream, burst)
        with anyio.fail_after(30):
            bodies = [(await read_response(reader))[2] for _ in range(count)]
    assert bodies == [f"/{number}".encode() for number in range(count)]


async def test_big_pipelined_heads_wait_for_the_answer_before_them_and_are_all_answered() -> None:
    """Past HELD_HEAD_BYTES of heads not released, what is read waits unparsed and reading
    stops (see the parser's tests); once each answer is done the next head is parsed and
    reading goes on: every request is answered, in order."""
    go_on = anyio.Event()

    async def handler(request: HttpRequest) -> HttpResponse:
        if request.path == "/0":
            await go_on.wait()
        return HttpResponse(200, [], request.path.encode())

    line = b"x-a: " + b"b" * 57 + b"\r\n"
    head = b"GET /%d HTTP/1.1\r\nhost: t\r\n" + line * 300 + b"\r\n"
    count = 30
    async with (
        serving(handler) as server,
        raw_connection(server.port) as (stream, reader),
        anyio.create_task_group() as tasks,
    ):
        tasks.start_soon(stream.send, b"".join(head % number for number in range(count)))
        await run_loop_until(lambda: len(server._connections) == 1)
        [connection] = server._connections
        await run_loop_until(lambda: connection._reading_paused)
        assert connection._parser is not None
        assert not connection._parser.requests  # none parsed ahead of /0, its head held
        go_on.set()
        with anyio.fail_after(20):
            bodies = [(await read_response(reader))[2] for _ in range(count)]
    assert bodies == [b"/%d" % number for number in range(count)]


async def test_pipelined_answers_that_never_wait_leave_the_other_tasks_turns() -> None:
    """Requests that came together were answered one after another without a turn of the
    event loop when their handler never waits: 4,000 pipelined 404s held every other client
    370 ms."""
    counter = TurnCounter()
    turns_seen: list[int] = []

    async def handler(request: HttpRequest) -> HttpResponse:
        turns_seen.append(counter.turns)
        return HttpResponse(200, [], b"")

    count = 200
    async with (
        serving(handler) as server,
        raw_connection(server.port) as (stream, reader),
        anyio.create_task_group() as tasks,
    ):
        tasks.start_soon(counter.run)
        await stream.send(get("/") * count)  # one write: read by the server at once
        with anyio.fail_after(10):
            for _ in range(count):
                assert (await read_response(reader))[0] == 200
        tasks.cancel_scope.cancel()
    assert len(set(turns_seen)) > count // 2  # a turn between answers, not one for all


async def test_a_read_of_many_pipelined_heads_is_not_parsed_and_authorized_in_one_go() -> None:
    """The heads of one read were parsed, each through the authorize hook, in the read
    callback at once: 4,000 pipelined 404s (124 KB) held every other client 370 ms."""
    counter = TurnCounter()
    turns_seen: list[int] = []

    def authorize(request: HttpRequest) -> HttpResponse | None:
        turns_seen.append(counter.turns)
        return HttpResponse(404, [], b"")

    count = 2000
    server = HttpServer(echo, host="127.0.0.1", port=0, authorize=authorize)
    async with (
        running(server),
        raw_connection(server.port) as (stream, reader),
        anyio.create_task_group() as tasks,
    ):
        tasks.start_soon(counter.run)
        await stream.send(get("/") * count)  # one write: read by the server in a few reads
        with anyio.fail_after(20):
            for _ in range(count):
                assert (await read_response(reader))[0] == 404
        tasks.cancel_scope.cancel()
    assert len(turns_seen) == count
    assert len(set(turns_seen)) > count // 100  # a few heads at a time, not a read's all


async def test_connections_beyond_max_connections_get_503_and_a_close() -> None:
    limits = HttpLimits(max_connections=3)
    async with serving(echo, limits) as server:
        async with contextlib.AsyncExitStack() as held:
            with anyio.fail_after(5):  # each identified by a request: none makes room
                for _ in range(3):
                    stream, reader = await held.enter_async_context(raw_connection(server.port))
                    await stream.send(get("/first"))
                    assert (await read_response(reader))[0] == 200
                await run_loop_until(lambda: server.connections == 3)
                async with raw_connection(server.port) as (_, extra_reader):
                    status, headers, body = await read_response(extra_reader)
                    assert await read_to_close(extra_reader) == b""
            assert (status, headers["retry-after"], headers["connection"]) == (503, "1", "close")
            assert msgspec.json.decode(body)["error"]["code"] == "overloaded"
            assert server.refused_connections == 1
        with anyio.fail_after(5):  # the three closed: room again
            await run_loop_until(lambda: server.connections == 0)
            async with raw_connection(server.port) as (again, again_reader):
                await again.send(get("/again"))
                assert (await read_response(again_reader))[0] == 200
        assert server.accept_problem is None


async def test_a_connection_that_never_sends_a_byte_is_closed_after_the_idle_timeout() -> None:
    limits = HttpLimits(idle_timeout_s=0.2, read_timeout_s=30)
    async with serving(echo, limits) as server, raw_connection(server.port) as (_, reader):
        with anyio.fail_after(5):
            assert await read_to_close(reader) == b""  # closed, without an answer


async def test_an_unauthorized_head_is_answered_before_its_body_is_read() -> None:
    handled: list[str] = []

    async def handler(request: HttpRequest) -> HttpResponse:
        handled.append(request.path)
        return HttpResponse(200, [], b"ok")

    def authorize(request: HttpRequest) -> HttpResponse | None:
        if request.header("authorization") == "yes":
            return None
        return HttpResponse(401, [("content-type", "text/plain")], b"who are you?")

    server = HttpServer(handler, host="127.0.0.1", port=0, authorize=authorize)
    async with anyio.create_task_group() as tasks:
        port = await tasks.start(server.serve)
        async with raw_connection(port) as (stream, reader):
            await stream.send(
                b"POST /x HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n1\r\na\r\n"
            )
            with anyio.fail_after(5):  # answered though the body never ends
                status, headers, body = await read_response(reader)
                sent = 0
                try:  # the server reads no more: its window fills, then it closes
                    while sent < 64 * 1024 * 1024:
                        await stream.send(b"1\r\na\r\n" * 10_000)
                        sent += 60_000
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    pass
        assert (status, headers["connection"], body) == (401, "close", b"who are you?")
        assert sent < 16 * 1024 * 1024  # 1 MiB read and dropped, the rest in socket buffers
        async with raw_connection(port) as (stream, reader):  # no body: keep-alive goes on
            await stream.send(get("/no-key") + get("/key", "authorization: yes\r\n"))
            with anyio.fail_after(5):
                assert (await read_response(reader))[0] == 401
                assert (await read_response(reader))[0] == 200
        with anyio.fail_after(5):
            await server.shutdown(1.0)
    assert handled == ["/key"]


async def test_a_peer_without_a_key_holding_half_sent_requests_does_not_keep_a_key_out() -> None:
    """A peer with no key kept every connection with a half-sent request, reopening each as
    it was closed: a key holder got 503 on 20 requests of 20. Connections no request has
    identified now hold at most half of them, each new one past that closes the oldest still
    waiting for its head (503), and they have HEAD_TIMEOUT_S, not 75 + 30 s, to send one."""

    def authorize(request: HttpRequest) -> HttpResponse | None:
        if request.header("authorization") == "key":
            request.authorized = "the key holder"
        elif request.path != "/healthz":  # /healthz needs no key
            return HttpResponse(401, [], b"no key")
        return None

    limits = HttpLimits(max_connections=8)
    assert (limits.max_unidentified, limits.head_timeout_s) == (4, 10.0)
    server = HttpServer(echo, host="127.0.0.1", port=0, limits=limits, authorize=authorize)
    async with running(server), contextlib.AsyncExitStack() as held:
        keyless = []
        for _ in range(20):
            stream, reader = await held.enter_async_context(raw_connection(server.port))
            await stream.send(b"GET /healthz HTTP/1.1\r\n")  # and never the rest
            keyless.append(reader)
            await run_loop_until(lambda: server.unidentified_connections <= 4)
        with anyio.fail_after(5):
            for request in range(3):  # each time on a new connection
                async with raw_connection(server.port) as (stream, reader):
                    await stream.send(get(f"/{request}", "authorization: key\r\n"))
                    status, _, body = await read_response(reader)
                    assert (status, msgspec.json.decode(body)["path"]) == (200, f"/{request}")
            assert server.unidentified_connections <= 4
            assert server.refused_connections == 0
            assert server.evicted_connections == 16 + 1  # the first key holder's made room
            status, headers, body = await read_response(keyless[0])  # the oldest went first
            assert (status, headers["connection"]) == (503, "close")
            assert b"without a key" in body
            assert await read_to_close(keyless[0]) == b""


async def test_unidentified_connections_whose_answers_are_unread_are_closed_to_make_room() -> None:
    """A peer with no key pipelined requests on each connection of the unidentified share and
    read none of its answers (401s, 404s): waiting to write, none waited for a head, so none
    could be closed to make room and a key holder got 503 until WRITE_STALL_S (60 s) dropped
    them. Now, when none is left waiting for a head, the oldest whose answers wait unread is
    dropped instead; one waiting for a head still goes first."""
    unread_answer = b"n" * 100_000

    def authorize(request: HttpRequest) -> HttpResponse | None:
        if request.header("authorization") == "key":
            request.authorized = "the key holder"
            return None
        return HttpResponse(401, [], unread_answer)

    limits = HttpLimits(max_connections=8)
    server = HttpServer(echo, host="127.0.0.1", port=0, limits=limits, authorize=authorize)
    async with running(server), contextlib.AsyncExitStack() as held:
        stalled = []

        async def connect_and_read_nothing() -> None:
            stream, reader = await held.enter_async_context(raw_connection(server.port))
            await stream.send(get("/no-key") * 300)  # 30 MB of answers, none of them read
            stalled.append(reader)
            await run_loop_until(  # the server waits for it to read: writing paused
                lambda: all(connection._writing_paused for connection in server._unidentified)
            )

        async def served_with_a_key(path: str) -> int:
            async with raw_connection(server.port) as (stream, reader):
                await stream.send(get(path, "authorization: key\r\n"))
                return (await read_response(reader))[0]

        for _ in range(limits.max_unidentified - 1):
            await connect_and_read_nothing()
        headless, _ = await held.enter_async_context(raw_connection(server.port))
        await headless.send(b"GET /healthz HTTP/1.1\r\n")  # and never the rest
        await run_loop_until(lambda: server.unidentified_connections == 4)
        with anyio.fail_after(10):
            assert await served_with_a_key("/first") == 200  # the one waiting for a head went
            assert (server.evicted_connections, server.refused_connections) == (1, 0)
        await connect_and_read_nothing()
        assert server.unidentified_connections == 4  # the share is full again, none heads
        with anyio.fail_after(10):
            assert await served_with_a_key("/second") == 200  # then the oldest unread one
            assert (server.evicted_connections, server.refused_connections) == (2, 0)
            await read_to_close(stalled[0])  # dropped: its answers cut short
            assert server.unidentified_connections == 3


async def test_an_unidentified_connection_has_the_head_timeout_to_send_a_head() -> None:
    def authorize(request: HttpRequest) -> HttpResponse | None:
        request.authorized = "key" if request.header("authorization") == "key" else None
        return None

    limits = HttpLimits(head_timeout_s=0.3, read_timeout_s=30, idle_timeout_s=30)
    server = HttpServer(echo, host="127.0.0.1", port=0, limits=limits, authorize=authorize)
    async with (
        running(server),
        raw_connection(server.port) as (keyless, keyless_reader),
        raw_connection(server.port) as (keyed, keyed_reader),
    ):
        await keyed.send(get("/", "authorization: key\r\n"))
        await keyless.send(b"GET / HTTP/1.1\r\n")
        with anyio.fail_after(5):
            assert (await read_response(keyed_reader))[0] == 200
            status, _, body = await read_response(keyless_reader)
            assert await read_to_close(keyless_reader) == b""
        assert status == 408
        assert b"head not complete within 0.3 s" in body
        await keyed.send(get("/again"))  # identified: the head timeout no longer applies
        with anyio.fail_after(5):
            assert (await read_response(keyed_reader))[0] == 200


async def test_chunks_made_in_one_pass_of_the_loop_go_out_in_one_write(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A stream's chunks made without the loop turning in between (the events of one read of
    a provider's stream) are written together, not one system call each; chunks past
    SINGLE_WRITE_BYTES are written at once; what reaches the client is the same."""
    writes: list[int] = []
    made_connection = connection_module.Connection.connection_made

    class CountedTransport:
        def __init__(self, transport: asyncio.Transport) -> None:
            self._transport = transport

        def write(self, data: bytes) -> None:
            writes.append(len(data))
            self._transport.write(data)

        def __getattr__(self, name: str) -> object:
            return getattr(self._transport, name)

    def connection_made(self: connection_module.Connection, transport: asyncio.Transport) -> None:
        made_connection(self, transport)
        self._transport = cast(asyncio.Transport, CountedTransport(transport))

    monkeypatch.setattr(connection_module.Connection, "connection_made", connection_made)
    small = [b"data: %d\n\n" % i for i in range(300)]
    big = [b"y" * 50_000, b"z" * 50_000]

    async def chunks() -> AsyncIterator[bytes]:
        for chunk in small:
            yield chunk
        await anyio.sleep(0.05)
        for chunk in big:
            yield chunk

    async def handler(request: HttpRequest) -> StreamingResponse:
        return StreamingResponse(200, [("content-type", "text/event-stream")], chunks())

    status, _, body = await exchange(handler, get("/"), read_response)
    assert status == 200
    assert body == b"".join(small + big)
    # the head, the 300 small chunks in one write, the two big ones (together past
    # SINGLE_WRITE_BYTES: the second goes with the first), the end
    assert len(writes) <= 4, writes


async def test_chunks_made_before_a_stream_aborts_still_reach_the_client() -> None:
    """Chunks held for the loop's next pass are written when the stream ends by an error
    too (the sim's broken stream: a few events, then the connection cut)."""

    async def chunks() -> AsyncIterator[bytes]:
        yield b"data: 1\n\n"
        yield b"data: 2\n\n"
        raise AbortConnection

    async def handler(request: HttpRequest) -> StreamingResponse:
        return StreamingResponse(200, [("content-type", "text/event-stream")], chunks())

    received = await exchange(handler, get("/"), read_to_close)
    assert received.startswith(b"HTTP/1.1 200")
    assert b"data: 1\n\n" in received
    assert b"data: 2\n\n" in received
