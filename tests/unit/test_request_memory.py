"""The daemon-wide bound on request bytes held in memory (:mod:`quotad.daemon.request_memory`),
with a small bound: past it a request is refused (HTTP 503 ``overloaded`` and a close), the
other clients are served, and the bytes held come back to 0 after every path a request can take.

Before it, each connection and request was bounded but not all of them together: 20 HTTP
connections each sending 15 MB of a body and stalling added 298 MB to the daemon (1,024 may).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import msgspec
import pytest

from quotad.daemon import request_memory
from quotad.daemon.config import HttpConfig
from quotad.daemon.front_door import FrontDoor
from quotad.daemon.net.http11 import HttpLimits, HttpRequest, HttpResponse, HttpServer
from quotad.daemon.request_memory import RequestMemory
from tests.support.backends import ASYNCIO_BACKENDS
from tests.support.serving import running
from tests.unit.test_http11 import raw_connection, read_response, read_to_close
from tests.unit.test_http_front_door import ScriptedBroker
from tests.unit.test_socket_hardening import wait_until

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
    memory = front_door.server.request_memory
    assert memory is not None
    await front_door.bind()
    async with running(front_door):
        async with raw_connection(front_door.server.port) as (stream, reader):
            await stream.send(post(b"x" * (BOUND + 10), "/v1/chat/completions"))
            with anyio.fail_after(10):
                status, headers, answer = await read_response(reader)
        assert status == 503
        assert (headers["retry-after"], headers["retry-after-ms"]) == ("1", "1000")
        assert headers["x-quotad-request-id"]
        assert msgspec.json.decode(answer)["error"]["code"] == "overloaded"
        await wait_until(lambda: memory.held == 0)
        assert not broker.calls
