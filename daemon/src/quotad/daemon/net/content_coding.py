"""A provider's response body decoded from the content-codings its ``content-encoding`` names
(``gzip``, ``deflate``, or both in turn), in pieces of at most :data:`PIECE_BYTES`, so that
whoever reads it can stop at its bound before more is inflated.

httpx's own decoders inflate each piece read off the connection whole: a gzip of zeros
inflates about a thousand times, so a piece of a few hundred KiB (what the lean pool reads
ahead) became hundreds of MiB in one call, however small ``max_response_mb`` was. Here zlib
inflates at most :data:`PIECE_BYTES` at a time, and the rest waits until the reader asks; the
other tasks get a turn every :data:`PIECES_BETWEEN_TURNS` pieces.

The codings understood are those httpx understands here (``gzip``, ``deflate``: a zlib stream,
else raw deflate, as servers send both); others (``br``, ``zstd``, ``x-gzip``, unknown names)
pass as they are, as with httpx. A body that is not what its coding says raises
``httpx.DecodingError``; what follows the end of a coded body is left unread, as httpx leaves
it (zlib keeps bytes after the end in ``unconsumed_tail`` as well as ``unused_data`` when the
end came in a call that gave its most: asked for that tail again, it gave nothing and kept it,
so a gzip answer of over 64 KiB inflated, with bytes after its end, held the event loop for
good).
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncGenerator, Iterable, Iterator
from contextlib import aclosing
from typing import Any, Final, cast

import anyio
import httpx

PIECE_BYTES: Final = 64 * 1024
"""The most one step of inflating gives."""
PIECES_BETWEEN_TURNS: Final = 64
"""Pieces of a body passed on before the other tasks get a turn: what one read off the
connection brings is passed on without waiting, a piece a chunk through httpx's h11, so a
provider's 1-byte chunks held the event loop 0.6 s a read."""
MAX_CODINGS: Final = 4
"""Content-codings decoded in turn at most (servers apply one); a body said to be in more is
refused: each is an inflater (about 40 KiB) and a generator deeper in the chain."""
_WBITS: Final = {"gzip": zlib.MAX_WBITS | 16, "deflate": zlib.MAX_WBITS}


def codings(response: httpx.Response) -> list[str]:
    """The content-codings ``response``'s body is in that are decoded here, in the order they
    were applied; ``httpx.DecodingError`` past :data:`MAX_CODINGS`."""
    named = response.headers.get_list("content-encoding", split_commas=True)
    applied = [coding for coding in (name.strip().lower() for name in named) if coding in _WBITS]
    if len(applied) > MAX_CODINGS:
        raise httpx.DecodingError(
            f"a body in {len(applied)} content-codings (at most {MAX_CODINGS} are decoded)"
        )
    return applied


async def decoded_body(response: httpx.Response) -> AsyncGenerator[bytes, None]:
    """``response``'s body, decoded, in pieces of at most :data:`PIECE_BYTES` when it is in a
    content-coding (else as it comes); the other tasks get a turn every
    :data:`PIECES_BETWEEN_TURNS` pieces."""
    passed_on = 0
    async with aclosing(_decoded_pieces(response)) as pieces:
        async for piece in pieces:
            yield piece
            passed_on += 1
            if passed_on % PIECES_BETWEEN_TURNS == 0:
                await anyio.lowlevel.checkpoint()


async def _decoded_pieces(response: httpx.Response) -> AsyncGenerator[bytes, None]:
    applied = codings(response)
    if not applied:
        async for chunk in response.aiter_bytes():
            yield chunk
        return
    inflaters = [_Inflater(coding) for coding in reversed(applied)]
    # an async generator (typed as an iterator): closed when this one is, even unfinished
    raw_pieces = cast(AsyncGenerator[bytes, None], response.aiter_raw())
    async with aclosing(raw_pieces):
        async for raw in raw_pieces:
            for piece in _through(inflaters, [raw]):
                if piece:
                    yield piece
    for piece in _through(inflaters, [], final=True):
        if piece:
            yield piece


def _through(
    inflaters: list[_Inflater], pieces: Iterable[bytes], final: bool = False
) -> Iterator[bytes]:
    """``pieces`` through each inflater in turn (the last coding applied first)."""
    for inflater in inflaters:
        pieces = inflater.inflate(pieces, final)
    return iter(pieces)


class _Inflater:
    """One content-coding's inflation, :data:`PIECE_BYTES` at a time. ``deflate`` is a zlib
    stream when its first two bytes are a zlib header, else raw deflate (both are sent)."""

    __slots__ = ("_coding", "_head", "_inflater")

    def __init__(self, coding: str) -> None:
        self._coding = coding
        self._inflater: Any = None if coding == "deflate" else zlib.decompressobj(_WBITS[coding])
        self._head = b""
        """The first bytes of a deflate body, until there are two to tell zlib from raw."""

    def inflate(self, pieces: Iterable[bytes], final: bool) -> Iterator[bytes]:
        for data in pieces:
            yield from self._pieces(data)
        if final:
            if self._inflater is None:  # a body of under two bytes
                yield from self._pieces(b"", final=True)
            try:
                yield self._inflater.flush()
            except zlib.error as error:
                raise self._error(error) from None

    def _pieces(self, data: bytes, final: bool = False) -> Iterator[bytes]:
        if self._inflater is None:
            self._head += data
            if len(self._head) < 2 and not final:
                return
            data, self._head = self._head, b""
            zlib_header = (
                len(data) >= 2 and data[0] & 0x0F == 8 and int.from_bytes(data[:2]) % 31 == 0
            )
            self._inflater = zlib.decompressobj(zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS)
        inflater = self._inflater
        try:
            while data and not inflater.eof:
                piece = inflater.decompress(data, PIECE_BYTES)
                if not piece and len(inflater.unconsumed_tail) == len(data):
                    raise httpx.DecodingError(f"not {self._coding}: inflating it makes no progress")
                yield piece
                data = inflater.unconsumed_tail
        except zlib.error as error:
            raise self._error(error) from None

    def _error(self, error: zlib.error) -> httpx.DecodingError:
        return httpx.DecodingError(f"not {self._coding}: {error}")
