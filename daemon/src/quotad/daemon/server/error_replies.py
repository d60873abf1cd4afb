"""The errors the Unix socket answers with besides the pipeline's own: a request it will not
start (``overloaded``: the daemon draining or full, the connection at its limits, a frame
arriving past the request memory's bound), one it cannot answer (a reply over
``daemon.max_frame``, or one that cannot be encoded), and plain refusals."""

from __future__ import annotations

from typing import Final

from quotad.daemon.errors import encodable
from quotad.daemon.request_memory import RequestMemory
from quotad.protocol.figures import size
from quotad.protocol.messages import Error, Message

RETRY_AFTER_S: Final = 1.0
"""``retry_after_s`` of the ``overloaded`` answers (the daemon draining, or full)."""


def error_reply(request_id: int, code: str, message: str) -> Error:
    """``code`` with ``message``, for the request ``request_id``."""
    return Error(id=request_id, code=code, message=message)


def oversized(message: Message, frame_size: int, max_frame: int) -> Error:
    """What is sent instead of ``message`` when its frame would be over ``daemon.max_frame``
    (the peer would refuse it, and the connection with it): its request's error, naming the
    bound. Its ledger row, if it had one, is already committed."""
    request_id = getattr(message, "request_id", "")
    return Error(
        id=message.id,
        code="upstream_error",
        message=(
            f"the {type(message).__name__} is {size(frame_size)} as a frame, over the wire "
            f"protocol's limit of {size(max_frame)} (daemon.max_frame): ask through the HTTP "
            "front door, for a shorter answer, or raise daemon.max_frame"
        ),
        details={"request_id": request_id} if request_id else {},
    )


def unencodable(message: Message, error: Exception) -> Error:
    """What is sent instead of ``message`` when it cannot be encoded (text that is not Unicode,
    a value the wire cannot carry: a bug, since everything a reply holds is checked where it
    comes in), so that its request is still answered: an error keeps its code and retry
    delay, its text made encodable; anything else is ``internal``, saying what failed."""
    if isinstance(message, Error):
        return Error(
            id=message.id,
            code=message.code,
            message=encodable(message.message),
            retry_after_s=message.retry_after_s,
        )
    return Error(
        id=message.id,
        code="internal",
        message=f"quotad could not encode its {type(message).__name__}: {encodable(str(error))}",
    )


def overloaded(message: str, request_id: int = 0) -> Error:
    """``overloaded``, to be tried again in :data:`RETRY_AFTER_S` (the request ``request_id``;
    0: the connection, turned away as it came)."""
    return Error(id=request_id, code="overloaded", message=message, retry_after_s=RETRY_AFTER_S)


def unread_refusal(memory: RequestMemory, unread: int) -> str:
    """Why a connection is closed whose ``unread`` bytes (a frame arriving) ``memory`` could
    not hold."""
    return (
        f"the requests quotad holds in memory are at their bound ({size(memory.bound)} for the "
        f"daemon, {size(memory.held)} held): the {size(unread)} of a frame arriving on this "
        "connection could not be held, and the connection is closed; retry shortly"
    )
