"""The HTTP front door against hostile and careless clients, in-process in front of a scripted
broker: the key checked before the body is read, bodies that are not what they claim answered
400 naming what is wrong (never a 500), a request id on every error answer, and /healthz and
new requests while the daemon drains or a listener cannot accept."""

from __future__ import annotations

import functools
import gzip
import logging
import re
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import msgspec
import pytest

from quotad.daemon.broker import Broker
from quotad.daemon.config import Config, HttpConfig
from quotad.daemon.errors import RequestError
from quotad.daemon.front_door import FrontDoor, openai, wire
from quotad.daemon.front_door.wire import header_safe
from quotad.daemon.routing import Router
from quotad.protocol.framing import MAX_FREE_FORM_ITEMS
from quotad.protocol.messages import Chat
from tests.support.event_loop import turns_during
from tests.support.serving import running
from tests.support.store import open_store
from tests.unit.test_http_front_door import ANTHROPIC_CHAT, CHAT, KEYS, ScriptedBroker

pytestmark = pytest.mark.anyio

REQUEST_ID = re.compile(r"qd-[0-9a-f]{8}-\d+")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@asynccontextmanager
async def serving(
    broker: Broker,
    *,
    other_problems: Callable[[], list[str]] | None = None,
    **http: Any,
) -> AsyncIterator[FrontDoor]:
    """The front door (``[http]`` options ``http``) on a free loopback port."""
    config = HttpConfig(listen="127.0.0.1:0", **http)
    front_door = FrontDoor(broker, config, app_for_key=KEYS.get, other_problems=other_problems)
    await front_door.bind()
    async with running(front_door):
        yield front_door


def exchange(
    port: int, data: bytes, *, keep_sending: bytes = b""
) -> tuple[int, dict[str, str], bytes]:
    """Send ``data`` (then ``keep_sending`` over and over, unless the server stops it) on a
    new connection; the first answer: status, headers, body."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        if keep_sending:
            sock.setblocking(False)
            for _ in range(2000):
                try:
                    sock.send(keep_sending)
                except (BlockingIOError, OSError):
                    break
            sock.setblocking(True)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in lines[1:])
        }
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
        return int(lines[0].split(" ")[1]), headers, body


def request(path: str, headers: bytes = b"", body: bytes | None = None) -> bytes:
    framing = b"" if body is None else b"content-length: %d\r\n" % len(body)
    return b"POST %s HTTP/1.1\r\nhost: t\r\n%b%b\r\n%b" % (
        path.encode(),
        headers,
        framing,
        body or b"",
    )


# --------------------------------------------------------------------------- access before work


async def test_a_request_without_a_key_is_refused_before_its_body_is_read() -> None:
    broker = ScriptedBroker()
    head = b"transfer-encoding: chunked\r\ncontent-type: application/json\r\n"
    async with serving(broker, auth="keys") as front_door:
        port = front_door.server.port
        for path, shape in (("/v1/chat/completions", "openai"), ("/v1/messages", "anthropic")):
            # a body that never ends: the answer cannot wait for it
            data = request(path, head + b"x-api-key: sk-not-a-key\r\n") + b"1\r\n{\r\n"
            status, headers, body = await anyio.to_thread.run_sync(
                functools.partial(exchange, port, data, keep_sending=b"1\r\n \r\n" * 1000)
            )
            assert status == 401
            assert headers["connection"] == "close"
            assert REQUEST_ID.fullmatch(headers["x-quotad-request-id"])
            error = msgspec.json.decode(body)
            if shape == "openai":
                assert error["error"]["code"] == "unauthorized"
            else:
                assert error["type"] == "error"
                assert error["error"]["type"] == "authentication_error"
    assert broker.calls == []


# --------------------------------------------------------------------------- bodies

DEEP = b"[" * 5000 + b"]" * 5000


def chat_with(members: bytes) -> bytes:
    """An OpenAI chat body (model "m", one user message "x") ending in ``members``, raw JSON."""
    return b'{"model": "m", "messages": [{"role": "user", "content": "x"}], ' + members + b"}"


def text_part_with(members: bytes) -> bytes:
    """An Anthropic messages body whose one content part, text "x", ends in ``members``."""
    return (
        b'{"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": '
        b'[{"type": "text", "text": "x", ' + members + b"}]}]}"
    )


BAD_BODIES: list[tuple[str, str, bytes, str]] = [
    ("invalid UTF-8 in a string", "/v1/chat/completions",
     b'{"model": "m", "messages": [{"role": "user", "content": "caf\xe9"}]}', "not UTF-8"),
    ("invalid UTF-8 in a key", "/v1/chat/completions",
     chat_with(b'"metadata": {"\xff": "v"}'), "not UTF-8"),
    ("invalid UTF-8, Anthropic", "/v1/messages",
     b'{"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "\xc3\x28"}]}',
     "not UTF-8"),
    ("a lone surrogate", "/v1/chat/completions",  # msgspec says "Input data was truncated"
     b'{"model": "m", "messages": [{"role": "user", "content": "a\\ud800b"}]}',
     "not valid JSON: \\ud800 at byte 58 is half of a UTF-16 surrogate pair, without its"),
    ("a lone low surrogate", "/v1/messages",
     b'{"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "\\udc00"}]}',
     "not valid JSON: \\udc00 at byte 74 is half of a UTF-16 surrogate pair"),
    ("5,000 levels in an Any field", "/v1/chat/completions",
     chat_with(b'"prediction": {"a": ' + DEEP + b"}"), "nests"),
    ("5,000 levels in tools", "/v1/chat/completions",
     chat_with(b'"tools": [{"f": ' + DEEP + b"}]"), "nests"),
    ("5,000 levels in a content part", "/v1/messages",
     text_part_with(b'"x": ' + DEEP), "nests"),
    ("5,000 levels in an input", "/v1/embeddings",
     b'{"model": "m", "input": ' + DEEP + b"}", "nests"),
    ("5,000 levels as the body", "/v1/chat/completions", DEEP, "expected object"),
    ("a huge integer", "/v1/chat/completions",
     chat_with(b'"max_tokens": ' + b"9" * 5000), "max_tokens"),
    ("a 400-digit max_tokens", "/v1/chat/completions",
     chat_with(b'"max_tokens": ' + b"9" * 400),
     "max_tokens: an integer of 400 digits is out of range"),
    ("a 400-digit seed", "/v1/chat/completions",
     chat_with(b'"seed": -' + b"9" * 400), "seed: an integer of 400 digits"),
    ("a 19-digit top_logprobs below -2**63", "/v1/chat/completions",  # a 500 before
     chat_with(b'"top_logprobs": -9223372036854775809'),
     "top_logprobs: an integer of 19 digits is out of range"),
    ("a 19-digit seed below -2**63", "/v1/chat/completions",
     chat_with(b'"seed": -9999999999999999999'), "seed: an integer of 19 digits"),
    ("a 19-digit integer below -2**63 in tools", "/v1/chat/completions",
     chat_with(b'"tools": [{"x": -9223372036854775809}]'), "tools[0].x: an integer of 19"),
    ("a 21-digit integer in tools", "/v1/chat/completions",
     chat_with(b'"tools": [{"x": ' + b"9" * 21 + b"}]"), "tools[0].x: an integer of 21 digits"),
    ("a 400-digit integer in a content part", "/v1/messages",
     text_part_with(b'"n": ' + b"9" * 400), "messages[0].content[0].n: an integer"),
    ("a 400-digit dimensions", "/v1/embeddings",
     b'{"model": "m", "input": "x", "dimensions": ' + b"9" * 400 + b"}", "dimensions: an integer"),
    ("a huge integer in an Any field", "/v1/chat/completions",
     chat_with(b'"metadata": {"a": ' + b"9" * 400 + b"}"), "metadata"),
    ("a float out of range", "/v1/chat/completions",
     chat_with(b'"temperature": 1e999'), "temperature"),
    ("NaN", "/v1/chat/completions", chat_with(b'"temperature": NaN'), "not valid JSON"),
    ("a byte order mark", "/v1/chat/completions", b"\xef\xbb\xbf" + msgspec.json.encode(CHAT),
     "not valid JSON"),
    ("trailing garbage", "/v1/chat/completions", msgspec.json.encode(CHAT) + b"}", "not valid"),
    ("a NUL byte", "/v1/chat/completions", b'{"model": "m\x00"}', "not valid JSON"),
    ("an image url that is not a string", "/v1/messages",  # blamed on source.type before
     b'{"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [{"type": '
     b'"image", "source": {"type": "url", "url": 5}}]}]}',
     "messages[0].content[0].source.url: expected a string"),
    ("an empty tool_choice", "/v1/messages",  # ignored before
     b'{"model": "m", "max_tokens": 1, "tool_choice": {}, "messages": [{"role": "user", '
     b'"content": "hi"}]}', "tool_choice.type: expected one of"),
    ("an array", "/v1/messages", b"[1, 2]", "expected object, got"),
    ("a string", "/v1/embeddings", b'"hello"', "expected object, got"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("what", "path", "body", "says"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES]
)
async def test_a_bad_body_is_400_naming_what_is_wrong(
    what: str, path: str, body: bytes, says: str
) -> None:
    broker = ScriptedBroker()
    async with serving(broker, auth="none") as front_door, httpx.AsyncClient() as http:
        url = f"http://{front_door.address}{path}"
        response = await http.post(url, content=body)
        again = await http.post(f"http://{front_door.address}/v1/chat/completions", json=CHAT)
    assert response.status_code == 400, response.text
    error = response.json()
    if path == "/v1/messages":
        assert error["type"] == "error"
        assert error["error"]["type"] == "invalid_request_error"
    else:
        assert error["error"]["code"] == "bad_request"
    assert says in error["error"]["message"], error
    assert REQUEST_ID.fullmatch(response.headers["x-quotad-request-id"])
    assert again.status_code == 200  # and the next request is served
    assert len(broker.calls) == 1


def chat_of_bytes(size: int, tools: bytes = b"[]") -> bytes:
    """A chat body whose message is ``x`` repeated to ``size`` bytes, then ``tools``."""
    head = b'{"model": "m", "messages": [{"role": "user", "content": "'
    return head + b"x" * (size - len(head)) + b'"}], "tools": ' + tools + b"}"


async def test_a_big_body_is_looked_through_for_integers_between_turns_of_the_loop() -> None:
    """A 13 MB body's look for integers past 64 bits held the event loop 11 ms in one go;
    now a MiB at a time (:data:`DIGIT_SCAN_BYTES`), other tasks run in between."""
    body = chat_of_bytes(4 * wire.DIGIT_SCAN_BYTES)

    async def decode() -> None:
        decoded = await wire.decode_body(openai.CHAT_DECODER, body)
        assert decoded.tools == []

    assert await turns_during(decode) >= 4  # a turn between each of the 5 pieces


def spread_items(count: int) -> dict[str, Any]:
    """An object of about ``count`` items in objects of 1,000 keys."""
    block = {f"k{index}": index for index in range(1000)}
    return {f"m{index}": block for index in range(count // 1000)}


WIDE_BODIES = [
    ("/v1/chat/completions", "response_format",
     {**CHAT, "response_format": {"type": "json_schema", "json_schema": spread_items(800_000)}}),
    ("/v1/chat/completions", "tools",
     {**CHAT, "tools": [{"type": "function", "function": {"parameters": spread_items(60_000)}}]}),
    ("/v1/chat/completions", "metadata", {**CHAT, "metadata": {"a": [[1]] * 50_001}}),
    ("/v1/messages", "tool_choice", {**ANTHROPIC_CHAT, "tool_choice": spread_items(60_000)}),
]  # fmt: skip


@pytest.mark.parametrize(("path", "field", "body"), WIDE_BODIES, ids=[b[1] for b in WIDE_BODIES])
async def test_a_top_level_field_past_the_bound_on_its_items_is_400_before_the_body_is_decoded(
    path: str, field: str, body: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """msgspec decodes a body in one call that holds the GIL: 800,000 keys in
    response_format (14 MB) held the event loop 1.3 s, before the steps read them all. A
    top-level field (but messages) of more than MAX_FREE_FORM_ITEMS items is refused
    before the body is decoded, naming it."""
    decoded: list[bytes] = []
    monkeypatch.setattr(wire, "_decoded", lambda decode, body: decoded.append(body))
    broker = ScriptedBroker()
    async with serving(broker, auth="none") as front_door, httpx.AsyncClient() as http:
        url = f"http://{front_door.address}{path}"
        response = await http.post(url, content=msgspec.json.encode(body), timeout=60)
    assert response.status_code == 400, response.text
    message = response.json()["error"]["message"]
    assert f"{field}: a free-form value holds at most {MAX_FREE_FORM_ITEMS:,} items" in message
    assert decoded == []
    assert broker.calls == []


async def test_commas_and_brackets_in_strings_are_no_items() -> None:
    """Whether a field may hold too many is first told by counting its commas and brackets,
    wherever they are; those in strings (escaped quotes around them) are then found not to
    be items, and the body is served."""
    text = 'a, b, [c], {d}, \\"e, f\\", ' * 20_000  # 120,000 commas in strings
    body = {**CHAT, "messages": [{"role": "user", "content": text}]}
    body["prediction"] = {"type": "content", "content": text}
    decoded = await wire.decode_body(openai.CHAT_DECODER, msgspec.json.encode(body))
    assert decoded.prediction == body["prediction"]


@pytest.mark.parametrize("offset", [-30, -19, -10, -1, 0])
async def test_an_integer_across_two_pieces_of_the_look_is_found(offset: int) -> None:
    """The pieces overlap, so that a run of digits astride two is found whole."""
    tools = b'[{"x": ' + b"9" * 21 + b"}]"
    size = wire.DIGIT_SCAN_BYTES + offset - len(b'"}], "tools": [{"x": ')
    body = chat_of_bytes(size, tools)
    assert body.index(b"9" * 21) == wire.DIGIT_SCAN_BYTES + offset
    with pytest.raises(RequestError) as refused:
        await wire.decode_body(openai.CHAT_DECODER, body)
    assert refused.value.message == "tools[0].x: an integer of 21 digits is out of range (64 bits)"


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages", "/v1/embeddings"])
async def test_a_compressed_body_is_told_its_encoding_is_not_taken(path: str) -> None:
    """A gzip body with ``content-encoding: gzip`` was "not valid JSON: invalid character
    (byte 0)", which never named the encoding."""
    body = gzip.compress(msgspec.json.encode(CHAT))
    headers = {"content-encoding": "gzip", "content-type": "application/json"}
    broker = ScriptedBroker()
    async with serving(broker, auth="none") as front_door, httpx.AsyncClient() as http:
        url = f"http://{front_door.address}{path}"
        response = await http.post(url, content=body, headers=headers)
        plain = await http.post(url, json=CHAT, headers={"content-encoding": "identity"})
    assert response.status_code == 400
    assert "content-encoding 'gzip' is not supported: send the body uncompressed" in response.text
    assert plain.status_code != 400 or "content-encoding" not in plain.text


async def test_duplicate_keys_take_the_last_value_everywhere() -> None:
    broker = ScriptedBroker()
    body = (
        b'{"model": "first", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1, '
        b'"model": "fast", "max_tokens": 2000, "max_tokens": 7}'
    )
    async with serving(broker, auth="none") as front_door, httpx.AsyncClient() as http:
        response = await http.post(f"http://{front_door.address}/v1/chat/completions", content=body)
    assert response.status_code == 200
    [(chat, _)] = broker.calls
    assert isinstance(chat, Chat)
    assert (chat.model, chat.max_tokens) == ("fast", 7)  # what is reserved for is what is sent


# --------------------------------------------------------------------------- request ids


async def test_every_error_answer_carries_a_request_id() -> None:
    broker = ScriptedBroker()
    chat = msgspec.json.encode(CHAT)
    cases: list[tuple[int, bytes]] = [
        (401, request("/v1/chat/completions", body=chat)),
        (401, b"GET /v1/models HTTP/1.1\r\nhost: t\r\nauthorization: Bearer sk-wrong\r\n\r\n"),
        (400, request("/v1/chat/completions", b"x-api-key: sk-agent\r\n", b"{")),
        (400, request("/v1/chat/completions", b"x-api-key: sk-agent\r\nx-quotad-priority: no\r\n",
                      chat)),
        (404, request("/nowhere", body=b"")),
        (405, b"DELETE /v1/chat/completions HTTP/1.1\r\nhost: t\r\n\r\n"),
        (413, request("/v1/chat/completions", b"content-length: 99999999999\r\n")),
        (431, b"GET /healthz HTTP/1.1\r\nhost: t\r\nx-big: " + b"a" * 20000 + b"\r\n\r\n"),
        (400, b"GET /healthz HTTP/1.1\nhost: t\n\n"),
        (400, b"BREW /pot HTTP/1.1\r\nhost: t\r\n\r\n"),
        (505, b"GET /healthz HTTP/2.0\r\nhost: t\r\n\r\n"),
        (408, b"GET /healthz HTTP/1.1\r\nhost: t\r\n"),
        (429, request("/v1/chat/completions", b"x-api-key: sk-agent\r\n", chat)),
    ]  # fmt: skip
    seen: set[str] = set()
    async with serving(broker, auth="keys", read_timeout_s=0.3, max_header_kb=8) as front_door:
        port = front_door.server.port
        for status, data in cases:
            if status == 429:
                broker.error = RequestError("rate_limited", "gate full")
            answer, headers, _ = await anyio.to_thread.run_sync(exchange, port, data)
            assert answer == status, data[:60]
            request_id = headers.get("x-quotad-request-id", "")
            assert REQUEST_ID.fullmatch(request_id), (status, headers)
            seen.add(request_id)
        # an error the pipeline gave an id (its ledger row's) is answered with that id
        piped = RequestError("unknown_model", "no model 'x'")
        piped.request_id = "qd-0123abcd-77"
        broker.error = piped
        data = request(
            "/v1/messages", b"x-api-key: sk-agent\r\n", msgspec.json.encode(ANTHROPIC_CHAT)
        )
        answer, headers, _ = await anyio.to_thread.run_sync(exchange, port, data)
    assert (answer, headers["x-quotad-request-id"]) == (404, "qd-0123abcd-77")
    assert len(seen) == len(cases)  # one id each


async def test_refusals_any_local_process_can_send_are_logged_the_first_time_and_every_1000th(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """404, 405 and 401 need no key: any local process could pipeline thousands a second, and
    each wrote a log line (20,000 pipelined 404s: 20,000 lines, 1.6 s of the daemon's CPU).
    Now each status and code is logged the first time, then every 1,000th, with the count."""
    kinds = {
        404: b"GET /nowhere HTTP/1.1\r\nhost: t\r\n\r\n",
        405: b"GET /v1/chat/completions HTTP/1.1\r\nhost: t\r\n\r\n",
        401: b"POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\ncontent-length: 0\r\n\r\n",
    }
    each = 2_001
    last = b"GET /nowhere HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n"
    data = b"".join(pipelined * each for pipelined in kinds.values()) + last

    def send_and_read(port: int) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(data)
            answers = bytearray()
            while chunk := sock.recv(1 << 20):
                answers += chunk
            return bytes(answers)

    broker = ScriptedBroker()
    with caplog.at_level(logging.INFO, logger="quotad.http"):
        async with serving(broker, auth="keys") as front_door:
            answers = await anyio.to_thread.run_sync(send_and_read, front_door.server.port)
    statuses = re.findall(rb"HTTP/1.1 (\d+) ", answers)
    assert [int(status) for status in statuses] == [
        status for status in kinds for _ in range(each)
    ] + [404]
    logged = [record.getMessage() for record in caplog.records if record.name == "quotad.http"]
    assert len(logged) == 3 * 3  # the 1st, 1,000th and 2,000th of each (6,004 answered)
    assert [line.split(" ")[1] for line in logged] == ["404"] * 3 + ["405"] * 3 + ["401"] * 3
    assert "(2000 such so far" in logged[2]
    assert broker.calls == []


# --------------------------------------------------------------------------- health, drain


async def test_healthz_is_503_naming_what_keeps_a_listener_from_accepting() -> None:
    problems: list[str] = []
    async with (
        serving(ScriptedBroker(), other_problems=lambda: list(problems), auth="none") as front_door,
        httpx.AsyncClient() as http,
    ):
        url = f"http://{front_door.address}/healthz"
        healthy = await http.get(url)
        problems.append("unix socket: accept failing: EMFILE (too many open files) since 3 s")
        sick = await http.get(url)
        problems.clear()
        well_again = await http.get(url)
    assert healthy.status_code == well_again.status_code == 200
    assert sick.status_code == 503
    assert sick.json() == {
        "status": "unhealthy",
        "problems": ["unix socket: accept failing: EMFILE (too many open files) since 3 s"],
    }
    assert REQUEST_ID.fullmatch(sick.headers["x-quotad-request-id"])


async def test_while_draining_new_requests_get_overloaded_and_healthz_503() -> None:
    broker = ScriptedBroker()
    broker.block = True
    chat = msgspec.json.encode(CHAT)
    async with serving(broker, auth="none") as front_door, anyio.create_task_group() as tasks:
        port = front_door.server.port
        async with await anyio.connect_tcp("127.0.0.1", port) as in_flight:
            await in_flight.send(request("/v1/chat/completions", body=chat))
            await broker.until(lambda: len(broker.calls) == 1)  # the drain waits for it
            tasks.start_soon(front_door.shutdown, 5.0)
            await anyio.sleep(0.1)
            status, headers, body = await anyio.to_thread.run_sync(
                exchange, port, request("/v1/chat/completions", body=chat)
            )
            health, health_headers, health_body = await anyio.to_thread.run_sync(
                exchange, port, b"GET /healthz HTTP/1.1\r\nhost: t\r\n\r\n"
            )
    assert (status, headers["retry-after"], headers["connection"]) == (503, "1", "close")
    assert msgspec.json.decode(body)["error"]["code"] == "overloaded"
    assert REQUEST_ID.fullmatch(headers["x-quotad-request-id"])
    assert (health, msgspec.json.decode(health_body)) == (503, {"status": "draining"})
    assert REQUEST_ID.fullmatch(health_headers["x-quotad-request-id"])
    assert len(broker.calls) == 1


def test_a_model_name_reaches_a_header_only_as_printable_ascii() -> None:
    assert header_safe("openai/gpt-4o-mini") == "openai/gpt-4o-mini"
    assert header_safe("sim/gpt-\x004o\r\nx: y") == "sim/gpt-%004o%0D%0Ax:%20y"
    assert header_safe("local/漢字") == "local/%E6%BC%A2%E5%AD%97"


async def test_an_error_in_the_pipeline_answers_the_id_of_its_ledger_row() -> None:
    config = Config()
    async with (
        open_store(config) as store,
        serving(Broker(config, Router(config, {}), store), auth="none") as front_door,
        httpx.AsyncClient() as http,
    ):
        broker = front_door.broker
        response = await http.post(
            f"http://{front_door.address}/v1/chat/completions",
            json={"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]},
        )
        await anyio.sleep(0.05)  # the row is counted just after the answer
    assert response.status_code == 404
    [row] = broker.tail.recent
    assert (row.status, response.headers["x-quotad-request-id"]) == (
        "unknown_model",
        row.request_id,
    )


async def test_an_error_holding_a_lone_surrogate_keeps_its_status_on_both_apis() -> None:
    """A provider's text with a lone surrogate in an error (as redaction once decoded one)
    could not be encoded into the error body: the front door answered 500 ``internal``, not
    the error's own status, with a traceback; the socket lost the request. RequestError now
    escapes its message once, for every door."""
    broker = ScriptedBroker()
    broker.error = RequestError("upstream_error", "p/m said \ud800 there")
    assert broker.error.message == "p/m said \\ud800 there"
    async with serving(broker, auth="none") as front_door:
        port = front_door.server.port
        for path, body in [("/v1/chat/completions", CHAT), ("/v1/messages", ANTHROPIC_CHAT)]:
            status, _, answer = await anyio.to_thread.run_sync(
                exchange, port, request(path, body=msgspec.json.encode(body))
            )
            assert status == 502, answer
            assert msgspec.json.decode(answer)["error"]["message"] == "p/m said \\ud800 there"
