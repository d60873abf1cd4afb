"""A connection closed for idleness at the instant its client sends a request: the request is
neither lost (``ConnectionLostError``) nor run twice.

A real broker on a real Unix socket, in process (as in ``test_socket_hardening``), with an idle
timeout of a few milliseconds; blocking clients in threads, truly concurrent with the server's
idle timer, each send a chat at times spread around that timeout, many times over.
"""

from __future__ import annotations

import dataclasses
import random
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.to_thread
import pytest

from quotad.client import Client, ConnectionLostError
from quotad.daemon.providers.base import ChatResult
from quotad.protocol.messages import Chat
from tests.support.backends import ASYNCIO_BACKENDS
from tests.unit.test_socket_hardening import serve

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ASYNCIO_BACKENDS)]

IDLE_TIMEOUT_S = 0.02
"""The server's idle timer then looks every 5 ms (a quarter of it)."""
CLIENTS = 8
ROUNDS = 150
MESSAGES = [{"role": "user", "content": "still there?"}]


class ChatCounter:
    """Wraps a provider's ``chat``, counting the chats it ran."""

    def __init__(self, chat: Callable[[str, Chat, int], Awaitable[ChatResult]]) -> None:
        self.calls = 0
        self._chat = chat

    async def __call__(self, model: str, request: Chat, max_tokens: int) -> ChatResult:
        self.calls += 1  # in the server's event loop: one at a time
        return await self._chat(model, request, max_tokens)


async def test_a_request_sent_as_its_idle_connection_closes_runs_once(anyio_backend: Any) -> None:
    """The daemon checked that nothing waited unread, then closed: a chat sent in between
    was never run and its caller got ``ConnectionLostError``. Now the daemon shuts the read
    side first: a chat queued before is answered, and one sent after fails to send, so the
    client sends it again on a new connection."""
    async with serve() as served:
        served.server.limits = dataclasses.replace(
            served.server.limits, idle_timeout_s=IDLE_TIMEOUT_S
        )
        provider = ChatCounter(served.provider.chat)
        served.provider.chat = provider  # type: ignore[method-assign]
        lost: list[str] = []
        answered = 0
        count_lock = threading.Lock()

        def chat_at_the_boundary(seed: int) -> None:
            nonlocal answered
            pace = random.Random(seed)
            with Client(socket=served.path, app=f"idle{seed}") as client:
                for _ in range(ROUNDS):
                    anyio.from_thread.check_cancelled()
                    try:
                        client.chat("p/m", MESSAGES)
                    except ConnectionLostError as error:
                        with count_lock:
                            lost.append(str(error))
                    else:
                        with count_lock:
                            answered += 1
                    # around the moment the idle timer may close the connection
                    pace_s = IDLE_TIMEOUT_S * pace.uniform(0.9, 1.4)
                    threading.Event().wait(pace_s)

        async with anyio.create_task_group() as clients:
            for seed in range(CLIENTS):
                clients.start_soon(anyio.to_thread.run_sync, chat_at_the_boundary, seed)
        assert lost == []
        assert answered == CLIENTS * ROUNDS
        assert provider.calls == answered  # none ran twice, none ran unanswered
