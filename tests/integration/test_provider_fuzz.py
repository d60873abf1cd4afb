"""What quotad parses from providers, fuzzed: a real daemon whose accounts (OpenAI and
Anthropic, through the lean pool and through httpx's) are a hostile provider answering each
request with a seeded random broken answer (tests/support/provider_fuzz.py), sent valid
requests by real clients (quotad's client on the socket, the openai SDK on the front door).
Every request gets an answer, a reply or a clean error (never ``internal``, never a 500); the
daemon logs no traceback, stays up and serves a normal provider afterwards; every request left
exactly one ledger row, none with a negative or NaN cost; nothing is left reserved. Then what
the fuzzer found, each as its own test."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest

from quotad.client import Client, UpstreamError
from quotad.daemon.config import parse_config
from quotad.daemon.providers import build_provider
from quotad.daemon.providers.base import Provider, ProviderError
from quotad.protocol.messages import Chat, ChatMessage
from tests.support import provider_fuzz_run
from tests.support.backends import ASYNCIO_BACKENDS
from tests.support.daemon import DaemonProcess, daemon_config, sim_provider_config
from tests.support.provider_fuzz_run import FuzzRig
from tests.support.raw_http import RawHTTPServer, RawRequest, answer

asyncio_backends = pytest.mark.parametrize("anyio_backend", ASYNCIO_BACKENDS)

FUZZ_SEED = 4242
CASES = 1500
CHAT = Chat(model="m", messages=[ChatMessage(role="user", content="hi")], max_tokens=4)


@pytest.mark.slow
def test_a_daemon_survives_a_hostile_provider() -> None:
    with FuzzRig(FUZZ_SEED) as rig:
        results = provider_fuzz_run.run(rig, CASES)
        assert results.failures == []
        assert results.cases == CASES
        assert results.outcomes["ok"] > CASES * 0.1  # both kinds were made
        assert results.outcomes["upstream_error"] > CASES * 0.1
        assert rig.process.process is not None
        assert rig.process.process.poll() is None
        assert provider_fuzz_run.served_after(rig)
        assert provider_fuzz_run.reserved_usd(rig) == 0
        ledger = provider_fuzz_run.ledger_figures(rig.process.state_dir)
        assert ledger.rows == CASES, ledger.by_status
        assert ledger.bad_costs == []
        assert ledger.bad_tokens == 0
        assert "Traceback" not in rig.process.log()


# --------------------------------------------------------------------------- what it found


@asynccontextmanager
async def provider(kind: str, base_url: str, pool: str) -> AsyncIterator[Provider]:
    raw = {"providers": {"p": {"kind": kind, "base_url": base_url, "api_key_env": "PFUZZ_KEY"}}}
    config = parse_config(raw)
    transport = httpx.AsyncHTTPTransport() if pool == "httpx" else None
    built = build_provider("p", config.providers["p"], "sk-pfuzz-key", transport=transport)
    try:
        yield built
    finally:
        await built.aclose()


async def answered(built: Provider, streamed: bool) -> None:
    """Ask ``built`` for a chat (streamed or not), reading it whole."""
    if not streamed:
        await built.chat("m", CHAT, 4)
        return
    stream = await built.open_stream("m", CHAT, 4)
    try:
        async for _ in stream.deltas():
            pass
    finally:
        await stream.aclose()


def sse(*events: bytes) -> bytes:
    body = b"".join(b"data: " + event + b"\n\n" for event in events)
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: %d\r\n\r\n"
        % (len(body))
        + body
    )


NOT_UTF8 = [
    ("openai", False, b'{"choices": [{"message": {"content": "\xa1"}}]}'),
    ("anthropic", False, b'{"content": [{"type": "text", "text": "\xff\xfe"}]}'),
    ("openai", True, b'{"choices": [{"index": 0, "delta": {"content": "\xc3\x28"}}]}'),
    ("anthropic", True, b'{"type": "content_block_delta", "delta": {"text": "\xa1"}}'),
]


@pytest.mark.anyio
@asyncio_backends
@pytest.mark.parametrize("pool", ["lean", "httpx"])
@pytest.mark.parametrize(("kind", "streamed", "body"), NOT_UTF8)
async def test_an_answer_whose_strings_are_not_utf8_cannot_be_understood(
    pool: str, kind: str, streamed: bool, body: bytes
) -> None:
    """Found by the fuzzer: msgspec raises UnicodeDecodeError (no DecodeError) for a string
    whose bytes are not UTF-8, and the providers did not catch it: an ``internal`` error, a
    500 on the front door, a traceback in the log."""
    handler = (
        (lambda request, connection: connection.sendall(sse(body)))
        if streamed
        else answer(200, body, {"content-type": "application/json"})
    )
    with RawHTTPServer(handler) as server:
        async with provider(kind, server.base_url, pool) as built:
            with pytest.raises(ProviderError) as failed:
                await answered(built, streamed)
    assert failed.value.kind == "protocol"
    assert "cannot be understood" in failed.value.message


@pytest.mark.anyio
@asyncio_backends
@pytest.mark.parametrize("status", [429, 500])
async def test_an_error_answer_whose_strings_are_not_utf8_keeps_its_status(status: int) -> None:
    """Found by the fuzzer: the error body is decoded to be redacted; a string in it that
    was not UTF-8 was an ``internal`` error instead of the error the status says."""
    body = b'{"error": {"message": "busy \xff"}}'
    with RawHTTPServer(answer(status, body)) as server:
        async with provider("openai", server.base_url, "lean") as built:
            with pytest.raises(ProviderError) as failed:
                await built.chat("m", CHAT, 4)
    assert failed.value.status == status
    assert failed.value.kind == ("rate_limited" if status == 429 else "server")
    assert "busy" in str(failed.value.body)


ODD_USAGE = [
    (
        "openai",
        False,
        b'{"choices": [{"message": {"content": "x"}}], "usage": {"prompt_tokens": %s}}',
    ),
    ("anthropic", False, b'{"content": [], "usage": {"input_tokens": 1, "output_tokens": %s}}'),
    ("openai", True, b'{"choices": [], "usage": {"completion_tokens": %s}}'),
    ("anthropic", True, b'{"type": "message_delta", "usage": {"cache_read_input_tokens": %s}}'),
]


@pytest.mark.anyio
@asyncio_backends
@pytest.mark.parametrize(("kind", "streamed", "body"), ODD_USAGE)
@pytest.mark.parametrize("count", [b"-1", b"18446744073709551616", b"1" + b"0" * 30])
async def test_a_token_count_negative_or_past_the_bound_cannot_be_understood(
    kind: str, streamed: bool, body: bytes, count: bytes
) -> None:
    """Found by the fuzzer: a usage of 2**64 tokens went into the ledger row, which SQLite
    could not store, and the row kept for another try failed every write after it (every
    request since: ``internal``); a negative count made a negative cost."""
    body %= count
    handler = (
        (lambda request, connection: connection.sendall(sse(body)))
        if streamed
        else answer(200, body, {"content-type": "application/json"})
    )
    with RawHTTPServer(handler) as server:
        async with provider(kind, server.base_url, "lean") as built:
            with pytest.raises(ProviderError) as failed:
                await answered(built, streamed)
    assert failed.value.kind == "protocol"
    assert "usage" in failed.value.message


def test_a_daemon_answered_a_usage_past_64_bits_keeps_its_ledger() -> None:
    """The same end to end: before, the first answer failed as ``internal`` and so did every
    request after it, on any provider (the ledger's writes all failed); now the first is an
    ``upstream_error`` naming the usage, the next is answered, both rows are written."""
    answers = iter([b"18446744073709551616", b"7"])

    def usage_once(request: RawRequest, connection: socket.socket) -> None:
        body = ODD_USAGE[0][2] % next(answers, b"7")
        answer(200, body, {"content-type": "application/json"})(request, connection)

    with RawHTTPServer(usage_once) as server:
        config = daemon_config(sim_provider_config("raw", server.base_url))
        with DaemonProcess(config) as daemon, Client(socket=daemon.socket_path, app="t") as client:
            messages = [{"role": "user", "content": "hi"}]
            with pytest.raises(UpstreamError, match=r"usage\.prompt_tokens"):
                client.chat("raw/m", messages, cache="bypass")
            reply = client.chat("raw/m", messages, cache="bypass")
            assert reply.usage.prompt_tokens == 7
            rows = provider_fuzz_run.ledger_rows(daemon.state_dir, "t")
            assert sorted(rows) == ["ok", "upstream_error"]
            assert "Traceback" not in daemon.log()


NOT_ENCODED = [  # (streamed, status): a body declared gzip that is not
    (streamed, status) for streamed in (False, True) for status in (200, 500)
]


@pytest.mark.anyio
@asyncio_backends
@pytest.mark.parametrize("pool", ["lean", "httpx"])
@pytest.mark.parametrize(("streamed", "status"), NOT_ENCODED)
async def test_a_body_not_in_its_declared_content_encoding_is_the_providers_fault(
    pool: str, streamed: bool, status: int
) -> None:
    """Found by the extended provider fuzz: a body whose ``content-encoding`` says gzip or
    deflate but is not made httpx raise ``DecodingError``, which is no ``TransportError``:
    no ``except`` caught it, and the request failed as ``internal`` (a 500 on the front door,
    a traceback in the log). Now a plain answer is a ``protocol`` failure, a stream a
    ``stream_broken`` one, each naming the coding; an error status keeps its meaning. (A
    coding httpx does not know, ``x-gzip`` say, is read as it is; ``deflate`` that is not
    may inflate to bytes that are then not JSON.)"""
    body = b'data: {"choices": []}\n\n' if streamed else b'{"choices": []}'
    headers = {"content-type": "text/event-stream" if streamed else "application/json"}
    headers["content-encoding"] = "gzip"
    with RawHTTPServer(answer(status, body, headers)) as server:
        async with provider("openai", server.base_url, pool) as built:
            with pytest.raises(ProviderError) as failed:
                await answered(built, streamed)
    if status != 200:
        assert failed.value.status == status
        assert failed.value.kind == "server"
        return
    assert failed.value.kind == ("stream_broken" if streamed else "protocol")
    assert "not the gzip its content-encoding says" in failed.value.message


def test_a_daemon_answered_a_body_not_in_its_content_encoding_writes_its_row() -> None:
    """The same through a real daemon: an ``upstream_error`` (was ``internal``) naming the
    coding, one ledger row each, no traceback; the next answer is served."""
    answers = iter([{"content-encoding": "gzip"}, {}])
    body = ODD_USAGE[0][2] % b"7"

    def gzip_once(request: RawRequest, connection: socket.socket) -> None:
        headers = next(answers, {}) | {"content-type": "application/json"}
        answer(200, body, headers)(request, connection)

    with RawHTTPServer(gzip_once) as server:
        config = daemon_config(sim_provider_config("raw", server.base_url))
        with DaemonProcess(config) as daemon, Client(socket=daemon.socket_path, app="t") as client:
            messages = [{"role": "user", "content": "hi"}]
            with pytest.raises(UpstreamError, match="not the gzip its content-encoding says"):
                client.chat("raw/m", messages, cache="bypass")
            assert client.chat("raw/m", messages, cache="bypass").content == "x"
            rows = provider_fuzz_run.ledger_rows(daemon.state_dir, "t")
            assert sorted(rows) == ["ok", "upstream_error"]
            assert "Traceback" not in daemon.log()


def test_an_error_with_a_lone_surrogate_escape_beside_the_key_is_answered() -> None:
    """Found by the provider fuzz (seed 101, case 1089): an error answer, not JSON, holding
    a ``\\ud800`` escape and the key JSON-escaped was redacted into a message with a lone
    surrogate, which no frame can carry: the connection's task died, the request was never
    answered (the client waited forever), a traceback in the log. Now an upstream_error."""
    key = provider_fuzz_run.KEY_ENV["PFUZZ_KEY"]
    escaped_key = "".join(f"\\u{ord(c):04x}" for c in key).encode()
    body = b'{"error": {\\ud800"message": "bad key ' + escaped_key + b'\xff"}}'
    with RawHTTPServer(answer(500, body)) as server:
        extra = 'api_key_env = "PFUZZ_KEY"'
        config = daemon_config(sim_provider_config("raw", server.base_url, extra=extra))
        with (
            DaemonProcess(config, env=provider_fuzz_run.KEY_ENV) as daemon,
            Client(socket=daemon.socket_path, app="t", timeout=30) as client,
        ):
            with pytest.raises(UpstreamError) as failed:
                client.chat("raw/m", [{"role": "user", "content": "hi"}], cache="bypass")
            assert "\ufffd" in str(failed.value)
            assert key not in str(failed.value)
            assert provider_fuzz_run.ledger_rows(daemon.state_dir, "t") == ["upstream_error"]
            assert "Traceback" not in daemon.log()
