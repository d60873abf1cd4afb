"""The HTTP/1.1 request parser: heads, bodies (length and chunked), pipelining, however the
bytes are split, and every refusal with its status."""

from __future__ import annotations

import itertools
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quotad.daemon.net.http11.parser import (
    CLOSED,
    END_OF_MESSAGE,
    NEED_DATA,
    BodyData,
    Event,
    ParseError,
    RequestHead,
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
GET_10 = b"GET /healthz HTTP/1.0\n\n"


Parsed = tuple[bytes, bytes, list[tuple[bytes, bytes]], bytes]


def parse_all(chunks: list[bytes]) -> list[Parsed]:
    """Feed ``chunks`` one by one; every complete request as (method, target, headers, body)."""
    parser = RequestParser(max_head_bytes=4096)
    requests: list[Parsed] = []
    head: RequestHead | None = None
    body = b""
    pending = list(chunks)
    while True:
        event: Event = parser.next_event()
        if event is NEED_DATA:
            if not pending:
                return requests
            parser.receive_data(pending.pop(0))
        elif isinstance(event, RequestHead):
            head = event
        elif isinstance(event, BodyData):
            body += event.data
        elif event is END_OF_MESSAGE:
            assert head is not None
            requests.append((head.method, head.target, head.headers, body))
            head, body = None, b""
            parser.start_next()
        else:
            assert event is CLOSED
            return requests


def test_head_body_and_lower_cased_names() -> None:
    [(method, target, headers, body)] = parse_all([POST])
    assert (method, target, body) == (b"POST", b"/v1/chat?x=1", b"hello world")
    assert headers == [
        (b"host", b"a"),
        (b"content-type", b"application/json"),
        (b"content-length", b"11"),
    ]


def test_header_values_lose_surrounding_blanks_and_keep_inner_ones() -> None:
    head = (
        b"GET / HTTP/1.1\r\nhost:a\r\nx-a: \t two  words \t\r\nx-empty:\r\n"
        b"x-tab: a\tb\r\nx-bare-lf:  c\nx-last: d \r\n\r\n"
    )
    [(_, _, headers, _)] = parse_all([head])
    assert headers == [
        (b"host", b"a"),
        (b"x-a", b"two  words"),
        (b"x-empty", b""),
        (b"x-tab", b"a\tb"),
        (b"x-bare-lf", b"c"),
        (b"x-last", b"d"),
    ]
    parser = RequestParser(max_head_bytes=4096)
    parser.receive_data(b"GET / HTTP/1.1\r\nhost: a\r\nx: a\rb\r\n\r\n")
    with pytest.raises(ParseError, match="bad character in header 'x'"):
        parser.next_event()


def test_long_runs_of_blanks_in_a_bad_header_are_refused_without_backtracking() -> None:
    """A backtracking header pattern takes hours over these lines (cubic in the blanks); the
    child process must finish, with every line refused, long before the bound."""
    code = (
        "from quotad.daemon.net.http11.parser import ParseError, RequestParser\n"
        "for value in (b' ' * 20000 + b'\\x01', b' ' * 9000 + b'a' + b' ' * 9000 + b'\\x01'):\n"
        "    parser = RequestParser(max_head_bytes=65536)\n"
        "    head = b'GET / HTTP/1.1\\r\\nhost: a\\r\\nx:' + value + b'\\r\\n\\r\\n'\n"
        "    parser.receive_data(head)\n"
        "    try:\n"
        "        parser.next_event()\n"
        "    except ParseError as error:\n"
        "        print(error)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["bad character in header 'x'"] * 2


@given(st.lists(st.integers(0, len(POST + CHUNKED + GET_10)), max_size=8))
def test_any_split_of_pipelined_requests_parses_the_same(cuts: list[int]) -> None:
    data = POST + CHUNKED + GET_10
    points = [0, *sorted(cuts), len(data)]
    chunks = [data[a:b] for a, b in itertools.pairwise(points) if b > a]
    requests = parse_all(chunks)
    assert [(r[0], r[1], r[3]) for r in requests] == [
        (b"POST", b"/v1/chat?x=1", b"hello world"),
        (b"POST", b"/up", b"hello world"),
        (b"GET", b"/healthz", b""),
    ]


def test_client_closing_between_requests_is_closed_and_inside_one_an_error() -> None:
    parser = RequestParser(4096)
    parser.receive_data(b"")
    assert parser.next_event() is CLOSED
    parser = RequestParser(4096)
    parser.receive_data(b"GET / HTTP/1.1\r\nho")
    parser.receive_data(b"")
    with pytest.raises(ParseError):
        parser.next_event()


def test_expect_100_continue_until_the_body_comes() -> None:
    parser = RequestParser(4096)
    parser.receive_data(
        b"PUT /x HTTP/1.1\r\nhost: a\r\nexpect: 100-continue\r\ncontent-length: 2\r\n\r\n"
    )
    assert isinstance(parser.next_event(), RequestHead)
    assert parser.client_is_waiting_for_100_continue
    parser.receive_data(b"ok")
    assert not parser.client_is_waiting_for_100_continue


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"\x16\x03\x01\x02\x00", 400),  # a TLS handshake: refused before a whole line
        (b"HELLO\r\n\r\n", 400),
        (b"GET /a b HTTP/1.1\r\nhost: a\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\nhost: a\r\n\r\n", 505),
        (b"GET / HTTP/1.1\r\n\r\n", 400),  # no host
        (b"GET / HTTP/1.1\r\nhost: a\r\n folded\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nhost: a\r\nbad name: x\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nhost: a\x01\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: x\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 1\r\n"
         b"transfer-encoding: chunked\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: gzip\r\n\r\n", 501),
        (b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n", 400),
        (b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n1\r\nabc\r\n", 400),
        (b"GET / HTTP/1.1\r\nhost: a\r\nx: " + b"a" * 5000, 431),
    ],
)  # fmt: skip
def test_refusals_carry_their_status(data: bytes, status: int) -> None:
    parser = RequestParser(max_head_bytes=4096)
    parser.receive_data(data)

    def parse_until_refused() -> None:
        while parser.next_event() is not NEED_DATA:
            pass

    with pytest.raises(ParseError) as caught:
        parse_until_refused()
    assert caught.value.error_status_hint == status
