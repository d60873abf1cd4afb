"""Differential tests of the HTTP/1.1 request parsing: one corpus of malformed and ambiguous
requests (tests/support/http_corpus.py) goes to quotad's server over TCP (whole, and byte by
byte for some), to its parser (whole and byte by byte), and to two reference parsers, h11 and
httptools used directly. quotad must refuse everything either reference refuses; what it
accepts, both references accept as the same requests (no framing disagreement to smuggle
through); and what it refuses beyond them is exactly :data:`REFUSED_BEYOND_THE_REFERENCES`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import msgspec
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from quotad.daemon.net.http11 import HttpLimits, HttpRequest, HttpResponse, HttpServer
from quotad.daemon.net.http11.messages import default_error_answer
from quotad.daemon.net.http11.parser import RequestParser
from tests.support.backends import ASYNCIO_BACKENDS
from tests.support.http_corpus import (
    CORPUS,
    HEAD_LIMIT,
    Verdict,
    h11_verdict,
    httptools_verdict,
)

REFUSED_BEYOND_THE_REFERENCES = {
    "version HTTP/2.0": 505,  # both references parse it; quotad speaks HTTP/1.x only
    "version HTTP/0.9": 505,
    "head over the limit": 431,  # the head limit (h11's applies only to incomplete heads)
    "head of many headers over the limit": 431,
    "target over the limit": 431,
}
"""What quotad refuses while neither reference does, with the status it answers."""
SLOW_SENDS = (
    "valid post",
    "valid chunked",
    "bare LF after a header",
    "two spaces after the method",
    "CL.TE",
    "obs-fold in a header",
    "chunk size with a trailing blank",
)
"""Corpus entries also sent to the server one byte per write."""
LIMITS = HttpLimits(max_header_bytes=HEAD_LIMIT, read_timeout_s=2.0, idle_timeout_s=0.5)
"""Short timeouts: the server closes each connection soon after its last answer."""


def references(data: bytes) -> tuple[Verdict, Verdict]:
    return h11_verdict(data), httptools_verdict(data)


def check_against_the_references(name: str, verdict: Verdict, refused_with: int) -> None:
    """The rules of the module docstring, for one corpus entry."""
    h11, llhttp = references(CORPUS[name])
    if "refused" in (h11.outcome, llhttp.outcome):
        assert verdict.outcome == "refused", f"{name}: accepted what a reference refuses"
    if verdict.outcome == "accepted":
        assert h11.outcome == llhttp.outcome == "accepted", name
        assert verdict.requests == h11.requests == llhttp.requests, name
    beyond = verdict.outcome == "refused" and "refused" not in (h11.outcome, llhttp.outcome)
    if beyond:
        assert REFUSED_BEYOND_THE_REFERENCES.get(name) == refused_with, name
    else:
        assert name not in REFUSED_BEYOND_THE_REFERENCES, name


# --------------------------------------------------------------------------- the parser


def parser_verdict(chunks: list[bytes]) -> tuple[Verdict, int]:
    parser = RequestParser(LIMITS, default_error_answer)
    for chunk in chunks:
        parser.feed(chunk)
    verdict = Verdict("incomplete")
    for incoming in parser.requests:
        if incoming.refusal is not None:
            verdict.outcome = "refused"
            return verdict, incoming.refusal.status
        if not incoming.complete:
            return verdict, 0
        assert incoming.request is not None
        request = incoming.request
        verdict.requests.append((request.method, request.target, request.body))
    if verdict.requests and not parser.in_request:
        verdict.outcome = "accepted"
    return verdict, 0


@pytest.mark.parametrize("name", list(CORPUS))
def test_the_parser_refuses_what_the_references_refuse(name: str) -> None:
    data = CORPUS[name]
    whole, status = parser_verdict([data])
    check_against_the_references(name, whole, status)
    byte_by_byte, split_status = parser_verdict([data[i : i + 1] for i in range(len(data))])
    assert (byte_by_byte, split_status) == (whole, status), "a slow sender changed the verdict"


# --------------------------------------------------------------------------- the server


async def echo(request: HttpRequest) -> HttpResponse:
    body = msgspec.json.encode([request.method, request.target, request.body.decode("latin-1")])
    return HttpResponse(200, [], body)


@asynccontextmanager
async def serving() -> AsyncIterator[int]:
    server = HttpServer(echo, limits=LIMITS)
    async with anyio.create_task_group() as tasks:
        port = await tasks.start(server.serve)
        try:
            yield port
        finally:
            with anyio.fail_after(10):
                await server.shutdown(deadline_s=1.0)


async def server_verdict(port: int, data: bytes, *, slow: bool = False) -> tuple[Verdict, int]:
    """Send ``data`` on a new connection; read every answer until the server closes."""
    verdict = Verdict("accepted")
    status = 0
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        if slow:
            for index in range(len(data)):
                await stream.send(data[index : index + 1])
                await anyio.sleep(0.001)
        else:
            await stream.send(data)
        reader = BufferedByteReceiveStream(stream)
        while True:
            try:
                head = await reader.receive_until(b"\r\n\r\n", 65536)
            except (anyio.IncompleteRead, anyio.EndOfStream, anyio.BrokenResourceError):
                break
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ")[1])
            length = next(
                int(line.partition(":")[2]) for line in lines if line.startswith("content-length")
            )
            body = await reader.receive_exactly(length)
            if status == 200:
                method, target, echoed = msgspec.json.decode(body)
                verdict.requests.append((method, target, echoed.encode("latin-1")))
            elif status == 408:
                verdict.outcome = "incomplete"
            else:
                verdict.outcome = "refused"
    if not verdict.requests and verdict.outcome == "accepted":
        verdict.outcome = "refused"  # closed without an answer
    return verdict, status


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ASYNCIO_BACKENDS)
async def test_the_server_refuses_what_the_references_refuse() -> None:
    verdicts: dict[str, tuple[Verdict, int]] = {}
    slow: dict[str, tuple[Verdict, int]] = {}
    async with serving() as port:

        async def one(name: str) -> None:
            verdicts[name] = await server_verdict(port, CORPUS[name])

        async def one_slowly(name: str) -> None:
            slow[name] = await server_verdict(port, CORPUS[name], slow=True)

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tasks:
                for name in CORPUS:
                    tasks.start_soon(one, name)
                for name in SLOW_SENDS:
                    tasks.start_soon(one_slowly, name)
    for name, (verdict, status) in verdicts.items():
        check_against_the_references(name, verdict, status)
    for name, answer in slow.items():
        assert answer == verdicts[name], f"{name}: sent byte by byte, answered otherwise"
