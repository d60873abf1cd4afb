"""What only the :class:`AsyncClient` has, under asyncio, asyncio+uvloop and trio: many tasks
multiplexed on its one connection, cancellation (a cancelled waiter cancels its request, a
cancelled permit block settles as cancelled), and the rule that it must be opened with
``async with``. The behaviour both APIs share is tested once for both, in test_api.py."""

from __future__ import annotations

import anyio
import anyio.to_thread
import pytest

from quotad.client import AsyncClient
from quotad.client._async_connection import AsyncConnection
from quotad.client._common import SendTimedOut
from quotad.protocol.messages import (
    Cancel,
    Chat,
    ChatChunk,
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


@pytest.mark.anyio
async def test_multiplexes_many_requests_on_one_connection(socket_path: str) -> None:
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
async def test_large_frames_from_many_tasks_are_never_interleaved(
    fake: FakeDaemon, socket_path: str
) -> None:
    size = 300_000  # each frame more than the socket takes at once
    results: dict[int, str] = {}
    async with AsyncClient(socket_path) as qd:

        async def ask(n: int) -> None:
            reply = await qd.chat("fast", [{"role": "user", "content": str(n) * size}])
            results[n] = reply.content or ""

        async with anyio.create_task_group() as tasks:
            for n in range(10):
                tasks.start_soon(ask, n)
    assert results == {n: f"echo: {str(n) * size}" for n in range(10)}
    assert len(fake.connections) == 1


@pytest.mark.anyio
async def test_a_cancelled_waiter_cancels_its_request(socket_path: str) -> None:
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
async def test_a_cancelled_permit_block_settles_as_cancelled(
    fake: FakeDaemon, socket_path: str
) -> None:
    async with AsyncClient(socket_path) as qd:
        with anyio.CancelScope() as scope:
            async with qd.permit("t/m", tokens=70):
                scope.cancel()  # once granted (a timeout could expire before the grant)
                await anyio.sleep(5)
        assert scope.cancelled_caught
        [settle] = fake.requests(Settle)
        assert isinstance(settle, Settle)
        assert (settle.tokens_used, settle.status) == (70, "cancelled")


@pytest.mark.anyio
async def test_the_client_must_be_opened(socket_path: str) -> None:
    with pytest.raises(RuntimeError, match="async with"):
        await AsyncClient(socket_path).status()


@pytest.mark.anyio
async def test_the_client_is_opened_once(fake: FakeDaemon, socket_path: str) -> None:
    async with AsyncClient(socket_path) as qd:
        with pytest.raises(RuntimeError, match="already open"):
            await qd.__aenter__()
        assert (await qd.status()).daemon_version == "fake"


@pytest.mark.anyio
async def test_a_stream_left_by_break_is_cancelled_at_once(socket_path: str) -> None:
    """Dropped in its event loop, a stream's Cancel goes at once, with no other call to carry
    it; so does a subscription's."""
    with FakeDaemon(socket_path, answering_chat_with(ChatChunk(delta="one"))) as fake:
        async with AsyncClient(socket_path) as qd:
            async for chunk in qd.chat_stream("fast", USER_HI):
                assert chunk.delta == "one"
                break
            await anyio.to_thread.run_sync(assert_cancelled, fake)
            async for snapshot in qd.subscribe(interval_s=0.5):
                assert snapshot.seq == 1
                break
            await anyio.to_thread.run_sync(lambda: assert_cancelled(fake, Subscribe, cancels=2))


@pytest.mark.anyio
async def test_clients_closed_out_of_order_get_a_clear_error(
    fake: FakeDaemon, socket_path: str
) -> None:
    """Closing the first of two clients a task opened broke its task groups (asyncio: a
    RuntimeError about cancel scopes; trio: "Nursery stack corrupted"). Now it is refused
    with a clear error before anything is closed, and the right order still works."""
    first, second = AsyncClient(socket_path), AsyncClient(socket_path)
    await first.__aenter__()
    await second.__aenter__()
    with pytest.raises(RuntimeError, match="closed in the reverse order"):
        await first.aclose()
    assert (await first.status()).daemon_version == "fake"
    await second.aclose()
    await first.aclose()


@pytest.mark.anyio
async def test_what_waited_to_go_stays_in_line_when_the_next_frame_cannot_be_sent() -> None:
    """As the blocking client's (test_sync_only.py): a Cancel taken to go ahead of a frame
    of which nothing was sent by its deadline was dropped."""
    with connection_with_a_cancel_waiting(AsyncConnection, blocking=False) as connection:
        with pytest.raises(SendTimedOut) as timed_out:
            await connection.send(Status(id=0), anyio.current_time() + 0.05)
        assert_the_cancel_still_waits(connection, timed_out.value)
