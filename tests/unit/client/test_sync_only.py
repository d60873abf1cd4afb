"""What only the blocking :class:`Client` has: threads sharing one client (each gets its own
replies, whichever thread reads), use without ``with``, and a permit block interrupted by
Ctrl-C. The behaviour both APIs share is tested once for both, in test_api.py."""

from __future__ import annotations

import threading

import pytest

from quotad.client import Client
from quotad.protocol.messages import Chat, Request, Settle, Status
from tests.support.fake_daemon import FakeConnection, FakeDaemon, chat_reply, holding_chats


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
