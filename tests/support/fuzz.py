"""Hostile frames for the Unix socket, from a seed: valid requests of every kind mutated byte by
byte, valid requests with one value somewhere inside replaced by a hostile one (a field, a
message, a content part's type, a tool's), MessagePack maps with wrong, extreme or hostile
values (strings that are not UTF-8, deep nesting, counts far beyond the bytes that follow, NaN
and huge numbers, unknown tags), bare garbage, and sequences that abuse the protocol
(repeated ids, Cancel and Settle of nothing, frames before Hello); and, from a random
generator of their own (so that the other frames of a seed stay as they were), valid requests
with fields at their edges, or far wider or longer than any client sends
(:mod:`tests.support.fuzz_extremes`, which also plays permits granted and settled with such
values). Used by the fuzz test and by ``bench/fuzz_frames.py``.

:func:`send_batches` plays batches on real connections: each batch on a new connection, with
or without a Hello first, then a half-close, then everything the daemon answers is read until
it closes the connection. It checks only that every answer is a reply frame.
"""

from __future__ import annotations

import math
import random
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from quotad.protocol.framing import FrameEncoder, reply_decoder
from quotad.protocol.messages import (
    Acquire,
    Admin,
    Cancel,
    Chat,
    ChatMessage,
    Embed,
    Hello,
    Message,
    Settle,
    Spend,
    Status,
    Subscribe,
)
from tests.support.fuzz_extremes import edge_request, wide_request

EDGE_SHARE = 0.1
"""The share of frames that are valid requests with fields at their edges."""
WIDE_SHARE = 0.0005
"""The share of frames that are valid requests with one field thousands of items wide or a
million characters long (:func:`~tests.support.fuzz_extremes.wide_request`)."""
ENCODER = FrameEncoder()
RAW = msgspec.msgpack.Encoder()
RAW_DECODER = msgspec.msgpack.Decoder()

FUZZ_TABLES = """\
[budgets]
daily_usd = 1000000.0
[guardrails]
restore = true
[guardrails.input]
email = "mask"
secret = "block"
[guardrails.output]
secret = "mask"
"""
"""A budget, so that every request's upper bound is computed (the budgets reserve it), and
guardrails, so that every request is scanned, masked and restored: the daemon's config in
both fuzzers (socket and front door) and their benches."""
TAGS = ["Hello", "Chat", "Embed", "Acquire", "Settle", "Cancel", "Status", "Subscribe", "Spend",
        "Admin", "Welcome", "Error", "Nope", ""]  # fmt: skip
FIELDS = ["id", "model", "messages", "max_tokens", "temperature", "extra", "tools", "stream",
          "target", "tokens", "lease_s", "permit_id", "interval_s", "action", "args", "input",
          "priority", "cache", "max_wait_s", "app", "tags", "content", "role"]  # fmt: skip


def valid_requests(model: str) -> list[Message]:
    """One of each request kind, as a client would send them."""
    messages = [ChatMessage(role="user", content="fuzz me, ana@example.com")]
    parts: list[dict[str, Any]] = [
        {"type": "text", "text": "look"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}},
        {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "text", "text": "r"}]},
    ]
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    conversation = [
        ChatMessage(role="user", content=parts),
        ChatMessage(role="assistant", tool_calls=[call]),
        ChatMessage(role="tool", tool_call_id="c1", content="done"),
    ]
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    return [
        Hello(app="fuzz"),
        Chat(id=1, model=model, messages=messages, max_tokens=4),
        Chat(
            id=11,
            model=model,
            messages=conversation,
            max_tokens=4,
            tools=[tool],
            tool_choice={"type": "function", "function": {"name": "f"}},
            response_format={"type": "json_object"},
        ),
        Chat(id=2, model=model, messages=messages, max_tokens=4, stream=True),
        Chat(id=3, model=model, messages=messages, tools=[{"type": "function"}], extra={"a": 1}),
        Embed(id=4, model=model, input=["a", "b"]),
        Acquire(id=5, target=model, tokens=10, max_wait_s=0.01),
        Settle(id=6, permit_id="pm-000000-1", tokens_used=3),
        Cancel(id=1),
        Status(id=7),
        Subscribe(id=8, interval_s=0.05),
        Spend(id=9),
        Admin(id=10, action="nothing"),
    ]


def _slots(value: Any) -> Iterator[tuple[Any, Any]]:
    """Every place in a decoded request that holds a value: (its container, its key)."""
    if isinstance(value, dict):
        for key in value:
            yield value, key
            yield from _slots(value[key])
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield value, index
            yield from _slots(item)


def _frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + payload


def mutated(payload: bytes, rng: random.Random) -> bytes:
    """``payload`` with one to six bytes overwritten, bit-flipped, inserted (bytes that open
    MessagePack values or are never UTF-8) or deleted, or cut short at one of them."""
    data = bytearray(payload)
    for _ in range(rng.randint(1, 6)):
        if not data:
            break
        where = rng.randrange(len(data))
        match rng.randrange(5):
            case 0:
                data[where] = rng.randrange(256)
            case 1:
                data[where] ^= 1 << rng.randrange(8)
            case 2:
                data.insert(where, rng.choice([0xFF, 0xC1, 0xDD, 0xDF, 0xDB, 0xC9]))
            case 3:
                del data[where]
            case _:
                del data[where:]
    return bytes(data)


class FrameMaker:
    """Hostile frames from one seeded random generator."""

    def __init__(self, seed: int, model: str = "sim/m") -> None:
        self.random = random.Random(seed)
        self.edges = random.Random(f"{seed}:edges")
        self.wide = random.Random(f"{seed}:wide")
        self.valid = [RAW.encode(message) for message in valid_requests(model)]
        self.model = model

    def frame(self) -> bytes:
        """One frame (length prefix included; the prefix itself is sometimes a lie); now and
        then one far wider than any, drawn after the frame it replaces (so that the frames
        after it are as they were)."""
        frame = self._frame()
        if self.wide.random() < WIDE_SHARE:
            return wide_request(self.wide, self.model)
        return frame

    def _frame(self) -> bytes:
        if self.edges.random() < EDGE_SHARE:
            return edge_request(self.edges, self.model)
        choice = self.random.random()
        if choice < 0.25:
            return _frame(mutated(self.random.choice(self.valid), self.random))
        if choice < 0.5:
            return _frame(self.replaced(self.random.choice(self.valid)))
        if choice < 0.75:
            return _frame(self.hostile_map())
        if choice < 0.85:
            return _frame(self.random.randbytes(self.random.randint(0, 64)))
        if choice < 0.95:
            return _frame(self.random.choice(self.valid))
        return self.lying_prefix()

    def replaced(self, payload: bytes) -> bytes:
        """A valid request with one value anywhere inside it replaced by a hostile one, or
        taken out: what a client that builds its requests by hand gets wrong."""
        request = RAW_DECODER.decode(payload)
        slots = list(_slots(request))
        container, key = self.random.choice(slots)
        if isinstance(container, dict) and self.random.random() < 0.15:
            del container[key]
        else:
            container[key] = self.value(depth=2)
        return self._spliced(RAW.encode(request))

    def hostile_map(self) -> bytes:
        """A map with a tag and a few fields, each a hostile value; some raw bytes spliced."""
        fields: dict[str, Any] = {"type": self.random.choice(TAGS)}
        for _ in range(self.random.randint(0, 5)):
            fields[self.random.choice(FIELDS)] = self.value(depth=0)
        return self._spliced(RAW.encode(fields))

    def _spliced(self, payload: bytes) -> bytes:
        """``payload`` with the raw bytes of each marker that stands in it (see value)."""
        for marker, raw in self._splices():
            payload = payload.replace(RAW.encode(marker), raw, 1)
        return payload

    def _splices(self) -> Iterator[tuple[str, bytes]]:
        yield "@bad-utf8@", b"\xaa" + b"bad\xff\xfe\xc0utf8"  # fixstr of 10 invalid bytes
        yield "@deep@", b"\x91" * self.random.choice([65, 200, 1500, 5000]) + b"\x01"
        yield "@huge-array@", b"\xdd\x7f\xff\xff\xff\x01"  # 2**31 elements, one present
        yield "@huge-map@", b"\xdf\xff\xff\xff\xff"
        yield "@huge-str@", b"\xdb\x7f\xff\xff\xffabc"
        yield "@ext@", b"\xc7\x03\x05abc"

    def value(self, depth: int) -> Any:
        pick = self.random.randrange(16 if depth < 4 else 12)
        match pick:
            case 0:
                return self.random.choice([0, -1, 1, 2**63 - 1, -(2**63), 2**64 - 1, 10**18])
            case 1:
                return self.random.choice([math.nan, math.inf, -math.inf, 1e300, -0.0, 5e-324])
            case 2:
                return self.random.choice(["", "x" * 300, "\u0000", "日本語", self.model, "fast"])
            case 3:
                return self.random.choice([True, False, None])
            case 4:
                return self.random.randbytes(self.random.randint(0, 16))
            case 5:
                return self.random.choice(["@bad-utf8@", "@deep@", "@ext@"])
            case 6:
                return self.random.choice(["@huge-array@", "@huge-map@", "@huge-str@"])
            case 7:
                return self.random.choice(["user", "robot", "low", "critical", "use", "only"])
            case 8:
                return self.random.choice([0.0, 0.05, 1e-9, 3600.0, 600.0, 601.0])
            case 9 | 10 | 11:
                return self.random.randint(-(2**31), 2**31)
            case 12 | 13:
                return [self.value(depth + 1) for _ in range(self.random.randint(0, 4))]
            case _:
                return {
                    self.random.choice([*FIELDS, "role", "content"]): self.value(depth + 1)
                    for _ in range(self.random.randint(0, 4))
                }

    def lying_prefix(self) -> bytes:
        """A length prefix that does not match what follows (too long, huge, zero)."""
        payload = self.random.choice(self.valid)
        size = self.random.choice([0, 1, len(payload) + 100, 2**32 - 1, 9 * 1024 * 1024])
        return size.to_bytes(4, "big") + payload

    def batch(self) -> tuple[bool, bytes]:
        """Frames for one connection: whether it starts with Hello, and the bytes. Sometimes
        the same request id twice, and Cancels."""
        frames = [self.frame() for _ in range(self.random.randint(1, 8))]
        if self.random.random() < 0.2:
            frames += [self.random.choice(frames)] * 2  # the same frame again: the same id
        if self.random.random() < 0.1:
            frames.append(ENCODER.encode(Cancel(id=self.random.randint(0, 10))))
        return self.random.random() < 0.85, b"".join(frames)


@dataclass
class FuzzTally:
    """What a run sent and got back."""

    connections: int = 0
    frames: int = 0
    replies: int = 0
    refused_connect: int = 0


def send_batches(path: Path, maker: FrameMaker, frames: int, tally: FuzzTally) -> None:
    """Play batches from ``maker`` on new connections until ``frames`` frames were sent."""
    hello = ENCODER.encode(Hello(app="fuzz"))
    while tally.frames < frames:
        greet, data = maker.batch()
        count = _count_frames(data)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            try:
                sock.connect(str(path))
            except OSError:
                tally.refused_connect += 1
                raise
            tally.connections += 1
            try:
                sock.sendall((hello if greet else b"") + data)
                sock.shutdown(socket.SHUT_WR)
            except (BrokenPipeError, ConnectionResetError):
                pass  # it answered a bad frame and closed before the rest was sent
            tally.frames += count
            decoder = reply_decoder()
            while True:
                try:
                    received = sock.recv(65536)
                except ConnectionResetError:
                    break
                if not received:
                    break
                tally.replies += sum(1 for _ in decoder.feed(received))


def _count_frames(data: bytes) -> int:
    """Frames in ``data`` as their prefixes delimit them (a lying prefix ends the count)."""
    count = offset = 0
    while offset + 4 <= len(data):
        offset += 4 + int.from_bytes(data[offset : offset + 4], "big")
        count += 1
    return max(count, 1)
