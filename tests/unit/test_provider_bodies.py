"""A provider's body in a content-coding, read by ``read_body`` (plain answers) and
``ServerSentEvents`` (streams, whose lines may end in any of the three ways): decoded as
before (gzip, deflate as zlib or raw, both in turn, unknown codings as they are, however the
raw bytes are cut), and inflated a bounded piece at a time, so that a small gzip that inflates
a thousandfold costs its reader about its bound, not the inflation of a whole read."""

from __future__ import annotations

import gzip
import random
import tracemalloc
import zlib
from collections.abc import AsyncIterator

import httpx
import pytest

from quotad.daemon.net import content_coding
from quotad.daemon.net.sse import EventStreamTooLong, ServerSentEvents
from quotad.daemon.providers.transport import read_body
from tests.support.event_loop import turns_during

BODY = b'{"choices": [{"message": {"content": "' + "é漢字🙂".encode() * 500 + b'"}}]}'
BOMB_INFLATED = 64 * 1024 * 1024
LIMIT = 1024 * 1024


class _Raw(httpx.AsyncByteStream):
    """A body as it comes off the connection, in the pieces given (an iterator, not an async
    generator: one left unfinished would be a warning under trio)."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = iter(pieces)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        try:
            return next(self.pieces)
        except StopIteration:
            raise StopAsyncIteration from None


def response(coding: str, raw: bytes, cut: int | None = None) -> httpx.Response:
    pieces = [raw] if cut is None else [raw[at : at + cut] for at in range(0, len(raw), cut)]
    return httpx.Response(200, headers={"content-encoding": coding}, stream=_Raw(pieces))


def raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


ENCODED = {
    "gzip": ("gzip", gzip.compress(BODY)),
    "deflate (zlib)": ("deflate", zlib.compress(BODY)),
    "deflate (raw)": ("deflate", raw_deflate(BODY)),
    "deflate, gzip": ("deflate, gzip", gzip.compress(zlib.compress(BODY))),
    "GZIP, identity": ("GZIP, identity", gzip.compress(BODY)),
    "gzip, then bytes after it": ("gzip", gzip.compress(BODY * 16) + b"trailing"),
    "br (not decoded here)": ("br", BODY),
    "x-gzip (not decoded here)": ("x-gzip", BODY),
}


@pytest.mark.anyio
@pytest.mark.parametrize("name", list(ENCODED))  # raw deflate cut after 1 byte failed before
@pytest.mark.parametrize("cut", [None, 1, 7, 4096])
async def test_a_body_is_decoded_however_its_bytes_are_cut(name: str, cut: int | None) -> None:
    coding, raw = ENCODED[name]
    expected = BODY * 16 if name == "gzip, then bytes after it" else BODY
    assert await read_body(response(coding, raw, cut), LIMIT) == expected


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
def test_bytes_after_the_end_of_a_coded_body_are_left_in_a_few_steps(coding: str) -> None:
    """Found by the provider fuzz: when the end of a gzip came in a call that gave its most
    (64 KiB), zlib kept the bytes after it as a tail too, gave nothing for it when asked again,
    and kept it: a gzip answer of over 64 KiB inflated with bytes after it held the event loop
    for good (and its memory grew). Each step here is one call to zlib."""
    inflated = BODY * 16  # past one piece (64 KiB)
    raw = (gzip.compress if coding == "gzip" else zlib.compress)(inflated) + b"trailing"
    inflater = content_coding._Inflater(coding)
    pieces = []
    for step, piece in enumerate(content_coding._through([inflater], [raw, b"more after"])):
        assert step < 10, "inflating never ends"
        pieces.append(piece)
    pieces += content_coding._through([inflater], [], final=True)
    assert b"".join(pieces) == inflated


@pytest.mark.anyio
@pytest.mark.parametrize("coding", ["", "gzip"])
async def test_a_body_in_many_pieces_gives_the_other_tasks_turns(coding: str) -> None:
    """What one read brings is passed on without waiting, a piece a chunk through httpx's h11:
    a provider's 1-byte chunks held the event loop 0.6 s a read, no other task running. Here
    20,000 pieces, as plain bytes or gzip that inflates a byte or so a piece."""
    body = random.Random(7).randbytes(20_000)
    raw = gzip.compress(body) if coding else body
    pieces = [raw[at : at + 1] for at in range(len(raw))]

    async def read() -> None:
        response = httpx.Response(200, headers={"content-encoding": coding}, stream=_Raw(pieces))
        assert await read_body(response, LIMIT) == body

    assert await turns_during(read) >= 100


@pytest.mark.anyio
async def test_the_lines_of_one_read_give_the_other_tasks_turns() -> None:
    """256 KB of comment lines in one read held the event loop 70 ms, and the events of one
    read each went through the broker and out to its caller, no other task running."""
    raw = b":\n" * 20_000 + b"data: 1\n\n" * 20_000

    async def read() -> None:
        events = ServerSentEvents(response("", raw), LIMIT)
        while await events.next_data() is not None:
            pass

    assert await turns_during(read) >= 40


@pytest.mark.anyio
@pytest.mark.parametrize("ending", [b"\n", b"\r", b"\r\n"])
@pytest.mark.parametrize("cut", [1, 2, 3, 7, None])
async def test_every_line_ending_reads_the_same_events_however_cut(
    ending: bytes, cut: int | None
) -> None:
    """A lone CR ends a line as CR LF and LF do; a CR LF cut between reads, or with empty
    reads between its halves, is one line end, not two (that would end an event early)."""
    lines = [b": hi", b"data: a", b"data: b", b"", b"event: x", b"data:c", b"", b"data: d"]
    raw = ending.join(lines) + ending
    pieces = [raw] if cut is None else [raw[at : at + cut] for at in range(0, len(raw), cut)]
    with_empty_reads = [part for piece in pieces for part in (piece, b"")]
    for read in (pieces, with_empty_reads):
        stream = httpx.Response(200, stream=_Raw(read))
        events = ServerSentEvents(stream, LIMIT)
        assert [await events.next_data() for _ in range(4)] == [b"a\nb", b"c", b"d", None]


@pytest.mark.anyio
@pytest.mark.parametrize("cut", [1, 2, 4, None])
async def test_a_byte_order_mark_opening_a_stream_is_dropped_however_cut(cut: int | None) -> None:
    """Found by bench/provider_fuzz.py's oddly framed streams: a stream opened by a byte order
    mark lost its first event (an Anthropic stream's ``message_start``: its prompt's 9 tokens
    were recorded as 0, its cost 1.5e-05 as 6e-06). One is dropped, as the standard says; a
    second one, or one later, is no part of a field name, and its line is skipped."""
    bom = b"\xef\xbb\xbf"
    raw = bom + b"data: a\n\ndata: b\n\n" + bom + b"data: c\n\ndata: " + bom + b"\n\n"
    events = ServerSentEvents(response("", raw, cut), LIMIT)
    assert [await events.next_data() for _ in range(4)] == [b"a", b"b", bom, None]
    for raw, expected in (
        (b"data: x\n\n", [b"x", None]),  # no mark: nothing dropped
        (b"\xef\xbbdata: x\n\n", [None]),  # the start of one: not dropped
        (b"\xef\xbb", [None]),  # a body that ends there
    ):
        events = ServerSentEvents(response("", raw, cut), LIMIT)
        assert [await events.next_data() for _ in expected] == expected


def gzip_bomb(inflated: int) -> bytes:
    """A gzip of ``inflated`` zero bytes (about a thousandth of that), made in pieces."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    zeros = bytes(1024 * 1024)
    return b"".join(compressor.compress(zeros) for _ in range(inflated // len(zeros))) + (
        compressor.flush()
    )


@pytest.mark.anyio
@pytest.mark.parametrize("streamed", [False, True])
async def test_a_small_gzip_inflating_past_the_bound_costs_about_the_bound(
    streamed: bool,
) -> None:
    """Found by the extended provider fuzz (a 48 KB gzip of 48 MiB): httpx inflated each
    piece read off the connection whole, so a daemon reading a 1 MB gzip of 1 GiB under a
    32 MiB bound peaked 256 MiB above its size (one read-ahead of the lean pool, inflated),
    whatever the bound. Here 64 KB inflating to 64 MiB, read in one piece under a 1 MiB bound:
    the reader gives up having allocated a few MiB (141 MiB before)."""
    bomb = gzip_bomb(BOMB_INFLATED)
    tracemalloc.start()
    try:
        if streamed:
            events = ServerSentEvents(response("gzip", bomb), LIMIT)
            try:
                with pytest.raises(EventStreamTooLong):
                    await events.next_data()
            finally:
                await events.aclose()
        else:
            assert await read_body(response("gzip", bomb), LIMIT) is None
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * LIMIT, f"{peak / 2**20:.0f} MiB allocated reading it"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("coding", "raw"),
    [("gzip", BODY), ("deflate", b"\xff" * 100), ("deflate, gzip", gzip.compress(BODY))],
)
async def test_a_body_not_in_its_coding_raises_decoding_error(coding: str, raw: bytes) -> None:
    with pytest.raises(httpx.DecodingError):
        await read_body(response(coding, raw), LIMIT)


@pytest.mark.anyio
@pytest.mark.parametrize("codings", [5, 2000])
async def test_a_body_in_more_codings_than_any_server_applies_is_refused(codings: int) -> None:
    """A provider's ``content-encoding`` naming 2,000 codings chained as many inflaters, one
    generator inside the other: reading the body raised RecursionError (an ``internal``
    failure), before a byte was inflated."""
    named = ", ".join(["gzip"] * codings)
    with pytest.raises(httpx.DecodingError, match=f"a body in {codings} content-codings"):
        await read_body(response(named, gzip.compress(BODY)), LIMIT)
    events = ServerSentEvents(response(named, gzip.compress(b"data: {}\n\n")), LIMIT)
    try:
        with pytest.raises(httpx.DecodingError, match="at most 4 are decoded"):
            await events.next_data()
    finally:
        await events.aclose()
