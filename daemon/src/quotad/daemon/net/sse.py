"""Server-sent events read from a provider's streamed answer (``text/event-stream``), one
event's data at a time, with a bound on what one event may buffer and on the whole stream."""

from __future__ import annotations

import re
from collections import deque
from collections.abc import AsyncIterator
from typing import Final

import anyio
import httpx

from quotad.daemon.net.content_coding import decoded_body

MAX_EVENT_BYTES: Final = 16 * 1024 * 1024
"""The longest server-sent event (or line) accepted: the bound on what a stream buffers."""
LINES_BETWEEN_TURNS: Final = 512
"""Lines read before the other tasks get a turn: the lines of one read are read, and their
events passed on, without waiting: 256 KB of comment lines held the event loop 70 ms, and 29,000
one-token events in one read each went through the broker and out to the caller at once."""
DRAIN_S: Final = 1.0
"""How long a stream's end event may wait for the end of its body."""
_CR_LINE_END: Final = re.compile(rb"\r\n?")
BYTE_ORDER_MARK: Final = b"\xef\xbb\xbf"
"""UTF-8's byte order mark: one opening a stream is dropped, as the standard says."""


class EventStreamTooLong(httpx.RemoteProtocolError):
    """A stream's body passed the bound on a whole stream."""


class ServerSentEvents:
    """The ``data`` of each event in a ``text/event-stream`` body, one event at a time.

    A line ends in CR LF, LF or a lone CR, as the standard allows, mixed in one stream and
    however the reads cut them; a byte order mark opening the stream is dropped, as the
    standard says (kept, it made the first line no ``data:`` line, and the first event was
    lost: an Anthropic stream's ``message_start``, which carries its prompt's usage). Lines
    of one event's ``data:`` fields are joined with ``\\n``; ``event:``, ``id:``, ``retry:``
    and comments are skipped (the providers repeat the event type in the data).
    An event left unterminated at the end of the body is still delivered; one longer than
    :data:`MAX_EVENT_BYTES` breaks the stream (``httpx.RemoteProtocolError``), and so does a
    body longer than ``max_bytes`` in all (:class:`EventStreamTooLong`). A line is gathered
    in one buffer as its pieces come, so that however small they are, reading it stays
    linear in its length.
    """

    def __init__(self, response: httpx.Response, max_bytes: int | None = None) -> None:
        self._response = response
        self._chunks: AsyncIterator[bytes] = decoded_body(response)
        self._lines: deque[bytes] = deque()
        self._partial = bytearray()
        self._ended_in_cr = False
        self._data: list[bytes] = []
        self._data_bytes = 0
        self._ended = False
        self._max_bytes = max_bytes
        self._received = 0
        self._lines_since_turn = 0
        self._opening: bytes | None = b""
        """The stream's first bytes while they may still be a byte order mark (None after)."""

    async def next_data(self) -> bytes | None:
        """The data of the next event; None at the end of the body. Transport errors
        (``httpx.TransportError``) and a body not in its content-coding
        (``httpx.DecodingError``) propagate."""
        while True:
            while self._lines:
                self._lines_since_turn += 1
                if self._lines_since_turn == LINES_BETWEEN_TURNS:
                    self._lines_since_turn = 0
                    await anyio.lowlevel.checkpoint()
                line = self._lines.popleft()
                if not line:
                    if self._data:
                        return self._dispatch()
                elif line.startswith(b"data:"):
                    value = line[5:]
                    self._data.append(value[1:] if value.startswith(b" ") else value)
                    self._data_bytes += len(value)
                    if self._data_bytes > MAX_EVENT_BYTES:
                        raise httpx.RemoteProtocolError(
                            f"an event longer than {MAX_EVENT_BYTES} bytes"
                        )
            if self._ended:
                return self._dispatch() if self._data else None
            try:
                chunk = await self._chunks.__anext__()
            except StopAsyncIteration:
                self._ended = True
                if self._opening:  # a body shorter than a byte order mark, which begins one
                    self._partial += self._opening
                    self._opening = None
                if self._partial:
                    self._lines.append(bytes(self._partial))
                    self._partial.clear()
                continue
            self._received += len(chunk)
            if self._max_bytes is not None and self._received > self._max_bytes:
                raise EventStreamTooLong(f"a stream longer than {self._max_bytes} bytes")
            if self._opening is not None:
                chunk = self._without_byte_order_mark(chunk)
                if not chunk:
                    continue
            self._split(chunk)

    def _without_byte_order_mark(self, chunk: bytes) -> bytes:
        """``chunk``, one of the stream's first, without the byte order mark that opens the
        stream, if one does; b"" while the bytes so far may still be one (it may come in
        pieces)."""
        opening = self._opening + chunk if self._opening else chunk
        if len(opening) < len(BYTE_ORDER_MARK) and BYTE_ORDER_MARK.startswith(opening):
            self._opening = opening
            return b""
        self._opening = None
        return opening.removeprefix(BYTE_ORDER_MARK)

    def _split(self, chunk: bytes) -> None:
        """Queue the lines ``chunk`` completes; keep what follows its last line end.

        A CR is a line end whether an LF follows or not: the line ends are written as LF,
        and an LF that begins a read after one that ended in CR is the rest of a CR LF (a read
        is never empty: :func:`decoded_body` passes none on)."""
        if self._ended_in_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        if b"\r" in chunk:
            self._ended_in_cr = chunk.endswith(b"\r")
            chunk = _CR_LINE_END.sub(b"\n", chunk)
        else:
            self._ended_in_cr = False
        last = chunk.rfind(b"\n")
        if last < 0:
            self._partial += chunk
            if len(self._partial) > MAX_EVENT_BYTES:
                raise httpx.RemoteProtocolError(f"an event longer than {MAX_EVENT_BYTES} bytes")
            return
        if self._partial:
            self._partial += chunk[: last + 1]
            complete = bytes(self._partial)
            self._partial.clear()
        else:
            complete = chunk[: last + 1]
        self._partial += chunk[last + 1 :]
        if len(self._partial) > MAX_EVENT_BYTES:
            raise httpx.RemoteProtocolError(f"an event longer than {MAX_EVENT_BYTES} bytes")
        lines = complete.split(b"\n")
        lines.pop()  # empty: complete ends with the newline
        self._lines.extend(lines)

    async def drain(self) -> None:
        """Read what follows the end event up to the end of the body, so that the connection
        goes back to the pool; a server that keeps the body open longer than
        :data:`DRAIN_S`, or breaks it, only costs that connection."""
        with anyio.move_on_after(DRAIN_S):
            try:
                while await self.next_data() is not None:
                    pass
            except (httpx.TransportError, httpx.DecodingError):
                pass

    def _dispatch(self) -> bytes:
        data = self._data[0] if len(self._data) == 1 else b"\n".join(self._data)
        self._data = []
        self._data_bytes = 0
        return data

    async def aclose(self) -> None:
        """Release the connection: back to the pool when the body was read whole, else closed.

        A body left unread is then read on to the error the closed connection gives, so that
        httpx's body iterators finish instead of being left suspended (trio warns of those).
        """
        await self._response.aclose()
        if self._ended:
            return
        self._ended = True
        try:
            async for _ in self._chunks:
                pass
        except (httpx.HTTPError, httpx.StreamError):
            pass
