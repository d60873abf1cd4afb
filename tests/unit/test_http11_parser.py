"""The HTTP/1.1 request parser (llhttp through httptools, with quotad's checks around it):
heads, bodies (length and chunked), pipelining however the bytes are split, the authorize hook
before the body, the bounds on chunks, and every refusal with its status."""

from __future__ import annotations

import itertools
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quotad.daemon.net.http11.messages import (
    HEADER_FIELD_COST,
    HttpLimits,
    HttpRequest,
    HttpResponse,
    default_error_answer,
)
from quotad.daemon.net.http11.parser import (
    HELD_HEAD_BYTES,
    PARSE_BYTES,
    QUEUED_REQUESTS,
    IncomingRequest,
    RequestParser,
)

POST = (
    b"POST /v1/chat?x=1 HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
    b"Content-Length: 11\r\n\r\nhello world"
)
CHUNKED = (
    b"POST /up HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n"
    b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: y\r\n\r\n"
)
GET_10 = b"GET /healthz HTTP/1.0\r\n\r\n"
LIMITS = HttpLimits(max_header_bytes=4096)


def parser_for(
    limits: HttpLimits = LIMITS,
    authorize: object = None,
) -> RequestParser:
    return RequestParser(limits, default_error_answer, authorize)  # type: ignore[arg-type]


def parse_all(chunks: list[bytes], limits: HttpLimits = LIMITS) -> list[IncomingRequest]:
    """Feed ``chunks`` one by one; every request queued."""
    parser = parser_for(limits)
    for chunk in chunks:
        parser.feed(chunk)
    return list(parser.requests)


def take(parser: RequestParser) -> IncomingRequest:
    """The first request queued, released as the connection does once it is answered."""
    incoming = parser.requests.popleft()
    parser.release(incoming)
    return incoming


def complete(incoming: IncomingRequest) -> HttpRequest:
    assert incoming.refusal is None, incoming.refusal
    assert incoming.complete
    assert incoming.request is not None
    return incoming.request


def refusal(data: bytes, limits: HttpLimits = LIMITS) -> HttpResponse:
    """The refusal ``data`` gets (whole or byte by byte: the same)."""
    whole = parse_all([data], limits)
    split = parse_all([data[i : i + 1] for i in range(len(data))], limits)
    assert whole
    assert whole[-1].refusal is not None, f"{data!r} was not refused"
    assert split
    assert split[-1].refusal is not None
    assert split[-1].refusal.status == whole[-1].refusal.status
    assert whole[-1].closes
    return whole[-1].refusal


def test_head_body_and_lower_cased_names() -> None:
    [incoming] = parse_all([POST])
    request = complete(incoming)
    assert (request.method, request.target, request.path, request.body) == (
        "POST",
        "/v1/chat?x=1",
        "/v1/chat",
        b"hello world",
    )
    assert request.headers == [
        (b"host", b"a"),
        (b"content-type", b"application/json"),
        (b"content-length", b"11"),
    ]
    assert incoming.keep_alive


def test_header_values_lose_surrounding_blanks_and_keep_inner_ones() -> None:
    head = (
        b"GET / HTTP/1.1\r\nhost:a\r\nx-a: \t two  words \t\r\nx-empty:\r\n"
        b"x-tab: a\tb\r\nx-last: d \r\n\r\n"
    )
    [incoming] = parse_all([head])
    assert complete(incoming).headers == [
        (b"host", b"a"),
        (b"x-a", b"two  words"),
        (b"x-empty", b""),
        (b"x-tab", b"a\tb"),
        (b"x-last", b"d"),
    ]
    assert refusal(b"GET / HTTP/1.1\r\nhost: a\r\nx: a\rb\r\n\r\n").status == 400


def test_long_runs_of_blanks_in_a_bad_header_are_refused_in_linear_time() -> None:
    """A backtracking header pattern took hours over these lines (cubic in the blanks); the
    child process must finish, with every line refused, long before the bound."""
    code = (
        "from quotad.daemon.net.http11.messages import HttpLimits, default_error_answer\n"
        "from quotad.daemon.net.http11.parser import RequestParser\n"
        "for value in (b' ' * 20000 + b'\\x01', b' ' * 9000 + b'a' + b' ' * 9000 + b'\\x01'):\n"
        "    parser = RequestParser(HttpLimits(max_header_bytes=65536), default_error_answer)\n"
        "    parser.feed(b'GET / HTTP/1.1\\r\\nhost: a\\r\\nx:' + value + b'\\r\\n\\r\\n')\n"
        "    print(parser.requests[-1].refusal.status)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["400"] * 2


@given(st.lists(st.integers(0, len(POST + CHUNKED + GET_10)), max_size=8))
def test_any_split_of_pipelined_requests_parses_the_same(cuts: list[int]) -> None:
    data = POST + CHUNKED + GET_10
    points = [0, *sorted(cuts), len(data)]
    chunks = [data[a:b] for a, b in itertools.pairwise(points) if b > a]
    requests = [complete(incoming) for incoming in parse_all(chunks)]
    assert [(r.method, r.target, r.body) for r in requests] == [
        ("POST", "/v1/chat?x=1", b"hello world"),
        ("POST", "/up", b"hello world"),
        ("GET", "/healthz", b""),
    ]


@pytest.mark.parametrize("read_size", [1, 7, 4096, 1 << 20])
def test_pipelined_requests_are_parsed_a_few_ahead_of_the_one_taken(read_size: int) -> None:
    """A read of many small requests was parsed whole in one go (7,700 heads in 256 KB: 100 ms
    of the event loop's read callback); now at most QUEUED_REQUESTS ahead of the one taken,
    the rest parsed as the queue is taken, all in order whatever the reads."""
    requests = [
        POST.replace(b"/v1/chat?x=1", b"/%d" % number)
        if number % 3
        else b"GET /%d HTTP/1.1\r\nhost: t\r\n\r\n" % number
        for number in range(1000)
    ]
    data = b"".join(requests)
    parser = parser_for()
    taken: list[str] = []
    most_queued = 0
    for start in range(0, len(data), read_size):
        parser.feed(data[start : start + read_size])
        while parser.requests or parser.backlog:
            most_queued = max(most_queued, len(parser.requests))
            if not parser.requests:
                parser.parse_backlog()
                continue
            if not parser.requests[0].complete:
                break  # the rest of it comes with the next read
            taken.append(complete(take(parser)).target)
    assert taken == [f"/{number}" for number in range(1000)]
    assert most_queued == QUEUED_REQUESTS if read_size > 4000 else most_queued <= QUEUED_REQUESTS


def test_big_pipelined_heads_are_parsed_one_go_at_a_time() -> None:
    """A head costs about a microsecond a header: sixteen 56 KB heads of 7,000 headers held the
    loop 75 ms in one read callback; now what passes PARSE_BYTES waits for the next go."""
    line = b"x-a: " + b"b" * 57 + b"\r\n"
    head = b"GET / HTTP/1.1\r\nhost: t\r\n" + line * (PARSE_BYTES // len(line)) + b"\r\n"
    parser = parser_for(HttpLimits(max_header_bytes=65536))
    parser.feed(head * 8)
    assert len(parser.requests) == 1
    taken = 0
    while parser.requests or parser.backlog:
        while parser.requests:
            take(parser)
            taken += 1
        parser.parse_backlog()
        assert len(parser.requests) <= 1
    assert taken == 8


def test_heads_are_parsed_ahead_only_while_those_held_are_small() -> None:
    """Each read was parsed afresh, so a client writing one big head at a time while the request
    before was answered had QUEUED_REQUESTS of them held (heads of 1,800 headers: 3.4 MB a
    connection); now none is parsed ahead while the heads not released pass HELD_HEAD_BYTES,
    and each comes once the one before is released."""
    line = b"x-a: " + b"b" * 57 + b"\r\n"
    head = b"GET /%d HTTP/1.1\r\nhost: t\r\n" + line * (HELD_HEAD_BYTES // len(line)) + b"\r\n"
    parser = parser_for(HttpLimits(max_header_bytes=65536))
    parser.feed(head % 0)
    answered = parser.requests.popleft()  # being answered: its head is held until released
    for number in range(1, 20):
        parser.feed(head % number)  # one read each
    assert (len(parser.requests), parser.backlog) == (0, True)
    parser.release(answered)
    taken = [complete(answered).target]
    while parser.requests or parser.backlog:
        if not parser.requests:
            parser.parse_backlog()
        assert len(parser.requests) == 1
        taken.append(complete(take(parser)).target)
    assert taken == [f"/{number}" for number in range(20)]
    # small heads are parsed QUEUED_REQUESTS ahead as before
    parser.feed(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n" * 40)
    assert len(parser.requests) == QUEUED_REQUESTS


def test_each_header_counts_its_field_cost_against_the_head_limit() -> None:
    """A parsed header holds some 120 bytes however short its line: a 64 KB head of 16,000
    four-byte headers held 1.9 MB, whole or stalled before its end. Each header counts
    HEADER_FIELD_COST bytes more, so a head holds at most limit / (4 + cost) of them."""
    start = b"GET / HTTP/1.1\r\nhost: a\r\n"
    tiny = b"a:\r\n"
    most = (LIMITS.max_header_bytes - len(start) - 2 - HEADER_FIELD_COST) // (
        len(tiny) + HEADER_FIELD_COST
    )
    [fits] = parse_all([start + tiny * most + b"\r\n"])
    assert len(complete(fits).headers) == most + 1
    over = refusal(start + tiny * (most + 1) + b"\r\n")
    assert over.status == 431
    assert b"each header counting" in over.body
    # a head that never ends is refused as soon as its headers pass the bound, not held
    # (llhttp reports a header once the next line begins)
    [stalled] = parse_all([start + tiny * (most + 2)])
    assert stalled.refusal is not None
    assert stalled.refusal.status == 431


def test_http10_and_connection_close_end_the_parse() -> None:
    get = b"GET / HTTP/1.1\r\nhost: a\r\n\r\n"
    close = b"GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n"
    [old] = parse_all([GET_10 + get])
    assert (old.http10, old.keep_alive) == (True, False)
    kept, closing = parse_all([get + close + get])
    assert (kept.http10, kept.keep_alive) == (False, True)
    assert (closing.http10, closing.keep_alive) == (False, False)


def test_a_request_not_complete_is_left_in_the_queue_until_it_is() -> None:
    parser = parser_for()
    parser.feed(b"POST / HTTP/1.1\r\nhost: a\r\ncontent-le")
    assert parser.in_request
    assert not parser.requests  # the head is not complete
    parser.feed(b"ngth: 4\r\n\r\nab")
    [incoming] = parser.requests
    assert incoming.request is not None
    assert not incoming.complete
    parser.feed(b"cd")
    assert complete(incoming).body == b"abcd"
    assert not parser.in_request


def test_expect_100_continue_until_the_body_comes() -> None:
    parser = parser_for()
    parser.feed(b"PUT /x HTTP/1.1\r\nhost: a\r\nexpect: 100-continue\r\ncontent-length: 2\r\n\r\n")
    [incoming] = parser.requests
    assert incoming.waits_for_100_continue
    parser.feed(b"o")
    assert not incoming.waits_for_100_continue


def test_authorize_sees_the_head_before_any_of_the_body() -> None:
    seen: list[tuple[str, bytes]] = []
    denied = HttpResponse(401, [], b"no")

    def authorize(request: HttpRequest) -> HttpResponse | None:
        seen.append((request.path, request.body))
        return denied if request.header("x-key") != "ok" else None

    parser = parser_for(authorize=authorize)
    head = b"POST /a HTTP/1.1\r\nhost: a\r\nx-key: ok\r\ncontent-length: 5\r\n\r\n"
    parser.feed(head + b"he")
    assert seen == [("/a", b"")]  # the head, alone, as soon as it was complete
    parser.feed(b"llo")
    assert complete(parser.requests.popleft()).body == b"hello"
    # refused, without a body: answered in turn, the connection goes on
    parser.feed(b"GET /b HTTP/1.1\r\nhost: a\r\n\r\n")
    bodyless = parser.requests.popleft()
    assert (bodyless.refusal, bodyless.closes, parser.stopped) == (denied, False, False)
    # refused, with a body: nothing more is parsed, the connection closes after the answer
    parser.feed(b"POST /c HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n1\r\nx\r\n")
    refused = parser.requests.popleft()
    assert (refused.refusal, refused.closes, parser.stopped) == (denied, True, True)
    assert refused.body_size == 0
    assert refused.chunks == 0
    parser.feed(b"1\r\nx\r\n" * 1000)
    assert not parser.requests
    assert [path for path, _ in seen] == ["/a", "/b", "/c"]


def test_an_authorize_hook_that_fails_is_a_500_and_a_close() -> None:
    def authorize(request: HttpRequest) -> HttpResponse | None:
        raise RuntimeError("bug")

    parser = parser_for(authorize=authorize)
    parser.feed(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
    [incoming] = parser.requests
    assert incoming.refusal is not None
    assert incoming.refusal.status == 500
    assert incoming.closes


def test_tiny_chunks_are_bounded_by_count_and_framing_by_size() -> None:
    head = b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n"
    limits = HttpLimits(max_header_bytes=4096, max_body_chunks=100)
    ok = parse_all([head + b"1\r\nx\r\n" * 100 + b"0\r\n\r\n"], limits)
    assert complete(ok[0]).body == b"x" * 100
    over = refusal(head + b"1\r\nx\r\n" * 101 + b"0\r\n\r\n", limits)
    assert over.status == 413
    assert b"more than 100 chunks" in over.body
    extension = b"1;" + b"e" * 5000 + b"\r\nx\r\n"
    assert refusal(head + extension, limits).status == 400
    trailers = b"0\r\n" + b"x-t: 1\r\n" * 600 + b"\r\n"
    assert refusal(head + trailers, limits).status == 400


def test_body_over_the_limit_is_refused_declared_or_read() -> None:
    limits = HttpLimits(max_header_bytes=4096, max_body_bytes=10)
    declared = refusal(b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 11\r\n\r\n", limits)
    assert declared.status == 413
    chunks = b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n6\r\nabcdef\r\n" * 1
    assert refusal(chunks + b"6\r\nabcdef\r\n", limits).status == 413


def test_connect_and_upgrade_are_answered_then_the_connection_closes() -> None:
    for data in (
        b"CONNECT a:443 HTTP/1.1\r\nhost: a\r\n\r\nnot http at all",
        b"GET / HTTP/1.1\r\nhost: a\r\nconnection: upgrade\r\nupgrade: x\r\n\r\n\x00\x01",
    ):
        parser = parser_for()
        parser.feed(data)
        [incoming] = parser.requests
        complete(incoming)
        assert not incoming.keep_alive
        assert parser.stopped


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"\x16\x03\x01\x02\x00", 400),  # a TLS handshake: refused before a whole line
        (b"HELLO\r\n\r\n", 400),
        (b"GET /a b HTTP/1.1\r\nhost: a\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\nhost: a\r\n\r\n", 505),
        (b"GET / HTTP/1.1\r\n\r\n", 400),  # no host
        (b"GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nhost: a\r\n folded\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nhost: a\r\nx: a\r\n folded\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nhost: a\r\nbad name: x\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nhost: a\x01\r\n\r\n", 400),
        (b"GET / HTTP/1.1\nhost: a\n\n", 400),  # bare LF
        (b"GET  / HTTP/1.1\r\nhost: a\r\n\r\n", 400),
        (b"\r\nGET / HTTP/1.1\r\nhost: a\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: x\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 1\r\n"
         b"transfer-encoding: chunked\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: gzip\r\n\r\n", 501),
        (b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: gzip, chunked\r\n\r\n", 501),
        (b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n", 400),
        (b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n1\r\nabc\r\n", 400),
        (b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n"
         b"fffffffffffffffffff\r\n", 400),
        (b"GET / HTTP/1.1\r\nhost: a\r\nx: " + b"a" * 5000, 431),
        (b"GET / HTTP/1.1\r\nhost: a\r\nx: " + b"a" * 5000 + b"\r\n\r\n", 431),
    ],
)  # fmt: skip
def test_refusals_carry_their_status(data: bytes, status: int) -> None:
    assert refusal(data).status == status


def test_a_refusal_after_complete_requests_comes_after_them() -> None:
    get = b"GET /1 HTTP/1.1\r\nhost: a\r\n\r\n"
    first, second, bad = parse_all([get + get + b"GET / HTTP/9.9\r\n\r\n"])
    assert complete(first).target == complete(second).target == "/1"
    assert bad.refusal is not None
    assert bad.refusal.status == 505
    assert bad.request is None
