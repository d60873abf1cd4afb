"""A reply never costs its connection: an answer whose frame would be over ``daemon.max_frame``
(which ``providers.X.max_response_mb`` may let through) is sent as the request's
``upstream_error`` naming that limit, and the connection serves on; a client reads replies as
large as the daemon says it may send (``Welcome.max_frame``), above the protocol's 8 MiB
default. Before, the daemon sent the oversized frame and the client dropped the connection
(``frame of ... bytes is over the limit``) after the provider was paid."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable

import pytest

from quotad.client import AsyncClient, Client, UpstreamError
from tests.support.daemon import DaemonProcess, daemon_config, sim_provider_config
from tests.support.raw_http import RawHTTPServer, RawRequest, answer, relay

MIB = 1024 * 1024
MESSAGES = [{"role": "user", "content": "hi"}]


def completion(content: str) -> bytes:
    """An OpenAI chat completion answering ``content``."""
    return json.dumps(
        {
            "id": "c",
            "object": "chat.completion",
            "model": "m",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
    ).encode()


def streamed(content: str, piece: int = 32768) -> bytes:
    """The same as an OpenAI stream of server-sent events, ``piece`` characters each."""
    events = [
        b"data: "
        + json.dumps(
            {"choices": [{"index": 0, "delta": {"content": content[at : at + piece]}}]}
        ).encode()
        + b"\n\n"
        for at in range(0, len(content), piece)
    ]
    return b"".join(events) + b"data: [DONE]\n\n"


def plain_or_streamed(content: str) -> Callable[[RawRequest, socket.socket], None]:
    """A handler answering ``content`` as the request asks: whole, or streamed."""
    whole = answer(200, completion(content))
    stream = answer(200, streamed(content), {"content-type": "text/event-stream"})

    def handle(request: RawRequest, connection: socket.socket) -> None:
        (stream if json.loads(request.body).get("stream") else whole)(request, connection)

    return handle


def config(base_url: str, max_frame_mib: int) -> str:
    return daemon_config(
        sim_provider_config("raw", base_url), daemon=f"max_frame = {max_frame_mib * MIB}"
    )


def test_an_answer_over_the_frame_limit_is_the_requests_error_not_the_connections() -> None:
    with (
        RawHTTPServer(plain_or_streamed("x" * 2 * MIB)) as server,
        DaemonProcess(config(server.base_url, 1)) as daemon,
        Client(socket=daemon.socket_path, app="t") as client,
    ):
        with pytest.raises(UpstreamError) as refused:
            client.chat("raw/m", MESSAGES, cache="bypass")
        assert "daemon.max_frame" in refused.value.message
        assert "1.0 MiB" in refused.value.message
        pieces: list[int] = []
        with pytest.raises(UpstreamError, match=r"daemon\.max_frame"):  # its ChatEnd
            relay(client, pieces)
        assert sum(pieces) == 2 * MIB  # every chunk came
        assert client.status().in_flight == 0  # the same connection serves on
        spend = client.spend(period="day", by="app")
        assert spend.total.requests == 2  # both rows kept: the provider was paid


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_clients_read_replies_as_large_as_the_daemon_sends() -> None:
    content = "y" * 9 * MIB  # over the protocol's 8 MiB default, under max_response_mb (32)
    with (
        RawHTTPServer(answer(200, completion(content))) as server,
        DaemonProcess(config(server.base_url, 16)) as daemon,
    ):
        with Client(socket=daemon.socket_path, app="t") as client:
            assert client.chat("raw/m", MESSAGES, cache="bypass").content == content
        async with AsyncClient(socket=daemon.socket_path, app="t") as aclient:
            reply = await aclient.chat("raw/m", MESSAGES, cache="bypass")
            assert reply.content == content
