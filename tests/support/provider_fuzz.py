"""A hostile provider: a real HTTP server on loopback (a
:class:`~tests.support.raw_http.RawHTTPServer`) answering each request with a seeded random
case, for fuzzing what quotad parses from providers (tests/integration/test_provider_fuzz.py,
bench/provider_fuzz.py).

A request names its case in its text (``case-N``, see :data:`CASE_MARK`); its answer is drawn
from ``(seed, N, kind)`` alone, so that a case is the same whichever connection, retry or pool
brings it, and :func:`answer_for` replays it. The kind comes from the request: an OpenAI chat,
stream or embeddings call, an Anthropic message or stream (``GET /models`` gets a plain list).

An answer starts valid for its kind and is then broken, a few ways at once: its JSON mutated
(:meth:`~tests.support.http_fuzz.Fuzzer.mutated_json`: fields removed, types swapped, numbers
huge, negative or beyond 64 bits, nesting thousands deep), its usage given odd numbers, its
bytes cut or made invalid UTF-8; a stream's events dropped, repeated (usage twice), swapped,
left without their end, their ``data:`` lines malformed; odd statuses (1xx, 3xx, 418, 429, 5xx
with odd bodies), odd or missing content types, garbage rate-limit and retry-after headers,
framing that lies (a wrong content-length, bad chunks, a close mid-answer), now and then a stall;
and on the wire (:mod:`tests.support.provider_fuzz_wire`, from a random generator of its own so
that the rest of a case is as it was without it): content-codings true and false, errors in a
200, thousands of headers, an answer written in pieces; and, from another, a stream framed as
no provider frames one (line ends mixed line by line, data in several lines, comments by the
thousand, odd fields) or with one huge event or thousands of tiny ones.
"""

from __future__ import annotations

import base64
import random
import re
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec

from tests.support import provider_fuzz_wire as wire
from tests.support.http_fuzz import Fuzzer
from tests.support.raw_http import RawHTTPServer, RawRequest

CASE_MARK: Final = re.compile(rb"case-(\d+)")
"""How a request names its case, in its text."""

REPLY_FIELDS: Final = (
    "id", "object", "choices", "index", "message", "role", "content", "tool_calls", "function",
    "name", "arguments", "finish_reason", "usage", "prompt_tokens", "completion_tokens",
    "total_tokens", "prompt_tokens_details", "cached_tokens", "delta", "data", "embedding",
    "type", "text", "stop_reason", "input_tokens", "output_tokens", "cache_read_input_tokens",
    "cache_creation_input_tokens", "content_block", "error", "input", "partial_json",
)  # fmt: skip
ODD_NUMBERS: Final[tuple[Any, ...]] = (
    -1, -(2**31), 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 10**30, -(10**30),
    2**200, 0.5, 1e308, -0.0, "12", None, True, [], {},
)  # fmt: skip
ODD_TOOL_CALL_VALUES: Final[dict[str, tuple[Any, ...]]] = {
    "index": ("0", None, [0], 1.5, -1, 2**63, True, {}),
    "id": (5, None, [], ""),
    "type": (5, None, "odd"),
    "function": ("f", None, [], 5, {}),
    "name": (5, None, [], ""),
    "arguments": (5, None, {"a": 1}, [], "{"),
}
"""Values no OpenAI tool call (or streamed piece of one) should have, by field (``name`` and
``arguments`` are the function's)."""
USAGE_FIELDS: Final = {
    "openai": ("prompt_tokens", "completion_tokens", "total_tokens"),
    "anthropic": ("input_tokens", "output_tokens", "cache_read_input_tokens",
                  "cache_creation_input_tokens"),
}  # fmt: skip
RATE_LIMIT_HEADERS: Final = (
    "retry-after", "retry-after", "retry-after-ms", "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests", "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens",
    "anthropic-ratelimit-requests-limit", "anthropic-ratelimit-requests-remaining",
    "anthropic-ratelimit-requests-reset", "anthropic-ratelimit-tokens-remaining",
    "anthropic-ratelimit-tokens-reset", "anthropic-ratelimit-output-tokens-reset",
)  # fmt: skip
ODD_HEADER_VALUES: Final = (
    "", "-1", "0", "1", "0.2", "1e309", "nan", "inf", "-inf", "1" * 70, "9" * 30, "6m0s",
    "1h2m3.5s", "-5s", "99999999h", "2026-13-45T00:00:00Z", "9999-12-31T23:59:59Z",
    "0001-01-01T00:00:00Z", "Wed, 21 Oct 2015 07:28:00 GMT", "Fri, 31 Dec 9999 23:59:59 GMT",
    "1.5", "0x10", " 3 ", "1_000", "1e5", "1e-400", "\u0663", "\xff\xfe", "1e300",
)  # fmt: skip
ODD_STATUSES: Final = (
    100, 101, 103, 204, 206, 299, 301, 302, 304, 400, 401, 404, 408, 409, 413, 418, 422,
    429, 429, 429, 500, 502, 503, 504, 529, 599, 600, 999,
)  # fmt: skip
CONTENT_TYPES: Final = (
    None, "text/html", "application/json; charset=latin-1", "text/event-stream",
    "application/json", "text/plain", "\x7f;;", "application/x-ndjson",
)  # fmt: skip
KINDS: Final = (
    "openai_chat",
    "openai_stream",
    "openai_embed",
    "anthropic_chat",
    "anthropic_stream",
)
VALID_CASE: Final = 10**9
"""Cases from this one on are answered well (a baseline's)."""
ODD_STREAM_SHARE: Final = 0.1
"""The share of streamed answers framed oddly, or with a huge event or thousands of tiny
ones (:func:`~tests.support.provider_fuzz_wire.odd_event_stream`)."""
STALL_S: Final = 0.8
"""How long a stalling answer waits: past the fuzz daemon's provider ``timeout_s``."""


@dataclass
class Answer:
    """What the server writes for one request: ``pieces`` in turn, then, when ``close``, it
    closes the connection (after ``stall_s``, a wait with the answer unfinished)."""

    pieces: list[bytes]
    close: bool = False
    stall_s: float = 0.0
    pause_s: float = 0.0
    """The pause between two pieces."""
    notes: list[str] = field(default_factory=list)
    """What was done to it, for reports."""


def request_kind(request: RawRequest) -> str | None:
    """The kind of answer ``request`` asks for (:data:`KINDS`), or None (``/models``...)."""
    path = request.path.partition("?")[0]  # absolute-form through a proxy: the path's end
    streamed = b'"stream":true' in request.body
    if path.endswith("/chat/completions"):
        return "openai_stream" if streamed else "openai_chat"
    if path.endswith("/messages"):
        return "anthropic_stream" if streamed else "anthropic_chat"
    if path.endswith("/embeddings"):
        return "openai_embed"
    return None


def embedding_count(request: RawRequest) -> int:
    """How many inputs an embeddings request carries."""
    try:
        inputs = msgspec.json.decode(request.body).get("input")
    except (msgspec.DecodeError, AttributeError):
        return 1
    return len(inputs) if isinstance(inputs, list) else 1


# --------------------------------------------------------------------------- valid answers


def chat_reply(kind: str, rnd: random.Random) -> dict[str, Any]:
    """A valid plain chat answer in the shape of ``kind``'s provider."""
    text = rnd.choice(("hello", "é漢字🙂", "", "a" * 200))
    if kind.startswith("openai"):
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if rnd.random() < 0.2:
            call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            message["tool_calls"] = [call]
        usage = {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}
        if rnd.random() < 0.3:
            usage["prompt_tokens_details"] = {"cached_tokens": 4}  # type: ignore[assignment]
        choice = {"index": 0, "message": message, "finish_reason": "stop"}
        return {"id": "x", "object": "chat.completion", "choices": [choice], "usage": usage}
    blocks: list[dict[str, Any]] = [{"type": "text", "text": text}]
    if rnd.random() < 0.2:
        blocks.append({"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}})
    usage = {"input_tokens": 9, "output_tokens": 3}
    if rnd.random() < 0.3:
        usage |= {"cache_read_input_tokens": 2, "cache_creation_input_tokens": 1}
    return {"id": "x", "type": "message", "role": "assistant", "content": blocks,
            "stop_reason": rnd.choice(("end_turn", "max_tokens", "tool_use", "odd")),
            "usage": usage}  # fmt: skip


def stream_events(kind: str, rnd: random.Random) -> list[Any]:
    """A valid stream's events, each a JSON value (or the bytes of OpenAI's ``[DONE]``)."""
    pieces = [rnd.choice(("he", "llo", "é漢", "🙂", " ")) for _ in range(rnd.randint(0, 4))]
    if kind.startswith("openai"):
        first = {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
        deltas = [{"choices": [{"index": 0, "delta": {"content": piece}}]} for piece in pieces]
        if rnd.random() < 0.2:  # a tool call in pieces, merged by its index
            opened = {
                "index": 0,
                "id": "c1",
                "type": "function",
                "function": {"name": "f", "arguments": ""},
            }
            calls = [
                [opened],
                [{"index": 0, "function": {"arguments": '{"a": '}}],
                [{"index": 0, "function": {"arguments": "1}"}}],
            ]
            deltas += [{"choices": [{"index": 0, "delta": {"tool_calls": call}}]}
                       for call in calls]  # fmt: skip
        end = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        usage = {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 3}}
        return [first, *deltas, end, usage, b"[DONE]"]
    events: list[Any] = [
        {"type": "message_start", "message": {"usage": {"input_tokens": 9, "output_tokens": 1}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        *({"type": "content_block_delta", "index": 0,
           "delta": {"type": "text_delta", "text": piece}} for piece in pieces),
        {"type": "content_block_stop", "index": 0},
    ]  # fmt: skip
    if rnd.random() < 0.2:
        events += [
            {"type": "content_block_start", "index": 1,
             "content_block": {"type": "tool_use", "id": "t1", "name": "f", "input": {}}},
            {"type": "content_block_delta", "index": 1,
             "delta": {"type": "input_json_delta", "partial_json": '{"a": 1}'}},
        ]  # fmt: skip
    if rnd.random() < 0.1:
        events.insert(1, {"type": "ping"})
    return [
        *events,
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
         "usage": {"output_tokens": 3}},
        {"type": "message_stop"},
    ]  # fmt: skip


def embeddings_reply(count: int, rnd: random.Random) -> dict[str, Any]:
    """A valid embeddings answer for ``count`` inputs (floats, or base64 float32s)."""
    encoded = rnd.random() < 0.3
    data = []
    for index in range(count):
        vector = [rnd.uniform(-1, 1) for _ in range(4)]
        embedding: Any = (
            base64.b64encode(struct.pack("<4f", *vector)).decode() if encoded else vector
        )
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    return {
        "object": "list",
        "data": data,
        "usage": {"prompt_tokens": count, "total_tokens": count},
    }


# --------------------------------------------------------------------------- breaking them


class AnswerFuzzer(Fuzzer):
    """Broken answers from one seed and case: the same (seed, case, kind), the same answer."""

    def __init__(self, seed: int, case: int, kind: str, key: str = "") -> None:
        super().__init__(f"{seed}:{case}:{kind}", REPLY_FIELDS, pipelined=False)
        self.kind = kind
        self.key = key
        """The API key the request carried, echoed now and then (to be redacted)."""
        self.notes: list[str] = []
        self.wire = random.Random(f"{seed}:{case}:{kind}:wire")
        """What :meth:`answer` does on the wire (:mod:`~tests.support.provider_fuzz_wire`: an
        error in a 200, an encoded body, many headers, an answer in pieces) draws from this."""
        self.framing = random.Random(f"{seed}:{case}:{kind}:framing")
        """Whether a stream is framed oddly (:func:`~.provider_fuzz_wire.odd_event_stream`),
        and how, draws from this."""

    def answer(self, inputs: int = 1) -> Answer:
        rnd = self.random
        status = 200 if rnd.random() < 0.72 else rnd.choice(ODD_STATUSES)
        interim = b""
        if status in (100, 103) and rnd.random() < 0.7:  # an interim answer, then the real one
            interim, status = b"HTTP/1.1 %d Early\r\n\r\n" % status, 200
            self.notes.append("interim")
        streamed = self.kind.endswith("stream")
        if status == 200 and self.wire.random() < 0.03:
            body = wire.error_in_a_200(self.kind, self.wire, self.notes)
        elif status == 200 and streamed:
            body = self._stream_body()
        elif status == 200:
            body = self._plain_body(inputs)
        else:
            body = self._error_body(status)
        if rnd.random() < 0.15:
            self.notes.append("bytes")
            for _ in range(rnd.randint(1, 3)):
                body = self._mutate_bytes(body)
        headers = self._headers(status, streamed)
        if self.wire.random() < 0.06:
            body, coding = wire.encoded(body, self.wire, self.notes)
            headers.append(("content-encoding", coding))
        if self.wire.random() < 0.01:
            headers += wire.many_headers(self.wire, self.notes)
        answer = self._framed(status, headers, body)
        answer.pieces[0] = interim + answer.pieces[0]
        if self.wire.random() < 0.1:
            answer.pieces = wire.in_pieces(b"".join(answer.pieces), self.wire, self.notes)
            answer.pause_s = wire.PIECE_PAUSE_S
        answer.notes = self.notes
        return answer

    # ---------------------------------------------------------------- bodies

    def _plain_body(self, inputs: int) -> bytes:
        rnd = self.random
        if self.kind == "openai_embed":
            value = embeddings_reply(inputs, rnd)
            if rnd.random() < 0.2:
                self._odd_embeddings(value)
        else:
            value = chat_reply(self.kind, rnd)
            if self.key and rnd.random() < 0.05:  # the key echoed in a successful answer
                value["echo"] = rnd.choice((self.key, self.key[:-3], f"x{self.key}x"))
                self.notes.append("key echoed")
        if rnd.random() < 0.3:
            self._odd_usage(value)
        calls = value.get("choices", [{}])[0].get("message", {}).get("tool_calls")
        if calls and rnd.random() < 0.3:
            self._odd_tool_call(calls)
        rounds = rnd.choice((0, 0, 1, 1, 2, 3))
        if rounds:
            self.notes.append(f"json x{rounds}")
        return self.mutated_json(value, rounds)

    def _odd_usage(self, value: dict[str, Any]) -> None:
        """Usage figures no provider should send: negative, huge, beyond 64 bits, not numbers."""
        rnd = self.random
        usage = value.get("usage")
        if not isinstance(usage, dict):
            return
        name = rnd.choice(USAGE_FIELDS["openai" if self.kind.startswith("openai") else "anthropic"])
        usage[name] = rnd.choice(ODD_NUMBERS)
        self.notes.append(f"usage {name}={usage[name]!r:.30}")

    def _odd_tool_call(self, calls: list[dict[str, Any]]) -> None:
        """One field of one of ``calls`` (OpenAI's shape) given a value of the wrong kind."""
        rnd = self.random
        call = rnd.choice(calls)
        name = rnd.choice(tuple(ODD_TOOL_CALL_VALUES))
        odd = rnd.choice(ODD_TOOL_CALL_VALUES[name])
        function = call.get("function")
        if name in ("name", "arguments") and isinstance(function, dict):
            function[name] = odd
        else:
            call[name] = odd
        self.notes.append(f"tool call {name}={odd!r:.20}")

    def _odd_embeddings(self, value: dict[str, Any]) -> None:
        rnd = self.random
        data = value["data"]
        choice = rnd.randrange(6)
        if choice == 0 and data:  # dimensions that differ
            data[-1]["embedding"] = [0.5] * rnd.choice((0, 1, 3, 5000))
        elif choice == 1:  # NaN and infinities, as base64 float32s
            nan = base64.b64encode(struct.pack("<4f", float("nan"), float("inf"), -0.0, 1e38))
            for item in data:
                item["embedding"] = nan.decode()
        elif choice == 2:  # indexes repeated, out of range, negative
            for item in data:
                item["index"] = rnd.choice((0, -1, 2**63, 10**30, 7))
        elif choice == 3:  # one too many, or too few
            data.append(dict(data[0])) if data and rnd.random() < 0.5 else data.pop()
        elif choice == 4:  # base64 that is not float32s
            for item in data:
                item["embedding"] = rnd.choice(("AAA", "!!!!", "", "AAAAAA=="))
        else:  # strings and nulls for numbers
            for item in data:
                item["embedding"] = [rnd.choice((None, "1", 1e308, 10**30, True))]
        self.notes.append(f"embeddings {choice}")

    def _stream_body(self) -> bytes:
        rnd = self.random
        events = stream_events(self.kind, rnd)
        pieces = [event["choices"][0]["delta"]["tool_calls"] for event in events
                  if isinstance(event, dict) and event.get("choices")
                  and "tool_calls" in event["choices"][0]["delta"]]  # fmt: skip
        if pieces and rnd.random() < 0.3:
            self._odd_tool_call(rnd.choice(pieces))
        encoded = [event if isinstance(event, bytes) else msgspec.json.encode(event)
                   for event in events]  # fmt: skip
        for _ in range(rnd.choice((0, 0, 1, 2, 3))):
            encoded = self._mutate_events(encoded, events)
        separator = rnd.choice((b"\n\n",) * 8 + (b"\r\n\r\n", b"\n", b"\r\r", b"\n\n\n"))
        prefix = rnd.choice((b"data: ",) * 8 + (b"data:", b"data:  "))
        if self.framing.random() < ODD_STREAM_SHARE:
            return wire.odd_event_stream(encoded, self.kind, self.framing, self.notes)
        lines = []
        for data in encoded:
            if data.startswith(wire.WHOLE_LINES):
                lines.append(data + separator)  # a line made whole by a mutation
            else:
                lines.append(prefix + data + separator)
        return b"".join(lines)

    def _mutate_events(self, encoded: list[bytes], events: list[Any]) -> list[bytes]:
        rnd = self.random
        choice = rnd.randrange(10)
        at = rnd.randrange(len(encoded)) if encoded else 0
        if choice == 0 and encoded:  # dropped: the end, the usage, anything
            self.notes.append(f"drop {at}")
            return encoded[:at] + encoded[at + 1 :]
        if choice == 1 and encoded:  # repeated: usage twice, the end twice
            self.notes.append(f"repeat {at}")
            return encoded[: at + 1] + encoded[at:]
        if choice == 2 and len(encoded) > 1:  # out of order
            other = rnd.randrange(len(encoded))
            encoded[at], encoded[other] = encoded[other], encoded[at]
            self.notes.append(f"swap {at} {other}")
            return encoded
        if choice == 3:  # the end left out, or everything after some event
            self.notes.append("no end")
            return encoded[: rnd.randrange(len(encoded))] if encoded else encoded
        if choice in (4, 5) and encoded:  # one event's JSON mutated
            event = events[at] if at < len(events) else None
            if event is not None and not isinstance(event, bytes):
                encoded[at] = self.mutated_json(event, rnd.randint(1, 3))
                self.notes.append(f"json event {at}")
            return encoded
        if choice == 6:  # an error event
            error = (
                b'{"error": {"message": "boom", "type": "server_error"}}'
                if self.kind.startswith("openai")
                else b'{"type": "error", "error": {"type": "overloaded_error", "message": "x"}}'
            )
            encoded.insert(at, rnd.choice((error, b'{"error": null}', b'{"error": 5}')))
            self.notes.append(f"error event {at}")
            return encoded
        # lines no well-behaved server writes
        odd = rnd.choice((
            b"data: {", b"data", b": comment", b"event: error", b"id: 1\x00", b"retry: -5",
            b"data: " + b"[" * 5000, b"\xef\xbb\xbfdata: {}", b"data: \xff\xfe", b"data: null",
            b"data: 1e999", b"data: [DONE] ", b"data: []", b'data: {"type": 5}', b"data:" * 100,
        ))  # fmt: skip
        encoded.insert(at, odd)
        self.notes.append(f"line {odd[:20]!r}")
        return encoded

    def _error_body(self, status: int) -> bytes:
        rnd = self.random
        choice = rnd.randrange(7)
        if choice == 0:
            return msgspec.json.encode({"error": {"message": "slow down", "type": "rate_limit"}})
        if choice == 6 and self.key:  # the key echoed, as it is or escaped
            self.notes.append("key echoed")
            echo = rnd.choice((self.key, "".join(f"\\u{ord(c):04x}" for c in self.key)))
            return b'{"error": {"message": "bad key ' + echo.encode() + b'\xff"}}'

        if choice == 1:
            return msgspec.json.encode(
                {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}
            )
        if choice == 2:
            return b"<html><body>502 Bad Gateway</body></html>"
        if choice == 3:
            return b""
        if choice == 4:
            return b"x" * rnd.choice((10, 70_000, 200_000))
        return self.mutated_json({"error": {"message": "m", "code": status}}, rnd.randint(1, 3))

    # ---------------------------------------------------------------- head and framing

    def _headers(self, status: int, streamed: bool) -> list[tuple[str, str]]:
        rnd = self.random
        content_type: str | None = "text/event-stream" if streamed else "application/json"
        if rnd.random() < 0.1:
            content_type = rnd.choice(CONTENT_TYPES)
            self.notes.append(f"content-type {content_type!r}")
        headers = [("content-type", content_type)] if content_type is not None else []
        odd = rnd.random() < 0.3 or (status == 429 and rnd.random() < 0.8)
        for _ in range(rnd.randint(1, 4) if odd else 0):
            name, value = rnd.choice(RATE_LIMIT_HEADERS), rnd.choice(ODD_HEADER_VALUES)
            headers.append((name, value))
            self.notes.append(f"{name}: {value!r:.20}")
        if status in (301, 302):
            headers.append(("location", rnd.choice(("/v1/elsewhere", "http://127.0.0.1:9/"))))
        if rnd.random() < 0.03:  # a header no server should send
            headers.append(rnd.choice((("x-big", "v" * 100_000), ("x-bin", "\x01\x7f\xe9"))))
            self.notes.append("odd header")
        return headers

    def _framed(self, status: int, headers: list[tuple[str, str]], body: bytes) -> Answer:
        rnd = self.random
        version = b"HTTP/1.1" if rnd.random() < 0.95 else rnd.choice((b"HTTP/1.0", b"HTTP/2.0"))
        reason = b" OK" if rnd.random() < 0.95 else rnd.choice((b"", b" \xff", b" " + b"r" * 200))
        head = version + b" %d" % status + reason + b"\r\n"
        head += b"".join(f"{name}: {value}\r\n".encode() for name, value in headers)
        choice = rnd.random()
        close = False
        stall_s = 0.0
        if choice < 0.6:
            frame = b"content-length: %d\r\n\r\n" % len(body) + body
        elif choice < 0.75:  # chunked, in pieces of any size
            frame = b"transfer-encoding: chunked\r\n\r\n" + self._chunks(body) + b"0\r\n\r\n"
        elif choice < 0.82:  # to the close
            frame, close = b"connection: close\r\n\r\n" + body, True
            self.notes.append("to the close")
        elif choice < 0.86:  # a length longer than the body: the rest never comes
            frame, close = b"content-length: %d\r\n\r\n" % (len(body) + 50) + body, True
            self.notes.append("long length")
        elif choice < 0.89:  # a length shorter: what follows is left on the connection
            cut = rnd.randrange(len(body) + 1)
            frame = b"content-length: %d\r\n\r\n" % cut + body
            self.notes.append("short length")
        elif choice < 0.92:  # lengths that are not one
            length = rnd.choice((b"-1", b"abc", b"%d, %d" % (len(body), len(body) + 1), b"1e3"))
            frame, close = b"content-length: " + length + b"\r\n\r\n" + body, True
            self.notes.append(f"length {length!r}")
        elif choice < 0.96:  # chunks that lie
            frame, close = b"transfer-encoding: chunked\r\n\r\n" + self._bad_chunks(body), True
        elif choice < 0.995:  # cut mid-answer
            whole = b"content-length: %d\r\n\r\n" % len(body) + body
            frame, close = whole[: rnd.randrange(len(whole) + 1)], True
            self.notes.append("cut")
        else:  # the head, some of the body, then nothing for a while
            frame = b"content-length: %d\r\n\r\n" % len(body) + body[: len(body) // 2]
            close, stall_s = True, STALL_S
            self.notes.append("stall")
        return Answer([head + frame], close=close, stall_s=stall_s)

    def _chunks(self, body: bytes) -> bytes:
        rnd = self.random
        out = []
        at = 0
        while at < len(body):
            size = rnd.choice((1, 7, 64, 4096, len(body)))
            piece = body[at : at + size]
            extension = b";ext=1" if rnd.random() < 0.05 else b""
            out.append(b"%x%b\r\n%b\r\n" % (len(piece), extension, piece))
            at += size
        return b"".join(out)

    def _bad_chunks(self, body: bytes) -> bytes:
        rnd = self.random
        choice = rnd.randrange(4)
        self.notes.append(f"bad chunks {choice}")
        if choice == 0:  # a size larger than the chunk
            return b"%x\r\n%b\r\n0\r\n\r\n" % (len(body) + 10, body)
        if choice == 1:  # a size that is not hex
            return b"zz\r\n" + body + b"\r\n0\r\n\r\n"
        if choice == 2:  # no last chunk
            return b"%x\r\n%b\r\n" % (len(body), body)
        return b"%x\r\n%b\r\n0\r\nx-trailer: \xff\r\n\r\n" % (len(body), body)  # trailers


def valid_answer(kind: str, inputs: int, rnd: random.Random) -> Answer:
    """A well-formed answer of ``kind`` (for ``inputs`` inputs, embeddings)."""
    if kind.endswith("stream"):
        events = stream_events(kind, rnd)
        body = b"".join(
            b"data: "
            + (event if isinstance(event, bytes) else msgspec.json.encode(event))
            + b"\n\n"
            for event in events
        )
    elif kind == "openai_embed":
        body = msgspec.json.encode(embeddings_reply(inputs, rnd))
    else:
        body = msgspec.json.encode(chat_reply(kind, rnd))
    return Answer([b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body) + body])


def answer_for(seed: int, request: RawRequest) -> Answer:
    """The answer of the case ``request`` names, for ``seed``: a well-formed one when it names
    none or one from :data:`VALID_CASE` on."""
    kind = request_kind(request)
    if kind is None:
        return Answer([b'HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\n{"data":[]}'])
    found = CASE_MARK.search(request.body)
    case = int(found[1]) if found else VALID_CASE
    if case >= VALID_CASE:
        return valid_answer(kind, embedding_count(request), random.Random(f"{seed}:{case}"))
    key = request.headers.get(b"x-api-key") or request.headers.get(b"authorization", b"")
    fuzzer = AnswerFuzzer(seed, case, kind, key.removeprefix(b"Bearer ").decode("latin-1"))
    return fuzzer.answer(embedding_count(request))


class HostileProvider(RawHTTPServer):
    """A provider answering every request with its case's broken answer (:func:`answer_for`),
    on loopback; use as a context manager. Also a plain-HTTP proxy to itself: a request in
    absolute form (``POST http://any.host/v1/...``) is answered the same way, which is how a
    daemon's httpx pool is brought to it (a provider URL on a non-loopback host, with
    ``HTTP_PROXY`` naming this server)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.answered = 0
        super().__init__(self._answer)

    def _answer(self, request: RawRequest, connection: socket.socket) -> None:
        answer = answer_for(self.seed, request)
        self.answered += 1
        if answer.pause_s:
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for index, piece in enumerate(answer.pieces):
            if index and answer.pause_s:
                time.sleep(answer.pause_s)
            connection.sendall(piece)
        if answer.stall_s:
            time.sleep(answer.stall_s)
        if answer.close:
            connection.shutdown(socket.SHUT_RDWR)
            raise OSError("closed after its answer")  # ends this connection's handler
