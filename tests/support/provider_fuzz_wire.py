"""What the hostile provider (:mod:`tests.support.provider_fuzz`) does to an answer's bytes on
the wire, beyond its JSON and its framing: a body put in a content-coding, truly or falsely
(``gzip`` that is not gzip, gzip cut short, a coding twice, one nobody knows, a small gzip
that inflates to far more than ``max_response_mb``), a 200 whose body is an error, headers by
the thousand, and an answer written in pieces with pauses between them, so that a ``data:``
line, a chunk size or a multi-byte character is split across the daemon's reads; and a stream's
events framed oddly, or one of them huge, or thousands of tiny ones (:func:`odd_event_stream`).
"""

from __future__ import annotations

import functools
import gzip
import itertools
import random
import zlib
from typing import Final

import msgspec

PIECE_PAUSE_S: Final = 0.002
"""The pause between the pieces of an answer written in pieces: long enough for the daemon
to read each on its own (the hostile server sets TCP_NODELAY)."""
BOMB_INFLATED: Final = 48 * 1024 * 1024
"""What the gzip bomb inflates to: past the fuzz daemon's ``max_response_mb`` (32)."""


@functools.cache
def gzip_bomb() -> bytes:
    """A gzip body of ~48 KB that inflates to :data:`BOMB_INFLATED` zero bytes (made once)."""
    return gzip.compress(bytes(BOMB_INFLATED), compresslevel=9)


def encoded(body: bytes, rnd: random.Random, notes: list[str]) -> tuple[bytes, str]:
    """``body`` in a content-coding, or said to be in one: (the bytes, the coding named)."""
    choice = rnd.randrange(9)
    if choice == 0:
        body, coding = gzip.compress(body), "gzip"
    elif choice == 1:
        body, coding = zlib.compress(body), "deflate"
    elif choice == 2:  # gzip that is not
        coding = "gzip"
    elif choice == 3:  # deflate that is not
        coding = "deflate"
    elif choice == 4:  # gzip cut short: a valid start, no end
        whole = gzip.compress(body)
        body, coding = whole[: rnd.randrange(len(whole))], "gzip"
    elif choice == 5:  # two codings, one inside the other
        body, coding = gzip.compress(zlib.compress(body)), "deflate, gzip"
    elif choice == 6:  # codings nobody asked for, or that do not exist
        coding = rnd.choice(("br", "zstd", "x-gzip", "compress", "identity", "gzip;q=1", "\x7f"))
    elif choice == 7:  # a valid gzip with bytes after it
        body, coding = gzip.compress(body) + b"trailing", "gzip"
    else:  # a small gzip that inflates past the bound on an answer
        body, coding = gzip_bomb(), "gzip"
    notes.append(f"content-encoding {coding!r} ({choice})")
    return body, coding


def error_in_a_200(kind: str, rnd: random.Random, notes: list[str]) -> bytes:
    """An error body, sent with status 200 (and, for a stream, as plain JSON, no events)."""
    notes.append("error in a 200")
    error = rnd.choice(
        (
            {"error": {"message": "overloaded", "type": "server_error", "code": 529}},
            {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}},
            {"error": "quota exceeded"},
            {"detail": "not found"},
            {"object": "error", "message": "bad", "code": None},
        )
    )
    if kind.endswith("stream") and rnd.random() < 0.5:
        return b"data: " + msgspec.json.encode(error) + b"\n\n"
    return msgspec.json.encode(error)


def many_headers(rnd: random.Random, notes: list[str]) -> list[tuple[str, str]]:
    """Headers by the thousand (their head past 64 KiB, or not quite)."""
    count = rnd.choice((500, 3000, 9000))
    notes.append(f"{count} headers")
    return [(f"x-h{index}", "v" * 5) for index in range(count)]


def in_pieces(data: bytes, rnd: random.Random, notes: list[str]) -> list[bytes]:
    """``data`` cut at a few random places (a 1-byte piece now and then)."""
    if len(data) < 2:
        return [data]
    cuts = sorted({rnd.randrange(1, len(data)) for _ in range(rnd.randint(1, 4))})
    if rnd.random() < 0.3:  # one piece of one byte: inside a character, a line, a length
        at = rnd.randrange(1, len(data) - 1) if len(data) > 2 else 1
        cuts = sorted({*cuts, at, at + 1} - {len(data)})
    notes.append(f"{len(cuts) + 1} pieces")
    bounds = [0, *cuts, len(data)]
    return [data[start:end] for start, end in itertools.pairwise(bounds)]


HUGE_EVENT_BYTES: Final = (1024 * 1024, 6 * 1024 * 1024, 17 * 1024 * 1024)
"""The text of one huge event: within the daemon's bound on an event (16 MiB) or past it."""
WHOLE_LINES: Final = (b"event:", b":", b"\xef\xbb\xbf", b"data", b"retry:", b"id:")
"""How a line a mutation made whole begins (it is written as it is, no ``data:`` before it)."""


def odd_event_stream(
    encoded: list[bytes], kind: str, rnd: random.Random, notes: list[str]
) -> bytes:
    """A stream of the events ``encoded`` (each one's data) framed as the standard allows but
    no provider writes, or with an event far larger or far more numerous than any: line ends
    mixed line by line (CR LF, LF, a lone CR), an event's data in several ``data:`` lines,
    thousands of comments and pings between events, fields no event needs (``id``, ``retry``,
    an unknown one, ``data`` with no colon), a byte order mark first, one event of
    :data:`HUGE_EVENT_BYTES`, or one answer's text in thousands of one-character events."""
    choice = rnd.randrange(6)
    if choice == 4:
        encoded = _with_a_huge_event(encoded, kind, rnd, notes)
    elif choice == 5:
        encoded = _in_tiny_events(encoded, kind, rnd, notes)
    endings = [b"\n"]
    if choice == 0:
        notes.append("line ends mixed")
        endings = [b"\n", b"\r\n", b"\r"]
    out: list[bytes] = []
    last_end = b""

    def line(text: bytes) -> None:
        nonlocal last_end
        # a lone CR then an LF would be one line end (CR LF): never an LF right after a CR
        end = rnd.choice([e for e in endings if not (last_end == b"\r" and e == b"\n")])
        out.append(text + end)
        last_end = end

    if choice == 3 and rnd.random() < 0.5:
        out.append(b"\xef\xbb\xbf")  # a byte order mark opens the stream (the standard drops it)
        notes.append("BOM")
    for data in encoded:
        if choice == 2:
            for _ in range(rnd.choice((1, 10, 2000))):
                line(rnd.choice((b": ping", b":", b"event: ping", b"", b": " + b"k" * 100)))
        if choice == 3:
            line(rnd.choice((b"id: 7", b"retry: 1000", b"x-odd: 1", b"data", b"id", b"event:")))
        if data.startswith(WHOLE_LINES):
            line(data)
        elif choice == 1 and b',"' in data:
            pieces = data.split(b',"')
            line(b"data: " + pieces[0] + b",")
            for piece in pieces[1:-1]:
                line(b"data:" + rnd.choice((b"", b" ")) + b'"' + piece + b",")
            line(b'data: "' + pieces[-1])
        else:
            line(b"data: " + data)
        line(b"")
    if choice == 1:
        notes.append("data in lines")
    elif choice == 2:
        notes.append("comments and pings")
    elif choice == 3:
        notes.append("odd fields")
    return b"".join(out)


def _delta(kind: str, text: str) -> bytes:
    if kind.startswith("openai"):
        return msgspec.json.encode({"choices": [{"index": 0, "delta": {"content": text}}]})
    return msgspec.json.encode(
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}
    )


def _with_a_huge_event(
    encoded: list[bytes], kind: str, rnd: random.Random, notes: list[str]
) -> list[bytes]:
    size = rnd.choice(HUGE_EVENT_BYTES)
    notes.append(f"an event of {size} bytes")
    at = min(len(encoded), 2)  # after the opening events, as a long delta would come
    return [*encoded[:at], _delta(kind, "y" * size), *encoded[at:]]


def _in_tiny_events(
    encoded: list[bytes], kind: str, rnd: random.Random, notes: list[str]
) -> list[bytes]:
    count = rnd.choice((1000, 20_000))
    notes.append(f"{count} one-character events")
    at = min(len(encoded), 2)
    return [*encoded[:at], *(_delta(kind, "z") for _ in range(count)), *encoded[at:]]
