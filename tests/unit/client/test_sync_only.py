"""What only the blocking :class:`Client` has: threads sharing one client (each gets its own
replies, whichever thread reads), use without ``with``, and a permit block interrupted by
Ctrl-C. The behaviour both APIs share is tested once for both, in test_api.py."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from quotad.client import Client
from quotad.client._common import SendTimedOut
from quotad.client._connection import Connection
from quotad.protocol.messages import (
    Chat,
    ChatChunk,
    ChatReply,
    Request,
    Settle,
    Status,
    Subscribe,
)
from tests.support.fake_daemon import (
    USER_HI,
    FakeConnection,
    FakeDaemon,
    answering_chat_with,
    chat_reply,
    holding_chats,
)
from tests.unit.client.cancels import (
    assert_cancelled,
    assert_the_cancel_still_waits,
    connection_with_a_cancel_waiting,
)

CHILD_WAIT_S = 10.0


def exit_code_of_child(pid: int) -> int | None:
    """The exit code of child ``pid``, or None if it had not exited within ``CHILD_WAIT_S``
    (it is then killed: a bound for a test that would hang, not a timing assert)."""
    deadline = time.monotonic() + CHILD_WAIT_S
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None


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


def test_a_client_connects_at_its_first_call_and_again_after_close(
    fake: FakeDaemon, socket_path: str
) -> None:
    qd = Client(socket_path)
    assert qd.welcome is None
    try:
        assert qd.status().daemon_version == "fake"
        qd.close()
        assert qd.status().daemon_version == "fake"
    finally:
        qd.close()
    assert len(fake.connections) == 2


def test_permit_block_interrupted_settles_as_cancelled(fake: FakeDaemon, socket_path: str) -> None:
    with Client(socket_path) as qd:
        with pytest.raises(KeyboardInterrupt), qd.permit("t/m", tokens=70):
            raise KeyboardInterrupt
        [settle] = fake.requests(Settle)
        assert isinstance(settle, Settle)
        assert (settle.tokens_used, settle.status) == (70, "cancelled")


def test_a_forked_child_connects_anew_and_leaves_the_parents_call_alone(socket_path: str) -> None:
    """The child of a fork shared the parent's socket and request ids: it hung waiting for a
    read turn a parent thread held at the fork, could read the parent's replies, and closing
    its copy shut the socket down under the parent's call in flight."""
    held: list[tuple[FakeConnection, Request]] = []
    replies: list[ChatReply] = []
    with FakeDaemon(socket_path, holding_chats(held)) as fake, Client(socket_path) as qd:
        qd.status()
        waiter = threading.Thread(target=lambda: replies.append(qd.chat("fast", USER_HI)))
        waiter.start()
        fake.wait_for(Chat)  # a parent thread now waits on the connection, holding the read turn
        pid = os.fork()
        if pid == 0:  # the child: one call of its own, then close, and never return to pytest
            code = 1
            try:
                code = 0 if qd.status().daemon_version == "fake" else 2
                qd.close()
            finally:
                os._exit(code)
        child_exit = exit_code_of_child(pid)
        [(connection, chat)] = held
        assert isinstance(chat, Chat)
        connection.send(chat_reply(chat))
        waiter.join(5)
        assert [reply.content for reply in replies] == ["echo: hi"]
        assert qd.status().daemon_version == "fake"
    assert child_exit == 0
    assert len(fake.connections) == 2
    assert len(fake.requests(Status)) == 3


def test_a_stream_left_by_break_is_cancelled_at_once(socket_path: str) -> None:
    """Dropped, a stream's Cancel goes at once, with no other call to carry it; so does a
    subscription's."""
    with (
        FakeDaemon(socket_path, answering_chat_with(ChatChunk(delta="one"))) as fake,
        Client(socket_path) as qd,
    ):
        for chunk in qd.chat_stream("fast", USER_HI):
            assert chunk.delta == "one"
            break
        assert_cancelled(fake)
        for snapshot in qd.subscribe(interval_s=0.5):
            assert snapshot.seq == 1
            break
        assert_cancelled(fake, Subscribe, cancels=2)


def test_what_waited_to_go_stays_in_line_when_the_next_frame_cannot_be_sent() -> None:
    """A Cancel waiting for a busy socket goes before the next frame; when that frame's
    deadline passed with nothing sent, the Cancel was dropped (its request ran on, paid),
    and so was the rest of a frame half sent before it, so the next frame followed half of
    one. Now what waited stays first in line, and the connection stays up."""
    with connection_with_a_cancel_waiting(Connection, blocking=True) as connection:
        with pytest.raises(SendTimedOut) as timed_out:
            connection.send(Status(id=0), time.monotonic() + 0.05)
        assert_the_cancel_still_waits(connection, timed_out.value)
