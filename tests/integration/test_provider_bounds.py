"""Nothing unbounded comes back from a provider: against a raw server sending huge or endless
answers, through both pools (the lean one of plain-http accounts, and httpx's own), a plain
answer past ``max_response_mb`` (framed by its length, by chunks, or by the close) fails as
``protocol`` naming the bound, an endless stream fails as ``stream_broken`` naming it, an error
answer is read only so far; and a real daemon answered 300 MB, or streamed 64 MiB, keeps its
memory bounded (its peak RSS, read from /proc in the test) and its client hears
``upstream_error`` naming the bound."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from quotad.client import Client, UpstreamError
from quotad.daemon.config import parse_config
from quotad.daemon.providers import build_provider
from quotad.daemon.providers.base import Provider, ProviderError
from quotad.protocol.messages import Chat, ChatMessage
from tests.support.backends import ASYNCIO_BACKENDS
from tests.support.daemon import DaemonProcess, daemon_config, sim_provider_config
from tests.support.raw_http import RawHTTPServer, RawRequest, endless, relay

asyncio_backends = pytest.mark.parametrize("anyio_backend", ASYNCIO_BACKENDS)

CHAT = Chat(model="m", messages=[ChatMessage(role="user", content="hi")], max_tokens=4)
MIB = 1024 * 1024
BOUND = "1 MiB (providers.p.max_response_mb)"
PIECE = b"x" * 65536
CHUNKED = b"transfer-encoding: chunked\r\n\r\n"
SSE_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n" + CHUNKED
EVENT = b'data: {"choices": []}\n\n' * 1000


@asynccontextmanager
async def provider(base_url: str, pool: str) -> AsyncIterator[Provider]:
    raw = {"providers": {"p": {"kind": "openai", "base_url": base_url, "max_response_mb": 1}}}
    config = parse_config(raw)
    transport = httpx.AsyncHTTPTransport() if pool == "httpx" else None
    built = build_provider("p", config.providers["p"], None, transport=transport)
    try:
        yield built
    finally:
        await built.aclose()


@pytest.mark.anyio
@asyncio_backends
@pytest.mark.parametrize("pool", ["lean", "httpx"])
@pytest.mark.parametrize(
    "handler",
    [
        endless(b"HTTP/1.1 200 OK\r\ncontent-length: 629145600\r\n\r\n", PIECE, 600 * MIB),
        endless(b"HTTP/1.1 200 OK\r\n" + CHUNKED, PIECE, 64 * MIB, chunked=True),
        endless(b"HTTP/1.0 200 OK\r\n\r\n", PIECE, 64 * MIB),
    ],
    ids=["length", "chunked", "close"],
)
async def test_a_plain_answer_past_the_bound_is_dropped(pool: str, handler: Any) -> None:
    with RawHTTPServer(handler) as server:
        async with provider(server.base_url, pool) as built:
            started = time.monotonic()
            with pytest.raises(ProviderError) as failed:
                await built.chat("m", CHAT, 4)
            assert failed.value.kind == "protocol"
            assert BOUND in failed.value.message
            assert time.monotonic() - started < 10  # it stopped reading


@pytest.mark.anyio
@asyncio_backends
@pytest.mark.parametrize("pool", ["lean", "httpx"])
async def test_an_endless_stream_is_cut_at_the_bound(pool: str) -> None:
    with RawHTTPServer(endless(SSE_HEAD, EVENT, 64 * MIB, chunked=True)) as server:
        async with provider(server.base_url, pool) as built:
            stream = await built.open_stream("m", CHAT, 4)
            try:
                with pytest.raises(ProviderError) as broken:
                    async for _ in stream.deltas():
                        pass
            finally:
                await stream.aclose()
            assert broken.value.kind == "stream_broken"
            assert BOUND in broken.value.message


@pytest.mark.anyio
@asyncio_backends
@pytest.mark.parametrize("pool", ["lean", "httpx"])
async def test_one_endless_line_is_cut_too(pool: str) -> None:
    with RawHTTPServer(endless(SSE_HEAD, b"data: " + PIECE, 64 * MIB, chunked=True)) as server:
        async with provider(server.base_url, pool) as built:
            stream = await built.open_stream("m", CHAT, 4)
            try:
                with pytest.raises(ProviderError, match="max_response_mb") as broken:
                    await anext(aiter(stream.deltas()))
            finally:
                await stream.aclose()
            assert broken.value.kind == "stream_broken"


@pytest.mark.anyio
@asyncio_backends
@pytest.mark.parametrize("pool", ["lean", "httpx"])
async def test_a_huge_error_answer_is_read_only_so_far(pool: str) -> None:
    head = (
        b"HTTP/1.1 500 Oops\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    with RawHTTPServer(endless(head, PIECE, 600 * MIB, chunked=True)) as server:
        async with provider(server.base_url, pool) as built:
            with pytest.raises(ProviderError) as failed:
                await built.chat("m", CHAT, 4)
            assert (failed.value.kind, failed.value.status) == ("server", 500)
            with pytest.raises(ProviderError) as refused:
                await built.open_stream("m", CHAT, 4)
            assert refused.value.status == 500


def peak_rss_mib(pid: int) -> float:
    """The high-water mark of a process's resident memory (VmHWM), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_a_daemon_answered_300_mb_keeps_its_memory_bounded() -> None:
    """Before the bound, a 600 MB answer took the daemon's RSS to 1.23 GB."""

    def huge(request: RawRequest, connection: socket.socket) -> None:
        head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n" + CHUNKED
        endless(head, b"x" * MIB, 300 * MIB, chunked=True)(request, connection)

    with RawHTTPServer(huge) as server:
        config = daemon_config(sim_provider_config("raw", server.base_url))
        with DaemonProcess(config) as daemon:
            assert daemon.process is not None
            before = peak_rss_mib(daemon.process.pid)
            with (
                Client(socket=daemon.socket_path, app="t") as client,
                pytest.raises(UpstreamError) as failed,
            ):
                client.chat("raw/m", [{"role": "user", "content": "hi"}], cache="bypass")
            peak = peak_rss_mib(daemon.process.pid)
            print(f"daemon peak RSS {before:.0f} MiB at start, {peak:.0f} MiB after")
            assert peak < before + 2 * 32 + 40
            assert "32 MiB (providers.raw.max_response_mb)" in failed.value.message


STREAMED_EVENT = (
    b'data: {"choices": [{"index": 0, "delta": {"content": "' + b"x" * 32768 + b'"}}]}\n\n'
)


def test_a_daemon_streamed_64_mb_cuts_the_stream_and_keeps_its_memory_bounded() -> None:
    """A stream's bound holds end to end: the client's stream ends in ``upstream_error``
    naming the bound after less than the bound was relayed, and the daemon's memory stays
    bounded (before the bound, the daemon relayed all 64 MiB of it). The bound is set below
    ``daemon.max_frame`` because the stream's ``ChatEnd`` carries its whole content."""

    def huge(request: RawRequest, connection: socket.socket) -> None:
        endless(SSE_HEAD, STREAMED_EVENT, 64 * MIB, chunked=True)(request, connection)

    with RawHTTPServer(huge) as server:
        config = daemon_config(
            sim_provider_config("raw", server.base_url, extra="max_response_mb = 4")
        )
        with DaemonProcess(config) as daemon:
            assert daemon.process is not None
            before = peak_rss_mib(daemon.process.pid)
            pieces: list[int] = []
            with (
                Client(socket=daemon.socket_path, app="t") as client,
                pytest.raises(UpstreamError) as broken,
            ):
                relay(client, pieces)
            relayed = sum(pieces)
            peak = peak_rss_mib(daemon.process.pid)
            print(f"relayed {relayed} bytes; daemon peak RSS {before:.0f} -> {peak:.0f} MiB")
            assert 0 < relayed < 4 * MIB
            assert "4 MiB (providers.raw.max_response_mb)" in broken.value.message
            assert peak < before + 2 * 4 + 40
            assert daemon.process.poll() is None
