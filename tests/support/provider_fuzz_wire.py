"""What the hostile provider (:mod:`tests.support.provider_fuzz`) does to an answer's bytes on
the wire, beyond its JSON and its framing: a body put in a content-coding, truly or falsely
(``gzip`` that is not gzip, gzip cut short, a coding twice, one nobody knows, a small gzip
that inflates to far more than ``max_response_mb``), a 200 whose body is an error, headers by
the thousand, and an answer written in pieces with pauses between them, so that a ``data:``
line, a chunk size or a multi-byte character is split across the daemon's reads.
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
