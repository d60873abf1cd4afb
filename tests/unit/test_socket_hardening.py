"""The Unix-socket server in process, on plain asyncio and on uvloop: what a connection may
cost, what happens when the process runs out of descriptors, how permits end, and draining.

Each test serves a real broker (real gates, a real store in a temp dir, a provider that
answers at once or when told) on a real Unix socket, and talks to it with the real client or
with raw frames.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import re
import resource
import shutil
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest

from quotad.client import (
    AsyncClient,
    BadFrameError,
    Client,
    OverloadedError,
    RateLimitedError,
)
from quotad.daemon.access import AccessPolicy
from quotad.daemon.broker import Broker
from quotad.daemon.config import Config, parse_config
from quotad.daemon.errors import RequestError
from quotad.daemon.providers.base import ChatResult
from quotad.daemon.routing import Router
from quotad.daemon.server import Connection, ConnectionLimits, SocketServer, listener
from quotad.daemon.server import connection as connection_module
from quotad.daemon.server.connection import MAX_HELLO_FRAME
from quotad.daemon.server.snapshots import (
    MAX_SNAPSHOTS_PER_S,
    SNAPSHOT_BURST,
    STATUS_REUSE_S,
    SnapshotPace,
)
from quotad.daemon.store import Store
from quotad.protocol.framing import FrameEncoder, reply_decoder
from quotad.protocol.messages import (
    Acquire,
    Chat,
    ChatMessage,
    ChatReply,
    Error,
    Hello,
    Message,
    Ok,
    Permit,
    Reply,
    Settle,
    Snapshot,
    Status,
    StatusReply,
    Subscribe,
    Usage,
    Welcome,
)
from tests.support.backends import ASYNCIO_BACKENDS
from tests.support.client_apis import CLIENT_APIS, client_maker
from tests.support.faults import break_first_call
from tests.support.peers import ConnectionsHeldAs
from tests.support.providers import InProcessProvider

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ASYNCIO_BACKENDS)]

PATIENCE_S = 10.0
"""How long a test waits for what must happen (generous: the machine is shared)."""
ENCODER = FrameEncoder()
HELLO = ENCODER.encode(Hello(app="test"))


class Provider(InProcessProvider):
    """Answers a chat when ``release`` is set (at once unless a test clears it)."""

    def __init__(self) -> None:
        self.release = anyio.Event()
        self.release.set()

    async def chat(self, model: str, request: Chat, max_tokens: int) -> ChatResult:
        await self.release.wait()
        return ChatResult(content="x", usage=Usage(prompt_tokens=5, completion_tokens=3))


def make_config(**daemon: Any) -> Config:
    return parse_config(
        {
            "daemon": daemon,
            "providers": {
                "p": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1", "max_concurrency": 2}
            },
            "cache": {"mode": "off"},
        }
    )


@dataclass
class Served:
    server: SocketServer
    path: Path
    provider: Provider
    broker: Broker


@contextlib.asynccontextmanager
async def serve(**daemon: Any) -> AsyncIterator[Served]:
    """A socket server over a real broker and store, until the block ends."""
    config = make_config(**daemon)
    directory = Path(tempfile.mkdtemp(prefix="qs", dir="/tmp"))
    store = Store(config, directory / "state")
    await store.open()
    provider = Provider()
    broker = Broker(config, Router(config, {"p": provider}), store)
    server = SocketServer(
        broker,
        directory / "q.sock",
        limits=ConnectionLimits.from_config(config.daemon),
        access=AccessPolicy.from_config(config.daemon),
    )
    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(broker.gates.run)
            await tasks.start(server.serve)
            try:
                yield Served(server, server.path, provider, broker)
            finally:
                provider.release.set()
                await server.shutdown(1.0)
                tasks.cancel_scope.cancel()
    finally:
        await store.close()
        shutil.rmtree(directory, ignore_errors=True)


class Peer:
    """A raw connection: frames out, replies in."""

    def __init__(self, stream: anyio.abc.SocketStream) -> None:
        self.stream = stream
        self.decoder = reply_decoder()
        self.replies: list[Reply] = []

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, path: Path, *, hello: bool = True) -> AsyncIterator[Peer]:
        async with await anyio.connect_unix(path) as stream:
            peer = cls(stream)
            if hello:
                await peer.send(HELLO)
                assert isinstance(await peer.next(), Welcome)
            yield peer

    async def send(self, data: bytes | Message) -> None:
        await self.stream.send(data if isinstance(data, bytes) else ENCODER.encode(data))

    async def next(self) -> Reply:
        """The next reply (fails the test if none comes in :data:`PATIENCE_S`)."""
        with anyio.fail_after(PATIENCE_S):
            while not self.replies:
                self.replies.extend(self.decoder.feed(await self.stream.receive()))
        return self.replies.pop(0)

    async def until_closed(self) -> list[Reply]:
        """Every reply until the server closes the connection."""
        with anyio.fail_after(PATIENCE_S):
            with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                while True:
                    self.replies.extend(self.decoder.feed(await self.stream.receive()))
        replies, self.replies = self.replies, []
        return replies


def acquire(request_id: int, **fields: Any) -> Acquire:
    return Acquire(id=request_id, target="p/m", **fields)


def chat(request_id: int) -> Chat:
    return Chat(id=request_id, model="p/m", messages=[ChatMessage(role="user", content="hi")])


async def wait_until(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` (server state that no event announces) for :data:`PATIENCE_S`."""
    with anyio.fail_after(PATIENCE_S):
        while not condition():  # noqa: ASYNC110 (plain state, no event to wait on)
            await anyio.sleep(0.01)


# --------------------------------------------------------------------------- one connection


async def test_two_requests_with_one_id_in_one_read(anyio_backend: Any) -> None:
    """Both used to pass the check (the id was registered when the task started): the second
    task then deleted the first's entry and the daemon died of a KeyError."""
    async with serve() as served, Peer.connect(served.path) as peer:
        served.provider.release = anyio.Event()
        await peer.send(ENCODER.encode(chat(5)) + ENCODER.encode(chat(5)))
        refused = await peer.next()
        assert isinstance(refused, Error)
        assert (refused.id, refused.code) == (5, "bad_request")
        assert "already in flight" in refused.message
        served.provider.release.set()
        assert (await peer.next()).id == 5
        await peer.send(ENCODER.encode(Subscribe(id=7)) + ENCODER.encode(Subscribe(id=7)))
        assert {type(await peer.next()).__name__ for _ in range(2)} == {"Error", "Snapshot"}
    # (the daemon lived on to close them: the second Subscribe no longer ends in a KeyError)


async def test_an_answer_that_cannot_be_encoded_is_still_answered(
    anyio_backend: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A reply holding text that is not Unicode (a lone surrogate, as a provider's error once
    did through redaction) could not be encoded: the request's task died unanswered (its
    client waited forever) with a traceback. Now an error keeps its code, its text escaped;
    anything else is ``internal``; the connection serves on."""
    async with serve() as served, Peer.connect(served.path) as peer:

        async def refuses(request: Chat, caller: Any) -> Any:
            error = RequestError("upstream_error", "", retry_after_s=2.0)
            error.message = "p/m answered \ud800 here"  # past RequestError's own escaping
            raise error

        monkeypatch.setattr(served.broker, "chat", refuses)
        await peer.send(chat(5))
        refused = await peer.next()
        assert isinstance(refused, Error)
        assert (refused.id, refused.code, refused.retry_after_s) == (5, "upstream_error", 2.0)
        assert refused.message == "p/m answered \\ud800 here"

        async def answers(request: Chat, caller: Any) -> ChatReply:
            return ChatReply(id=request.id, content="a lone \udfff")

        monkeypatch.setattr(served.broker, "chat", answers)
        await peer.send(chat(6))
        failed = await peer.next()
        assert isinstance(failed, Error)
        assert (failed.id, failed.code) == (6, "internal")
        assert failed.message.startswith("quotad could not encode its ChatReply: 'utf-8' codec")
        await peer.send(Status(id=7))
        assert isinstance(await peer.next(), StatusReply)
    said = [
        record.getMessage() for record in caplog.records if "could not encode" in record.message
    ]
    assert said == [
        "could not encode a Error of request 5: 'utf-8' codec can't encode character '\\ud800' "
        "in position 13: surrogates not allowed",
        "could not encode a ChatReply of request 6: 'utf-8' codec can't encode character "
        "'\\udfff' in position 7: surrogates not allowed",
    ]
    assert all(record.exc_info is None for record in caplog.records)


async def test_a_frame_over_max_frame_is_answered_to_a_peer_still_sending_it(
    anyio_backend: Any,
) -> None:
    """A peer that sends a frame whole before it reads (the blocking client did, before it
    refused such a frame itself): the connection closed at the frame's head, its send failed
    (broken pipe) and it never read the ``bad_frame`` DESIGN §5 promises. What the peer still
    sends is now read and dropped for a moment."""
    over = Chat(id=1, model="p/m", messages=[ChatMessage(role="user", content="x" * 4_000_000)])
    frame = ENCODER.encode(over)
    async with serve(max_frame=1024 * 1024) as served:

        def send_whole_then_read() -> list[Reply]:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(PATIENCE_S)
                sock.connect(str(served.path))
                sock.sendall(HELLO + frame)
                decoder = reply_decoder()
                replies: list[Reply] = []
                while data := sock.recv(65536):
                    replies.extend(decoder.feed(data))
                return replies

        welcome, refused = await anyio.to_thread.run_sync(send_whole_then_read)
        assert isinstance(welcome, Welcome)
        assert isinstance(refused, Error)
        assert (refused.id, refused.code) == (0, "bad_frame")
        over_by = f"frame of {len(frame) - 4} bytes is over the limit of 1048576 bytes"
        assert refused.message == over_by
        async with AsyncClient(socket=served.path) as client:  # the daemon serves on
            assert (await client.status()).pid == os.getpid()


async def test_a_first_frame_past_the_hello_bound_is_refused_at_its_head(
    anyio_backend: Any,
) -> None:
    """Any process the socket's mode lets connect may send a first frame before saying who it
    is: one of daemon.max_frame (8 MiB) was read, scanned and decoded whole, a second of the
    event loop for 8 MiB of tiny values, before it was refused as no Hello. A first frame is
    now bounded at MAX_HELLO_FRAME, refused from its length; the frames after a Hello are
    bounded by max_frame as ever."""
    big = Chat(id=1, model="p/m", messages=[ChatMessage(role="user", content="x" * 200_000)])
    frame = ENCODER.encode(big)
    async with serve() as served:

        def send_whole_then_read(first: bytes) -> list[Reply]:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(PATIENCE_S)
                sock.connect(str(served.path))
                sock.sendall(first)
                sock.shutdown(socket.SHUT_WR)
                decoder = reply_decoder()
                replies: list[Reply] = []
                while data := sock.recv(65536):
                    replies.extend(decoder.feed(data))
                return replies

        [refused] = await anyio.to_thread.run_sync(send_whole_then_read, frame)
        assert isinstance(refused, Error)
        assert (refused.id, refused.code) == (0, "bad_frame")
        assert refused.message == (
            f"frame of {len(frame) - 4} bytes is over the limit of {MAX_HELLO_FRAME} bytes "
            "before a Hello (a connection's first frame is its Hello)"
        )
        async with Peer.connect(served.path) as peer:  # past its Hello, max_frame bounds it
            await peer.send(big)
            assert (await peer.next()).id == 1


@pytest.mark.parametrize("client_api", CLIENT_APIS[:2])
async def test_a_request_over_max_frame_is_refused_unsent_and_the_connection_goes_on(
    anyio_backend: Any, client_api: tuple[str, dict[str, Any]] | None
) -> None:
    """A chat over the ``max_frame`` the daemon's ``Welcome`` told was sent: the daemon
    answered ``bad_frame`` and closed the connection, so the caller got
    ``ConnectionLostError`` and so did every other request in flight on the client. The client
    now refuses it with ``BadFrameError`` before sending anything: the chat in flight is
    answered, and the next request goes on the same connection."""
    user_hi = [{"role": "user", "content": "hi"}]
    over = [{"role": "user", "content": "x" * 2_000_000}]
    async with serve(max_frame=1024 * 1024) as served:
        served.provider.release = anyio.Event()  # chats wait until released

        def refuse_one_while_another_is_in_flight() -> None:
            with (
                client_maker(client_api) as new_client,
                new_client(socket=served.path, app="t", timeout=PATIENCE_S) as qd,
                ThreadPoolExecutor(1) as other_thread,
            ):
                in_flight = other_thread.submit(qd.chat, "p/m", user_hi)
                anyio.from_thread.run(wait_until, lambda: served.server.requests_in_flight == 1)
                connections = anyio.from_thread.run_sync(set, served.server.connections)
                with pytest.raises(BadFrameError) as refused:
                    qd.chat("p/m", over)
                assert refused.value.code == "bad_frame"
                assert re.fullmatch(
                    r"the Chat is 2,000,\d{3} bytes \(1\.9 MiB\) as a frame, over the daemon's "
                    r"max_frame of 1,048,576 bytes \(1\.0 MiB, daemon\.max_frame\): nothing was "
                    r"sent \(send less, or raise daemon\.max_frame\)",
                    str(refused.value),
                ), refused.value
                anyio.from_thread.run_sync(served.provider.release.set)
                assert in_flight.result(PATIENCE_S).content == "x"
                assert qd.chat("p/m", user_hi).content == "x"
                assert anyio.from_thread.run_sync(set, served.server.connections) == connections

        await anyio.to_thread.run_sync(refuse_one_while_another_is_in_flight)


async def test_requests_in_flight_per_connection_are_capped(anyio_backend: Any) -> None:
    async with serve(max_in_flight_per_connection=3) as served:
        served.provider.release = anyio.Event()
        async with Peer.connect(served.path) as peer:
            await peer.send(acquire(1))  # granted at once: one permit held
            assert isinstance(await peer.next(), Permit)
            await peer.send(ENCODER.encode(chat(2)) + ENCODER.encode(chat(3)))  # in flight
            await peer.send(chat(4))
            refused = await peer.next()
            assert isinstance(refused, Error)
            assert (refused.id, refused.code) == (4, "overloaded")
            assert refused.retry_after_s is not None
            assert "max_in_flight_per_connection" in refused.message
            await peer.send(Status(id=9))  # answered at once: not work that waits
            assert isinstance(await peer.next(), StatusReply)
            async with Peer.connect(served.path) as other:  # the cap is per connection
                await other.send(chat(4))
                served.provider.release.set()
                assert (await other.next()).id == 4
            assert {(await peer.next()).id for _ in range(2)} == {2, 3}


async def test_subscriptions_per_connection_are_capped(anyio_backend: Any) -> None:
    async with serve() as served, Peer.connect(served.path) as peer:
        limit = served.server.limits.max_subscriptions
        for request_id in range(1, limit + 2):
            await peer.send(Subscribe(id=request_id, interval_s=60))
        answers = [await peer.next() for _ in range(limit + 1)]
        refused = [a for a in answers if isinstance(a, Error)]
        assert [(a.id, a.code) for a in refused] == [(limit + 1, "overloaded")]


async def test_the_snapshots_of_every_subscription_together_are_paced(anyio_backend: Any) -> None:
    """Each connection may hold 32 subscriptions and a daemon 1,024 connections: one client
    holding 3,200 subscriptions at 20 snapshots a second kept the event loop busy, a Status
    taking 49 ms instead of 0.2 ms for everyone. All of them together now get at most
    MAX_SNAPSHOTS_PER_S, sharing the status built for them."""
    built = 0
    received = 0
    async with serve() as served:
        build_status = served.server.status

        def counted_status() -> StatusReply:
            nonlocal built
            built += 1
            return build_status()

        served.server.snapshots = SnapshotPace(counted_status)
        peers, per_peer = 10, served.server.limits.max_subscriptions
        subscribe = b"".join(
            ENCODER.encode(Subscribe(id=n, interval_s=0.05)) for n in range(1, per_peer + 1)
        )

        measured = False

        async def count_snapshots(peer: Peer) -> None:
            nonlocal received
            while not measured:  # not cancelled mid-read: anyio's socket under uvloop then
                reply = await peer.next()  # sets a cancelled future's result
                received += isinstance(reply, Snapshot)  # (after the await: others count too)

        async with contextlib.AsyncExitStack() as stack, anyio.create_task_group() as readers:
            for _ in range(peers):
                peer = await stack.enter_async_context(Peer.connect(served.path))
                await peer.send(subscribe)
                readers.start_soon(count_snapshots, peer)
            await wait_until(lambda: received >= peers * per_peer)  # each one's first
            started, received_before, built_before = time.monotonic(), received, built
            await anyio.sleep(1.0)
            seconds = time.monotonic() - started
            got, builds = received - received_before, built - built_before
            measured = True  # each reader ends at its next snapshot
    assert MAX_SNAPSHOTS_PER_S <= 200  # they asked for 6,400 a second
    assert 0 < got <= 300 * seconds
    assert builds <= seconds / STATUS_REUSE_S + 1


async def test_the_first_snapshot_of_each_subscription_waits_its_turn_too(
    anyio_backend: Any,
) -> None:
    """Each subscription's first snapshot went out at once: 1,023 connections subscribing 32
    times each got 1,510 snapshots a second against the 200 documented. Now every snapshot
    takes a turn: on a clock that stands still only the burst goes out of the 320 first
    snapshots asked for, and each 1/MAX_SNAPSHOTS_PER_S of it lets out one more."""
    now = 0.0
    real_time = False
    received = 0

    def clock() -> float:
        return time.monotonic() if real_time else now

    async with serve() as served:
        served.server.snapshots = SnapshotPace(served.server.status, clock=clock)
        peers, per_peer = 10, served.server.limits.max_subscriptions
        subscribe = b"".join(
            ENCODER.encode(Subscribe(id=n, interval_s=60)) for n in range(1, per_peer + 1)
        )

        async def count_firsts(peer: Peer) -> None:
            nonlocal received
            for _ in range(per_peer):
                assert isinstance(await peer.next(), Snapshot)
                received += 1

        async with contextlib.AsyncExitStack() as stack, anyio.create_task_group() as readers:
            for _ in range(peers):
                peer = await stack.enter_async_context(Peer.connect(served.path))
                await peer.send(subscribe)
                readers.start_soon(count_firsts, peer)
            await wait_until(lambda: served.server.snapshots.open == peers * per_peer)
            await wait_until(lambda: received >= SNAPSHOT_BURST)
            await anyio.sleep(0.2)  # time for any more to arrive: none may
            assert received == SNAPSHOT_BURST
            for turn in range(1, 31):
                now = turn / MAX_SNAPSHOTS_PER_S + 1e-6
                await wait_until(lambda: received >= SNAPSHOT_BURST + turn)  # noqa: B023
            await anyio.sleep(0.2)
            assert received == SNAPSHOT_BURST + 30
            real_time = True  # the rest, at the pace itself
        assert received == peers * per_peer


async def test_a_peer_that_does_not_read_stops_being_read(anyio_backend: Any) -> None:
    """Snapshots pile up only to the transport's high-water mark (plus one per subscription):
    then the server stops reading from the peer and its subscriptions wait for it to read."""
    async with serve() as served, Peer.connect(served.path) as peer:
        [connection] = served.server.connections
        transport = connection._transport
        assert transport is not None
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # the kernel fills fast
        subscriptions = 8
        for request_id in range(1, subscriptions + 1):
            await peer.send(Subscribe(id=request_id, interval_s=0.05))
        await wait_until(lambda: connection._writing_paused)
        await anyio.sleep(1.5)  # 30 intervals more, none read
        high_water = transport.get_write_buffer_limits()[1]
        snapshot_size = len(ENCODER.encode(served.server.status())) + 4096
        assert transport.get_write_buffer_size() <= high_water + subscriptions * snapshot_size
        seen = 0
        while seen < 3 * subscriptions:  # reading again lets the subscriptions go on
            seen += isinstance(await peer.next(), Snapshot)


async def test_answers_given_at_once_stop_being_read_past_a_bound(
    anyio_backend: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A peer that sends Status after Status and reads nothing: past MAX_UNREAD_BYTES of
    answers buffered, the server reads nothing more from it (the rest waits in the socket:
    past the bound, at most the answers of one turn's frames, written together); once the peer
    reads, every request is answered."""
    monkeypatch.setattr(connection_module, "MAX_UNREAD_BYTES", 16384)
    async with serve() as served, Peer.connect(served.path) as peer:
        [connection] = served.server.connections
        transport = connection._transport
        assert transport is not None
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        transport.set_write_buffer_limits(high=8192)  # under the bound, as 64 KiB is under 1 MiB
        count = 3000
        sender = anyio.create_task_group()
        async with sender:
            sender.start_soon(
                peer.send, b"".join(ENCODER.encode(Status(id=n)) for n in range(count))
            )
            await wait_until(lambda: connection._reading_paused)
            status_size = len(ENCODER.encode(served.server.status()))
            most_past = connection_module.FRAMES_PER_TURN * status_size
            assert transport.get_write_buffer_size() <= 16384 + most_past
            seen = {(await peer.next()).id for _ in range(count)}
        assert seen == set(range(count))


async def flood_unread(served: Served, peer: Peer) -> Connection:
    """Subscriptions at 20 Hz on a connection whose kernel buffer is tiny, none read."""
    [connection] = served.server.connections
    transport = connection._transport
    assert transport is not None
    transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    for request_id in range(1, 9):
        await peer.send(Subscribe(id=request_id, interval_s=0.05))
    await wait_until(lambda: transport.get_write_buffer_size() > 0)
    return connection


async def test_answers_left_unread_after_a_half_close_linger_a_bounded_time(
    anyio_backend: Any,
) -> None:
    async with serve() as served, Peer.connect(served.path) as peer:
        connection = await flood_unread(served, peer)
        assert not connection._writing_paused  # still reading: the EOF is seen
        await peer.stream.send_eof()
        await wait_until(lambda: not served.server.connections)  # CLOSE_LINGER_S later


async def test_a_peer_that_stops_reading_is_dropped_after_a_while(
    anyio_backend: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(listener, "WRITE_STALL_S", 0.5)
    async with serve() as served, Peer.connect(served.path) as peer:
        connection = await flood_unread(served, peer)
        await wait_until(lambda: connection._writing_paused)  # no longer reading it
        await wait_until(lambda: not served.server.connections)


# --------------------------------------------------------------------------- permits


async def test_permits_of_a_closed_connection_are_settled_at_once(anyio_backend: Any) -> None:
    """A permit holds the provider's in-flight slot (max_concurrency = 2 here): a connection
    that leaves with its permits used to hold them until their lease ran out (1e300 s)."""
    async with serve() as served:
        async with Peer.connect(served.path) as holder:
            for request_id in (1, 2):
                await holder.send(acquire(request_id, lease_s=600.0))
                assert isinstance(await holder.next(), Permit)
            status = served.server.status()
            assert status.permits == 2
            async with AsyncClient(socket=served.path) as client:
                with pytest.raises(RateLimitedError):
                    await client.acquire("p/m", max_wait_s=0)
        await wait_until(lambda: served.server.status().permits == 0)
        async with AsyncClient(socket=served.path) as client:
            permit = await client.acquire("p/m", max_wait_s=0)
            await client.settle(permit.permit_id)


async def test_a_lease_over_the_bound_is_refused(anyio_backend: Any) -> None:
    async with serve() as served, Peer.connect(served.path) as peer:
        for lease_s in (1e300, float("inf"), 601.0):
            await peer.send(acquire(1, lease_s=lease_s))
            refused = await peer.next()
            assert isinstance(refused, Error)
            assert refused.code == "bad_request"
            assert "lease_s: " in refused.message
            assert "max_lease_s (600 s)" in refused.message
        await peer.send(acquire(2, lease_s=600.0))
        permit = await peer.next()
        assert isinstance(permit, Permit)
        assert 599 < permit.lease_s <= 600
        await peer.send(Settle(id=3, permit_id=permit.permit_id))
        assert isinstance(await peer.next(), Ok)
        assert served.server.status().permits == 0


async def test_a_permit_id_does_not_tell_another(anyio_backend: Any) -> None:
    """Permit ids were the daemon's prefix and a counter: a client holding one could settle
    another client's next permit ``cancelled``, giving its admission back (its gates then
    admitted past their limit), and the owner's own Settle was refused."""
    async with (
        serve() as served,
        Peer.connect(served.path) as owner,
        Peer.connect(served.path) as other,
    ):
        await other.send(acquire(1, lease_s=600.0))
        seen = await other.next()
        await owner.send(acquire(1, lease_s=600.0))
        held = await owner.next()
        assert isinstance(seen, Permit)
        assert isinstance(held, Permit)
        pm, daemon, counter = seen.permit_id.split("-")[:3]  # the ids a counter makes next
        for guess in (f"{pm}-{daemon}-{int(counter) + n}" for n in range(1, 10)):
            await other.send(Settle(id=2, permit_id=guess, status="cancelled"))
            refused = await other.next()
            assert isinstance(refused, Error)
            assert "is unknown" in refused.message
        await owner.send(Settle(id=2, permit_id=held.permit_id))
        assert isinstance(await owner.next(), Ok)
        ids = {seen.permit_id, held.permit_id}
        assert all(len(permit_id.rpartition("-")[2]) == 16 for permit_id in ids)  # 64 bits


# --------------------------------------------------------------------------- the listener


async def test_connections_are_capped(anyio_backend: Any) -> None:
    async with serve(max_connections=2) as served:
        async with Peer.connect(served.path), Peer.connect(served.path):
            async with Peer.connect(served.path, hello=False) as third:
                [refused] = await third.until_closed()
            assert isinstance(refused, Error)
            assert refused.code == "overloaded"
            assert refused.retry_after_s is not None
            assert "max_connections" in refused.message
            with pytest.raises(OverloadedError, match="max_connections"):  # as the client says
                async with AsyncClient(socket=served.path):
                    pass
        await wait_until(lambda: not served.server.connections)
        async with AsyncClient(socket=served.path) as client:
            assert (await client.status()).connections == 1


@pytest.mark.skipif(os.getuid() != 0, reason="needs root: the other users are setuid children")
async def test_one_uid_holds_at_most_its_share_and_the_operator_always_gets_in(
    anyio_backend: Any,
) -> None:
    """A peer of another uid that said Hello on 1,023 connections kept everyone else out, the
    operator's `quotad status` too. One uid now holds at most 3/4 of the connections, and the
    last of them are kept for the daemon's own uid and root."""
    async with serve(max_connections=8) as served:  # 6 per uid; 1 kept for the operator
        os.chmod(served.path.parent, 0o711)
        os.chmod(served.path, 0o666)  # every uid may connect
        hostile = ConnectionsHeldAs(served.path, 8, uid=65534, hello=HELLO)
        other = None
        try:
            answers = list(reply_decoder().feed(await anyio.to_thread.run_sync(hostile.answers)))
            assert [type(answer).__name__ for answer in answers] == 6 * ["Welcome"] + 2 * ["Error"]
            for refused in answers[6:]:
                assert isinstance(refused, Error)
                assert (refused.code, refused.retry_after_s) == ("overloaded", 1.0)
                assert "uid 65534 already holds 6 connections" in refused.message
                assert "75% of daemon.max_connections" in refused.message
            other = ConnectionsHeldAs(served.path, 2, uid=65533, hello=HELLO)
            answers = list(reply_decoder().feed(await anyio.to_thread.run_sync(other.answers)))
            assert isinstance(answers[0], Welcome)
            assert isinstance(answers[1], Error)
            assert "kept for the operator" in answers[1].message
            assert served.server.connections_per_uid == {65534: 6, 65533: 1}
            async with AsyncClient(socket=served.path) as operator:  # root: the daemon's uid
                assert (await operator.status()).connections == 8
        finally:
            hostile.release()
            if other is not None:
                other.release()
        await wait_until(lambda: not served.server.connections)
        assert not served.server.connections_per_uid


async def test_a_bug_setting_up_one_connection_does_not_end_the_listener(
    anyio_backend: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with serve() as served:
        bug = RuntimeError("a bug in the access check")
        break_first_call(monkeypatch, served.server, "_refusal", bug)
        async with await anyio.connect_unix(served.path) as dropped:
            with anyio.fail_after(PATIENCE_S), pytest.raises(anyio.EndOfStream):
                await dropped.receive()
        async with AsyncClient(socket=served.path) as client:
            assert (await client.status()).connections == 1


async def test_a_connection_that_never_says_hello_is_closed(anyio_backend: Any) -> None:
    async with (
        serve(hello_timeout_s=0.2) as served,
        Peer.connect(served.path, hello=False) as silent,
        Peer.connect(served.path),
    ):
        [closing] = await silent.until_closed()
        assert isinstance(closing, Error)
        assert closing.code == "timeout"
        assert "no Hello within 0.2 s" in closing.message
        await anyio.sleep(0.5)
        assert len(served.server.connections) == 1  # the greeted one stays


async def test_a_connection_holding_nothing_is_closed_and_the_clients_reconnect(
    anyio_backend: Any,
) -> None:
    """A greeted connection used to stay open for ever: a peer holding 1,023 of them idle kept
    everyone else out. One that holds nothing for idle_timeout_s is now closed; one with a
    request in flight, a subscription or a permit is not; the real clients, blocking and
    async, reconnect at their next call without the caller noticing."""
    async with serve() as served:
        served.server.limits = dataclasses.replace(served.server.limits, idle_timeout_s=0.3)
        served.provider.release = anyio.Event()  # chats wait until the end
        async with (
            Peer.connect(served.path) as holding_permit,
            Peer.connect(served.path) as subscribed,
            Peer.connect(served.path) as chatting,
        ):
            await holding_permit.send(acquire(1))
            assert isinstance(await holding_permit.next(), Permit)
            await subscribed.send(Subscribe(id=1, interval_s=60))
            assert isinstance(await subscribed.next(), Snapshot)
            await chatting.send(chat(1))
            await wait_until(lambda: served.server.requests_in_flight == 1)
            busy = set(served.server.connections)
            blocking_client = Client(socket=served.path, app="blocking")
            try:
                async with AsyncClient(socket=served.path, app="async") as async_client:
                    for _ in range(3):  # each round: both connect, hold nothing, are closed
                        assert (await async_client.status()).connections >= 4
                        assert (
                            await anyio.to_thread.run_sync(blocking_client.status)
                        ).connections >= 4
                        await wait_until(lambda: served.server.connections == busy)
            finally:
                blocking_client.close()
            assert not served.server.draining
            assert served.server.requests_in_flight == 1  # the chat still waits


@contextlib.contextmanager
def descriptors_exhausted() -> Iterator[list[int]]:
    """Open /dev/null until the process has no descriptor left (under a soft limit lowered
    for the test); yields the descriptors, closes those still open after the block."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_use = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + 64, hard))
    spare: list[int] = []
    try:
        with pytest.raises(OSError) as exhausted:  # noqa: PT012 (open until it fails)
            while True:
                spare.append(os.open(os.devnull, os.O_RDONLY))
        assert exhausted.value.errno == errno.EMFILE
        yield spare
    finally:
        for descriptor in spare:
            with contextlib.suppress(OSError):
                os.close(descriptor)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_accept_survives_running_out_of_descriptors(anyio_backend: Any) -> None:
    """EMFILE on accept used to end the accept loop silently (anyio turns it into
    BrokenResourceError, which serve() took for the listener's close): the socket stayed,
    unserved, for good. Now it pauses, says so in status, and serves once descriptors free."""
    async with serve() as served, AsyncClient(socket=served.path) as watcher:
        await watcher.status()
        with descriptors_exhausted() as spare:
            os.close(spare.pop())  # one for the client's socket, none for the server's accept
            async with await anyio.connect_unix(served.path) as waiting:
                await waiting.send(HELLO)
                await wait_until(lambda: served.server.accept_problem is not None)
                problem = served.server.accept_problem
                assert problem is not None
                assert problem.startswith("accept failing: EMFILE (too many open files) since")
                status = await watcher.status()
                assert any("EMFILE" in line for line in status.problems)
                for descriptor in spare:
                    os.close(descriptor)
                spare.clear()
                decoder = reply_decoder()
                with anyio.fail_after(5):
                    replies = list(decoder.feed(await waiting.receive()))
                assert isinstance(replies[0], Welcome)
        await wait_until(lambda: served.server.accept_problem is None)
        assert (await watcher.status()).problems == []


# --------------------------------------------------------------------------- draining


async def test_draining_answers_new_connections_overloaded(anyio_backend: Any) -> None:
    async with serve() as served:
        served.provider.release = anyio.Event()
        async with Peer.connect(served.path) as busy, anyio.create_task_group() as tasks:
            await busy.send(chat(1))
            await wait_until(lambda: served.server.requests_in_flight == 1)
            tasks.start_soon(served.server.shutdown, 10.0)
            await wait_until(lambda: served.server.draining)
            async with Peer.connect(served.path, hello=False) as late:
                [refused] = await late.until_closed()
            assert isinstance(refused, Error)
            assert refused.code == "overloaded"
            assert refused.retry_after_s is not None
            await busy.send(chat(2))  # new work on a connection already open: refused too
            refused = await busy.next()
            assert isinstance(refused, Error)
            assert refused.code == "overloaded"
            served.provider.release.set()  # the request in flight finishes
            answer = await busy.next()
            assert answer.id == 1
            assert not isinstance(answer, Error)
