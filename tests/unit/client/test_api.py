"""The client API against a fake daemon speaking real frames on a temp socket, run once per
API: the blocking :class:`Client`, and the :class:`AsyncClient` under asyncio, asyncio+uvloop
and trio (the ``new_client`` fixture; see tests/support/client_apis.py). Handshake, requests
and their replies, error codes mapped to exception classes, streams, timeouts, reconnection
after a daemon restart, permits settled exactly once, subscriptions.

What only one API has (threads sharing a blocking client; tasks, cancellation and the
``async with`` rule of the async one) is tested in test_sync_only.py and test_async_only.py.
"""

from __future__ import annotations

import contextlib
import gc
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import quotad.client._common
from quotad.client import (
    BadRequestError,
    ConnectionLostError,
    DaemonUnavailableError,
    InternalError,
    OverloadedError,
    RequestTimeoutError,
    UnauthorizedError,
    UpstreamError,
)
from quotad.client._common import SEND_ATTEMPTS
from quotad.client.exceptions import _ERROR_CLASSES
from quotad.protocol.errors import ERROR_CODES
from quotad.protocol.framing import MAX_FRAME_CEILING, FrameEncoder
from quotad.protocol.messages import (
    Cancel,
    Chat,
    ChatChunk,
    Error,
    Hello,
    Ok,
    Reply,
    Request,
    Settle,
    Snapshot,
    Status,
    Subscribe,
    Usage,
    Welcome,
)
from tests.support.client_apis import NewClient
from tests.support.fake_daemon import (
    TERMINAL_WAIT_S,
    USER_HI,
    FakeConnection,
    FakeDaemon,
    answer,
    answering_chat_with,
    holding_chats,
)
from tests.unit.client.cancels import assert_cancelled

# --------------------------------------------------------------------------- handshake


def test_handshake_sends_hello_and_keeps_the_welcome(
    fake: FakeDaemon, socket_path: str, new_client: NewClient
) -> None:
    with new_client(socket_path, app="tester") as qd:
        assert qd.welcome is not None
        assert qd.welcome.daemon_version == "fake"
    hello = fake.connections[0].hello
    assert hello is not None
    assert hello.app == "tester"
    assert hello.client.startswith("quotad-client")


def test_app_defaults_to_the_environment(
    fake: FakeDaemon, socket_path: str, new_client: NewClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QUOTAD_APP", "from-env")
    with new_client(socket_path) as qd:
        qd.status()
    hello = fake.connections[0].hello
    assert hello is not None
    assert hello.app == "from-env"


@pytest.mark.parametrize(
    ("where", "name", "sent"),
    [
        ("env", b"caf\xe9", "caf\ufffd"),  # Latin-1, as an old shell profile sets it
        ("argv", b"/opt/jobs/r\xe9sum\xe9.py", "r\ufffdsum\ufffd.py"),
    ],
)
def test_a_default_app_name_that_is_not_utf8_still_connects(
    fake: FakeDaemon,
    socket_path: str,
    new_client: NewClient,
    monkeypatch: pytest.MonkeyPatch,
    where: str,
    name: bytes,
    sent: str,
) -> None:
    """The name's bytes reach Python as lone surrogates, which no frame can carry: every
    connection of such a program failed with UnicodeEncodeError."""
    if where == "env":
        monkeypatch.setenv("QUOTAD_APP", os.fsdecode(name))
    else:
        monkeypatch.delenv("QUOTAD_APP", raising=False)
        monkeypatch.setattr(sys, "argv", [os.fsdecode(name)])
    with new_client(socket_path) as qd:
        qd.status()
    hello = fake.connections[0].hello
    assert hello is not None
    assert hello.app == sent


def test_socket_defaults_to_the_environment(
    fake: FakeDaemon, socket_path: str, new_client: NewClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QUOTAD_SOCKET", socket_path)
    with new_client() as qd:
        assert qd.status().daemon_version == "fake"


def test_handshake_refused_raises_the_class_of_its_code(
    socket_path: str, new_client: NewClient
) -> None:
    refusal = Error(code="unauthorized", message="uid 1000 may not use this socket")
    with (
        FakeDaemon(socket_path, welcome=refusal),
        pytest.raises(UnauthorizedError, match="uid"),
        new_client(socket_path) as qd,
    ):
        qd.status()


def test_a_handshake_answered_with_something_else_names_the_socket(
    socket_path: str, new_client: NewClient
) -> None:
    with (
        FakeDaemon(socket_path, welcome=Ok(message="not a quotad")),
        pytest.raises(InternalError, match=re.escape(socket_path)),
        new_client(socket_path) as qd,
    ):
        qd.status()


def test_a_daemon_that_hangs_up_during_the_handshake_is_unavailable(
    socket_path: str, new_client: NewClient
) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(socket_path)
    listener.listen(1)
    listener.settimeout(5)

    def hang_up_after_the_hello() -> None:
        with contextlib.suppress(OSError):
            peer, _ = listener.accept()
            with peer:
                peer.recv(4096)

    thread = threading.Thread(target=hang_up_after_the_hello, daemon=True)
    thread.start()
    try:
        with (
            pytest.raises(
                DaemonUnavailableError, match="closed the connection during the handshake"
            ),
            new_client(socket_path) as qd,
        ):
            qd.status()
    finally:
        thread.join(5)
        listener.close()


def test_connect_timeout_bounds_the_whole_handshake(
    socket_path: str, new_client: NewClient
) -> None:
    """A daemon trickling its Welcome a byte at a time: the blocking client applied
    connect_timeout to each read, so it connected after seconds per byte."""
    welcome = FrameEncoder().encode(Welcome(daemon_version="slow"))
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(socket_path)
    listener.listen(1)
    listener.settimeout(TERMINAL_WAIT_S)

    def trickle_the_welcome() -> None:
        with contextlib.suppress(OSError):
            peer, _ = listener.accept()
            with peer:
                peer.recv(4096)
                for byte in welcome:  # until the client hangs up
                    peer.sendall(bytes([byte]))
                    time.sleep(0.2)

    thread = threading.Thread(target=trickle_the_welcome, daemon=True)
    thread.start()
    try:
        with (
            pytest.raises(DaemonUnavailableError, match=re.escape("no answer within 0.5 s")),
            new_client(socket_path, connect_timeout=0.5) as qd,
        ):
            qd.status()
    finally:
        listener.close()
        thread.join(TERMINAL_WAIT_S * 3)


def test_daemon_unavailable_lists_every_path_tried(
    socket_dir: Path, new_client: NewClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    refusing = socket_dir / "refusing.sock"
    bound = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bound.bind(str(refusing))  # bound, never listening: connecting is refused
    monkeypatch.setenv("QUOTAD_SOCKET", str(refusing))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(socket_dir / "runtime"))
    try:
        with pytest.raises(DaemonUnavailableError) as caught, new_client() as qd:
            qd.status()
    finally:
        bound.close()
    message = str(caught.value)
    assert f"{refusing} (connection refused" in message
    assert f"{socket_dir / 'runtime' / 'quotad' / 'quotad.sock'} (no such socket)" in message
    assert "/run/quotad/quotad.sock" in message
    assert type(caught.value) is DaemonUnavailableError
    assert len(caught.value.details["tried"]) == 3


@pytest.mark.parametrize(
    ("argument", "value", "error"),
    [
        ("timeout", 0, ValueError),
        ("timeout", -1, ValueError),
        ("timeout", float("nan"), ValueError),
        ("timeout", "5", TypeError),
        ("connect_timeout", 0, ValueError),
        ("connect_timeout", -1, ValueError),
        ("connect_timeout", float("nan"), ValueError),
        ("connect_timeout", True, TypeError),
        ("reconnect_s", -0.5, ValueError),
    ],
)
def test_a_bad_number_of_seconds_is_refused_naming_its_argument(
    socket_path: str, new_client: NewClient, argument: str, value: object, error: type[Exception]
) -> None:
    """Refused when the client is made, naming the argument: before, a timeout of -1 sent the
    request and then timed out "within -1 s", NaN raised ValueError from deep in a wait, and a
    negative connect_timeout failed differently in each API."""
    with pytest.raises(error, match=rf"Client\({argument}=.*{argument} must be"):
        new_client(socket_path, **{argument: value})


@pytest.mark.parametrize("seconds", [float("inf"), 1e7, 1e12, 10**400])
def test_a_huge_or_infinite_timeout_means_no_limit(
    fake: FakeDaemon, socket_path: str, new_client: NewClient, seconds: float
) -> None:
    """The blocking client raised OverflowError for a timeout or connect_timeout of inf, or
    past what one wait of the OS takes (24.8 days); an integer past a float's range did so in
    both clients."""
    with new_client(socket_path, timeout=seconds, connect_timeout=seconds) as qd:
        assert qd.status().daemon_version == "fake"
        no_limit = seconds > 1e308
        assert qd.timeout is None if no_limit else qd.timeout == seconds


# --------------------------------------------------------------------------- requests


def test_chat_builds_the_request_and_returns_the_reply(
    fake: FakeDaemon, socket_path: str, new_client: NewClient
) -> None:
    with new_client(socket_path) as qd:
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


def test_frames_larger_than_the_socket_buffers_go_whole_both_ways(
    fake: FakeDaemon, socket_path: str, new_client: NewClient
) -> None:
    text = "".join(chr(ord("a") + n % 26) for n in range(1 << 20))  # 1 MiB each way
    with new_client(socket_path) as qd:
        reply = qd.chat("fast", [{"role": "user", "content": text}])
        assert reply.content == f"echo: {text}"
        assert qd.status().daemon_version == "fake"


def test_request_ids_increase_per_connection(
    fake: FakeDaemon, socket_path: str, new_client: NewClient
) -> None:
    with new_client(socket_path) as qd:
        for _ in range(3):
            qd.status()
    ids = [request.id for request in fake.requests(Status)]
    assert ids == sorted(set(ids))


def test_bad_message_raises_client_side_naming_the_field(
    fake: FakeDaemon, socket_path: str, new_client: NewClient
) -> None:
    with new_client(socket_path) as qd:
        with pytest.raises(BadRequestError, match=r"messages\[0\]\.role"):
            qd.chat("fast", [{"role": "robot", "content": "hi"}])
        with pytest.raises(BadRequestError, match="temperature"):
            qd.chat("fast", USER_HI, temperature=5)
    assert fake.requests(Chat) == []


def test_other_requests_round_trip(
    fake: FakeDaemon, socket_path: str, new_client: NewClient
) -> None:
    with new_client(socket_path) as qd:
        assert qd.embed("emb", ["a", "bcd"]).embeddings == [[1.0], [3.0]]
        assert qd.embed("emb", "abc").embeddings == [[3.0]]
        assert qd.spend(period="week", by="model").by == "model"
        assert qd.admin("disable", "openai/gpt-4o-mini").message == ""
        permit = qd.acquire("openai/gpt-4o-mini", 100)
        assert permit.permit_id.startswith("p")
        assert qd.settle(permit.permit_id, 80, status="ok").message == ""
    [settle] = fake.requests(Settle)
    assert isinstance(settle, Settle)
    assert (settle.permit_id, settle.tokens_used) == (permit.permit_id, 80)


@pytest.mark.parametrize("code", sorted(ERROR_CODES))
def test_error_reply_raises_the_class_of_its_code(
    socket_path: str, new_client: NewClient, code: str
) -> None:
    error = Error(code=code, message="nope", retry_after_s=1.5, details={"attempts": []})
    with FakeDaemon(socket_path, answering_chat_with(error)), new_client(socket_path) as qd:
        with pytest.raises(_ERROR_CLASSES[code]) as caught:
            qd.chat("fast", USER_HI)
        assert caught.value.code == code
        assert caught.value.retry_after_s == 1.5
        assert caught.value.details == {"attempts": []}
        assert qd.status().daemon_version == "fake"


def test_timeout_cancels_the_request(socket_path: str, new_client: NewClient) -> None:
    held: list[tuple[FakeConnection, Request]] = []
    with (
        FakeDaemon(socket_path, holding_chats(held)) as fake,
        new_client(socket_path, timeout=0.2) as qd,
    ):
        with pytest.raises(RequestTimeoutError):
            qd.chat("fast", USER_HI)
        [cancel] = fake.wait_for(Cancel)
        assert cancel.id == held[0][1].id
        assert qd.status().daemon_version == "fake"


# --------------------------------------------------------------------------- streams


def test_chat_stream_yields_chunks_then_holds_the_end(
    fake: FakeDaemon, socket_path: str, new_client: NewClient
) -> None:
    with new_client(socket_path) as qd:
        stream = qd.chat_stream("fast", [{"role": "user", "content": "a b c"}])
        chunks = list(stream)
        assert all(isinstance(chunk, ChatChunk) for chunk in chunks)
        assert "".join(chunk.delta for chunk in chunks) == "echo: a b c"
        assert stream.end is not None
        assert stream.end.content == stream.content == "echo: a b c"
        assert qd.last_stream_end is stream.end
        [chat] = fake.requests(Chat)
        assert isinstance(chat, Chat)
        assert chat.stream


def test_error_mid_stream_raises_and_keeps_the_partial_content(
    socket_path: str, new_client: NewClient
) -> None:
    replies = (
        ChatChunk(delta="par"),
        ChatChunk(delta="tial"),
        Error(code="upstream_error", message="provider broke"),
    )
    with FakeDaemon(socket_path, answering_chat_with(*replies)), new_client(socket_path) as qd:
        stream = qd.chat_stream("fast", USER_HI)
        deltas: list[str] = []
        with pytest.raises(UpstreamError, match="provider broke"):
            deltas.extend(chunk.delta for chunk in stream)
        assert deltas == ["par", "tial"]
        assert stream.content == "partial"
        assert stream.end is None
        assert qd.last_stream_end is None
        assert list(stream) == []


def test_closing_a_stream_early_cancels_it(socket_path: str, new_client: NewClient) -> None:
    replies = (ChatChunk(delta="one"), ChatChunk(delta="two"))
    with (
        FakeDaemon(socket_path, answering_chat_with(*replies)) as fake,
        new_client(socket_path) as qd,
    ):
        with qd.chat_stream("fast", USER_HI) as stream:
            first = next(stream)
            assert first.delta == "one"
        assert_cancelled(fake)
        assert list(stream) == []
        # the late chunk and the "cancelled" error are dropped, not mistaken for this reply
        assert qd.status().daemon_version == "fake"


def test_a_stream_left_by_break_and_dropped_is_cancelled(
    socket_path: str, new_client: NewClient
) -> None:
    """``for chunk in stream: break`` never closes the stream: its request ran on (the
    provider call, paid for) and its replies piled up. Now dropping it cancels it."""
    replies = (ChatChunk(delta="one"), ChatChunk(delta="two"))  # then nothing: it hangs
    with (
        FakeDaemon(socket_path, answering_chat_with(*replies)) as fake,
        new_client(socket_path) as qd,
    ):
        for chunk in qd.chat_stream("fast", USER_HI):
            assert chunk.delta == "one"
            break
        gc.collect()  # (CPython has freed it already; the loop held the only reference)
        assert qd.status().daemon_version == "fake"
        assert_cancelled(fake)


def chunks_in_one_write(count: int) -> Callable[[FakeConnection, Request], None]:
    """A fake daemon's handler: a chat is answered by ``count`` chunks sent in one write, and
    no end; anything else as usual."""
    encoder = FrameEncoder()

    def handle(connection: FakeConnection, request: Request) -> None:
        if type(request) is not Chat:
            answer(connection, request)
            return
        chunks = (ChatChunk(id=request.id, delta=str(n)) for n in range(count))
        connection.sock.sendall(b"".join(map(encoder.encode, chunks)))

    return handle


def test_a_stream_read_too_slowly_is_cancelled_past_its_unread_bound(
    socket_path: str, new_client: NewClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replies nobody read were kept without bound (a subscription never read grew for
    ever). Past ``MAX_UNREAD_REPLIES`` the request is cancelled; its reader gets the replies
    kept, then ``OverloadedError``."""
    monkeypatch.setattr(quotad.client._common, "MAX_UNREAD_REPLIES", 8)
    with (
        FakeDaemon(socket_path, chunks_in_one_write(20)) as fake,
        new_client(socket_path, timeout=30) as qd,
    ):
        stream = qd.chat_stream("fast", USER_HI)
        deltas: list[str] = []
        with pytest.raises(OverloadedError, match="8 replies came that were not read"):
            deltas.extend(chunk.delta for chunk in stream)
        assert deltas == [str(n) for n in range(8)]
        assert_cancelled(fake)
        assert qd.status().daemon_version == "fake"


def test_timeout_bounds_a_whole_stream(socket_path: str, new_client: NewClient) -> None:
    replies = (ChatChunk(delta="one"),)  # then nothing: the stream hangs after its first chunk
    with (
        FakeDaemon(socket_path, answering_chat_with(*replies)) as fake,
        new_client(socket_path, timeout=0.2) as qd,
    ):
        stream = qd.chat_stream("fast", USER_HI)
        assert next(stream).delta == "one"
        with pytest.raises(RequestTimeoutError):
            next(stream)
        assert_cancelled(fake)
        assert stream.content == "one"
        assert list(stream) == []


def test_timeout_bounds_a_stream_whose_chunks_are_already_queued(
    socket_path: str, new_client: NewClient
) -> None:
    """Replies already in a stream's inbox were returned without looking at the deadline, so
    a fast stream read slowly ran on past its timeout (for ever, if it never ended)."""
    with (
        FakeDaemon(socket_path, chunks_in_one_write(100)) as fake,
        new_client(socket_path, timeout=0.2) as qd,
    ):
        stream = qd.chat_stream("fast", USER_HI)
        assert next(stream).delta == "0"  # the other 99 came in the same read
        time.sleep(0.4)  # the caller is slow: the deadline passes with chunks waiting
        with pytest.raises(RequestTimeoutError):
            next(stream)
        assert_cancelled(fake)
        assert list(stream) == []
        assert qd.status().daemon_version == "fake"


def test_subscribe_yields_snapshots_until_closed(
    fake: FakeDaemon, socket_path: str, new_client: NewClient
) -> None:
    with new_client(socket_path) as qd:
        with qd.subscribe(interval_s=0.5) as snapshots:
            seqs = [next(snapshots).seq, next(snapshots).seq]
        assert seqs == [1, 2]
        assert_cancelled(fake, Subscribe)
        assert qd.status().daemon_version == "fake"


def test_a_subscription_is_not_bounded_by_the_timeout(
    socket_path: str, new_client: NewClient
) -> None:
    gap_s = 0.5  # longer than the client's timeout, whatever the machine's load
    timers: list[threading.Timer] = []

    def snapshot_now_and_after_a_gap(connection: FakeConnection, request: Request) -> None:
        if type(request) is not Subscribe:
            answer(connection, request)
            return
        connection.send(Snapshot(id=request.id, seq=1))
        timer = threading.Timer(gap_s, connection.send, (Snapshot(id=request.id, seq=2),))
        timers.append(timer)
        timer.start()

    with (
        FakeDaemon(socket_path, snapshot_now_and_after_a_gap),
        new_client(socket_path, timeout=0.2) as qd,
    ):
        try:
            with qd.subscribe(interval_s=0.5) as snapshots:
                assert [next(snapshots).seq, next(snapshots).seq] == [1, 2]
        finally:
            for timer in timers:
                timer.join()


@pytest.mark.parametrize(
    ("request_kind", "replies"),
    [
        ("chat", (ChatChunk(delta="a chunk to a plain chat"),)),
        ("chat_stream", (ChatChunk(delta="a"), Snapshot(seq=1))),
        ("subscribe", (ChatChunk(delta="a chunk to a subscription"),)),
    ],
)
def test_a_reply_of_the_wrong_kind_ends_its_request(
    socket_path: str, new_client: NewClient, request_kind: str, replies: tuple[Reply, ...]
) -> None:
    """InternalError was raised, but the request stayed registered (its later replies
    queued for nobody) and was not cancelled, as the reply did not end it."""

    def answer_wrongly(connection: FakeConnection, request: Request) -> None:
        if type(request) in (Chat, Subscribe):
            for reply in replies:
                reply.id = request.id
            connection.send(*replies)
        else:
            answer(connection, request)

    with FakeDaemon(socket_path, answer_wrongly) as fake, new_client(socket_path) as qd:
        calls: dict[str, Callable[[], object]] = {
            "chat": lambda: qd.chat("fast", USER_HI),
            "chat_stream": lambda: list(qd.chat_stream("fast", USER_HI)),
            "subscribe": lambda: list(qd.subscribe(interval_s=0.5)),
        }
        with pytest.raises(InternalError, match="answered"):
            calls[request_kind]()
        assert_cancelled(fake, Subscribe if request_kind == "subscribe" else Chat)
        assert qd.status().daemon_version == "fake"


# --------------------------------------------------------------------------- permits


def test_permit_settles_once_with_the_reservation(
    fake: FakeDaemon, socket_path: str, new_client: NewClient
) -> None:
    with new_client(socket_path) as qd, qd.permit("openai/gpt-4o-mini", tokens=1500) as held:
        assert held.permit_id.startswith("p")
        assert held.wait_s == 0.0
    [settle] = fake.requests(Settle)
    assert isinstance(settle, Settle)
    assert (settle.permit_id, settle.tokens_used, settle.status) == (held.permit_id, 1500, "ok")


def test_permit_settled_in_the_block_is_not_settled_again(
    fake: FakeDaemon, socket_path: str, new_client: NewClient
) -> None:
    with new_client(socket_path) as qd:
        with qd.permit("openai/gpt-4o-mini", tokens=1500) as held:
            held.settle(tokens=321, headers={"x-ratelimit-remaining-requests": "9"})
            with pytest.raises(RuntimeError, match="already settled"):
                held.settle(tokens=1)
        [settle] = fake.requests(Settle)
        assert isinstance(settle, Settle)
        assert settle.tokens_used == 321
        assert settle.headers == {"x-ratelimit-remaining-requests": "9"}


def test_permit_block_that_raises_settles_as_error(
    fake: FakeDaemon, socket_path: str, new_client: NewClient
) -> None:
    with new_client(socket_path) as qd:
        with pytest.raises(ValueError, match="sdk failed"), qd.permit("t/m", tokens=7):
            raise ValueError("sdk failed")
        [settle] = fake.requests(Settle)
        assert isinstance(settle, Settle)
        assert (settle.tokens_used, settle.status) == (7, "error")


# --------------------------------------------------------------------------- connection loss


def test_connection_lost_in_flight_then_reconnect_after_restart(
    socket_path: str, new_client: NewClient
) -> None:
    def crash_on_chat(connection: FakeConnection, request: Request) -> None:
        if type(request) is Chat:
            connection.close()
        else:
            answer(connection, request)

    with contextlib.ExitStack() as stack:
        with FakeDaemon(socket_path, crash_on_chat):
            qd = stack.enter_context(new_client(socket_path, reconnect_s=5.0))
            with pytest.raises(ConnectionLostError, match="may or may not have run"):
                qd.chat("fast", USER_HI)
        with FakeDaemon(socket_path) as restarted:
            assert qd.chat("fast", USER_HI).content == "echo: hi"
            assert len(restarted.connections) == 1


def test_a_frame_that_never_gets_through_is_sent_on_new_connections_then_raises(
    socket_path: str, new_client: NewClient
) -> None:
    """Each connection shuts its reading side (what the daemon does to a connection it closes
    for idleness), then welcomes the client: the chat's send fails with nothing of it received,
    so it goes again on a new connection, ``SEND_ATTEMPTS`` times in all, then raises."""
    released = threading.Event()

    def welcome_unread(connection: FakeConnection) -> None:
        connection.sock.shutdown(socket.SHUT_RD)  # before the Welcome: no send can get in first
        connection.send(connection.daemon.welcome)
        released.wait(TERMINAL_WAIT_S)  # the connection stays open: only sends to it fail

    with FakeDaemon(socket_path, handshake=welcome_unread) as fake:
        try:
            with (
                new_client(socket_path) as qd,
                pytest.raises(ConnectionLostError, match="could not send to quotad"),
            ):
                qd.chat("fast", USER_HI)
        finally:
            released.set()
        assert len(fake.requests(Hello)) == SEND_ATTEMPTS == 3
        assert fake.requests(Chat) == []


def test_idle_connection_reconnects_without_error_after_restart(
    socket_path: str, new_client: NewClient
) -> None:
    with contextlib.ExitStack() as stack:
        with FakeDaemon(socket_path):
            qd = stack.enter_context(new_client(socket_path))
            qd.status()
        with FakeDaemon(socket_path) as restarted:
            assert qd.chat("fast", USER_HI).content == "echo: hi"
            assert len(restarted.requests(Chat)) == 1


def test_reconnect_waits_for_a_restarting_daemon(socket_path: str, new_client: NewClient) -> None:
    with contextlib.ExitStack() as stack:
        with FakeDaemon(socket_path):
            qd = stack.enter_context(new_client(socket_path, reconnect_s=10.0))
            qd.status()
        restarted = FakeDaemon(socket_path)
        timer = threading.Timer(0.3, restarted.start)
        timer.start()
        try:
            assert qd.status().daemon_version == "fake"
        finally:
            timer.join()
            restarted.stop()


def test_connection_level_error_fails_the_requests_in_flight(
    socket_path: str, new_client: NewClient
) -> None:
    def refuse_frame(connection: FakeConnection, request: Request) -> None:
        connection.send(Error(code="bad_frame", message="frame too large"))
        connection.close()

    with (
        FakeDaemon(socket_path, refuse_frame),
        new_client(socket_path) as qd,
        pytest.raises(ConnectionLostError, match="bad_frame: frame too large"),
    ):
        qd.status()


def test_a_welcome_cannot_raise_the_reply_bound_past_its_ceiling(
    socket_path: str, new_client: NewClient
) -> None:
    """A "daemon" that allows itself 4 GiB frames and then announces a 2 GiB reply: the client
    refuses the length prefix at once (its ceiling is 1 GiB), instead of buffering for it."""

    def announce_two_gib(connection: FakeConnection, request: Request) -> None:
        connection.sock.sendall((2 * MAX_FRAME_CEILING).to_bytes(4, "big") + b"\x80" * 64)

    welcome = Welcome(daemon_version="fake", features=["stream"], max_frame=2**32 - 1)
    with (
        FakeDaemon(socket_path, announce_two_gib, welcome=welcome),
        new_client(socket_path, timeout=30) as qd,
        pytest.raises(ConnectionLostError, match=f"over the limit of {MAX_FRAME_CEILING} bytes"),
    ):
        qd.status()


def test_a_daemon_that_stops_reading_cannot_hold_a_send_past_the_timeout(
    socket_path: str, new_client: NewClient
) -> None:
    """A request larger than the socket buffers, to a daemon that reads no more: the blocking
    client waited in ``sendall`` for ever, the async one for 30 s (shielded), whatever its
    timeout. Now the send ends at the request's deadline; half a frame sent drops the
    connection, and the next call connects anew."""
    release = threading.Event()

    def stop_reading_at_a_chat(connection: FakeConnection, request: Request) -> None:
        if type(request) is Chat:
            release.wait(TERMINAL_WAIT_S * 2)  # this connection reads nothing more meanwhile
        else:
            answer(connection, request)

    big = [{"role": "user", "content": "x" * (4 << 20)}]  # far more than the socket buffers
    # Only for the code before the fix, so that it ends: the daemon reads again after a while,
    # the send completes, and the call then times out waiting for its reply (another error).
    unblock = threading.Timer(TERMINAL_WAIT_S * 2, release.set)
    with (
        FakeDaemon(socket_path, stop_reading_at_a_chat) as fake,
        new_client(socket_path, timeout=0.5) as qd,
    ):
        unblock.start()
        try:
            with pytest.raises(RequestTimeoutError, match="no reply"):
                qd.chat("fast", USER_HI)
            with pytest.raises(RequestTimeoutError, match="could not send the request"):
                qd.chat("fast", big)
            assert qd.status().daemon_version == "fake"
            assert len(fake.connections) == 2
        finally:
            release.set()
            unblock.cancel()
