"""A stream's response body on the front door: the broker's chunks as server-sent events in
one API's shape (:class:`StreamEncoder`: OpenAI's or Anthropic's), a failure after the first
chunk as an error event, and the stream's cost put in its trailers as it ends."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Protocol

import anyio

from quotad.daemon.errors import RequestError
from quotad.daemon.front_door.wire import cost_header
from quotad.daemon.net.http11 import Headers
from quotad.protocol.messages import ChatChunk, ChatEnd

log = logging.getLogger("quotad.http")


class StreamEncoder(Protocol):
    """Turns a broker stream into server-sent events of one API's shape."""

    def chunk(self, chunk: ChatChunk) -> bytes: ...

    def end(self, end: ChatEnd) -> bytes: ...

    def error(self, error: RequestError) -> bytes: ...


async def stream_events(
    stream: AsyncGenerator[ChatChunk | ChatEnd, None],
    first: ChatChunk | ChatEnd,
    encoder: StreamEncoder,
    trailers: Headers,
) -> AsyncIterator[bytes]:
    """The response body of a stream: one event (or a few) per broker chunk; its cost is put
    in ``trailers`` as it ends."""
    try:
        if isinstance(first, ChatEnd):
            yield encoder.end(first)
            return
        yield encoder.chunk(first)
        async for item in stream:
            if isinstance(item, ChatEnd):
                trailers.append(cost_header(item.cost_usd))
                yield encoder.end(item)
            else:
                yield encoder.chunk(item)
    except RequestError as error:
        yield encoder.error(error)
    except Exception:
        log.exception("internal error in a stream")
        yield encoder.error(RequestError("internal", "internal error"))
    finally:
        with anyio.CancelScope(shield=True):
            await stream.aclose()
