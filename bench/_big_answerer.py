"""A provider that answers every chat with a big answer, for ``bench/big_answer.py``: an
OpenAI-shaped ``POST .../chat/completions`` answered with one ~``MB`` MB completion (plain) or
that text in ``PIECES`` server-sent events of ~1.4 KB (``"stream": true``, chunked), each built
once at start so that what costs is the daemon reading it, not this server writing it. A
streamed chat whose prompt says ``tokens`` is answered as a model streams: ~``MB`` MB of text
in deltas of 1 to 8 characters (:func:`token_deltas`; 13 MB is ~2.9M events), then two
pieces of a tool call and the end (built at its first request). Any other request gets a 404.
Not a benchmark itself (the smoke test skips ``bench/_*.py``).

    python bench/_big_answerer.py PORT MB
"""

from __future__ import annotations

import asyncio
import random
import sys
from collections.abc import Iterator

import msgspec

PIECES = 9_000
LINE = "the quick brown fox jumps over the lazy dog 0123456789. "
USAGE = {"prompt_tokens": 20, "completion_tokens": 8}
WRITE_BYTES = 1 << 16
TOKEN_CHARACTERS = (1, 8)
"""The shortest and longest delta of a token stream (:func:`token_deltas`)."""
TOOL_CALL_PIECES: list[dict[str, object]] = [
    {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}},
    {"index": 0, "function": {"arguments": '{"a": 1}'}},
]
"""The tool call a token stream ends with, in the pieces it is streamed in."""


def plain_answer(size: int) -> bytes:
    """An HTTP answer holding one chat completion of ``size`` bytes of text (about)."""
    text = LINE * (size // len(LINE) + 1)
    body = msgspec.json.encode(
        {
            "id": "chatcmpl-big",
            "object": "chat.completion",
            "model": "gpt-4o-mini",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": USAGE,
        }
    )
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(
        body
    )
    return head + body


def streamed_answer(size: int) -> bytes:
    """An HTTP answer streaming ``size`` bytes of text (about) in :data:`PIECES` events."""
    piece = LINE * (size // PIECES // len(LINE) + 1)

    def event(delta: dict[str, object], **more: object) -> bytes:
        chunk: dict[str, object] = {"id": "chatcmpl-big", "object": "chat.completion.chunk"}
        chunk["model"] = "gpt-4o-mini"
        chunk["choices"] = [{"index": 0, "delta": delta, "finish_reason": None}]
        chunk.update(more)
        return b"data: " + msgspec.json.encode(chunk) + b"\n\n"

    events = [event({"role": "assistant", "content": ""})]
    events += [event({"content": piece}) for _ in range(PIECES)]
    last = event({}, usage=USAGE)
    events += [
        last.replace(b'"finish_reason":null', b'"finish_reason":"stop"'),
        b"data: [DONE]\n\n",
    ]
    return chunked_answer(b"".join(events))


def token_deltas(size: int) -> Iterator[str]:
    """The deltas of a token stream of ``size`` characters of text (about): pieces of
    :data:`LINE` of 1 to 8 characters, their lengths drawn from a fixed seed."""
    shortest, longest = TOKEN_CHARACTERS
    draw = random.Random(size).randint
    line = LINE * (longest // len(LINE) + 2)
    at = sent = 0
    while sent < size:
        length = draw(shortest, longest)
        yield line[at : at + length]
        at = (at + length) % len(LINE)
        sent += length


def token_answer(size: int) -> bytes:
    """An HTTP answer streaming ``size`` bytes of text (about) as a model does, a few
    characters an event (:func:`token_deltas`), then a tool call in pieces and the end."""
    encode = msgspec.json.encode
    events = [b'data: {"choices":[{"delta":{"role":"assistant","content":""}}]}\n\n']
    events += [
        b'data: {"choices":[{"delta":{"content":%s}}]}\n\n' % encode(delta)
        for delta in token_deltas(size)
    ]
    events += [
        b'data: {"choices":[{"delta":{"tool_calls":[%s]}}]}\n\n' % encode(piece)
        for piece in TOOL_CALL_PIECES
    ]
    last = {"choices": [{"delta": {}, "finish_reason": "tool_calls"}], "usage": USAGE}
    events += [b"data: " + encode(last) + b"\n\n", b"data: [DONE]\n\n"]
    return chunked_answer(b"".join(events))


def chunked_answer(stream: bytes) -> bytes:
    """An HTTP answer of server-sent events, ``stream``, chunked :data:`WRITE_BYTES` at a
    time."""
    chunks = [
        b"%x\r\n%s\r\n" % (len(stream[at : at + WRITE_BYTES]), stream[at : at + WRITE_BYTES])
        for at in range(0, len(stream), WRITE_BYTES)
    ]
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    return head + b"".join(chunks) + b"0\r\n\r\n"


NOT_FOUND = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"


async def serve(port: int, size: int) -> None:
    plain, streamed = plain_answer(size), streamed_answer(size)
    tokens: list[bytes] = []  # built at the first request for it

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.lower().split(b"\r\n"):
                    if line.startswith(b"content-length:"):
                        length = int(line.partition(b":")[2])
                body = await reader.readexactly(length)
                if b"/chat/completions" not in head.split(b"\r\n", 1)[0]:
                    writer.write(NOT_FOUND)
                elif b'"stream":true' not in body.replace(b" ", b""):
                    writer.write(plain)
                elif b"tokens" in body:
                    tokens[:] = tokens or [token_answer(size)]
                    writer.write(tokens[0])
                else:
                    writer.write(streamed)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1]), int(float(sys.argv[2]) * 1e6)))
