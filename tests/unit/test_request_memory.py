"""The daemon-wide bound on request bytes held in memory (:mod:`quotad.daemon.request_memory`),
on both front ends, with a small bound: past it a request is refused (HTTP 503 ``overloaded``
and a close; on the Unix socket ``overloaded`` by its id, the connection going on, or, for a
frame still arriving, ``overloaded`` and a close), the other clients are served, and the bytes
held come back to 0 after every path a request can take.

Before it, each connection and request was bounded but not all of them together: 20 HTTP
connections each sending 15 MB of a body and stalling added 298 MB to the daemon (1,024 may),
and 100 in-flight 1 MiB chats on the socket 229 MiB.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import msgspec
import pytest

from quotad.client import Client, ConnectionLostError
from quotad.daemon import request_memory
from quotad.daemon.config import HttpConfig
from quotad.daemon.front_door import FrontDoor
from quotad.daemon.net.http11 import HttpLimits, HttpRequest, HttpResponse, HttpServer
from quotad.daemon.request_memory import RequestMemory
from quotad.protocol.messages import Chat, ChatMessage, ChatReply, Error, Status, StatusReply
from tests.support.backends import ASYNCIO_BACKENDS
from tests.support.serving import running
from tests.unit.test_http11 import raw_connection, read_response, read_to_close
from tests.unit.test_http_front_door import ScriptedBroker
from tests.unit.test_reload import daemon_on_file, provider_tables
from tests.unit.test_socket_hardening import ENCODER, Peer, serve, wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ASYNCIO_BACKENDS)]

BOUND = 1_000_000
"""The bound in these tests (the daemon's is 512 MiB)."""


@pytest.fixture
def small_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(request_memory, "REQUEST_MEMORY_BYTES", BOUND)


def post(body: bytes, path: str = "/") -> bytes:
    return b"POST %b HTTP/1.1\r\nhost: t\r\ncontent-length: %d\r\n\r\n%b" % (
        path.encode(),
        len(body),
        body,
    )


class Handler:
    """Answers 200 with the bytes held when it ran; on ``/block`` it waits until released."""

    def __init__(self, memory: RequestMemory) -> None:
        self.memory = memory
        self.held_seen: list[int] = []
        self.release = anyio.Event()
        self.blocked = 0

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        self.held_seen.append(self.memory.held)
        if request.path == "/block":
            self.blocked += 1
            await self.release.wait()
        return HttpResponse(200, [], b"ok")


@asynccontextmanager
async def http_serving(
    limits: HttpLimits | None = None,
) -> AsyncIterator[tuple[HttpServer, Handler, RequestMemory]]:
    memory = RequestMemory()
    handler = Handler(memory)
    server = HttpServer(handler, limits=limits, request_memory=memory)
    async with running(server):
        yield server, handler, memory


async def test_one_request_larger_than_the_bound_is_taken_when_it_is_alone(
    anyio_backend: Any,
) -> None:
    """``http.max_body_mb`` and ``daemon.max_frame`` may allow a request past the bound: it
    is served when no other request holds bytes (else it would be refused for ever), and
    while it is held, the others are refused."""
    memory = RequestMemory(100)
    assert memory.take(60)  # a body's first part
    assert memory.take(60, own=60)  # its next: only its own bytes are held
    assert not memory.take(1)  # another request's
    assert not memory.take(10, own=0)
    memory.give(120)
    assert memory.take(150)  # a frame past the bound, alone
    assert not memory.take(1)
    assert (memory.held, memory.refused) == (150, 3)
    memory.give(150)
    assert memory.held == 0


# --------------------------------------------------------------------------- HTTP


async def test_an_http_body_past_the_bound_is_refused_and_the_others_are_served(
    small_bound: None, anyio_backend: Any
) -> None:
    async with http_serving() as (server, _, memory):
        async with raw_connection(server.port) as (staller, _):
            request = post(b"x" * 900_000)
            await staller.send(request[:-100_000])  # then it stalls
            await wait_until(lambda: memory.held == 800_000)
            async with raw_connection(server.port) as (stream, reader):
                await stream.send(post(b"y" * 300_000))
                with anyio.fail_after(10):
                    status, headers, answer = await read_response(reader)
                    assert await read_to_close(reader) == b""
            assert status == 503
            assert headers["retry-after"] == "1"
            assert headers["connection"] == "close"
            error = msgspec.json.decode(answer)["error"]
            assert error["code"] == "overloaded"
            assert "in memory are at their bound (976.6 KiB for the daemon)" in error["message"]
            await wait_until(lambda: memory.held == 800_000)  # the refused body's given back
            async with httpx.AsyncClient(trust_env=False) as client:  # a smaller one fits
                url = f"http://127.0.0.1:{server.port}/"
                answered = await client.post(url, content=b"z" * 1000)
            assert answered.status_code == 200
            assert memory.refused == 1
        await wait_until(lambda: memory.held == 0)  # the staller left mid-body


async def test_http_body_bytes_are_held_until_the_answer_and_given_back_on_every_path(
    small_bound: None, anyio_backend: Any
) -> None:
    async with http_serving(HttpLimits(max_body_bytes=100_000)) as (server, handler, memory):
        async with raw_connection(server.port) as (stream, reader):  # answered, keep-alive
            await stream.send(post(b"a" * 1000))
            with anyio.fail_after(10):
                assert (await read_response(reader))[0] == 200
            assert handler.held_seen == [1000]
            assert memory.held == 0  # the connection still open
        async with raw_connection(server.port) as (stream, reader):  # 413, read in chunks
            chunk = b"b" * 60_000
            await stream.send(
                b"POST / HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n"
                + b"%x\r\n%b\r\n" % (len(chunk), chunk) * 2
            )
            with anyio.fail_after(10):
                assert (await read_response(reader))[0] == 413
            assert memory.held == 0
        async with raw_connection(server.port) as (stream, reader):  # queued when it closes
            await stream.send(b"".join(post(b"c" * 1000, "/block") for _ in range(3)))
            await wait_until(lambda: handler.blocked == 1 and memory.held == 3000)
        await wait_until(lambda: memory.held == 0)
        async with raw_connection(server.port) as (stream, reader):  # gone mid-body
            await stream.send(post(b"d" * 5000)[:-1000])
            await wait_until(lambda: memory.held == 4000)
        await wait_until(lambda: memory.held == 0)
        assert memory.refused == 0


async def test_the_front_door_refuses_a_body_past_the_bound_503_overloaded(
    small_bound: None, anyio_backend: Any
) -> None:
    broker = ScriptedBroker()
    front_door = FrontDoor(
        broker, HttpConfig(listen="127.0.0.1:0", auth="none"), app_for_key=lambda key: None
    )
    memory = front_door.request_memory
    await front_door.bind()
    async with running(front_door):
        port = front_door.server.port
        async with raw_connection(port) as (staller, _):
            request = post(b"x" * 900_000, "/v1/chat/completions")
            await staller.send(request[:-100_000])  # then it stalls
            await wait_until(lambda: memory.held == 800_000)
            async with raw_connection(port) as (stream, reader):
                await stream.send(post(b"y" * 300_000, "/v1/chat/completions"))
                with anyio.fail_after(10):
                    status, headers, answer = await read_response(reader)
        assert status == 503
        assert (headers["retry-after"], headers["retry-after-ms"]) == ("1", "1000")
        assert headers["x-quotad-request-id"]
        assert msgspec.json.decode(answer)["error"]["code"] == "overloaded"
        await wait_until(lambda: memory.held == 0)
        assert not broker.calls


# --------------------------------------------------------------------------- Unix socket


def big_chat(request_id: int, size: int = 30_000) -> Chat:
    return Chat(id=request_id, model="p/m", messages=[ChatMessage(role="user", content="x" * size)])


async def test_a_socket_request_past_the_bound_is_refused_and_the_connection_goes_on(
    monkeypatch: pytest.MonkeyPatch, anyio_backend: Any
) -> None:
    """Frames of 30 KB, each read whole (a frame that arrives in parts is held as it arrives:
    see the next test); the bound 100 KB."""
    monkeypatch.setattr(request_memory, "REQUEST_MEMORY_BYTES", 100_000)
    async with serve() as served:
        memory = served.server.request_memory
        served.provider.release = anyio.Event()
        frame = len(ENCODER.encode(big_chat(1)))
        async with Peer.connect(served.path) as peer:
            [connection] = served.server.connections
            for request_id in (1, 2, 3):
                await peer.send(big_chat(request_id))
            await wait_until(lambda: len(connection.in_flight) == 3)
            assert memory.held == 3 * frame
            await peer.send(big_chat(4))  # 4 x 30 KB > 100 KB
            refused = await peer.next()
            assert isinstance(refused, Error)
            assert (refused.id, refused.code) == (4, "overloaded")
            assert refused.retry_after_s is not None
            assert "in memory are at their bound" in refused.message
            await peer.send(Status(id=5))  # the connection goes on
            assert isinstance(await peer.next(), StatusReply)
            async with Peer.connect(served.path) as other:  # a smaller request still fits
                await other.send(big_chat(6, 1000))
                served.provider.release.set()
                assert isinstance(await other.next(), ChatReply)
            assert {(await peer.next()).id for _ in range(3)} == {1, 2, 3}
            await wait_until(lambda: memory.held == 0)
            served.provider.release = anyio.Event()
            await peer.send(big_chat(7))
            await wait_until(lambda: memory.held == frame)
        await wait_until(lambda: memory.held == 0)  # gone with a request in flight
        assert memory.refused == 1


async def test_a_socket_frame_is_held_as_it_arrives_and_past_the_bound_costs_its_connection(
    small_bound: None, anyio_backend: Any
) -> None:
    """A frame arriving was not counted until whole: 200 connections each sending all but the
    last byte of an 8 MiB frame added 1.6 GB to the daemon's RSS (one uid may hold 768). Now
    its bytes are held as they come, then as its request's once it is whole (never twice);
    past the bound its request's id is not read yet, so its connection is answered
    ``overloaded`` and closed (the others' requests go on), and a connection that goes
    mid-frame gives its bytes back."""
    async with serve() as served:
        memory = served.server.request_memory
        served.provider.release = anyio.Event()
        first = ENCODER.encode(big_chat(1, 600_000))
        second = ENCODER.encode(big_chat(2, 500_000))
        async with Peer.connect(served.path) as peer:
            [connection] = served.server.connections
            await peer.send(first[:1000])
            await wait_until(lambda: memory.held == 1000)
            await peer.send(first[1000:])
            await wait_until(lambda: 1 in connection.in_flight)
            assert memory.held == len(first)
            async with Peer.connect(served.path) as leaving:  # gone mid-frame
                await leaving.send(second[:5000])
                await wait_until(lambda: memory.held == len(first) + 5000)
            await wait_until(lambda: memory.held == len(first))
            async with Peer.connect(served.path) as other:
                await other.send(second[:300_000])
                await wait_until(lambda: memory.held == len(first) + 300_000)
                await other.send(second[300_000:-1])  # past the bound before it is whole
                [refused] = await other.until_closed()
            assert isinstance(refused, Error)
            assert (refused.id, refused.code) == (0, "overloaded")
            assert refused.retry_after_s is not None
            assert refused.message.startswith(
                "the requests quotad holds in memory are at their bound (976.6 KiB for the daemon, "
            )
            assert "of a frame arriving on this connection could not be held" in refused.message
            assert memory.held == len(first)
            assert memory.refused == 1
            served.provider.release.set()
            assert isinstance(await peer.next(), ChatReply)
            await wait_until(lambda: memory.held == 0)


async def test_a_client_sending_a_frame_past_the_bound_reads_why_its_connection_ends(
    small_bound: None, anyio_backend: Any
) -> None:
    """The blocking client sends a frame whole before it reads: closed at once, the
    connection failed its send (broken pipe) and the client never read why. What the peer
    sends after the refusal is read and dropped for a moment (not held), so it reads the
    ``overloaded``."""
    async with serve() as served:
        memory = served.server.request_memory
        stalled = ENCODER.encode(big_chat(1, 900_000))
        async with Peer.connect(served.path) as staller:
            await staller.send(stalled[:-1])
            await wait_until(lambda: memory.held == len(stalled) - 1)

            def chat_past_the_bound() -> Exception:
                with Client(socket=served.path, app="t") as client:
                    content = "x" * 600_000
                    with pytest.raises(ConnectionLostError) as failed:
                        client.chat("p/m", [{"role": "user", "content": content}])
                return failed.value

            failure = await anyio.to_thread.run_sync(chat_past_the_bound)
            assert "the daemon ended the connection: overloaded: the requests quotad " in str(
                failure
            )
            assert memory.held == len(stalled) - 1
        await wait_until(lambda: memory.held == 0)


async def test_the_daemon_shares_one_bound_between_its_two_front_ends(anyio_backend: Any) -> None:
    tables = '[http]\nlisten = "127.0.0.1:0"\n' + provider_tables(9, "p")
    async with daemon_on_file(tables) as (daemon, _):
        assert daemon.http is not None
        assert daemon.server.request_memory is daemon.request_memory
        assert daemon.http.server.request_memory is daemon.request_memory
