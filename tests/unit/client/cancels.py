"""What the client tests check of cancelled requests, on either API: that the fake daemon got
the ``Cancel`` of a request (:func:`assert_cancelled`), and that a ``Cancel`` waiting to go
before the next frame stays first in line when that frame cannot be sent
(:func:`connection_with_a_cancel_waiting`, :func:`assert_the_cancel_still_waits`)."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from quotad.client._common import ConnectionBase, Handshake, SendTimedOut, cancel_frame
from quotad.protocol.messages import Cancel, Chat, Request, Welcome
from tests.support.fake_daemon import FakeDaemon

ConnectionT = TypeVar("ConnectionT", bound=ConnectionBase[Any])
WAITING_CANCEL: int = 7
"""The id of the request whose ``Cancel`` waits in :func:`connection_with_a_cancel_waiting`."""


def assert_cancelled(fake: FakeDaemon, kind: type[Request] = Chat, *, cancels: int = 1) -> None:
    """``fake`` received ``cancels`` ``Cancel``s (waiting for them), no more, the last one
    for the one request of ``kind`` it was sent."""
    received = fake.wait_for(Cancel, cancels)
    assert len(received) == cancels
    [sent] = fake.requests(kind)
    assert received[-1].id == sent.id


@contextlib.contextmanager
def connection_with_a_cancel_waiting(
    kind: Callable[[socket.socket, Handshake], ConnectionT], *, blocking: bool
) -> Iterator[ConnectionT]:
    """A ``kind`` connection on a socket its peer never reads, full (it takes nothing more),
    with the ``Cancel`` of request ``WAITING_CANCEL`` waiting to go before the next frame.
    The socket is ``blocking`` as that side's handshake leaves it."""
    ours, peer = socket.socketpair()
    with ours, peer:
        ours.setblocking(blocking)
        handshake = Handshake("test", "app")
        handshake.welcome = Welcome(id=0)
        connection = kind(ours, handshake)
        with contextlib.suppress(BlockingIOError):
            while True:
                ours.send(bytes(65536), socket.MSG_DONTWAIT)
        connection._unsent.append(cancel_frame(WAITING_CANCEL))
        yield connection


def assert_the_cancel_still_waits(connection: ConnectionBase[Any], timed_out: SendTimedOut) -> None:
    """The frame sent on :func:`connection_with_a_cancel_waiting` timed out with nothing of it
    sent: the connection is still up, and the ``Cancel`` still first in line."""
    assert not timed_out.cut
    assert connection.lost is None
    assert list(connection._unsent) == [cancel_frame(WAITING_CANCEL)]
