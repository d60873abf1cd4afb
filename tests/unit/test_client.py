"""The thin clients (quotad.client) against a fake daemon speaking real frames on a temp socket.

The blocking :class:`Client` and the anyio :class:`AsyncClient` (under asyncio, asyncio+uvloop
and trio) are held to the same behaviour: handshake, requests and their replies, error codes
mapped to exception classes, multiplexing, cancellation, reconnection after a daemon restart,
and permits settled exactly once.
"""

from __future__ import annotations

import pickle
import re
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

import quotad.client
from quotad.client import (
    AsyncClient,
    BadRequestError,
    ChatChunk,
    Client,
    ConnectionLostError,
    DaemonUnavailableError,
    InternalError,
    QuotadError,
    RateLimitedError,
    RequestTimeoutError,
    UnauthorizedError,
    UpstreamError,
    error_from_reply,
)
from quotad.client.exceptions import _ERROR_CLASSES
from quotad.protocol.errors import ERROR_CODES
from quotad.protocol.messages import (
    Cancel,
    Chat,
    Error,
    Ok,
    Reply,
    Request,
    Settle,
    Status,
    Subscribe,
    Usage,
)
from quotad.protocol.messages import (
    ChatChunk as WireChatChunk,
)
from tests.support.fake_daemon import FakeConnection, FakeDaemon, Handler, answer, chat_reply

USER_HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(dir="/tmp"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def socket_path(socket_dir: Path) -> str:
    return str(socket_dir / "q.sock")


@pytest.fixture
def fake(socket_path: str) -> Iterator[FakeDaemon]:
    with FakeDaemon(socket_path) as daemon:
        yield daemon


def holding_chats(held: list[tuple[FakeConnection, Request]]) -> Handler:
    """A handler that answers everything but Chat, which it keeps in ``held`` unanswered."""

    def handle(connection: FakeConnection, request: Request) -> None:
        if type(request) is Chat:
            held.append((connection, request))
        else:
            answer(connection, request)

    return handle


def answering_chat_with(*replies: Reply) -> Handler:
    """A handler that answers a Chat with ``replies`` (ids filled in)."""

    def handle(connection: FakeConnection, request: Request) -> None:
        if type(request) is not Chat:
            answer(connection, request)
            return
        for reply in replies:
            reply.id = request.id
        connection.send(*replies)

    return handle


# --------------------------------------------------------------------------- exceptions


def test_every_wire_error_code_has_its_exception_class() -> None:
    assert set(_ERROR_CLASSES) == set(ERROR_CODES)
    for code, cls in _ERROR_CLASSES.items():
        assert issubclass(cls, QuotadError)
        assert cls.__name__ in quotad.client.__all__
        error = error_from_reply(Error(code=code, message="m", retry_after_s=2.5))
        assert type(error) is cls
        assert (error.code, error.message, error.retry_after_s) == (code, "m", 2.5)


def test_unknown_error_code_becomes_plain_quotad_error() -> None:
    error = error_from_reply(Error(code="from_the_future", message="new", details={"a": 1}))
    assert type(error) is QuotadError
    assert error.code == "from_the_future"
    assert error.details == {"a": 1}


def test_errors_survive_pickling() -> None:
    error = error_from_reply(Error(code="rate_limited", message="slow", retry_after_s=1.0))
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is RateLimitedError
    assert (copy.code, copy.message, copy.retry_after_s) == ("rate_limited", "slow", 1.0)


def test_connection_lost_is_a_daemon_unavailable_error() -> None:
    assert issubclass(ConnectionLostError, DaemonUnavailableError)
    assert ConnectionLostError("x").code == "connection_lost"
    assert DaemonUnavailableError("x").code == "daemon_unavailable"


# --------------------------------------------------------------------------- blocking client


def test_handshake_sends_hello_and_keeps_the_welcome(fake: FakeDaemon, socket_path: str) -> None:
    with Client(socket_path, app="tester") as qd:
        assert qd.welcome is not None
        assert qd.welcome.daemon_version == "fake"
    hello = fake.connections[0].hello
    assert hello is not None
    assert hello.app == "tester"
    assert hello.client.startswith("quotad-client")


def test_app_defaults_to_the_environment(
    fake: FakeDaemon, socket_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QUOTAD_APP", "from-env")
    with Client(socket_path) as qd:
        qd.status()
    hello = fake.connections[0].hello
    assert hello is not None
    assert hello.app == "from-env"


def test_socket_defaults_to_the_environment(
    fake: FakeDaemon, socket_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QUOTAD_SOCKET", socket_path)
    with Client() as qd:
        assert qd.status().daemon_version == "fake"


def test_chat_builds_the_request_and_returns_the_reply(fake: FakeDaemon, socket_path: str) -> None:
    with Client(socket_path) as qd:
        reply = qd.chat(
            "fast",
            USER_HI,
            max_tokens=64,
            priority="high",
            tags=["t"],
            top_p=0.5,
            stop="END",
            logit_bias={"1": 2},
        )
    assert reply.content == "echo: hi"
    assert reply.usage == Usage(prompt_tokens=2, completion_tokens=2)
    assert reply.target == "fake/echo"
    [chat] = fake.requests(Chat)
    assert isinstance(chat, Chat)
    assert (chat.model, chat.max_tokens, chat.priority, chat.tags) == ("fast", 64, "high", ["t"])
    assert (chat.top_p, chat.stop, chat.extra) == (0.5, ["END"], {"logit_bias": {"1": 2}})
    assert chat.messages[0].role == "user"
    assert not chat.stream
    assert chat.id >= 1


def test_request_ids_increase_per_connection(fake: FakeDaemon, socket_path: str) -> None:
    with Client(socket_path) as qd:
        for _ in range(3):
            qd.status()
    ids = [request.id for request in fake.requests(Status)]
    assert ids == sorted(set(ids))


def test_bad_message_raises_client_side_naming_the_field(
    fake: FakeDaemon, socket_path: str
) -> None:
    with Client(socket_path) as qd:
        with pytest.raises(BadRequestError, match=r"messages\[0\]\.role"):
            qd.chat("fast", [{"role": "robot", "content": "hi"}])
        with pytest.raises(BadRequestError, match="temperature"):
            qd.chat("fast", USER_HI, temperature=5)
    assert fake.requests(Chat) == []


def test_other_requests_round_trip(fake: FakeDaemon, socket_path: str) -> None:
    with Client(socket_path) as qd:
        assert qd.embed("emb", ["a", "bcd"]).embeddings == [[1.0], [3.0]]
        assert qd.spend(period="week", by="model").by == "model"
        assert qd.admin("disable", "openai/gpt-4o-mini").message == ""
        assert qd.acquire("openai/gpt-4o-mini", 100).permit_id.startswith("p")


def test_chat_stream_yields_chunks_then_holds_the_end(fake: FakeDaemon, socket_path: str) -> None:
    with Client(socket_path) as qd:
        stream = qd.chat_stream("fast", [{"role": "user", "content": "a b c"}])
        deltas = [chunk.delta for chunk in stream]
        assert "".join(deltas) == "echo: a b c"
        assert stream.end is not None
        assert stream.end.content == stream.content == "echo: a b c"
        assert qd.last_stream_end is stream.end
        [chat] = fake.requests(Chat)
        assert isinstance(chat, Chat)
        assert chat.stream


@pytest.mark.parametrize("code", sorted(ERROR_CODES))
def test_error_reply_raises_the_class_of_its_code(socket_dir: Path, code: str) -> None:
    path = str(socket_dir / "e.sock")
    error = Error(code=code, message="nope", retry_after_s=1.5, details={"attempts": []})
    with FakeDaemon(path, answering_chat_with(error)), Client(path) as qd:
        with pytest.raises(_ERROR_CLASSES[code]) as caught:
            qd.chat("fast", USER_HI)
        assert caught.value.code == code
        assert caught.value.retry_after_s == 1.5
        assert caught.value.details == {"attempts": []}
        assert qd.status().daemon_version == "fake"


def test_error_mid_stream_raises_and_keeps_the_partial_content(socket_dir: Path) -> None:
    path = str(socket_dir / "s.sock")
    replies = (
        WireChatChunk(delta="par"),
        WireChatChunk(delta="tial"),
        Error(code="upstream_error", message="provider broke"),
    )
    with FakeDaemon(path, answering_chat_with(*replies)), Client(path) as qd:
        stream = qd.chat_stream("fast", USER_HI)
        deltas: list[str] = []
        with pytest.raises(UpstreamError, match="provider broke"):
            deltas.extend(chunk.delta for chunk in stream)
        assert deltas == ["par", "tial"]
        assert stream.content == "partial"
        assert stream.end is None
        assert list(stream) == []


def test_closing_a_stream_early_cancels_it(socket_dir: Path) -> None:
    path = str(socket_dir / "c.sock")
    replies = (WireChatChunk(delta="one"), WireChatChunk(delta="two"))
    with FakeDaemon(path, answering_chat_with(*replies)) as fake, Client(path) as qd:
        with qd.chat_stream("fast", USER_HI) as stream:
            first = next(stream)
            assert first.delta == "one"
        [cancel] = fake.wait_for(Cancel)
        [chat] = fake.requests(Chat)
        assert cancel.id == chat.id
        # the late chunk and the "cancelled" error are dropped, not mistaken for this reply
        assert qd.status().daemon_version == "fake"


def test_timeout_cancels_the_request(socket_dir: Path) -> None:
    path = str(socket_dir / "t.sock")
    held: list[tuple[FakeConnection, Request]] = []
    with FakeDaemon(path, holding_chats(held)) as fake, Client(path, timeout=0.2) as qd:
        with pytest.raises(RequestTimeoutError):
            qd.chat("fast", USER_HI)
        [cancel] = fake.wait_for(Cancel)
        assert cancel.id == held[0][1].id
        assert qd.status().daemon_version == "fake"


def test_connection_lost_in_flight_then_reconnect_after_restart(socket_path: str) -> None:
    def crash_on_chat(connection: FakeConnection, request: Request) -> None:
        if type(request) is Chat:
            connection.close()
        else:
            answer(connection, request)

    with FakeDaemon(socket_path, crash_on_chat):
        qd = Client(socket_path, reconnect_s=5.0)
        with pytest.raises(ConnectionLostError, match="may or may not have run"):
            qd.chat("fast", USER_HI)
    try:
        with FakeDaemon(socket_path) as restarted:
            assert qd.chat("fast", USER_HI).content == "echo: hi"
            assert len(restarted.connections) == 1
    finally:
        qd.close()


def test_idle_connection_reconnects_without_error_after_restart(socket_path: str) -> None:
    with FakeDaemon(socket_path):
        qd = Client(socket_path)
        qd.status()
    try:
        with FakeDaemon(socket_path) as restarted:
            assert qd.chat("fast", USER_HI).content == "echo: hi"
            assert len(restarted.requests(Chat)) == 1
    finally:
        qd.close()


def test_handshake_refused_raises_the_class_of_its_code(socket_path: str) -> None:
    refusal = Error(code="unauthorized", message="uid 1000 may not use this socket")
    with FakeDaemon(socket_path, welcome=refusal), pytest.raises(UnauthorizedError, match="uid"):
        Client(socket_path).status()


def test_a_handshake_answered_with_something_else_names_the_socket(socket_path: str) -> None:
    with (
        FakeDaemon(socket_path, welcome=Ok(message="not a quotad")),
        pytest.raises(InternalError, match=re.escape(socket_path)),
    ):
        Client(socket_path).status()


def test_connection_level_error_fails_the_requests_in_flight(socket_path: str) -> None:
    def refuse_frame(connection: FakeConnection, request: Request) -> None:
        connection.send(Error(code="bad_frame", message="frame too large"))
        connection.close()

    with (
        FakeDaemon(socket_path, refuse_frame),
        Client(socket_path) as qd,
        pytest.raises(ConnectionLostError, match="bad_frame: frame too large"),
    ):
        qd.status()


def test_reconnect_waits_for_a_restarting_daemon(socket_path: str) -> None:
    with FakeDaemon(socket_path):
        qd = Client(socket_path, reconnect_s=10.0)
        qd.status()
    restarted = FakeDaemon(socket_path)
    timer = threading.Timer(0.3, restarted.start)
    timer.start()
    try:
        assert qd.status().daemon_version == "fake"
    finally:
        timer.join()
        restarted.stop()
        qd.close()


def test_daemon_unavailable_lists_every_path_tried(
    socket_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    refusing = socket_dir / "refusing.sock"
    bound = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bound.bind(str(refusing))  # bound, never listening: connecting is refused
    monkeypatch.setenv("QUOTAD_SOCKET", str(refusing))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(socket_dir / "runtime"))
    try:
        with pytest.raises(DaemonUnavailableError) as caught:
            Client().status()
    finally:
        bound.close()
    message = str(caught.value)
    assert f"{refusing} (connection refused" in message
    assert f"{socket_dir / 'runtime' / 'quotad' / 'quotad.sock'} (no such socket)" in message
    assert "/run/quotad/quotad.sock" in message
    assert type(caught.value) is DaemonUnavailableError
    assert len(caught.value.details["tried"]) == 3


def test_permit_settles_once_with_the_reservation(fake: FakeDaemon, socket_path: str) -> None:
    with Client(socket_path) as qd, qd.permit("openai/gpt-4o-mini", tokens=1500) as held:
        assert held.permit_id.startswith("p")
        assert held.wait_s == 0.0
    [settle] = fake.requests(Settle)
    assert isinstance(settle, Settle)
    assert (settle.permit_id, settle.tokens_used, settle.status) == (held.permit_id, 1500, "ok")


def test_permit_settled_in_the_block_is_not_settled_again(
    fake: FakeDaemon, socket_path: str
) -> None:
    with Client(socket_path) as qd:
        with qd.permit("openai/gpt-4o-mini", tokens=1500) as held:
            held.settle(tokens=321, headers={"x-ratelimit-remaining-requests": "9"})
            with pytest.raises(RuntimeError, match="already settled"):
                held.settle(tokens=1)
        [settle] = fake.requests(Settle)
        assert isinstance(settle, Settle)
        assert settle.tokens_used == 321
        assert settle.headers == {"x-ratelimit-remaining-requests": "9"}


def test_permit_block_that_raises_settles_as_error(fake: FakeDaemon, socket_path: str) -> None:
    with Client(socket_path) as qd:
        with pytest.raises(ValueError, match="sdk failed"), qd.permit("t/m", tokens=7):
            raise ValueError("sdk failed")
        [settle] = fake.requests(Settle)
        assert isinstance(settle, Settle)
        assert (settle.tokens_used, settle.status) == (7, "error")


def test_subscribe_yields_snapshots_until_closed(fake: FakeDaemon, socket_path: str) -> None:
    with Client(socket_path) as qd:
        with qd.subscribe(interval_s=0.5) as snapshots:
            seqs = [next(snapshots).seq, next(snapshots).seq]
        assert seqs == [1, 2]
        [cancel] = fake.wait_for(Cancel)
        [subscribe] = fake.requests(Subscribe)
        assert cancel.id == subscribe.id
        assert qd.status().daemon_version == "fake"


def test_threads_sharing_a_client_each_get_their_own_reply(socket_path: str) -> None:
    held: list[tuple[FakeConnection, Request]] = []
    results: dict[str, str] = {}

    def call(word: str) -> None:
        reply = qd.chat("fast", [{"role": "user", "content": word}])
        results[word] = reply.content or ""

    with FakeDaemon(socket_path, holding_chats(held)) as fake, Client(socket_path) as qd:
        threads = [threading.Thread(target=call, args=(word,)) for word in ("a", "b", "c")]
        for thread in threads:
            thread.start()
        fake.wait_for(Chat, 3)
        for connection, request in reversed(held):
            assert isinstance(request, Chat)
            connection.send(chat_reply(request))
        for thread in threads:
            thread.join(5)
        many = [threading.Thread(target=lambda: [qd.status() for _ in range(20)]) for _ in "xyz"]
        for thread in many:
            thread.start()
        for thread in many:
            thread.join(5)
        assert len(fake.requests(Status)) == 60
    assert results == {"a": "echo: a", "b": "echo: b", "c": "echo: c"}


# --------------------------------------------------------------------------- async client


@pytest.mark.anyio
async def test_async_handshake_chat_and_stream(fake: FakeDaemon, socket_path: str) -> None:
    async with AsyncClient(socket_path, app="async-tester") as qd:
        assert qd.welcome is not None
        reply = await qd.chat("fast", USER_HI, max_tokens=8)
        assert reply.content == "echo: hi"
        stream = qd.chat_stream("fast", [{"role": "user", "content": "x y"}])
        chunks = [chunk async for chunk in stream]
        assert all(isinstance(chunk, ChatChunk) for chunk in chunks)
        assert "".join(chunk.delta for chunk in chunks) == "echo: x y"
        assert stream.end is not None
        assert stream.end.content == "echo: x y"
        assert (await qd.status()).daemon_version == "fake"
        assert (await qd.embed("emb", "abc")).embeddings == [[3.0]]
    hello = fake.connections[0].hello
    assert hello is not None
    assert hello.app == "async-tester"


@pytest.mark.anyio
async def test_async_multiplexes_many_requests_on_one_connection(socket_path: str) -> None:
    held: list[tuple[FakeConnection, Request]] = []
    count = 50

    def reply_in_reverse_once_all_arrived(connection: FakeConnection, request: Request) -> None:
        held.append((connection, request))
        if len(held) == count:
            for holder, chat in reversed(held):
                assert isinstance(chat, Chat)
                holder.send(chat_reply(chat))

    results: dict[int, str] = {}

    with FakeDaemon(socket_path, reply_in_reverse_once_all_arrived) as fake:
        async with AsyncClient(socket_path) as qd:

            async def ask(n: int) -> None:
                reply = await qd.chat("fast", [{"role": "user", "content": f"n{n}"}])
                results[n] = reply.content or ""

            async with anyio.create_task_group() as tasks:
                for n in range(count):
                    tasks.start_soon(ask, n)
        assert len(fake.connections) == 1
    assert results == {n: f"echo: n{n}" for n in range(count)}


@pytest.mark.anyio
async def test_async_cancelled_waiter_sends_cancel(socket_path: str) -> None:
    held: list[tuple[FakeConnection, Request]] = []
    with FakeDaemon(socket_path, holding_chats(held)) as fake:
        async with AsyncClient(socket_path) as qd:
            with anyio.move_on_after(0.2) as scope:
                await qd.chat("fast", USER_HI)
            assert scope.cancelled_caught
            [cancel] = await anyio.to_thread.run_sync(fake.wait_for, Cancel)
            assert cancel.id == held[0][1].id
            assert (await qd.status()).daemon_version == "fake"


@pytest.mark.anyio
async def test_async_timeout_cancels_the_request(socket_path: str) -> None:
    held: list[tuple[FakeConnection, Request]] = []
    with FakeDaemon(socket_path, holding_chats(held)) as fake:
        async with AsyncClient(socket_path, timeout=0.2) as qd:
            with pytest.raises(RequestTimeoutError):
                await qd.chat("fast", USER_HI)
            [cancel] = await anyio.to_thread.run_sync(fake.wait_for, Cancel)
            assert cancel.id == held[0][1].id


@pytest.mark.anyio
async def test_async_error_reply_raises_the_class_of_its_code(socket_path: str) -> None:
    error = Error(code="rate_limited", message="gate full", retry_after_s=3.0)
    with FakeDaemon(socket_path, answering_chat_with(error)):
        async with AsyncClient(socket_path) as qd:
            with pytest.raises(RateLimitedError) as caught:
                await qd.chat("fast", USER_HI)
    assert caught.value.code == "rate_limited"
    assert caught.value.retry_after_s == 3.0


@pytest.mark.anyio
async def test_async_stream_closed_early_sends_cancel(socket_path: str) -> None:
    replies = (WireChatChunk(delta="one"), WireChatChunk(delta="two"))
    with FakeDaemon(socket_path, answering_chat_with(*replies)) as fake:
        async with AsyncClient(socket_path) as qd:
            async with qd.chat_stream("fast", USER_HI) as stream:
                async for chunk in stream:
                    assert chunk.delta == "one"
                    break
            [cancel] = await anyio.to_thread.run_sync(fake.wait_for, Cancel)
            [chat] = fake.requests(Chat)
            assert cancel.id == chat.id
            assert (await qd.status()).daemon_version == "fake"


@pytest.mark.anyio
async def test_async_error_mid_stream(socket_path: str) -> None:
    replies = (WireChatChunk(delta="half"), Error(code="upstream_error", message="broke"))
    with FakeDaemon(socket_path, answering_chat_with(*replies)):
        async with AsyncClient(socket_path) as qd:
            stream = qd.chat_stream("fast", USER_HI)
            with pytest.raises(UpstreamError, match="broke"):
                async for _ in stream:
                    pass
            assert stream.content == "half"
            assert stream.end is None


@pytest.mark.anyio
async def test_async_connection_lost_then_reconnect(socket_path: str) -> None:
    held: list[tuple[FakeConnection, Request]] = []
    crashing = FakeDaemon(socket_path, holding_chats(held))
    crashing.start()
    try:
        async with AsyncClient(socket_path, reconnect_s=5.0) as qd:

            async def crash_when_chat_arrives() -> None:
                await anyio.to_thread.run_sync(crashing.wait_for, Chat)
                held[0][0].close()

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(crash_when_chat_arrives)
                with pytest.raises(ConnectionLostError):
                    await qd.chat("fast", USER_HI)
            crashing.stop()
            with FakeDaemon(socket_path) as restarted:
                assert (await qd.chat("fast", USER_HI)).content == "echo: hi"
                assert len(restarted.connections) == 1
    finally:
        crashing.stop()


@pytest.mark.anyio
async def test_async_reconnects_after_an_idle_restart(socket_path: str) -> None:
    first = FakeDaemon(socket_path)
    first.start()
    try:
        async with AsyncClient(socket_path, reconnect_s=10.0) as qd:
            assert (await qd.status()).daemon_version == "fake"
            first.stop()
            restarted = FakeDaemon(socket_path)
            timer = threading.Timer(0.1, restarted.start)
            timer.start()
            try:
                assert (await qd.chat("fast", USER_HI)).content == "echo: hi"
            finally:
                await anyio.to_thread.run_sync(timer.join)
                restarted.stop()
    finally:
        first.stop()


@pytest.mark.anyio
async def test_async_daemon_unavailable_lists_the_path(socket_dir: Path) -> None:
    absent = socket_dir / "absent.sock"
    with pytest.raises(DaemonUnavailableError, match=re.escape(f"{absent} (no such socket)")):
        async with AsyncClient(absent):
            pass


@pytest.mark.anyio
async def test_async_permit_settles_exactly_once(fake: FakeDaemon, socket_path: str) -> None:
    async with AsyncClient(socket_path) as qd:
        async with qd.permit("t/m", tokens=50) as held:
            assert held.permit_id.startswith("p")
        async with qd.permit("t/m", tokens=60) as held:
            await held.settle(tokens=12)
        with anyio.move_on_after(0.05):
            async with qd.permit("t/m", tokens=70):
                await anyio.sleep(5)
    settles = fake.requests(Settle)
    assert [(s.tokens_used, s.status) for s in settles if isinstance(s, Settle)] == [
        (50, "ok"),
        (12, "ok"),
        (70, "cancelled"),
    ]


@pytest.mark.anyio
async def test_async_subscribe(fake: FakeDaemon, socket_path: str) -> None:
    async with AsyncClient(socket_path) as qd:
        async with qd.subscribe(interval_s=0.5) as snapshots:
            seqs = [(await snapshots.__anext__()).seq for _ in range(2)]
        assert seqs == [1, 2]
        [cancel] = await anyio.to_thread.run_sync(fake.wait_for, Cancel)
        [subscribe] = fake.requests(Subscribe)
        assert cancel.id == subscribe.id


@pytest.mark.anyio
async def test_async_client_must_be_opened(socket_path: str) -> None:
    with pytest.raises(RuntimeError, match="async with"):
        await AsyncClient(socket_path).status()
